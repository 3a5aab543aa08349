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

Nothing is kept per deal: each deal adds a few ``+value``/``-value`` marks to
difference arrays over the grid's points, computed with numpy for a chunk of
:data:`CHUNK` deals at a time (``metrics.forecast_arrays``; the plain-Python
reference, one deal at a time, is ``metrics.forecast_marks``). The deals
arrive as a stream of batches, so memory does not grow with the store: on
SQLite plain tuples from the driver's cursor (no row objects), elsewhere
SQLAlchemy's ``yield_per``; a thread fetches the next batch while the current
one is summed (the database steps without the GIL).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import queue
import threading
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa

from sales_velocity.metrics.forecast_arrays import ArrayAccumulator, day_indices, table_of
from sales_velocity.metrics.forecast_marks import _FIELD, _SEP, SCALE, Accumulator, Cell, Days
from sales_velocity.metrics.forecast_velocity import VelocitySums
from sales_velocity.metrics.history import matters_from
from sales_velocity.metrics.movement import MovementScope
from sales_velocity.metrics.settings import MetricsSettings
from sales_velocity.metrics.sql import EpochSeconds, JoinedText, small_page_cache
from sales_velocity.metrics.velocity import cycle_seconds, scope_labels
from sales_velocity.metrics.window import close_time
from sales_velocity.sync.store import deals_table, stage_events_table, stages_table

__all__ = ["AGE_BUCKETS", "Cell", "ForecastData", "read_forecast_data"]

AGE_BUCKETS = (0, 30, 90)
"""Age-in-stage buckets (days): under 30, 30 to 89, 90 and more (``metrics.forecast_marks``)."""



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
    velocities: dict[dt.date, Decimal | None] = field(default_factory=dict)
    """The scope's velocity per day on the asked days whose window lies on the grid."""

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
    Past the marks' columns, for the velocity (``metrics.forecast_velocity``): a
    won deal's cycle seconds, and the owner for an owner scope (else ``NULL``).
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
            sa.case((d.status == "won", cycle_seconds()), else_=sa.null()).label("cycle"),
            (d.owner_id if scope.kind == "owner" else sa.null()).label("owner"),
        )
        .where(could_matter, _scope_filter(scope))
    )


def read_forecast_data(engine: sa.Engine, settings: MetricsSettings, as_of: dt.date, *, history_days: int,
                       horizons: Sequence[int], scope: MovementScope,
                       velocity_days: Sequence[dt.date] = (), python_marks: bool = False) -> ForecastData:
    """Stream the deals of ``scope`` once; sum them on the grid of ``history_days`` days ending ``as_of``.

    Values are summed as integers of 1/10,000 of the base currency (each
    converted amount rounded half up to that), so sums are exact and fast.
    The marks are computed with numpy a chunk of :data:`CHUNK` deals at a time
    (``metrics.forecast_arrays``); ``python_marks``: one deal at a time in plain
    Python (``metrics.forecast_marks``, the reference the tests compare with).
    """
    zone = settings.zone
    days = history_days
    first_day = as_of - dt.timedelta(days=days - 1)
    hs = tuple(sorted(set(horizons)))
    to_day = Days(first_day, days, zone)
    rates = {code: Decimal(rate) for code, rate in settings.rates.items()}
    base = settings.currency
    acc: Accumulator | ArrayAccumulator = (Accumulator(days, hs, to_day) if python_marks
                                           else ArrayAccumulator(days, hs, to_day, base, rates))
    sums = VelocitySums(first_day, days, day_indices(to_day))
    probabilities: dict[tuple[str, str, str], Decimal] = {}
    with engine.connect() as conn, small_page_cache(conn):
        labels = scope_labels(conn)
        s = stages_table.c
        for stage in conn.execute(sa.select(s.source, s.pipeline_id, s.external_id, s.probability)
                                  .where(s.probability.is_not(None))):
            probabilities[(stage.source, stage.pipeline_id, stage.external_id)] = Decimal(stage.probability)
        query = _deal_query(first_day, zone, scope, conn.dialect.name)
        batches = _prefetched(_batches(conn, query))
        if isinstance(acc, ArrayAccumulator):
            chunk: list[Sequence[Any]] = []
            for batch in batches:
                chunk.extend(batch)
                if len(chunk) >= CHUNK:
                    sums.add_rows(acc.add_rows(chunk))
                    chunk = []
            sums.add_rows(acc.add_rows(chunk))
        else:
            for batch in batches:
                _add_python(acc, batch, base, rates)
                sums.add_rows(table_of(batch))
    velocities = sums.velocities(velocity_days, settings.window_days, labels, settings, scope)
    return ForecastData(first_day, days, acc.points, acc.offset, hs, **acc.finish(),
                        probabilities=probabilities, velocities=velocities)


BATCH = 5000
"""Rows fetched at a time."""
CHUNK = 25_000
"""Deals summed at a time with numpy: at 1,000,000 deals 100,000 peaked at about 400 MB, 25,000 at 310."""


def _add_python(acc: Accumulator, batch: Sequence[Sequence[Any]], base: str,
                rates: dict[str, Decimal]) -> None:
    """The marks of ``batch``, one deal at a time (amounts converted to the base currency, see ``read``)."""
    for row in batch:
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
        acc.add(row, units)


def _batches(conn: sa.Connection, query: sa.Select[Any]) -> Iterator[Sequence[Sequence[Any]]]:
    """The rows of ``query`` in batches of :data:`BATCH`, as plain tuples.

    On SQLite straight from the driver's cursor (the statement with its values
    inlined: no row objects); elsewhere streamed by SQLAlchemy (``yield_per``).
    """
    if conn.dialect.name != "sqlite":
        yield from conn.execution_options(yield_per=BATCH).execute(query).partitions()
        return
    sql = str(query.compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True}))
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        cursor.execute(sql)
        while batch := cursor.fetchmany(BATCH):
            yield batch
    finally:
        cursor.close()


def _prefetched(batches: Iterator[Sequence[Sequence[Any]]]) -> Generator[Sequence[Sequence[Any]], None, None]:
    """``batches``, fetched one ahead on a thread, so the database steps while Python sums.

    An exception of the fetch is raised here; stopping early stops the fetch.
    """
    ahead: queue.Queue[Any] = queue.Queue(maxsize=2)
    stop = threading.Event()
    done = object()

    def fetch() -> None:
        try:
            for batch in batches:
                if stop.is_set():
                    break
                ahead.put(batch)
        except BaseException as exc:  # handed to the reader, raised there
            ahead.put(exc)
        else:
            ahead.put(done)

    worker = threading.Thread(target=fetch, name="velocity-forecast-fetch", daemon=True)
    worker.start()
    try:
        while (item := ahead.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while worker.is_alive():  # let a blocked put finish
            with contextlib.suppress(queue.Empty):
                ahead.get(timeout=0.05)
        worker.join()


