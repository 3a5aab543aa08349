"""Sales velocity: the levers, the math, and the SQL aggregates that feed them.

For a scope (all deals, one pipeline, one owner), an as-of date ``T`` and a
window of ``W`` days (see ``shared/DESIGN.md``)::

    velocity = N * V * p / L          value per day, Decimal, 0.01 ROUND_HALF_UP

* ``T`` is a local date in the configured zone; the window is the ``W`` local
  days ending with ``T``, the half-open ``[start(T-W+1), start(T+1))`` with
  ``start(d)`` local midnight starting ``d`` (:func:`window_bounds`), compared
  in UTC. Every comparison is half-open on that grid (``metrics.window``).
* ``N``: deals open at ``T``, rebuilt from dates, never from today's status:
  not archived; created before ``start(T+1)`` (or no creation date); and still
  open then: status ``open``, or ``won``/``lost`` with a close time at or after
  ``start(T+1)``, or ``deleted`` with ``deleted_at`` at or after ``start(T+1)``
  (a deleted deal without ``deleted_at`` counts as deleted always).
* A won or lost deal's *close time* is ``closed_at``, or ``updated_at`` when the
  CRM gave no close date. One with neither is closed at an unknown time: it is
  out of ``N`` and out of every window.
* ``p``, ``V`` and ``L`` come from deals won or lost (close time) in the window.
  Archived deals still count there: Pipedrive archives old closed deals, and
  the design takes archived deals out of ``N`` only. Deleted deals never count
  as closed (their outcome is unknown).
* ``V`` is in the base currency; amounts in other currencies are converted
  with the configured rates, or left out and counted (``excluded_currency``),
  as are won deals without an amount (``excluded_no_amount``).
* ``L`` is exact elapsed time from creation to close, in seconds rounded per
  deal; for deals whose dates came without a time (``whole_days``) it is
  rounded to whole days, so a DST change never turns 90 days into 89.958.

Everything is summed in the database in one scan, grouped by source, pipeline,
owner and currency, and rolled up into the scopes in Python. On a SQLite file
the scan is split into rowid ranges read side by side (``SCAN_PARTS``, one
connection each, see ``metrics.concurrent``): the groups of the parts are sums
too, so the roll-up is the same, and a second core halves the scan. Money is only
summed in SQL (exact on every backend); means, conversions and the velocity
are Decimal arithmetic in Python.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import functools
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, Literal

import sqlalchemy as sa

from sales_velocity.metrics.concurrent import can_read_concurrently, read_concurrently
from sales_velocity.metrics.scope import excluded_pipeline
from sales_velocity.metrics.settings import MetricsSettings, WhatIfSettings
from sales_velocity.metrics.sql import ElapsedSeconds
from sales_velocity.metrics.window import close_time, closed_in_window, open_at, window_bounds
from sales_velocity.sync.store import deals_table, owners_table, pipelines_table, reading_only

__all__ = [
    "Levers",
    "ScopeKind",
    "ScopeVelocity",
    "Velocity",
    "VelocityReport",
    "WhatIf",
    "compute_velocity",
    "cycle_seconds",
    "lever_sums",
    "report_from_groups",
    "scope_labels",
    "velocity_of",
    "what_ifs",
    "window_bounds",
]

ScopeKind = Literal["all", "pipeline", "owner"]

CENT = Decimal("0.01")
SECONDS_PER_DAY = Decimal(86400)
ALL_LABEL = "All pipelines"
_PRECISION = 50  # digits for intermediate Decimal math; results are quantized


# --------------------------------------------------------------------------- the math


@dataclass(frozen=True)
class Levers:
    """The four levers of one scope.

    ``opportunities`` is the count ``N``; in the opportunities what-if it holds
    ``N x 1.1`` as a Decimal, not rounded.
    """

    opportunities: int | Decimal
    won: int
    lost: int
    win_rate: Decimal | None
    """``p = won / (won + lost)``; ``None`` when nothing closed in the window."""
    avg_deal_value: Decimal | None
    """``V`` in the base currency; ``None`` when no won deal has a usable amount."""
    cycle_days: Decimal | None
    """``L`` in days; ``None`` when no won deal has a creation date."""


@dataclass(frozen=True)
class Velocity:
    """Velocity per day, or why it is undefined (never both, never a fake 0)."""

    value: Decimal | None
    undefined_reason: str | None = None

    @property
    def defined(self) -> bool:
        """Whether there is a value."""
        return self.value is not None


def _window_words(window_days: int | None) -> str:
    if window_days is None:
        return "in the window"
    return "in the last day" if window_days == 1 else f"in the last {window_days} days"


def velocity_of(levers: Levers, *, window_days: int | None = None) -> Velocity:
    """``N * V * p / L``, quantized to 0.01 (ROUND_HALF_UP), or undefined with a reason.

    ``N = 0`` gives 0 when ``V``, ``p`` and ``L`` are defined. ``window_days``
    only words the reason ("no won deal in the last 90 days").

    Example:
        >>> velocity_of(Levers(100, 20, 80, Decimal("0.2"), Decimal(50000), Decimal(90))).value
        Decimal('11111.11')
    """
    if levers.win_rate is None or levers.avg_deal_value is None or levers.cycle_days is None:
        window = _window_words(window_days)
        if levers.won == 0:
            return Velocity(None, f"no won deal {window}")
        if levers.win_rate is None:
            return Velocity(None, f"no win rate {window}")
        if levers.avg_deal_value is None:
            return Velocity(None, "won deals have no amount")
        return Velocity(None, "won deals have no creation date")
    if levers.cycle_days <= 0:
        return Velocity(None, "cycle length is 0 days")
    with decimal.localcontext(prec=_PRECISION):
        raw = Decimal(levers.opportunities) * levers.avg_deal_value * levers.win_rate / levers.cycle_days
        return Velocity(raw.quantize(CENT, rounding=ROUND_HALF_UP))


@dataclass(frozen=True)
class WhatIf:
    """What one lever would do to velocity."""

    lever: str
    """``win_rate``, ``cycle_days``, ``deal_value`` or ``opportunities``."""
    label: str
    """For people: ``win rate +5 points``, ``cycle -15 days``, ..."""
    levers: Levers
    velocity: Velocity
    change: Decimal | None
    """New minus current velocity; ``None`` when either is undefined."""


def _num(value: Decimal) -> str:
    """``5`` -> "5", ``2.50`` -> "2.5" (no exponent)."""
    return format(value.normalize(), "f")


def what_ifs(levers: Levers, settings: WhatIfSettings, *, window_days: int | None = None) -> list[WhatIf]:
    """The four what-ifs: win rate up, cycle down, deal value up, opportunities up.

    The win rate is capped at 100 %; the cycle never goes below 1 day (nor
    above its current length); ``N x (1 + pct)`` stays an unrounded Decimal.
    A lever that is undefined stays undefined.
    """
    current = velocity_of(levers, window_days=window_days)
    p, v, cycle = levers.win_rate, levers.avg_deal_value, levers.cycle_days
    with decimal.localcontext(prec=_PRECISION):
        new_p = None if p is None else min(p + settings.win_rate_points / 100, Decimal(1))
        new_cycle = None if cycle is None else min(cycle, max(cycle - settings.cycle_days, Decimal(1)))
        new_v = None if v is None else v * (1 + settings.deal_value_pct / 100)
        new_n = Decimal(levers.opportunities) * (1 + settings.opportunities_pct / 100)
    changes: list[tuple[str, str, Levers]] = [
        ("win_rate", f"win rate +{_num(settings.win_rate_points)} points",
         dataclasses.replace(levers, win_rate=new_p)),
        ("cycle_days", f"cycle -{_num(settings.cycle_days)} days",
         dataclasses.replace(levers, cycle_days=new_cycle)),
        ("deal_value", f"deal value +{_num(settings.deal_value_pct)} %",
         dataclasses.replace(levers, avg_deal_value=new_v)),
        ("opportunities", f"opportunities +{_num(settings.opportunities_pct)} %",
         dataclasses.replace(levers, opportunities=new_n)),
    ]
    result = []
    for lever, label, changed in changes:
        new = velocity_of(changed, window_days=window_days)
        change = None
        if new.value is not None and current.value is not None:
            change = new.value - current.value
        result.append(WhatIf(lever, label, changed, new, change))
    return result


@dataclass(frozen=True)
class ScopeVelocity:
    """Velocity of one scope, with the deals left out of ``V``."""

    scope: ScopeKind
    key: str
    """``""`` for all; ``<source>/<pipeline id>`` or ``<source>/<owner id>``."""
    label: str
    levers: Levers
    velocity: Velocity
    excluded_no_amount: int = 0
    excluded_currency: int = 0


@dataclass(frozen=True)
class VelocityReport:
    """Velocity of every scope on one as-of date: "all" first, then pipelines, then owners."""

    as_of: dt.date
    window_days: int
    currency: str
    timezone: str
    scopes: tuple[ScopeVelocity, ...]

    @property
    def all(self) -> ScopeVelocity | None:
        """The "all" scope."""
        return next((s for s in self.scopes if s.scope == "all"), None)

    def of_kind(self, scope: ScopeKind) -> list[ScopeVelocity]:
        """The scopes of one kind, in report order."""
        return [s for s in self.scopes if s.scope == scope]


# --------------------------------------------------------------------------- SQL


@dataclass
class _Totals:
    """Sums of one scope, accumulated over its currency groups."""

    label: str = ""
    opportunities: int = 0
    won: int = 0
    lost: int = 0
    no_amount: int = 0
    amounts: list[tuple[str | None, Decimal, int]] = field(default_factory=list)
    cycle_seconds: Decimal = Decimal(0)
    cycle_deals: int = 0


def cycle_seconds() -> sa.ColumnElement[Any]:
    """SQL: one deal's cycle in whole seconds, creation to close time (whole days for date-only deals).

    Negative when the close is before the creation (bad data): the aggregates
    count such a deal as 0 days.
    """
    d = deals_table.c
    seconds = ElapsedSeconds(d.created_at, close_time())
    return sa.cast(
        sa.func.round(sa.case((d.whole_days, sa.func.round(seconds / 86400) * 86400), else_=seconds)),
        sa.BigInteger,
    )


def lever_sums(start: dt.datetime, end: dt.datetime) -> tuple[list[sa.ColumnElement[Any]],
                                                                sa.ColumnElement[bool]]:
    """The aggregate columns of every scope query, and the filter of relevant deals.

    The window is ``[start, end)``; the history rebuild (``metrics.history``)
    takes the same sums over its whole grid and slides the window in Python.
    """
    d = deals_table
    in_window = closed_in_window(start, end)
    won = sa.and_(d.c.status == "won", in_window)
    lost = sa.and_(d.c.status == "lost", in_window)
    open_at_end = open_at(end)
    per_deal = cycle_seconds()
    cycle_deal = sa.and_(won, d.c.created_at.is_not(None))

    def count(cond: sa.ColumnElement[bool]) -> sa.ColumnElement[Any]:
        return sa.func.sum(sa.case((cond, 1), else_=0))

    columns: list[sa.ColumnElement[Any]] = [
        count(open_at_end).label("opportunities"),
        count(won).label("won"),
        count(lost).label("lost"),
        count(sa.and_(won, d.c.amount.is_(None))).label("no_amount"),
        count(sa.and_(won, d.c.amount.is_not(None))).label("amount_deals"),
        sa.func.sum(sa.case((won, d.c.amount), else_=None)).label("amount_sum"),
        count(cycle_deal).label("cycle_deals"),
        # a close before the creation is bad data: it counts as 0 days, not negative
        sa.func.sum(sa.case((sa.and_(cycle_deal, per_deal > 0), per_deal), else_=0)).label("cycle_seconds"),
    ]
    return columns, sa.or_(open_at_end, won, lost)


def _grouped_query(columns: list[sa.ColumnElement[Any]],
                   relevant: sa.ColumnElement[bool]) -> sa.Select[Any]:
    """The one scan: the aggregates by source, pipeline, owner and currency.

    Every aggregate is a sum or a count, so the scopes (all, each pipeline,
    each owner) are exact roll-ups of these groups, and the deals table is
    read once however many scope kinds there are.
    """
    d = deals_table
    keys = (d.c.source, d.c.pipeline_id, d.c.owner_id, d.c.currency)
    return sa.select(*keys, *columns).where(relevant).group_by(*keys)


def _usable_cpus() -> int:
    """CPUs this process may run on (its affinity set where the OS has one, as in containers)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


SCAN_PARTS = min(_usable_cpus(), 4)
"""Rowid ranges the SQLite scan is split into (one per usable core, at most four)."""


def _scan_ranges(conn: sa.Connection) -> list[tuple[int, int]]:
    """Rowid ranges covering the deals table, for a split scan (none where it does not apply)."""
    if conn.dialect.name != "sqlite" or SCAN_PARTS < 2 or not can_read_concurrently(conn.engine):
        return []
    low, high = conn.exec_driver_sql("SELECT min(rowid), max(rowid) FROM deals").one()
    if low is None:
        return []
    step = (high - low) // SCAN_PARTS + 1
    return [(start, min(start + step - 1, high)) for start in range(low, high + 1, step)]


def _grouped_rows(engine: sa.Engine, query: sa.Select[Any],
                  ranges: list[tuple[int, int]]) -> list[sa.Row[Any]]:
    """The grouped rows of ``query``: one scan, or the rowid ``ranges`` read concurrently (SQLite)."""

    def read(bounds: tuple[int, int] | None) -> list[sa.Row[Any]]:
        part = query
        if bounds is not None:
            part = query.where(sa.literal_column("deals.rowid").between(*bounds))
        with engine.connect() as conn:
            return list(conn.execute(part))

    if not ranges:
        return read(None)
    parts = read_concurrently(engine, [functools.partial(read, bounds) for bounds in ranges])
    return [row for rows in parts for row in rows]


Labels = tuple[dict[tuple[str, str], str], dict[tuple[str, str], str]]
"""Pipeline names and owner names by (source, external id)."""


def scope_labels(conn: sa.Connection) -> Labels:
    """Pipeline names and owner names (else e-mail) by (source, external id)."""
    p, o = pipelines_table, owners_table
    pipelines = {(r.source, r.external_id): r.name
                 for r in conn.execute(sa.select(p.c.source, p.c.external_id, p.c.name))}
    owners = {(r.source, r.external_id): r.name or r.email
              for r in conn.execute(sa.select(o.c.source, o.c.external_id, o.c.name, o.c.email))
              if r.name or r.email}
    return pipelines, owners


def _add(t: _Totals, row: Any) -> None:
    t.opportunities += int(row.opportunities)
    t.won += int(row.won)
    t.lost += int(row.lost)
    t.no_amount += int(row.no_amount)
    if row.amount_deals:
        t.amounts.append((row.currency, Decimal(row.amount_sum), int(row.amount_deals)))
    t.cycle_deals += int(row.cycle_deals)
    t.cycle_seconds += Decimal(row.cycle_seconds or 0)


def _roll_up(rows: Iterable[Any], pipeline_names: dict[tuple[str, str], str],
             owner_names: dict[tuple[str, str], str],
             exclude: Sequence[str] = ()) -> dict[ScopeKind, dict[tuple[str, str], _Totals]]:
    """Sum the groups into the all, pipeline and owner scopes; ``exclude`` pipelines stay out of "all"."""
    totals: dict[ScopeKind, dict[tuple[str, str], _Totals]] = {
        "all": {("", ""): _Totals(label=ALL_LABEL)}, "pipeline": {}, "owner": {},
    }
    for row in rows:
        if not excluded_pipeline(exclude, row.source, row.pipeline_id, pipeline_names):
            _add(totals["all"][("", "")], row)
        if row.pipeline_id is not None:
            ident = (row.source, row.pipeline_id)
            label = pipeline_names.get(ident, row.pipeline_id)
            _add(totals["pipeline"].setdefault(ident, _Totals(label=label)), row)
        if row.owner_id is not None:
            ident = (row.source, row.owner_id)
            label = owner_names.get(ident, row.owner_id)
            _add(totals["owner"].setdefault(ident, _Totals(label=label)), row)
    return totals


def _levers(t: _Totals, settings: MetricsSettings) -> tuple[Levers, int]:
    """The levers from a scope's sums, and how many won deals had no usable rate.

    Means are divided in the default Decimal context (28 digits); only the
    velocity itself is computed with more digits and then quantized.
    """
    total, used, no_rate = Decimal(0), 0, 0
    for currency, amount, deals in t.amounts:
        code = (currency or settings.currency).upper()
        if code == settings.currency:
            total += amount
        elif code in settings.rates:
            total += amount * settings.rates[code]
        else:
            no_rate += deals
            continue
        used += deals
    closed = t.won + t.lost
    return Levers(
        opportunities=t.opportunities,
        won=t.won,
        lost=t.lost,
        win_rate=Decimal(t.won) / closed if closed else None,
        avg_deal_value=total / used if used else None,
        cycle_days=t.cycle_seconds / (SECONDS_PER_DAY * t.cycle_deals) if t.cycle_deals else None,
    ), no_rate


def _no_value_reason(no_amount: int, no_rate: int, currency: str) -> str:
    if no_amount and no_rate:
        return f"won deals have no amount or no exchange rate to {currency}"
    if no_rate:
        return f"won deals have no exchange rate to {currency}"
    return "won deals have no amount"


def _scope(kind: ScopeKind, key: str, t: _Totals, settings: MetricsSettings,
           window_days: int) -> ScopeVelocity:
    levers, no_rate = _levers(t, settings)
    velocity = velocity_of(levers, window_days=window_days)
    if levers.won and levers.avg_deal_value is None:
        velocity = Velocity(None, _no_value_reason(t.no_amount, no_rate, settings.currency))
    return ScopeVelocity(kind, key, t.label, levers, velocity, t.no_amount, no_rate)


def _disambiguate(scopes: Sequence[ScopeVelocity]) -> list[ScopeVelocity]:
    """Add the source to labels that two sources share ("Sales (hubspot)")."""
    seen: dict[str, int] = {}
    for s in scopes:
        seen[s.label] = seen.get(s.label, 0) + 1
    return [
        dataclasses.replace(s, label=f"{s.label} ({s.key.split('/', 1)[0]})") if seen[s.label] > 1 else s
        for s in scopes
    ]


def compute_velocity(engine: sa.Engine, settings: MetricsSettings, as_of: dt.date,
                     window_days: int | None = None,
                     keep: Callable[[Any], bool] | None = None) -> VelocityReport:
    """Velocity of every scope on ``as_of`` (a local date), computed with SQL aggregates.

    Reads only. ``window_days`` defaults to ``settings.window_days``. The "all"
    scope is always there; a pipeline or owner appears when at least one of
    its deals is open at ``T`` or closed in the window. Deals without a
    pipeline (owner) count in "all" only. ``keep`` filters the groups (by
    source, pipeline, owner, currency) first: a digest's scope.
    """
    window = settings.window_days if window_days is None else window_days
    if window < 1:
        raise ValueError(f"window_days must be at least 1, got {window}")
    start, end = window_bounds(as_of, window, settings.zone)
    columns, relevant = lever_sums(start, end)
    with reading_only(), engine.connect() as conn:  # a reader: never waits for a writer on SQLite
        pipeline_names, owner_names = scope_labels(conn)
        ranges = _scan_ranges(conn)
    with reading_only():
        rows = _grouped_rows(engine, _grouped_query(columns, relevant), ranges)
    if keep is not None:
        rows = [row for row in rows if keep(row)]
    return report_from_groups(rows, (pipeline_names, owner_names), settings, as_of, window)


def report_from_groups(rows: Iterable[Any], labels: Labels, settings: MetricsSettings,
                       as_of: dt.date, window: int) -> VelocityReport:
    """The report from the sums of groups (by source, pipeline, owner and currency).

    Each row has ``source``, ``pipeline_id``, ``owner_id``, ``currency`` and the
    sums ``opportunities``, ``won``, ``lost``, ``no_amount``, ``amount_deals``,
    ``amount_sum``, ``cycle_deals`` and ``cycle_seconds``; a row counts only
    where one deal of it is open at ``T`` or closed in the window. The scan of
    :func:`compute_velocity` and the history rebuild (``metrics.history``) both
    end here, so their figures cannot differ.
    """
    scopes: list[ScopeVelocity] = []
    rolled = _roll_up(rows, *labels, settings.exclude_pipelines)
    for kind, totals in rolled.items():
        found = [
            _scope(kind, f"{src}/{ext}" if kind != "all" else "", t, settings, window)
            for (src, ext), t in totals.items()
        ]
        scopes.extend(sorted(_disambiguate(found), key=lambda s: (s.label.casefold(), s.key)))
    return VelocityReport(as_of, window, settings.currency, settings.timezone, tuple(scopes))
