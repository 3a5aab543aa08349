"""The forecast's deal scan (``metrics.forecast_data``, ``forecast_marks``) against plain Python per deal."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa

from sales_velocity.metrics.forecast_data import _prefetched, read_forecast_data
from sales_velocity.metrics.movement import MovementScope
from sales_velocity.metrics.settings import MetricsSettings
from sales_velocity.sync.store import stage_events_table
from tests.metrics.test_velocity_rows import deal, insert_deals

AS_OF = dt.date(2026, 11, 26)
DAYS = 120
FIRST = AS_OF - dt.timedelta(days=DAYS - 1)
HORIZONS = (7, 30)
SETTINGS = MetricsSettings(timezone="UTC", currency="EUR")


def noon(days_before: int) -> dt.datetime:
    """Noon UTC ``days_before`` the as-of date (negative: after it)."""
    day = AS_OF - dt.timedelta(days=days_before)
    return dt.datetime(day.year, day.month, day.day, 12, tzinfo=dt.UTC)


def store_rows() -> tuple[list[dict[str, Any]], list[Any]]:
    """Hand-made deals and stage events ``(deal, days before as-of, stage, pipeline)`` covering each path."""
    rows = [
        deal("open-none", created=noon(100), amount=100, pipeline="p"),  # no stage known: unknown stage
        deal("open-entered", created=noon(110), amount=200, pipeline="p"),  # stage_entered_at only
        deal("open-one", created=noon(80), amount=300, pipeline="p"),  # one event
        deal("won-many", status="won", created=noon(150), closed=noon(20), amount="400.5", pipeline="p"),
        deal("lost-one", status="lost", created=noon(60), closed=noon(10), amount=500, pipeline="q"),
        deal("won-late", status="won", created=noon(40), closed=noon(-5), amount=600, pipeline="q"),
        deal("deleted", status="deleted", created=noon(90), deleted_at=noon(30), amount=700, pipeline="q"),
        deal("archived", created=noon(50), amount=800, pipeline="q", archived=True),
        deal("no-created", status="won", created=None, closed=noon(3), amount=900, pipeline="p"),
        deal("old", created=noon(400), amount=1000, pipeline="p"),  # created long before the grid
        deal("won-now", status="won", created=noon(35), closed=noon(0), amount=1100, pipeline="p"),
    ]
    for row in rows:
        row["updated_at"] = noon(0)
    rows[1].update(stage_id="B", stage_entered_at=noon(70))
    rows[9].update(stage_id="C", stage_entered_at=noon(200))
    events = [
        ("open-one", 45, "A", None),
        ("won-many", 140, "A", "p"), ("won-many", 95, "B", "p"), ("won-many", 40, "C", "p2"),
        ("won-many", -3, "D", "p"),  # after the as-of date: not known yet
        ("lost-one", 50, "A", "q2"),  # one event, in another pipeline
        ("won-late", 30, "B", "q"), ("won-late", 12, "C", "q"),
        ("deleted", 85, "A", "q"), ("deleted", 85, "B", "q"),  # two on one day: the later stage id wins
        ("won-now", 35, "A", "p"),
    ]
    return rows, events


def day_of(moment: dt.datetime | None) -> int | None:
    """The grid day of a noon UTC timestamp (negative before the grid)."""
    return None if moment is None else (moment.date() - FIRST).days


Table = dict[Any, list[int]]
Event = tuple[str, int, str, str | None]


def by_hand(rows: list[dict[str, Any]], events: list[Event], points: int,
            offset: int) -> tuple[Table, Table, dict[int, Table]]:
    """Plain Python per point and deal: value and count open per cell, and what of it is won within h."""
    value: dict[Any, list[int]] = {}
    count: dict[Any, list[int]] = {}
    won: dict[int, dict[Any, list[int]]] = {h: {} for h in HORIZONS}
    for row in rows:
        if row["archived"]:
            continue
        created = day_of(row["created_at"])
        ended = {"open": None, "deleted": day_of(row["deleted_at"])}.get(row["status"],
                                                                         day_of(row["closed_at"]))
        known: list[tuple[Any, ...]] = sorted((DAYS - 1 - before, stage, pipeline or row["pipeline_id"])
                       for ident, before, stage, pipeline in events
                       if ident == row["external_id"] and before >= 0)
        if not known and row["stage_entered_at"] is not None:
            known = [(day_of(row["stage_entered_at"]), row["stage_id"], row["pipeline_id"])]
        units = int(Decimal(row["amount"]) * 10000)
        for q in range(points):
            t = offset + 7 * q
            if (created is not None and created > t) or (ended is not None and ended <= t):
                continue
            entered, stage, pipeline = 0 if created is None else created, None, row["pipeline_id"]
            for day, event_stage, event_pipeline in known:
                if day <= t:
                    entered, stage, pipeline = day, event_stage, event_pipeline
            age = t - entered
            cell = ("crm", pipeline, stage, 0 if age < 30 else 1 if age < 90 else 2)
            value.setdefault(cell, [0] * points)[q] += units
            count.setdefault(cell, [0] * points)[q] += 1
            for h in HORIZONS:
                if row["status"] == "won" and ended is not None and t < ended <= min(t + h, DAYS - 1):
                    won[h].setdefault(cell, [0] * points)[q] += units
    return value, count, won


def test_scan_equals_plain_python_per_deal(store: sa.Engine) -> None:
    """Every cell's open value, open count and won-within sums equal a per-deal, per-point recount."""
    rows, events = store_rows()
    insert_deals(store, rows)
    with store.begin() as conn:
        conn.execute(sa.insert(stage_events_table), [
            {"source": "crm", "external_id": ident, "pipeline_id": pipeline, "stage_id": stage,
             "entered_at": noon(before), "observed": False} for ident, before, stage, pipeline in events])
    data = read_forecast_data(store, SETTINGS, AS_OF, history_days=DAYS, horizons=HORIZONS,
                              scope=MovementScope())
    value, count, won = by_hand(rows, events, data.points, data.offset)

    def units(values: list[Decimal]) -> list[int]:
        return [int(v * 10000) for v in values]

    def nonzero(table: Table) -> Table:
        return {cell: line for cell, line in table.items() if any(line)}

    assert nonzero({c: units(v) for c, v in data.open_value.items()}) == value
    assert nonzero(data.open_count) == count
    for h in HORIZONS:
        assert nonzero({c: units(v) for c, v in data.won_within[h].items()}) == nonzero(won[h])
    assert data.won_deals == 3  # won-many, no-created, won-now (won-late closes after the as-of date)
    assert data.won_between(0, DAYS - 1) == Decimal("2400.5")


def test_prefetch_hands_over_every_batch_and_raises_the_fetch_error() -> None:
    """The fetch thread passes each batch in order, then the error it met, and stops when the reader does."""
    fetched: list[int] = []

    def batches(fail: bool) -> Iterator[list[tuple[int]]]:
        for n in range(50):
            fetched.append(n)
            yield [(n,)]
        if fail:
            raise RuntimeError("the scan failed")

    assert [b[0][0] for b in _prefetched(batches(False))] == list(range(50))
    seen: list[int] = []

    def read_all() -> None:
        seen.extend(batch[0][0] for batch in _prefetched(batches(True)))

    with pytest.raises(RuntimeError, match="the scan failed"):
        read_all()
    assert seen == list(range(50))
    fetched.clear()
    reader = _prefetched(batches(False))
    assert next(reader) == [(0,)]
    reader.close()  # the reader stops early: the fetch stops a few batches ahead, not at the end
    assert len(fetched) < 10
