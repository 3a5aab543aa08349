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
history rebuild (``metrics.history``): SQL gives every timestamp as epoch
seconds, and it becomes its local day on a grid of days ending with the as-of
date by the half-open local midnights (:class:`_Days`, exact to the second;
after the as-of date it is "never"; before the grid, the negative number of
days before it). A deal is open at ``T`` when ``created <= T < ended`` (close
day for won/lost, deletion day for deleted, never for open; archived deals are never
open, and a close without a known time never happens). Its stage at ``T`` is the
stage of its last stage event on or before ``T``; without events, its current
stage from ``stage_entered_at`` on, and "unknown" before (age counted from the
creation).

Nothing is held per deal: each deal adds a few ``+value``/``-value`` marks to
difference arrays over the grid's points (one per stretch of points in one
cell), and the sums are running totals of those marks; new deals are summed by
creation day and by (creation day, days to the win). The deals arrive as a
stream (``yield_per``), so memory does not grow with the store.
"""

from __future__ import annotations

import datetime as dt
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa

from sales_velocity.metrics.history import NEVER, matters_from
from sales_velocity.metrics.movement import MovementScope
from sales_velocity.metrics.settings import MetricsSettings
from sales_velocity.metrics.sql import EpochSeconds, JoinedText, small_page_cache
from sales_velocity.metrics.window import close_time, day_start
from sales_velocity.sync.store import deals_table, stage_events_table, stages_table

__all__ = ["AGE_BUCKETS", "Cell", "ForecastData", "read_forecast_data"]

AGE_BUCKETS = (0, 30, 90)
"""Age-in-stage buckets (days): under 30, 30 to 89, 90 and more (inlined in ``_Accumulator.add``)."""

Cell = tuple[str, str | None, str | None, int]
"""(source, pipeline id, stage id or ``None`` for unknown, age bucket)."""
Visit = tuple[str | None, str | None, int, int, int]
"""(pipeline, stage, entered day, from day, to day): a stretch of days in one stage."""


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


_SEP, _FIELD = "\x1e", "\x1f"


def _scope_filter(scope: MovementScope) -> sa.ColumnElement[bool]:
    d = deals_table.c
    if scope.kind == "pipeline":
        return sa.and_(d.source == scope.source, d.pipeline_id == scope.key)
    if scope.kind == "owner":
        return sa.and_(d.source == scope.source, d.owner_id == scope.key)
    return sa.true()


def _deal_query(first_day: dt.date, zone: ZoneInfo, scope: MovementScope, dialect: str) -> sa.Select[Any]:
    """One row per deal that can matter on the grid: its times as epoch seconds, and its stage events.

    The amount comes as an integer of 1/:data:`SCALE` units (SQLite stores it so).
    """
    d, e = deals_table.c, stage_events_table.c
    close = close_time()
    could_matter = matters_from(first_day, zone)
    event_text = (
        sa.cast(EpochSeconds(e.entered_at), sa.Text) + _FIELD + e.stage_id + _FIELD
        + sa.func.coalesce(e.pipeline_id, "")
    )
    events = (
        sa.select(JoinedText(event_text, sa.literal(_SEP)))
        .where(e.source == d.source, e.external_id == d.external_id)
        .scalar_subquery()
    )
    ended = sa.case(
        (d.status.in_(("won", "lost")), EpochSeconds(close)),
        (d.status == "deleted", EpochSeconds(d.deleted_at)),
        else_=sa.null(),
    )
    if dialect == "sqlite":
        units: sa.ColumnElement[Any] = sa.type_coerce(d.amount, sa.BigInteger())
    else:
        units = sa.cast(sa.func.round(sa.type_coerce(d.amount, sa.Numeric()) * SCALE), sa.BigInteger())
    return (
        sa.select(
            d.source, d.pipeline_id, d.stage_id, d.status,
            sa.case((d.archived, 1), else_=0).label("archived"),
            units.label("units"), d.currency,
            EpochSeconds(d.created_at).label("created"), ended.label("ended"),
            EpochSeconds(d.stage_entered_at).label("stage_entered"), events.label("events"),
        )
        .where(could_matter, _scope_filter(scope))
    )


class _Days:
    """Epoch seconds -> grid day, by the local midnights (exact to the second, DST included).

    Before the grid: the negative number of whole days before it; from the day
    after the as-of date on: :data:`NEVER`.
    """

    def __init__(self, first_day: dt.date, days: int, zone: ZoneInfo) -> None:
        self.starts = [int(day_start(first_day + dt.timedelta(days=n), zone).timestamp())
                       for n in range(days + 1)]
        self.first, self.end, self.days = self.starts[0], self.starts[-1], days

    def __call__(self, seconds: int) -> int:
        if seconds < self.first:
            return -((self.first - seconds + 86399) // 86400)
        if seconds >= self.end:
            return NEVER
        return bisect_right(self.starts, seconds) - 1


def read_forecast_data(engine: sa.Engine, settings: MetricsSettings, as_of: dt.date, *, history_days: int,
                       horizons: Sequence[int], scope: MovementScope) -> ForecastData:
    """Stream the deals of ``scope`` once; sum them on the grid of ``history_days`` days ending ``as_of``.

    Values are summed as integers of 1/10,000 of the base currency (each
    converted amount rounded half up to that), so sums are exact and fast.
    """
    zone = settings.zone
    days = history_days
    first_day = as_of - dt.timedelta(days=days - 1)
    hs = tuple(sorted(set(horizons)))
    acc = _Accumulator(days, hs, _Days(first_day, days, zone))
    rates = {code: Decimal(rate) for code, rate in settings.rates.items()}
    base = settings.currency
    probabilities: dict[tuple[str, str, str], Decimal] = {}
    with engine.connect() as conn, small_page_cache(conn):
        s = stages_table.c
        for row in conn.execute(sa.select(s.source, s.pipeline_id, s.external_id, s.probability)
                                .where(s.probability.is_not(None))):
            probabilities[(row.source, row.pipeline_id, row.external_id)] = Decimal(row.probability)
        query = _deal_query(first_day, zone, scope, conn.dialect.name)
        add = acc.add
        for row in conn.execution_options(yield_per=5000).execute(query):
            units = row[5]
            if units is None:
                acc.left_out += 1
                continue
            code = row[6]
            if code is not None and code != base and code.upper() != base:
                rate = rates.get(code.upper())
                if rate is None:
                    acc.left_out += 1
                    continue
                units = int((units * rate).to_integral_value(ROUND_HALF_UP))
            add(row, units)
    return acc.finish(first_day, probabilities)


SCALE = 10000
"""Values are summed in 1/10,000 of the base currency."""


class _Accumulator:
    """The marks of every deal (see the module docstring), as integers of 1/:data:`SCALE`."""

    def __init__(self, days: int, horizons: tuple[int, ...], to_day: _Days) -> None:
        self.days, self.horizons, self.to_day = days, horizons, to_day
        self.offset = (days - 1) % 7
        self.points = (days - 1) // 7 + 1
        self.won_by_day = [0] * days
        self.created_by_day = [0] * days
        self.won_lag: dict[tuple[int, int], int] = {}
        self.cells: dict[Cell, list[list[int]]] = {}
        """Per cell: open value marks, open count marks, then won-within marks per horizon."""
        self.won_deals = 0
        self.first_created: int | None = None
        self.left_out = 0
        self.longest = max(horizons)
        self.qceil = [-((self.offset - a) // 7) for a in range(days + 1)]
        """Grid day ``a`` (0 .. ``days``) -> the first point on or after it (``points`` after the last)."""
        self.stretches: dict[tuple[str, str | None, str | None], list[list[list[int]] | None]] = {}
        """(source, pipeline, stage) -> the marks of its three age buckets (the same lists as ``cells``)."""

    def add(self, row: Any, value: int) -> None:
        """One deal's marks (``row`` as selected by :func:`_deal_query`)."""
        to_day, days, offset = self.to_day, self.days, self.offset
        source, pipeline_id, stage_id, status, archived, _, _, created_s, ended_s, entered_s, events = row
        no_created = created_s is None
        created = -1 if no_created else to_day(created_s)
        if status == "open":
            ended: int | None = NEVER
        elif ended_s is None:
            ended = None  # closed or deleted at an unknown time: never open, never won
        else:
            ended = to_day(ended_s)
        won_day = ended if status == "won" and ended is not None and 0 <= ended < NEVER else None
        if won_day is not None:
            self.won_by_day[won_day] += value
            self.won_deals += 1
        if created < NEVER and (self.first_created is None or created < self.first_created):
            self.first_created = created
        if not no_created and 0 <= created < NEVER:
            self.created_by_day[created] += value
            if won_day is not None:
                key = (created, min(max(won_day - created, 0), self.longest + 1))
                self.won_lag[key] = self.won_lag.get(key, 0) + value
        if archived or ended is None:
            return
        start = created if created > 0 else 0
        end = ended if ended < days else days
        if start >= end:
            return
        qc = self.qceil
        won_from = None
        if won_day is not None:
            won_from = [-((offset - won_day + h) // 7) for h in self.horizons]
        first_entered = start if no_created else created
        visits: Sequence[Visit]
        if events is None:  # the common case, inlined: no stage events, at most the current stage
            visits = ((pipeline_id, None, first_entered, start, end),)
            if entered_s is not None:
                entered_day = to_day(entered_s)
                if entered_day < NEVER:
                    boundary = entered_day if entered_day > start else start
                    if boundary < end:
                        now_in = (pipeline_id, stage_id, entered_day, boundary, end)
                        visits = ((now_in,) if boundary == start
                                  else ((pipeline_id, None, first_entered, start, boundary), now_in))
        else:
            visits = _visits(events, entered_s, stage_id, pipeline_id, to_day, first_entered, start, end)
        stretches = self.stretches
        for pipeline, stage, entered, lo, hi in visits:
            stage_key = (source, pipeline, stage)
            buckets = stretches.get(stage_key)
            if buckets is None:
                buckets = stretches[stage_key] = [None, None, None]
            young, middle = entered + 30, entered + 90
            for bucket in (0, 1, 2):
                if bucket == 0:
                    a, b = lo, (young if young < hi else hi)
                elif bucket == 1:
                    a, b = (young if young > lo else lo), (middle if middle < hi else hi)
                else:
                    a, b = (middle if middle > lo else lo), hi
                if a >= b:
                    continue
                q_lo, q_hi = qc[a], qc[b]
                if q_lo >= q_hi:
                    continue
                marks = buckets[bucket]
                if marks is None:
                    marks = buckets[bucket] = self._new_cell((source, pipeline, stage, bucket))
                opened, counted = marks[0], marks[1]
                opened[q_lo] += value
                opened[q_hi] -= value
                counted[q_lo] += 1
                counted[q_hi] -= 1
                if won_from is None:
                    continue
                for n, from_q in enumerate(won_from, 2):
                    if from_q < q_lo:
                        from_q = q_lo
                    if from_q < q_hi:
                        won = marks[n]
                        won[from_q] += value
                        won[q_hi] -= value

    def _new_cell(self, cell: Cell) -> list[list[int]]:
        """The (zero) marks of a cell seen for the first time, kept in first-seen order."""
        marks = self.cells[cell] = [[0] * (self.points + 1) for _ in range(2 + len(self.horizons))]
        return marks

    def finish(self, first_day: dt.date, probabilities: dict[tuple[str, str, str], Decimal]) -> ForecastData:
        """The running sums, in Decimal."""
        points, offset = self.points, self.offset

        def money(values: list[int]) -> list[Decimal]:
            return [Decimal(v) / SCALE if v else Decimal(0) for v in values]

        def running(row: list[int]) -> list[int]:
            out, total = [], 0
            for mark in row[:-1]:
                total += mark
                out.append(total)
            return out

        def point(day: int) -> int:
            return max(-((offset - day) // 7), 0)

        new_created: dict[int, list[Decimal]] = {}
        new_won: dict[int, list[Decimal]] = {}
        for h in self.horizons:  # created in (T, T+h], and won by T+h
            created_marks = [0] * (points + 1)
            won_marks = [0] * (points + 1)
            for day, value in enumerate(self.created_by_day):
                if value:
                    lo, hi = point(day - h), min(point(day), points)
                    if lo < hi:
                        created_marks[lo] += value
                        created_marks[hi] -= value
            for (day, lag), value in self.won_lag.items():
                if lag <= h:
                    lo, hi = point(day + lag - h), min(point(day), points)
                    if lo < hi:
                        won_marks[lo] += value
                        won_marks[hi] -= value
            new_created[h] = money(running(created_marks))
            new_won[h] = money(running(won_marks))
        return ForecastData(
            first_day, self.days, points, offset, self.horizons,
            money(self.won_by_day), money(self.created_by_day),
            won_deals=self.won_deals, first_created=self.first_created, left_out=self.left_out,
            open_value={c: money(running(marks[0])) for c, marks in self.cells.items()},
            open_count={c: running(marks[1]) for c, marks in self.cells.items()},
            won_within={h: {c: money(running(marks[n])) for c, marks in self.cells.items()}
                        for n, h in enumerate(self.horizons, 2)},
            new_created=new_created, new_won=new_won, probabilities=probabilities,
        )


def _visits(joined: str | None, entered_s: int | None, stage_id: str | None, pipeline_id: str | None,
            to_day: _Days, created: int, start: int, end: int) -> list[Visit]:
    """``(pipeline, stage, entered, from, to)``: each stretch of ``[start, end)`` spent in one stage.

    ``joined`` are the deal's stage events (epoch, stage, pipeline); without
    any, its current stage from ``entered_s`` (``stage_entered_at``) on. Before
    the first known stage the stage is unknown (``None``), entered at ``created``.
    """
    events: list[tuple[int, str | None, str | None]] = []
    if joined:
        for text in joined.split(_SEP):
            when, event_stage, event_pipeline = text.split(_FIELD)
            day = to_day(int(when))
            if day < NEVER:  # after the as-of date: not known yet
                events.append((day, event_stage, event_pipeline or pipeline_id))
        events.sort()
    elif entered_s is not None:
        entered = to_day(entered_s)
        if entered < NEVER:
            events = [(entered, stage_id, pipeline_id)]
    stage: str | None = None
    out: list[Visit] = []
    pipeline: str | None = pipeline_id
    cursor, entered = start, created
    for day, next_stage, next_pipeline in events:
        boundary = day if day > start else start
        if boundary >= end:
            break
        if boundary > cursor:
            out.append((pipeline, stage, entered, cursor, boundary))
        cursor, stage, pipeline, entered = boundary, next_stage, next_pipeline, day
    if end > cursor:
        out.append((pipeline, stage, entered, cursor, end))
    return out
