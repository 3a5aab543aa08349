"""``velocity report``: the velocity of every scope as a table for people, or JSON/CSV for machines.

Machine formats carry exact decimal strings (``null``/empty when undefined);
the table rounds for reading, groups thousands, and says why a velocity is
undefined instead of showing 0.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, Literal
from zoneinfo import ZoneInfo

from sales_velocity.metrics.freshness import Freshness
from sales_velocity.metrics.leftovers import LeftOut
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


def _json(report: VelocityReport, freshness: Freshness | None, left: LeftOut | None) -> str:
    document: dict[str, Any] = {
        "as_of": report.as_of.isoformat(),
        "window_days": report.window_days,
        "currency": report.currency,
        "timezone": report.timezone,
        "scopes": [scope_record(s) for s in report.scopes],
    }
    if freshness is not None:
        document["sources"] = [
            {"source": s.source, "last_ok_at": s.last_ok_at.isoformat() if s.last_ok_at else None,
             "failed": s.failed, "stale": s.stale, "error": s.error}
            for s in freshness.sources
        ]
    if left is not None:
        document["left_out"] = {
            "won_without_amount": left.no_amount, "won_without_rate": left.no_rate,
            "closed_without_close_date": left.no_close_date,
            "closed_dated_by_last_update": left.dated_by_update,
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


def _footnote(report: VelocityReport, left: LeftOut | None) -> list[str]:
    overall = report.all
    lines: list[str] = []
    if overall is not None and (overall.excluded_no_amount or overall.excluded_currency):
        parts = []
        if overall.excluded_no_amount:
            parts.append(_plural(overall.excluded_no_amount, "won deal", "won deals") + " without an amount")
        if overall.excluded_currency:
            parts.append(_plural(overall.excluded_currency, "won deal", "won deals")
                         + f" in a currency without a rate to {report.currency}")
        lines.append("* Left out of the average deal value: " + "; ".join(parts) + ".")
    if left is not None and left.no_close_date:
        lines.append("* Left out of every window: "
                     + _plural(left.no_close_date, "closed deal", "closed deals")
                     + " without a close date or last update.")
    if left is not None and left.dated_by_update:
        lines.append("* Dated by their last update: "
                     + _plural(left.dated_by_update, "closed deal", "closed deals")
                     + " without a close date.")
    return ["", *lines] if lines else []


def _freshness_lines(freshness: Freshness | None, zone_name: str) -> list[str]:
    """``Data: last good sync demo 2026-11-26 10:00; hubspot never`` and a warning per bad source."""
    if freshness is None or not freshness.sources:
        return []
    zone = ZoneInfo(zone_name) if zone_name else dt.UTC

    def when(value: dt.datetime | None) -> str:
        return value.astimezone(zone).strftime("%Y-%m-%d %H:%M") if value else "never"

    synced = "; ".join(f"{s.source} {when(s.last_ok_at)}" for s in freshness.sources)
    lines = [f"Data: last good sync {synced}"]
    for s in freshness.banner:
        if s.failed and s.last_ok_at is None:
            lines.append(f"! {s.source}: last sync failed ({s.error}); it never synced successfully")
        elif s.failed:
            lines.append(f"! {s.source}: last sync failed ({s.error}); its data is from {when(s.last_ok_at)}")
        elif s.last_ok_at is None:
            lines.append(f"! {s.source}: never synced")
        else:
            lines.append(f"! {s.source}: last good sync {when(s.last_ok_at)}, "
                         f"older than {freshness.max_age_hours} hours")
    return lines


def _table(report: VelocityReport, freshness: Freshness | None, left: LeftOut | None) -> str:
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
    lines += _freshness_lines(freshness, report.timezone)
    for kind, title in _SECTIONS:
        lines += ["", line(title, _HEADERS)]
        lines += [line(f"  {c[0]}", c[1:]) for c in rows[kind]] or ["  (none)"]
    lines += _footnote(report, left)
    return "\n".join(lines) + "\n"


def render_report(
    report: VelocityReport, fmt: ReportFormat, *, freshness: Freshness | None = None,
    left_out: LeftOut | None = None,
) -> str:
    """The report as text: ``table`` for people, ``json`` or ``csv`` for machines.

    Args:
        report: The computed (or rebuilt) report.
        fmt: ``table``, ``json`` or ``csv``.
        freshness: per source, the last good sync (table: a line under the
            title and a warning per failed or stale source; JSON: ``sources``).
        left_out: what the levers left out (table: the footnotes; JSON: ``left_out``).

    Returns:
        The text, ending with a newline.

    Raises:
        ValueError: For an unknown format.
    """
    if fmt == "table":
        return _table(report, freshness, left_out)
    if fmt == "json":
        return _json(report, freshness, left_out)
    if fmt == "csv":
        return _csv(report)
    raise ValueError(f"unknown report format {fmt!r}; use table, json or csv")
