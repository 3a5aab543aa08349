"""History from the first run: rebuild one velocity snapshot per day from deal dates, in one pass.

On the first run (no snapshot yet), with ``velocity metrics --since DATE``, and
when the daily job back-fills missed days, the past days' snapshots are rebuilt
from created/closed/deleted dates and stored with ``rebuilt = true``, so the
digest's 7- and 30-day change and its chart exist from day one, and a reader
can tell a reconstruction from a snapshot taken on the day.

Recomputing each day would read the deals table once per day (90 reads for a
90-day history). Instead the deals are read once (two grouped statements,
side by side on a SQLite file), on a grid of local days
``first - (W-1) .. last`` (``g`` days):

* every timestamp becomes the index of its local day on the grid, in SQL: the
  epoch seconds plus the zone's UTC offset at that instant (a ``CASE`` over the
  DST changes in the range), divided by 86,400; before the grid it is ``-1``,
  after it "never" (:data:`NEVER`);
* closed deals are summed by close day (the sums of ``metrics.velocity``,
  with its per-deal cycle expression), then each day's window ``[t-W+1, t]``
  is a sliding sum in Python;
* a deal is open at ``t`` when ``created <= t < ended`` (``ended`` = close day
  for won/lost, deletion day for deleted, never for open; archived never
  counts): deals are counted by the day they start being open and by the day
  they stop, and ``N(t)`` is the running difference.

The per-day sums go through ``metrics.velocity.report_from_groups``, the same
roll-up as :func:`~sales_velocity.metrics.velocity.compute_velocity`, so a
rebuilt day has exactly the figures a recompute of that day gives (a test
checks every day and scope). Day boundaries are the half-open local midnights
of ``metrics.window``: a timestamp's local day is exact to the second.
"""

from __future__ import annotations

import datetime as dt
import itertools
import time
from collections import defaultdict
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa
import structlog

from sales_velocity.metrics.concurrent import can_read_concurrently, read_concurrently
from sales_velocity.metrics.job import has_snapshots, missed_days, snapshot_rows
from sales_velocity.metrics.settings import MetricsSettings
from sales_velocity.metrics.sql import EpochSeconds, small_page_cache
from sales_velocity.metrics.velocity import VelocityReport, cycle_seconds, report_from_groups, scope_labels
from sales_velocity.metrics.window import close_time, day_start
from sales_velocity.sync.store import UTCDateTime, deals_table, snapshots_table

__all__ = [
    "NEVER", "GroupKey", "GroupSums", "RebuildResult", "fill_history", "rebuild_reports", "rebuild_snapshots",
]

log = structlog.get_logger(__name__)

NEVER = 1 << 40
"""The day index of "after the grid" (and of an open deal's end)."""
MAX_DAYS = 3660
"""At most this many days are rebuilt in one go (ten years)."""

_KEYS = ("source", "pipeline_id", "owner_id", "currency")
GroupKey = tuple[str, str | None, str | None, str | None]


@dataclass(frozen=True, slots=True)
class RebuildResult:
    """What a rebuild stored: the days rebuilt, and the days kept because a snapshot was taken on them."""

    rebuilt: tuple[dt.date, ...]
    kept: tuple[dt.date, ...]
    duration_s: float


@dataclass(slots=True)
class GroupSums:
    """One group's sums on one day, shaped like a row of the velocity scan."""

    source: str
    pipeline_id: str | None
    owner_id: str | None
    currency: str | None
    opportunities: int = 0
    won: int = 0
    lost: int = 0
    no_amount: int = 0
    amount_deals: int = 0
    amount_sum: Decimal = Decimal(0)
    cycle_deals: int = 0
    cycle_seconds: Decimal = Decimal(0)


# --------------------------------------------------------------------------- the grid


def _epoch(moment: dt.datetime) -> int:
    return int(moment.timestamp())


def _offset(moment: int, zone: ZoneInfo) -> int:
    offset = dt.datetime.fromtimestamp(moment, dt.UTC).astimezone(zone).utcoffset()
    return int(offset.total_seconds()) if offset is not None else 0


def _segments(first_day: dt.date, days: int, zone: ZoneInfo) -> list[tuple[int, int]]:
    """``(from epoch, UTC offset)`` for each stretch of constant offset across the grid, first from -inf."""
    starts = [_epoch(day_start(first_day + dt.timedelta(days=n), zone)) for n in range(days + 1)]
    segments = [(starts[0], _offset(starts[0], zone))]
    for low, high in itertools.pairwise(starts):
        if _offset(high, zone) == segments[-1][1]:
            continue
        new = _offset(high, zone)
        while high - low > 1:  # the first second with the new offset
            middle = (low + high) // 2
            if _offset(middle, zone) == new:
                high = middle
            else:
                low = middle
        segments.append((high, new))
    return segments


def _day_index(seconds: sa.ColumnElement[Any], first_day: dt.date, days: int,
               zone: ZoneInfo) -> sa.ColumnElement[Any]:
    """SQL: the grid index of the local day of epoch ``seconds``.

    -1 before the grid, :data:`NEVER` after it, ``NULL`` for ``NULL``.
    """
    segments = _segments(first_day, days, zone)

    def big(value: int) -> sa.ColumnElement[Any]:
        return sa.literal(value, sa.BigInteger())

    offset: sa.ColumnElement[Any] = big(segments[-1][1])
    if len(segments) > 1:
        offset = sa.case(
            *((seconds < big(start), big(off))
              for (start, _), (_, off) in zip(segments[1:], segments, strict=False)),
            else_=big(segments[-1][1]),
        )
    base = (first_day - dt.date(1970, 1, 1)).days * 86400
    grid_start = _epoch(day_start(first_day, zone))
    grid_end = _epoch(day_start(first_day + dt.timedelta(days=days), zone))
    return sa.case(
        (seconds.is_(None), sa.null()),
        (seconds < big(grid_start), big(-1)),
        (seconds >= big(grid_end), big(NEVER)),
        else_=(seconds + offset - big(base)) // big(86400),
    )


# --------------------------------------------------------------------------- the pass


def matters_from(first_day: dt.date, zone: ZoneInfo) -> sa.ColumnElement[bool]:
    """SQL: the deals that can count on a day grid starting ``first_day``.

    Closed at or after the grid's first local midnight, open (not archived), or
    deleted at or after it; every other deal left the pipeline before the grid.
    """
    d = deals_table.c
    grid_start = sa.literal(day_start(first_day, zone), UTCDateTime())
    return sa.or_(
        sa.and_(d.status.in_(("won", "lost")), close_time() >= grid_start),
        sa.and_(d.status == "open", sa.not_(d.archived)),
        sa.and_(d.status == "deleted", sa.not_(d.archived), d.deleted_at >= grid_start),
    )


def _queries(first_day: dt.date, days: int, zone: ZoneInfo) -> tuple[sa.Select[Any], sa.Select[Any]]:
    """Two grouped statements over the deals that can matter on the grid.

    ``ends``: by the day a deal stops being open (its close day for won/lost,
    its deletion day), the sums of the deals closed that day (the sums of
    ``metrics.velocity.lever_sums``) and how many open deals end then;
    ``starts``: by the day a deal starts being open (its creation day, 0 for
    earlier or unknown), how many.
    """
    d = deals_table.c
    close = close_time()
    could_matter = matters_from(first_day, zone)
    # epoch seconds once per deal (OFFSET 0 keeps both planners from inlining them into every use)
    timed = (
        sa.select(*(d[k] for k in _KEYS), d.status, d.archived, d.amount,
                  d.created_at.is_(None).label("no_created"), cycle_seconds().label("cycle"),
                  EpochSeconds(d.created_at).label("e_created"), EpochSeconds(close).label("e_close"),
                  EpochSeconds(d.deleted_at).label("e_deleted"))
        .where(could_matter)
        .offset(0)
        .subquery("timed")
    )
    t = timed.c
    keys = [t[k] for k in _KEYS]
    created = sa.case((t.e_created.is_(None), -1), else_=_day_index(t.e_created, first_day, days, zone))
    ended = sa.case(
        (t.status == "open", sa.literal(NEVER, sa.BigInteger())),
        (t.status.in_(("won", "lost")), _day_index(t.e_close, first_day, days, zone)),
        else_=_day_index(t.e_deleted, first_day, days, zone),
    )
    can_open = sa.and_(sa.not_(t.archived), created < ended)
    won = t.status == "won"
    cycle_deal = sa.and_(won, sa.not_(t.no_created))

    def count(cond: sa.ColumnElement[bool]) -> sa.ColumnElement[Any]:
        return sa.func.sum(sa.case((cond, 1), else_=0))

    end_day = ended.label("day")
    ends = (
        sa.select(
            *keys, end_day,
            count(won).label("won"),
            count(t.status == "lost").label("lost"),
            count(sa.and_(won, t.amount.is_(None))).label("no_amount"),
            count(sa.and_(won, t.amount.is_not(None))).label("amount_deals"),
            sa.func.sum(sa.case((won, t.amount), else_=None)).label("amount_sum"),
            count(cycle_deal).label("cycle_deals"),
            sa.func.sum(sa.case((sa.and_(cycle_deal, t.cycle > 0), t.cycle), else_=0)).label("cycle_seconds"),
            count(can_open).label("ended"),
        )
        .where(ended >= 0, ended < days)
        .group_by(*keys, end_day)
    )
    start_day = sa.case((created < 0, 0), else_=created).label("day")
    starts = (
        sa.select(*keys, start_day, sa.func.count().label("n"))
        .where(can_open, created < days)
        .group_by(*keys, start_day)
    )
    return ends, starts


def _fold(engine: sa.Engine, queries: Sequence[sa.Select[Any]],
          folds: Sequence[Callable[[Any], None]]) -> None:
    """Run each query (side by side where the store allows) and hand its rows, as they stream, to its fold."""
    def reader(query: sa.Select[Any], fold: Callable[[Any], None]) -> Callable[[], None]:
        def read() -> None:
            with engine.connect() as conn, small_page_cache(conn):
                for row in conn.execution_options(yield_per=2000).execute(query):
                    fold(row)
        return read

    calls = [reader(q, f) for q, f in zip(queries, folds, strict=True)]
    if can_read_concurrently(engine):
        read_concurrently(engine, calls)
    else:
        for call in calls:
            call()


def rebuild_reports(engine: sa.Engine, settings: MetricsSettings, first: dt.date,
                    last: dt.date, keep: Callable[[Any], bool] | None = None, *,
                    only: Collection[dt.date] | None = None) -> list[VelocityReport]:
    """The report of every day ``first .. last`` (``settings.window_days``), from one pass over the deals.

    Each report equals ``compute_velocity(engine, settings, day, keep=keep)``. Reads only.
    With ``only``, just those days' reports (the forecast's weekly points).

    Raises:
        ValueError: ``first`` is after ``last``, or the range is longer than :data:`MAX_DAYS`.
    """
    if first > last:
        raise ValueError(f"the first day {first} is after the last day {last}")
    count = (last - first).days + 1
    if count > MAX_DAYS:
        raise ValueError(f"{count} days is more than {MAX_DAYS} days at once")
    window = settings.window_days
    grid_first = first - dt.timedelta(days=window - 1)
    days = count + window - 1
    with engine.connect() as conn:
        labels = scope_labels(conn)
    closed: dict[GroupKey, list[tuple[int, ...] | None]] = defaultdict(lambda: [None] * days)
    amounts: dict[GroupKey, list[Decimal]] = defaultdict(lambda: [Decimal(0)] * days)
    delta: dict[GroupKey, list[int]] = defaultdict(lambda: [0] * days)
    starts: dict[GroupKey, list[int]] = defaultdict(lambda: [0] * days)

    def fold_end(row: Any) -> None:
        if keep is not None and not keep(row):
            return
        key: GroupKey = (row.source, row.pipeline_id, row.owner_id, row.currency)
        if row.won or row.lost:
            closed[key][row.day] = (int(row.won), int(row.lost), int(row.no_amount), int(row.amount_deals),
                                    int(row.cycle_deals), int(row.cycle_seconds or 0))
            amounts[key][row.day] = Decimal(row.amount_sum or 0)
        delta[key][row.day] -= int(row.ended)

    def fold_start(row: Any) -> None:
        if keep is None or keep(row):
            starts[(row.source, row.pipeline_id, row.owner_id, row.currency)][row.day] += int(row.n)

    # Rows are folded as they stream (never listed); ends and starts fill separate sums
    # because the two queries may run side by side.
    _fold(engine, _queries(grid_first, days, settings.zone), (fold_end, fold_start))
    for key, added in starts.items():
        line = delta[key]
        for day, n in enumerate(added):
            if n:
                line[day] += n

    per_day: list[list[GroupSums]] = [[] for _ in range(count)]
    wanted = None if only is None else {(day - first).days for day in only}
    for key in set(closed) | set(delta):
        _slide(key, closed.get(key), amounts.get(key), delta.get(key), window, days, per_day, wanted)
    return [
        report_from_groups(groups, labels, settings, first + dt.timedelta(days=n), window)
        for n, groups in enumerate(per_day)
        if only is None or first + dt.timedelta(days=n) in only
    ]


def _slide(key: GroupKey, closed: list[tuple[int, ...] | None] | None, amounts: list[Decimal] | None,
           delta: list[int] | None, window: int, days: int, per_day: list[list[GroupSums]],
           wanted: set[int] | None = None) -> None:
    """One group's sums on each rebuilt day (each ``wanted`` one): the running open count and sliding sums."""
    sums = [0] * 6
    amount = Decimal(0)
    open_now = 0
    for t in range(days):
        if delta is not None:
            open_now += delta[t]
        if closed is not None and amounts is not None:
            entering = closed[t]
            if entering is not None:
                sums = [a + b for a, b in zip(sums, entering, strict=True)]
                amount += amounts[t]
            if t >= window and (leaving := closed[t - window]) is not None:
                sums = [a - b for a, b in zip(sums, leaving, strict=True)]
                amount -= amounts[t - window]
        if t < window - 1 or not (open_now or sums[0] or sums[1]):
            continue
        if wanted is not None and t - window + 1 not in wanted:
            continue
        won, lost, no_amount, amount_deals, cycle_deals, cycle_seconds = sums
        per_day[t - window + 1].append(GroupSums(
            *key, opportunities=open_now, won=won, lost=lost, no_amount=no_amount, amount_deals=amount_deals,
            amount_sum=amount, cycle_deals=cycle_deals, cycle_seconds=Decimal(cycle_seconds),
        ))


# --------------------------------------------------------------------------- storing


def rebuild_snapshots(engine: sa.Engine, settings: MetricsSettings, first: dt.date, last: dt.date, *,
                      now: dt.datetime | None = None, overwrite: bool = False) -> RebuildResult:
    """Rebuild and store the snapshots of ``first .. last``, marked ``rebuilt``, in one transaction.

    A day with a snapshot taken on the day (``rebuilt`` false) keeps it unless
    ``overwrite``: it is what was known then. Rebuilt days are replaced.

    Args:
        engine: The store.
        settings: The metrics settings (window, zone, currency, rates).
        first: The first day to rebuild.
        last: The last day to rebuild (inclusive).
        now: When the rebuild happens (stored as ``computed_at``); default: now.
        overwrite: Replace snapshots taken on the day too.
    """
    started = time.monotonic()
    computed_at = now or dt.datetime.now(dt.UTC)
    window = settings.window_days
    snaps = snapshots_table
    with engine.connect() as conn:
        taken = set() if overwrite else set(conn.execute(
            sa.select(snaps.c.as_of).distinct().where(
                snaps.c.window_days == window, snaps.c.as_of >= first, snaps.c.as_of <= last,
                sa.not_(snaps.c.rebuilt))
        ).scalars())
    reports = [r for r in rebuild_reports(engine, settings, first, last) if r.as_of not in taken]
    days = [r.as_of for r in reports]
    with engine.begin() as conn:
        if days:
            conn.execute(sa.delete(snaps).where(snaps.c.window_days == window,
                                                snaps.c.as_of >= first, snaps.c.as_of <= last,
                                                snaps.c.as_of.not_in(taken) if taken else sa.true()))
        rows = [row for report in reports for row in snapshot_rows(report, computed_at, rebuilt=True)]
        if rows:
            conn.execute(sa.insert(snaps), rows)
    result = RebuildResult(tuple(days), tuple(sorted(taken)), time.monotonic() - started)
    log.info("metrics.rebuilt", first=first.isoformat(), last=last.isoformat(), window_days=window,
             days=len(days), kept=len(taken), duration_ms=round(result.duration_s * 1000))
    return result


def fill_history(engine: sa.Engine, settings: MetricsSettings, as_of: dt.date, *, backfill_days: int,
                 now: dt.datetime | None = None) -> RebuildResult | None:
    """The days before ``as_of`` the daily job rebuilds before taking today's snapshot.

    On the first run (no snapshot of this window before ``as_of``) the
    ``window_days`` days before ``as_of``, so the 7- and 30-day change and the
    chart exist at once; later, the days missed since the last snapshot (at
    most ``backfill_days``). ``None`` when there is nothing to rebuild.
    """
    window = settings.window_days
    if not has_snapshots(engine, window, as_of):
        first, last = as_of - dt.timedelta(days=window), as_of - dt.timedelta(days=1)
    else:
        missed = missed_days(engine, window, as_of, backfill_days)
        if not missed:
            return None
        first, last = missed[0], missed[-1]
    return rebuild_snapshots(engine, settings, first, last, now=now)
