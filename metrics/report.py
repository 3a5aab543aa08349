"""``velocity report``: the velocity of every scope as a table for people, or JSON/CSV for machines.

Machine formats carry exact decimal strings (``null``/empty when undefined);
the table rounds for reading, groups thousands, and says why a velocity is
undefined instead of showing 0.
"""

from __future__ import annotations

import csv
import io
import json
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, Literal

from sales_velocity.metrics.velocity import ScopeKind, ScopeVelocity, VelocityReport

__all__ = ["FIELDS", "ReportFormat", "render_report", "scope_record"]

ReportFormat = Literal["table", "json", "csv"]

FIELDS = (
    "scope", "key", "label", "opportunities", "won", "lost", "win_rate", "avg_deal_value",
    "cycle_days", "velocity_per_day", "undefined_reason", "excluded_no_amount", "excluded_currency",
)
"""The fields of one scope in JSON and CSV, in order."""

_SECTIONS: tuple[tuple[ScopeKind, str], ...] = (
    ("all", "All"), ("pipeline", "Pipelines"), ("owner", "Owners"),
)
_HEADERS = ("Open", "Win rate", "Avg deal value", "Cycle", "Velocity")
_MISSING = "-"


def _fixed(value: Decimal, places: int) -> str:
    """``value`` rounded half-up to ``places`` decimals, as plain digits."""
    return format(value.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP), "f")


def _count(value: int | Decimal) -> str:
    return str(value) if isinstance(value, int) else format(value.normalize(), "f")


def _cycle(value: Decimal) -> str:
    """Cycle days with one or two decimals: 90.0, 89.96, 3.5."""
    text = _fixed(value, 2)
    return text[:-1] if text.endswith("0") else text


def scope_record(s: ScopeVelocity) -> dict[str, Any]:
    """One scope as JSON-ready values (decimal strings; ``None`` when undefined)."""
    lv = s.levers
    return {
        "scope": s.scope,
        "key": s.key,
        "label": s.label,
        "opportunities": lv.opportunities if isinstance(lv.opportunities, int) else _count(lv.opportunities),
        "won": lv.won,
        "lost": lv.lost,
        "win_rate": None if lv.win_rate is None else _fixed(lv.win_rate, 4),
        "avg_deal_value": None if lv.avg_deal_value is None else _fixed(lv.avg_deal_value, 2),
        "cycle_days": None if lv.cycle_days is None else _cycle(lv.cycle_days),
        "velocity_per_day": None if s.velocity.value is None else _fixed(s.velocity.value, 2),
        "undefined_reason": s.velocity.undefined_reason,
        "excluded_no_amount": s.excluded_no_amount,
        "excluded_currency": s.excluded_currency,
    }


def _json(report: VelocityReport) -> str:
    document = {
        "as_of": report.as_of.isoformat(),
        "window_days": report.window_days,
        "currency": report.currency,
        "timezone": report.timezone,
        "scopes": [scope_record(s) for s in report.scopes],
    }
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def _csv(report: VelocityReport) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=FIELDS, lineterminator="\n")
    writer.writeheader()
    for s in report.scopes:
        writer.writerow({k: "" if v is None else v for k, v in scope_record(s).items()})
    return out.getvalue()


# --------------------------------------------------------------------------- table


def _money(currency: str, value: Decimal) -> str:
    """``NOK 11,111.11``."""
    return f"{currency} {value.quantize(Decimal('0.01'), rounding=ROUND_HALF_UP):,.2f}"


def _cells(s: ScopeVelocity, currency: str) -> tuple[str, ...]:
    """Label, the four levers, and the velocity (or why it is undefined)."""
    lv = s.levers
    win_rate = _MISSING if lv.win_rate is None else f"{_fixed(lv.win_rate * 100, 1)} %"
    value = _MISSING if lv.avg_deal_value is None else _money(currency, lv.avg_deal_value)
    cycle = _MISSING if lv.cycle_days is None else f"{_fixed(lv.cycle_days, 1)} days"
    if s.velocity.value is None:
        velocity = f"undefined ({s.velocity.undefined_reason or 'unknown reason'})"
    else:
        velocity = f"{_money(currency, s.velocity.value)}/day"
    return (s.label, _count(lv.opportunities), win_rate, value, cycle, velocity)


def _plural(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def _footnote(report: VelocityReport) -> list[str]:
    overall = report.all
    if overall is None or not (overall.excluded_no_amount or overall.excluded_currency):
        return []
    parts = []
    if overall.excluded_no_amount:
        parts.append(_plural(overall.excluded_no_amount, "won deal", "won deals") + " without an amount")
    if overall.excluded_currency:
        parts.append(_plural(overall.excluded_currency, "won deal", "won deals")
                     + f" in a currency without a rate to {report.currency}")
    return ["", "* Left out of the average deal value: " + "; ".join(parts) + "."]


def _table(report: VelocityReport) -> str:
    rows = {kind: [_cells(s, report.currency) for s in report.of_kind(kind)] for kind, _ in _SECTIONS}
    every = [cells for section in rows.values() for cells in section]
    label_width = max([len(c[0]) + 2 for c in every] + [len(title) for _, title in _SECTIONS])
    widths = [
        max([len(header)] + [len(c[i + 1]) for c in every if not c[i + 1].startswith("undefined")])
        for i, header in enumerate(_HEADERS)
    ]

    def line(first: str, cells: tuple[str, ...]) -> str:
        parts = [first.ljust(label_width)]
        for cell, width in zip(cells, widths, strict=True):
            parts.append(cell if cell.startswith("undefined") else cell.rjust(width))
        return "  ".join(parts).rstrip()

    zone = report.timezone or "unknown time zone"
    days = "1 day" if report.window_days == 1 else f"{report.window_days} days"
    lines = [f"Sales velocity as of {report.as_of.isoformat()} (last {days}, {zone}, {report.currency})"]
    for kind, title in _SECTIONS:
        lines += ["", line(title, _HEADERS)]
        lines += [line(f"  {c[0]}", c[1:]) for c in rows[kind]] or ["  (none)"]
    lines += _footnote(report)
    return "\n".join(lines) + "\n"


def render_report(report: VelocityReport, fmt: ReportFormat) -> str:
    """The report as text: ``table`` for people, ``json`` or ``csv`` for machines.

    Args:
        report: The computed (or rebuilt) report.
        fmt: ``table``, ``json`` or ``csv``.

    Returns:
        The text, ending with a newline.

    Raises:
        ValueError: For an unknown format.
    """
    if fmt == "table":
        return _table(report)
    if fmt == "json":
        return _json(report)
    if fmt == "csv":
        return _csv(report)
    raise ValueError(f"unknown report format {fmt!r}; use table, json or csv")
