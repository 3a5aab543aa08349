"""``velocity deals``: the deals behind the levers as a table for people, or CSV/JSON for machines.

Every format streams: a line is written as its deal comes from the database,
and each lever ends with its totals (count; won: the amount sum and the
average deal value; cycle: the mean), summed as the lines pass (``Tally``).
Machine formats carry exact decimal strings and ISO 8601 UTC times; the table
shows local dates in the configured zone and rounds money to cents.

JSON is one document: ``as_of``, ``window_days``, ``window`` (``start``/``end``,
UTC, half-open), ``currency``, ``timezone``, ``scope`` (``kind``, ``key``,
``label``), ``levers``, ``deals`` (one object per line, the CSV columns as
keys) and ``totals`` per lever.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from collections.abc import Iterable, Iterator
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, Literal
from zoneinfo import ZoneInfo

from sales_velocity.metrics.drilldown import REASONS, DealLine, DrillDown, Lever, Tally

__all__ = ["COLUMNS", "DealsFormat", "deal_record", "render_deals"]

DealsFormat = Literal["table", "csv", "json"]

COLUMNS = (
    "lever", "source", "id", "title", "owner", "owner_id", "pipeline", "pipeline_id", "stage", "stage_id",
    "status", "amount", "currency", "original_amount", "created_at", "closed_at", "cycle_seconds",
    "cycle_days", "reason", "reason_text",
)
"""The fields of one line in CSV and JSON, in order. ``amount`` is in the base currency."""

_TITLES: dict[Lever, str] = {
    "open": "Open at {as_of} (N)",
    "won": "Won in the window",
    "lost": "Lost in the window",
    "cycle": "Cycle: won in the window with a creation date (L)",
    "excluded": "Left out",
}
_SHORT = {
    "no_amount": "won without an amount", "no_rate": "won without a rate",
    "no_created": "won without a creation date",
    "no_close_date": "closed without any date", "dated_by_update": "dated by their last update",
}
_CENT = Decimal("0.01")


def _plain(value: Decimal) -> str:
    """An exact decimal string without exponent (``1E+3`` -> ``1000``)."""
    text = format(value, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def _days(value: Decimal) -> str:
    return format(value.quantize(_CENT, rounding=ROUND_HALF_UP), "f")


def deal_record(line: DealLine) -> dict[str, Any]:
    """One line as JSON-ready values (decimal strings, ISO times, ``None`` when unknown)."""
    return {
        "lever": line.lever, "source": line.source, "id": line.external_id, "title": line.title,
        "owner": line.owner, "owner_id": line.owner_id, "pipeline": line.pipeline,
        "pipeline_id": line.pipeline_id, "stage": line.stage, "stage_id": line.stage_id,
        "status": line.status,
        "amount": None if line.amount is None else _plain(line.amount),
        "currency": line.currency,
        "original_amount": None if line.original_amount is None else _plain(line.original_amount),
        "created_at": None if line.created_at is None else line.created_at.isoformat(),
        "closed_at": None if line.closed_at is None else line.closed_at.isoformat(),
        "cycle_seconds": line.cycle_seconds,
        "cycle_days": None if line.cycle_days is None else _days(line.cycle_days),
        "reason": line.reason,
        "reason_text": None if line.reason is None else REASONS[line.reason],
    }


def _totals(lever: Lever, t: Tally) -> dict[str, Any]:
    out: dict[str, Any] = {"deals": t.deals}
    if lever == "won":
        out |= {"amount_deals": t.amount_deals, "amount_sum": _plain(t.amount_sum),
                "avg_deal_value": None if t.avg_deal_value is None else _days(t.avg_deal_value)}
    elif lever == "cycle":
        out |= {"cycle_seconds": t.cycle_seconds,
                "cycle_days": None if t.cycle_days is None else _days(t.cycle_days)}
    elif lever == "excluded":
        out["reasons"] = {reason: t.reasons[reason] for reason in REASONS if t.reasons[reason]}
    return out


def _by_lever(drill: DrillDown, lines: Iterable[DealLine]) -> Iterator[tuple[Lever, Iterator[DealLine]]]:
    """The lines lever by lever, in ``drill.levers`` order (levers without a line included)."""
    pending: DealLine | None = None
    source = iter(lines)

    def of(lever: Lever) -> Iterator[DealLine]:
        nonlocal pending
        while True:
            line = pending if pending is not None else next(source, None)
            pending = None
            if line is None:
                return
            if line.lever != lever:
                pending = line
                return
            yield line

    for lever in drill.levers:
        group = of(lever)
        yield lever, group
        for _ in group:  # a reader that stopped early still moves past the lever
            pass


def _json(drill: DrillDown, lines: Iterable[DealLine]) -> Iterator[str]:
    head = {
        "as_of": drill.as_of.isoformat(), "window_days": drill.window_days,
        "window": {"start": drill.start.isoformat(), "end": drill.end.isoformat()},
        "currency": drill.currency, "timezone": drill.timezone,
        "scope": {"kind": drill.scope.kind, "key": "" if drill.scope.kind == "all" else
                  f"{drill.scope.source}/{drill.scope.key}", "label": drill.scope.label},
        "levers": list(drill.levers),
    }
    yield json.dumps(head, ensure_ascii=False)[:-1] + ', "deals": ['
    totals: dict[str, Any] = {}
    first = True
    for lever, group in _by_lever(drill, lines):
        tally = Tally()
        for line in group:
            tally.add(line)
            yield ("\n  " if first else ",\n  ") + json.dumps(deal_record(line), ensure_ascii=False)
            first = False
        totals[lever] = _totals(lever, tally)
    yield "\n], \"totals\": " + json.dumps(totals, ensure_ascii=False) + "}\n"


def _csv(lines: Iterable[DealLine]) -> Iterator[str]:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    yield out.getvalue()
    for line in lines:
        out.seek(0)
        out.truncate()
        writer.writerow({k: "" if v is None else v for k, v in deal_record(line).items()})
        yield out.getvalue()


# --------------------------------------------------------------------------- table

_WIDTHS = (("Source", 10), ("ID", 12), ("Title", 30), ("Owner", 18), ("Pipeline", 14), ("Stage", 12))


def _cut(text: str | None, width: int) -> str:
    text = "-" if text in (None, "") else " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _money(value: Decimal | None) -> str:
    return "-" if value is None else f"{value.quantize(_CENT, rounding=ROUND_HALF_UP):,.2f}"


def _plural(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def _footer(lever: Lever, t: Tally, currency: str, won: Tally | None) -> str:
    deals = _plural(t.deals, "deal", "deals")
    if lever == "lost" and won is not None and won.deals + t.deals:
        rate = Decimal(won.deals * 100) / (won.deals + t.deals)
        return (f"  {deals}; win rate {rate.quantize(Decimal('0.1'), rounding=ROUND_HALF_UP)} % "
                f"({won.deals} won of {won.deals + t.deals} closed)")
    if lever == "won" and t.amount_deals:
        return (f"  {deals}; {currency} {_money(t.amount_sum)} over {t.amount_deals} with a usable "
                f"amount: average deal value {currency} {_money(t.avg_deal_value)}")
    if lever == "cycle" and t.cycle_days is not None:
        return f"  {deals}; mean cycle {_days(t.cycle_days)} days"
    if lever == "excluded" and t.reasons:
        return f"  {_plural(t.deals, 'line', 'lines')}: " + ", ".join(
            f"{t.reasons[r]} {_SHORT[r]}" for r in REASONS if t.reasons[r])
    return f"  {deals}"


def _table(drill: DrillDown, lines: Iterable[DealLine]) -> Iterator[str]:
    zone = ZoneInfo(drill.timezone)

    def day(value: dt.datetime | None) -> str:
        return "-" if value is None else value.astimezone(zone).date().isoformat()

    days = "1 day" if drill.window_days == 1 else f"{drill.window_days} days"
    scope = drill.scope.label if drill.scope.kind == "all" else f"{drill.scope.kind} {drill.scope.label}"
    yield (f"Deals behind the levers of {scope} as of {drill.as_of.isoformat()} "
           f"(last {days}, {drill.timezone}, {drill.currency})\n")
    head = "  ".join(name.ljust(width) for name, width in _WIDTHS)
    amount = f"Amount {drill.currency}"
    tallies: dict[Lever, Tally] = {}
    for lever, group in _by_lever(drill, lines):
        extra = "  Reason" if lever == "excluded" else ""
        yield (f"\n{_TITLES[lever].format(as_of=drill.as_of.isoformat())}\n"
               f"  {head}  {amount:>14}  {'Created':10}  {'Closed':10}  {'Cycle':>7}{extra}\n")
        tally = tallies[lever] = Tally()
        for line in group:
            tally.add(line)
            cells = (line.source, line.external_id, line.title, line.owner, line.pipeline, line.stage)
            text = "  ".join(_cut(c, w).ljust(w) for c, (_, w) in zip(cells, _WIDTHS, strict=True))
            cycle = "-" if line.cycle_days is None else _days(line.cycle_days)
            reason = f"  {REASONS[line.reason]}" if line.reason else ""
            if line.reason == "no_rate":
                reason += f" ({line.currency})"
            row = (f"  {text}  {_money(line.amount):>14}  {day(line.created_at):10}  "
                   f"{day(line.closed_at):10}  {cycle:>7}{reason}")
            yield row.rstrip() + "\n"
        yield _footer(lever, tally, drill.currency, tallies.get("won")) + "\n"


def render_deals(drill: DrillDown, lines: Iterable[DealLine], fmt: DealsFormat) -> Iterator[str]:
    """The listing as chunks of text, streamed: ``table``, ``csv`` or ``json``.

    Raises:
        ValueError: For an unknown format.
    """
    if fmt == "table":
        return _table(drill, lines)
    if fmt == "csv":
        return _csv(lines)
    if fmt == "json":
        return _json(drill, lines)
    raise ValueError(f"unknown format {fmt!r}; use table, csv or json")
