"""What the forecast learns from: one streamed pass over the deals, summed on a weekly grid.

The forecast (``metrics.forecast``) and its backtest need, for every as-of
point ``T`` on a weekly grid ending with the as-of date (``T = as_of - 7j``):

* the value won on each local day (actuals and persistence);
* the value created on each local day (the inflow of new deals);
* per *cell* (source, pipeline, stage at ``T``, age-in-stage bucket at ``T``):
  the value open at ``T`` and, for each horizon ``h``, the part of it won in
  ``T+1 .. T+h`` (what a cell's deals were worth, as a rate);
* for each horizon: the value created in ``T+1 .. T+h`` and the part of it won
  by ``T+h`` (the conversion of deals not yet created at ``T``).

Everything is "as known at T" with the rules of ``metrics.window`` and the
history rebuild (``metrics.history``): every timestamp becomes its local day on
a grid of days ending with the as-of date, in SQL (``history._day_index``: the
half-open local midnights, exact to the second; after the as-of date it is
"never"; before it, the negative number of days before it). A deal is open at
``T`` when ``created <= T < ended`` (close day for
won/lost, deletion day for deleted, never for open; archived deals are never
open, and a close without a known time never happens). Its stage at ``T`` is the
stage of its last stage event on or before ``T``; without events, its current
stage from ``stage_entered_at`` on, and "unknown" before (age counted from the
creation).

Nothing is held per deal: each deal adds a few ``+value``/``-value`` marks to
difference arrays over the grid's points (one per stretch of points in one
cell), and the sums are running totals of those marks. The deals arrive as a
stream (``yield_per``), so memory does not grow with the store.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

from sales_velocity.metrics.history import NEVER, _day_index
from sales_velocity.metrics.movement import MovementScope
from sales_velocity.metrics.settings import MetricsSettings
from sales_velocity.metrics.sql import EpochSeconds
from sales_velocity.metrics.window import close_time, day_start
from sales_velocity.sync.store import UTCDateTime, deals_table, stage_events_table, stages_table

__all__ = ["AGE_BUCKETS", "Cell", "ForecastData", "read_forecast_data"]

AGE_BUCKETS = (0, 30, 90)
"""Age-in-stage buckets (days): under 30, 30 to 89, 90 and more."""

Cell = tuple[str, str | None, str | None, int]
"""(source, pipeline id, stage id or ``None`` for unknown, age bucket)."""


@dataclass
class ForecastData:
    """The sums the forecast and the backtest are computed from (see the module docstring)."""

    first_day: dt.date
    """Day 0 of the day grid; ``days`` days, the last one the as-of date."""
    days: int
    points: int
    """Weekly points, ascending; point ``q`` is day ``offset + 7q``; the last is the as-of date."""
    offset: int
    horizons: tuple[int, ...]
    won_by_day: list[Decimal]
    created_by_day: list[Decimal]
    won_deals: int = 0
    first_created: int | None = None
    left_out: int = 0
    """Deals without an amount or an exchange rate to the base currency."""
    open_value: dict[Cell, list[Decimal]] = field(default_factory=dict)
    open_count: dict[Cell, list[int]] = field(default_factory=dict)
    won_within: dict[int, dict[Cell, list[Decimal]]] = field(default_factory=dict)
    new_created: dict[int, list[Decimal]] = field(default_factory=dict)
    new_won: dict[int, list[Decimal]] = field(default_factory=dict)
    probabilities: dict[tuple[str, str, str], Decimal] = field(default_factory=dict)

    def day_of(self, point: int) -> int:
        """The grid day of point ``point``."""
        return self.offset + 7 * point

    def date_of(self, point: int) -> dt.date:
        """The local date of point ``point``."""
        return self.first_day + dt.timedelta(days=self.day_of(point))

    def won_between(self, first: int, last: int) -> Decimal:
        """Value won on grid days ``first .. last`` (clipped to the grid)."""
        first, last = max(first, 0), min(last, self.days - 1)
        return sum(self.won_by_day[first:last + 1], Decimal(0))

    def created_between(self, first: int, last: int) -> Decimal:
        """Value created on grid days ``first .. last`` (clipped to the grid)."""
        first, last = max(first, 0), min(last, self.days - 1)
        return sum(self.created_by_day[first:last + 1], Decimal(0))


class JoinedText(FunctionElement[Any]):
    """SQL: the texts of a group joined with a separator (``group_concat`` / ``string_agg``)."""

    type = sa.Text()
    inherit_cache = True
    name = "joined_text"


@compiles(JoinedText)
def _joined_default(element: JoinedText, compiler: SQLCompiler, **kw: Any) -> str:
    text, sep = (compiler.process(arg, **kw) for arg in element.clauses)
    return f"string_agg({text}, {sep})"


@compiles(JoinedText, "sqlite")
def _joined_sqlite(element: JoinedText, compiler: SQLCompiler, **kw: Any) -> str:
    text, sep = (compiler.process(arg, **kw) for arg in element.clauses)
    return f"group_concat({text}, {sep})"


_SEP, _FIELD = "\x1e", "\x1f"


def _scope_filter(scope: MovementScope) -> sa.ColumnElement[bool]:
    d = deals_table.c
    if scope.kind == "pipeline":
        return sa.and_(d.source == scope.source, d.pipeline_id == scope.key)
    if scope.kind == "owner":
        return sa.and_(d.source == scope.source, d.owner_id == scope.key)
    return sa.true()


def _deal_query(first_day: dt.date, days: int, zone: ZoneInfo, scope: MovementScope) -> sa.Select[Any]:
    """One row per deal that can matter on the grid, with its days on the grid and its stage events."""
    d, e = deals_table.c, stage_events_table.c
    close = close_time()
    grid_start = sa.literal(day_start(first_day, zone), UTCDateTime())

    grid_epoch = int(day_start(first_day, zone).timestamp())

    def day(moment: sa.ColumnElement[Any]) -> sa.ColumnElement[Any]:
        # before the grid: the (negative) number of whole days before it, so ages stay right
        seconds = EpochSeconds(moment)
        before = -((sa.literal(grid_epoch, sa.BigInteger()) - seconds + 86399) // 86400)
        return sa.case((seconds < grid_epoch, before), else_=_day_index(seconds, first_day, days, zone))

    could_matter = sa.or_(
        sa.and_(d.status.in_(("won", "lost")), close >= grid_start),
        sa.and_(d.status == "open", sa.not_(d.archived)),
        sa.and_(d.status == "deleted", sa.not_(d.archived), d.deleted_at >= grid_start),
    )
    event_text = (
        sa.cast(day(e.entered_at), sa.Text) + _FIELD + e.stage_id + _FIELD
        + sa.func.coalesce(e.pipeline_id, "")
    )
    events = (
        sa.select(JoinedText(event_text, sa.literal(_SEP)))
        .where(e.source == d.source, e.external_id == d.external_id)
        .scalar_subquery()
    )
    ended = sa.case(
        (d.status == "open", sa.literal(NEVER, sa.BigInteger())),
        (d.status.in_(("won", "lost")), day(close)),
        else_=day(d.deleted_at),
    )
    return (
        sa.select(
            d.source, d.pipeline_id, d.stage_id, d.status, d.archived, d.amount, d.currency,
            sa.case((d.created_at.is_(None), -1), else_=day(d.created_at)).label("created"),
            d.created_at.is_(None).label("no_created"),
            ended.label("ended"),
            day(d.stage_entered_at).label("stage_entered"),
            events.label("events"),
        )
        .where(could_matter, _scope_filter(scope))
    )


class _Marks:
    """Difference arrays over the points: ``add(cell, lo, hi, v)`` adds ``v`` to points ``lo .. hi-1``."""

    def __init__(self, points: int) -> None:
        self.points = points
        self.marks: dict[Any, list[Any]] = {}

    def add(self, key: Any, lo: int, hi: int, value: Any) -> None:
        lo, hi = max(lo, 0), min(hi, self.points)
        if lo >= hi:
            return
        row = self.marks.get(key)
        if row is None:
            row = self.marks[key] = [0] * (self.points + 1)
        row[lo] += value
        row[hi] -= value

    def totals(self) -> dict[Any, list[Any]]:
        """The running sums: the value at each point."""
        out = {}
        for key, row in self.marks.items():
            running, values = 0, []
            for mark in row[:-1]:
                running += mark
                values.append(running)
            out[key] = values
        return out


def _first_point_at_or_after(day: int, offset: int) -> int:
    """The first point ``q`` with ``offset + 7q >= day``."""
    return -((offset - day) // 7)


def read_forecast_data(engine: sa.Engine, settings: MetricsSettings, as_of: dt.date, *, history_days: int,
                       horizons: Sequence[int], scope: MovementScope) -> ForecastData:
    """Stream the deals of ``scope`` once; sum them on the grid of ``history_days`` days ending ``as_of``."""
    zone = settings.zone
    days = history_days
    first_day = as_of - dt.timedelta(days=days - 1)
    offset = (days - 1) % 7
    points = (days - 1) // 7 + 1
    hs = tuple(sorted(set(horizons)))
    data = ForecastData(first_day, days, points, offset, hs, [Decimal(0)] * days, [Decimal(0)] * days)
    opened, counted = _Marks(points), _Marks(points)
    won_marks = {h: _Marks(points) for h in hs}
    new_marks = _Marks(points)
    rates = settings.rates
    base = settings.currency
    with engine.connect() as conn:
        s = stages_table.c
        for row in conn.execute(sa.select(s.source, s.pipeline_id, s.external_id, s.probability)
                                .where(s.probability.is_not(None))):
            data.probabilities[(row.source, row.pipeline_id, row.external_id)] = Decimal(row.probability)
        result = conn.execution_options(yield_per=5000).execute(
            _deal_query(first_day, days, zone, scope))
        for row in result:
            if row.amount is None:
                data.left_out += 1
                continue
            code = (row.currency or base).upper()
            if code == base:
                value = Decimal(row.amount)
            elif code in rates:
                value = Decimal(row.amount) * rates[code]
            else:
                data.left_out += 1
                continue
            _add_deal(row, value, data, opened, counted, won_marks, new_marks)
    data.open_value = opened.totals()
    data.open_count = counted.totals()
    data.won_within = {h: marks.totals() for h, marks in won_marks.items()}
    new = new_marks.totals()
    data.new_created = {h: new.get(("created", h), [Decimal(0)] * points) for h in hs}
    data.new_won = {h: new.get(("won", h), [Decimal(0)] * points) for h in hs}
    return data


def _visits(row: Any, start: int, end: int) -> list[tuple[str | None, str | None, int, int, int]]:
    """``(pipeline, stage, entered, from, to)``: each stretch of ``[start, end)`` spent in one stage."""
    events: list[tuple[int, str, str | None]] = []
    if row.events:
        for text in row.events.split(_SEP):
            when, event_stage, pipeline = text.split(_FIELD)
            day = int(when)
            if day < NEVER:  # after the as-of date: not known yet
                events.append((day, event_stage, pipeline or row.pipeline_id))
        events.sort()
    if not events and row.stage_entered is not None and row.stage_entered < NEVER:
        events = [(row.stage_entered, row.stage_id, row.pipeline_id)]
    out: list[tuple[str | None, str | None, int, int, int]] = []
    stage: str | None = None
    cursor, pipeline, entered = start, row.pipeline_id, start if row.no_created else row.created
    for day, next_stage, next_pipeline in events:
        boundary = max(day, start)
        if boundary >= end:
            break
        if boundary > cursor:
            out.append((pipeline, stage, entered, cursor, boundary))
        cursor, stage, pipeline, entered = boundary, next_stage, next_pipeline, day
    if end > cursor:
        out.append((pipeline, stage, entered, cursor, end))
    return out


def _add_deal(row: Any, value: Decimal, data: ForecastData, opened: _Marks, counted: _Marks,
              won_marks: dict[int, _Marks], new_marks: _Marks) -> None:
    """One deal's marks: won and created by day, open per cell, won within each horizon, new deals."""
    ended = row.ended
    created = row.created
    won_day = ended if row.status == "won" and ended is not None and 0 <= ended < NEVER else None
    if won_day is not None:
        data.won_by_day[won_day] += value
        data.won_deals += 1
    known = -1 if row.no_created else created
    if known < NEVER:
        data.first_created = known if data.first_created is None else min(data.first_created, known)
    if not row.no_created and 0 <= created < NEVER:
        data.created_by_day[created] += value
    offset = data.offset
    point = _first_point_at_or_after
    if not row.no_created and 0 <= created < NEVER:
        for h in data.horizons:  # created in (T, T+h], and won by T+h
            new_marks.add(("created", h), point(created - h, offset), point(created, offset), value)
            if won_day is not None:
                new_marks.add(("won", h), point(won_day - h, offset), point(created, offset), value)
    if row.archived or ended is None:
        return
    start = max(created, 0)
    end = min(ended, data.days)
    if start >= end:
        return
    for pipeline, stage, entered, lo, hi in _visits(row, start, end):
        for bucket, (age_lo, age_hi) in enumerate(zip(AGE_BUCKETS, (*AGE_BUCKETS[1:], NEVER), strict=True)):
            a, b = max(lo, entered + age_lo), min(hi, entered + age_hi)
            if a >= b:
                continue
            cell: Cell = (row.source, pipeline, stage, bucket)
            q_lo, q_hi = point(a, offset), point(b, offset)
            opened.add(cell, q_lo, q_hi, value)
            counted.add(cell, q_lo, q_hi, 1)
            if won_day is not None:
                for h, marks in won_marks.items():
                    marks.add(cell, max(q_lo, point(won_day - h, offset)), q_hi, value)
