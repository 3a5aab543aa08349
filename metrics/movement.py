"""Pipeline movement: what changed in a period, deal by deal, and a bridge that adds up.

The sync records every change of a tracked field in ``deal_changes`` (see
``sync.changes``). A deal's state at an instant ``t`` is rebuilt from its current
row and those changes: each field has the old value of its earliest change at or
after ``t``, else its current value. Two facts come from the CRM's dates rather
than the log, as in the velocity definition: a deal exists from its creation
(``created_at``; the first sync that saw it when the CRM gave none), and a deal
that was already won or lost when first seen was open until its close time.

A deal is *in the open pipeline* of a scope at ``t`` when it exists, its status
is ``open``, it is not archived and its pipeline (owner) is the scope's. Walking a
deal's states through the half-open period ``[since, until)``, every step where it
leaves the open pipeline is ``won``, ``lost``, ``deleted`` (deleted or archived) or
``moved_out`` (to another pipeline or owner), every step where it enters is
``added`` (created, or reopened) or ``moved_in``, and a step where it stays open
changes its value (``amount_up``/``amount_down``). So, exactly, in Decimal::

    open_start + added + amount_up - amount_down - won - lost - deleted
        + moved_in - moved_out = open_end

A deal's value is its amount in the base currency (converted with the configured
rates); a deal without an amount, or in a currency without a rate, counts with
value 0 and is counted in ``unvalued``.

The other classes compare a deal's first and last open state in the period:
``progressed``/``moved_back`` by the pipeline's stage order, ``pushed``/``pulled_in``
by the expected close date (``pushed`` also counts the deals that slipped out of
the current month and quarter), ``reassigned`` by the owner.

Deals unchanged since ``since`` are summed in SQL; only the deals that moved
(changed, created, closed or deleted since ``since``) are walked, streamed in id
order together with their changes. :func:`compute_movement` is a plain data
function: the CLI, the digest and the HTML report all call it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, Literal
from zoneinfo import ZoneInfo

import sqlalchemy as sa

from sales_velocity.kernel.errors import ConfigError
from sales_velocity.metrics.settings import MetricsSettings
from sales_velocity.sync.store import (
    UTCDateTime,
    deal_changes_table,
    deals_table,
    owners_table,
    pipelines_table,
    stages_table,
)

__all__ = [
    "BRIDGE_IN",
    "BRIDGE_OUT",
    "CLASSES",
    "ChangeClass",
    "DealMove",
    "Movement",
    "MovementScope",
    "Tally",
    "compute_movement",
    "parse_scope",
    "period_bounds",
]

ChangeClass = Literal[
    "added", "won", "lost", "deleted", "progressed", "moved_back", "pushed", "pulled_in",
    "amount_up", "amount_down", "reassigned", "moved_in", "moved_out",
]
CLASSES: tuple[ChangeClass, ...] = (
    "added", "won", "lost", "deleted", "progressed", "moved_back", "pushed", "pulled_in",
    "amount_up", "amount_down", "reassigned", "moved_in", "moved_out",
)
BRIDGE_IN: tuple[ChangeClass, ...] = ("added", "amount_up", "moved_in")
"""Classes that add to the open pipeline."""
BRIDGE_OUT: tuple[ChangeClass, ...] = ("won", "lost", "deleted", "amount_down", "moved_out")
"""Classes that take from it."""
ZERO = Decimal(0)
_PLACES = Decimal("0.0001")  # converted values are kept to the store's 4 places, so sums stay exact


@dataclass(frozen=True, slots=True)
class MovementScope:
    """``all``, or one pipeline or owner by ``(source, external id)``."""

    kind: Literal["all", "pipeline", "owner"] = "all"
    source: str = ""
    key: str = ""
    label: str = "All pipelines"

    @property
    def text(self) -> str:
        """``all``, ``pipeline:<source>/<id>`` or ``owner:<source>/<id>``."""
        return "all" if self.kind == "all" else f"{self.kind}:{self.source}/{self.key}"


@dataclass
class Tally:
    """How many deals moved in one class and their value (for amount changes: the change)."""

    count: int = 0
    value: Decimal = ZERO
    slipped_month: int = 0
    """``pushed`` only: deals whose close date moved out of the current month."""
    slipped_quarter: int = 0
    """``pushed`` only: ... out of the current quarter."""


@dataclass(frozen=True, slots=True)
class DealMove:
    """One change of one deal: its class, from what to what, and the value it concerns."""

    source: str
    external_id: str
    title: str | None
    owner: str | None
    change: ChangeClass
    before: str | None
    after: str | None
    value: Decimal


@dataclass
class Movement:
    """A period's movement in one scope: the bridge, every class, and the deal list."""

    since: dt.datetime
    until: dt.datetime
    timezone: str
    currency: str
    scope: MovementScope
    open_start: Tally = field(default_factory=Tally)
    open_end: Tally = field(default_factory=Tally)
    classes: dict[ChangeClass, Tally] = field(default_factory=lambda: {c: Tally() for c in CLASSES})
    deals: list[DealMove] = field(default_factory=list)
    unvalued: int = 0
    """Deals in the period that count with value 0 (no amount, or no rate to the base currency)."""

    def bridge_end(self) -> Decimal:
        """``open_start`` plus what came in minus what went out; equals ``open_end.value``."""
        total = self.open_start.value
        total += sum((self.classes[c].value for c in BRIDGE_IN), ZERO)
        total -= sum((self.classes[c].value for c in BRIDGE_OUT), ZERO)
        return total


# --------------------------------------------------------------------------- inputs


def _midnight(day: dt.date, zone: ZoneInfo) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(0), tzinfo=zone).astimezone(dt.UTC)


def period_bounds(
    since: dt.date | dt.datetime | None, until: dt.date | dt.datetime | None, *,
    today: dt.date, zone: ZoneInfo, days: int = 7,
) -> tuple[dt.datetime, dt.datetime]:
    """``[since, until)`` in UTC: a date is its local midnight, ``until`` a date includes that day.

    Default: the last ``days`` local days ending with ``today``. A naive datetime
    is local time in ``zone``.
    """
    def instant(value: dt.date | dt.datetime, end: bool) -> dt.datetime:
        if isinstance(value, dt.datetime):
            moment = value if value.tzinfo is not None else value.replace(tzinfo=zone)
            return moment.astimezone(dt.UTC)
        return _midnight(value + dt.timedelta(days=1) if end else value, zone)

    end = instant(until, True) if until is not None else _midnight(today + dt.timedelta(days=1), zone)
    if since is not None:
        start = instant(since, False)
    else:
        last = (end.astimezone(zone) - dt.timedelta(microseconds=1)).date()
        start = _midnight(last - dt.timedelta(days=days - 1), zone)
    if start >= end:
        raise ConfigError.single("since", f"the period is empty: since {start.isoformat()} "
                                 f"is not before until {end.isoformat()}")
    return start, end


def parse_scope(engine: sa.Engine, text: str) -> MovementScope:
    """``all``, ``pipeline:KEY`` or ``owner:KEY``; KEY is ``<source>/<id>``, an id, or a name (or e-mail).

    Raises:
        ConfigError: unknown kind, or a key that matches nothing or several.
    """
    if text == "all":
        return MovementScope()
    kind, _, key = text.partition(":")
    if kind not in ("pipeline", "owner") or not key:
        raise ConfigError.single("scope", f"{text!r}: use all, pipeline:KEY or owner:KEY")
    table = pipelines_table if kind == "pipeline" else owners_table
    c = table.c
    names = [c.name] if kind == "pipeline" else [c.name, owners_table.c.email]
    source, _, ident = key.partition("/")
    match = [c.external_id == key, *(n == key for n in names)]
    if ident:
        match.append(sa.and_(c.source == source, c.external_id == ident))
    with engine.connect() as conn:
        rows = conn.execute(sa.select(c.source, c.external_id, c.name).where(sa.or_(*match))).all()
    exact = [r for r in rows if ident and r.source == source and r.external_id == ident]
    rows = exact or rows
    if not rows:
        raise ConfigError.single("scope", f"no {kind} {key!r} in the store")
    if len(rows) > 1:
        found = ", ".join(f"{r.source}/{r.external_id}" for r in rows)
        raise ConfigError.single("scope", f"{kind} {key!r} is ambiguous: {found}; use <source>/<id>")
    row = rows[0]
    return MovementScope(kind, row.source, row.external_id, row.name or row.external_id)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- states


@dataclass(frozen=True, slots=True)
class _State:
    exists: bool
    status: str
    archived: bool
    amount: Decimal | None
    currency: str | None
    stage: str | None
    pipeline: str | None
    owner: str | None
    close_date: dt.date | None


_FIELDS = {"status": "status", "archived": "archived", "amount": "amount", "currency": "currency",
           "stage_id": "stage", "pipeline_id": "pipeline", "owner_id": "owner",
           "expected_close_date": "close_date"}


def _old(change: sa.Row[Any]) -> Any:
    if change.field == "amount":
        return change.old_amount
    if change.field == "expected_close_date":
        return change.old_date
    if change.field == "archived":
        return change.old_value == "true"
    return change.old_value


class _Deal:
    """One deal's current row and its changes since ``since``, able to say its state at any instant."""

    def __init__(self, row: sa.Row[Any], changes: list[sa.Row[Any]]) -> None:
        self.row = row
        self.changes = changes
        self.born = row.created_at if row.created_at is not None else row.first_seen_at
        close_at = row.closed_at if row.closed_at is not None else row.updated_at
        self.closed_unlogged = close_at if row.status in ("won", "lost") else None
        self.deleted_unlogged = row.deleted_at if row.status == "deleted" else None
        self.current = _State(True, row.status, bool(row.archived), row.amount, row.currency,
                              row.stage_id, row.pipeline_id, row.owner_id, row.expected_close_date)

    def instants(self, since: dt.datetime, until: dt.datetime) -> list[dt.datetime]:
        """The instants in ``[since, until)`` at which this deal's state may change."""
        moments = {c.changed_at for c in self.changes}
        moments |= {m for m in (self.born, self.closed_unlogged, self.deleted_unlogged) if m is not None}
        return sorted(m for m in moments if since <= m < until)

    def state(self, t: dt.datetime, inclusive: bool = False) -> _State:
        """The state at ``t`` (after the changes at ``t`` too when ``inclusive``)."""
        values: dict[str, Any] = {}
        status_logged = False
        for c in self.changes:  # oldest first: the first change after t holds the value at t
            after = c.changed_at > t if inclusive else c.changed_at >= t
            if after and c.field in _FIELDS and _FIELDS[c.field] not in values:
                values[_FIELDS[c.field]] = _old(c)
                status_logged |= c.field == "status"
        state = dataclasses.replace(self.current, **values)

        def passed(moment: dt.datetime | None) -> bool:
            return moment is not None and (moment <= t if inclusive else moment < t)

        if not status_logged:
            if self.closed_unlogged is not None and not passed(self.closed_unlogged):
                state = dataclasses.replace(state, status="open")
            if self.deleted_unlogged is not None and not passed(self.deleted_unlogged):
                state = dataclasses.replace(state, status="open")
        exists = self.born is None or passed(self.born)
        return dataclasses.replace(state, exists=exists)


# --------------------------------------------------------------------------- the walk


@dataclass
class _Context:
    settings: MetricsSettings
    scope: MovementScope
    stage_order: dict[tuple[str, str | None, str], int]
    stage_names: dict[tuple[str, str | None, str], str]
    owner_names: dict[tuple[str, str], str]
    pipeline_names: dict[tuple[str, str], str]
    closed_stages: set[tuple[str, str | None, str]]
    month_end: dt.date
    quarter_end: dt.date

    def value(self, s: _State) -> Decimal | None:
        """The state's amount in the base currency; ``None`` when it has none or no rate."""
        if s.amount is None:
            return None
        code = (s.currency or self.settings.currency).upper()
        if code == self.settings.currency:
            return s.amount
        rate = self.settings.rates.get(code)
        return None if rate is None else (s.amount * rate).quantize(_PLACES, rounding=ROUND_HALF_UP)

    def open_in_scope(self, source: str, s: _State) -> bool:
        if not (s.exists and s.status == "open" and not s.archived):
            return False
        if self.scope.kind == "all":
            return True
        ident = s.pipeline if self.scope.kind == "pipeline" else s.owner
        return source == self.scope.source and ident == self.scope.key


def _stage(ctx: _Context, source: str, s: _State) -> str | None:
    if s.stage is None or (source, s.pipeline, s.stage) in ctx.closed_stages:
        return None  # "from Won to won" says nothing: the open stage before is not known
    return ctx.stage_names.get((source, s.pipeline, s.stage), s.stage)


def _walk(deal: _Deal, ctx: _Context, m: Movement) -> None:
    """Add one deal's steps through the period to ``m``."""
    row, source = deal.row, deal.row.source
    since, until = m.since, m.until
    states = [deal.state(since)] + [deal.state(t, inclusive=True) for t in deal.instants(since, until)]
    owner = ctx.owner_names.get((source, row.owner_id or ""), row.owner_id)
    unvalued = False

    def val(s: _State) -> Decimal:
        nonlocal unvalued
        v = ctx.value(s)
        if v is None:
            unvalued = True
            return ZERO
        return v

    def add(change: ChangeClass, before: str | None, after: str | None, value: Decimal) -> None:
        tally = m.classes[change]
        tally.count += 1
        tally.value += value
        m.deals.append(DealMove(source, row.external_id, row.title, owner, change, before, after, value))

    first, last = states[0], states[-1]
    if ctx.open_in_scope(source, first):
        m.open_start.count += 1
        m.open_start.value += val(first)
    if ctx.open_in_scope(source, last):
        m.open_end.count += 1
        m.open_end.value += val(last)
    delta, open_states = ZERO, []
    for a, b in itertools.pairwise(states):
        in_a, in_b = ctx.open_in_scope(source, a), ctx.open_in_scope(source, b)
        if in_a and in_b:
            delta += val(b) - val(a)
        elif in_a:  # leaves at the value it left with; a change on the way out is an amount change
            out = val(b) if b.exists else val(a)
            delta += out - val(a)
            if b.status in ("won", "lost"):
                add(b.status, _stage(ctx, source, a), b.status, out)  # type: ignore[arg-type]
            elif b.status == "deleted" or b.archived:
                add("deleted", _stage(ctx, source, a), "deleted" if b.status == "deleted" else "archived",
                    out)
            else:
                add("moved_out", ctx.scope.label, _where(ctx, source, b), out)
        elif in_b:
            if not a.exists or a.status != "open" or a.archived:
                add("added", None if not a.exists else (a.status if not a.archived else "archived"),
                    _stage(ctx, source, b), val(b))
            else:
                add("moved_in", _where(ctx, source, a), ctx.scope.label, val(b))
    open_states = [s for s in states if ctx.open_in_scope(source, s)]
    if delta:
        final = next((b for a, b in itertools.pairwise(states)
                      if ctx.open_in_scope(source, a) and not ctx.open_in_scope(source, b)), open_states[-1])
        before, after = ctx.value(open_states[0]), ctx.value(final)
        add("amount_up" if delta > 0 else "amount_down", _money(before), _money(after), abs(delta))
    if open_states:
        _compare(open_states[0], open_states[-1], deal, ctx, m, add, val(open_states[-1]))
    if unvalued:
        m.unvalued += 1


def _money(value: Decimal | None) -> str | None:
    return None if value is None else format(value, "f")


def _where(ctx: _Context, source: str, s: _State) -> str | None:
    if ctx.scope.kind == "owner":
        return ctx.owner_names.get((source, s.owner or ""), s.owner)
    return ctx.pipeline_names.get((source, s.pipeline or ""), s.pipeline)


def _compare(a: _State, b: _State, deal: _Deal, ctx: _Context, m: Movement,
             add: Callable[[ChangeClass, str | None, str | None, Decimal], None], value: Decimal) -> None:
    """Stage, close date and owner: the first open state in the period against the last."""
    source = deal.row.source
    if a.stage != b.stage and a.pipeline == b.pipeline and a.stage and b.stage:
        before = ctx.stage_order.get((source, a.pipeline, a.stage))
        after = ctx.stage_order.get((source, b.pipeline, b.stage))
        if before is not None and after is not None and before != after:
            add("progressed" if after > before else "moved_back", _stage(ctx, source, a),
                _stage(ctx, source, b), value)
    if a.close_date is not None and b.close_date is not None and a.close_date != b.close_date:
        if b.close_date > a.close_date:
            add("pushed", a.close_date.isoformat(), b.close_date.isoformat(), value)
            pushed = m.classes["pushed"]
            if a.close_date <= ctx.month_end < b.close_date:
                pushed.slipped_month += 1
            if a.close_date <= ctx.quarter_end < b.close_date:
                pushed.slipped_quarter += 1
        else:
            add("pulled_in", a.close_date.isoformat(), b.close_date.isoformat(), value)
    if a.owner != b.owner:
        add("reassigned", ctx.owner_names.get((source, a.owner or ""), a.owner),
            ctx.owner_names.get((source, b.owner or ""), b.owner), value)


# --------------------------------------------------------------------------- SQL


def _period_end_dates(until: dt.datetime, zone: ZoneInfo) -> tuple[dt.date, dt.date]:
    """The last day of the month and of the quarter of the period's last local day."""
    last = (until.astimezone(zone) - dt.timedelta(microseconds=1)).date()
    def month_end(year: int, month: int) -> dt.date:
        first_next = dt.date(year + month // 12, month % 12 + 1, 1)
        return first_next - dt.timedelta(days=1)
    quarter_month = (last.month - 1) // 3 * 3 + 3
    return month_end(last.year, last.month), month_end(last.year, quarter_month)


_DEAL_COLUMNS = ("source", "external_id", "title", "status", "archived", "amount", "currency", "stage_id",
                 "pipeline_id", "owner_id", "expected_close_date", "created_at", "first_seen_at",
                 "closed_at", "updated_at", "deleted_at")


def _scope_filter(scope: MovementScope) -> sa.ColumnElement[bool]:
    d = deals_table.c
    if scope.kind == "all":
        return sa.true()
    column = d.pipeline_id if scope.kind == "pipeline" else d.owner_id
    return sa.and_(d.source == scope.source, column == scope.key)


def _queries(since: dt.datetime, scope: MovementScope) -> tuple[sa.Select[Any], sa.Select[Any],
                                                                 sa.Select[Any]]:
    """The static deals' sums, the moved deals, and their changes since ``since``."""
    d, c = deals_table.c, deal_changes_table.c
    at = sa.literal(since, UTCDateTime())
    changed = sa.exists().where(c.source == d.source, c.external_id == d.external_id, c.changed_at >= at)
    born = sa.func.coalesce(d.created_at, d.first_seen_at)
    close_at = sa.func.coalesce(d.closed_at, d.updated_at)
    moved = sa.or_(
        changed,
        born >= at,
        sa.and_(d.status.in_(("won", "lost")), close_at >= at),
        sa.and_(d.status == "deleted", d.deleted_at >= at),
    )
    static = (
        sa.select(d.currency, sa.func.count().label("deals"), sa.func.sum(d.amount).label("amount"),
                  sa.func.sum(sa.case((d.amount.is_(None), 1), else_=0)).label("no_amount"))
        .where(d.status == "open", sa.not_(d.archived), born < at, sa.not_(changed), _scope_filter(scope))
        .group_by(d.currency)
    )
    deals = sa.select(*(d[name] for name in _DEAL_COLUMNS)).where(moved)
    changes = (
        sa.select(c.source, c.external_id, c.field, c.old_value, c.old_amount, c.old_date, c.changed_at)
        .where(c.changed_at >= at).order_by(c.source, c.external_id, c.changed_at, c.id)
    )
    return static, deals, changes


def _context(conn: sa.Connection, settings: MetricsSettings, scope: MovementScope,
             until: dt.datetime) -> _Context:
    s, o, p = stages_table.c, owners_table.c, pipelines_table.c
    order: dict[tuple[str, str | None, str], int] = {}
    names: dict[tuple[str, str | None, str], str] = {}
    closed: set[tuple[str, str | None, str]] = set()
    query = sa.select(s.source, s.pipeline_id, s.external_id, s.name, s.display_order, s.is_won, s.is_lost)
    for r in conn.execute(query):
        key = (r.source, r.pipeline_id, r.external_id)
        order[key] = int(r.display_order or 0)
        names[key] = r.name
        if r.is_won or r.is_lost:
            closed.add(key)
    owners = {(r.source, r.external_id): r.name or r.email or r.external_id
              for r in conn.execute(sa.select(o.source, o.external_id, o.name, o.email))}
    pipelines = {(r.source, r.external_id): r.name
                 for r in conn.execute(sa.select(p.source, p.external_id, p.name))}
    month_end, quarter_end = _period_end_dates(until, settings.zone)
    return _Context(settings, scope, order, names, owners, pipelines, closed, month_end, quarter_end)


def compute_movement(
    engine: sa.Engine, settings: MetricsSettings, *, since: dt.datetime, until: dt.datetime,
    scope: MovementScope | None = None,
) -> Movement:
    """The movement of ``[since, until)`` (aware instants) in ``scope`` (default: all), read from the store.

    A plain data function: the ``velocity movement`` command, the weekly digest
    section and the HTML report's waterfall chart all read this.
    """
    scope = scope or MovementScope()
    m = Movement(since.astimezone(dt.UTC), until.astimezone(dt.UTC), settings.timezone,
                 settings.currency, scope)
    static_q, deals_q, changes_q = _queries(m.since, scope)
    with engine.connect() as conn:
        ctx = _context(conn, settings, scope, m.until)
        for row in conn.execute(static_q):
            value = ctx.value(_State(True, "open", False, row.amount, row.currency, None, None, None, None))
            deals, no_amount = int(row.deals), int(row.no_amount or 0)
            m.open_start.count += deals
            m.open_end.count += deals
            m.unvalued += no_amount
            if value is not None:
                m.open_start.value += value
                m.open_end.value += value
            elif row.amount is not None:  # no rate to the base currency
                m.unvalued += deals - no_amount
        changes: dict[tuple[str, str], list[sa.Row[Any]]] = {}
        for change in conn.execute(changes_q):  # the period's changes: what the walk needs
            changes.setdefault((change.source, change.external_id), []).append(change)
        for row in conn.execution_options(yield_per=1000).execute(deals_q):
            _walk(_Deal(row, changes.get((row.source, row.external_id), [])), ctx, m)
    m.deals.sort(key=lambda x: (CLASSES.index(x.change), -x.value, x.title or "", x.external_id))
    return m
