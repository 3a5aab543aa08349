"""The deals behind every lever: ``velocity deals`` lists, deal by deal, what each figure is made of.

For a scope (all deals, one pipeline, one owner), an as-of date ``T`` and a
window of ``W`` days, each lever of ``metrics.velocity`` is a set of deals, chosen
in SQL with the same predicates (``metrics.window``), so the lists cannot
disagree with the report on a boundary:

* ``open``: the deals open at ``T`` (``N`` is their count);
* ``won``: the deals won in the window (``won``); those with a usable amount,
  converted to the base currency, make up ``V`` (their sum over their count);
* ``lost``: the deals lost in the window (``lost``; ``p = won / (won + lost)``);
* ``cycle``: the won deals with a creation date; ``L`` is the mean of their
  cycle (``metrics.velocity.cycle_seconds``, a close before the creation counts
  as 0 days);
* ``excluded``: what the levers left out, one line per deal and reason (a deal
  may have two), the reasons of ``metrics.leftovers`` and ``metrics.velocity``:
  won without an amount and won in a currency without a rate (out of ``V``),
  won without a creation date (out of ``L``), closed without a close date or
  last update (out of every window and of ``N``), and closed without a close
  date but dated by its last update (counted in the window, its date approximated).

Rows stream from the database (``yield_per``); nothing holds every deal. Reads only.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

import sqlalchemy as sa

from sales_velocity.kernel.errors import ConfigError
from sales_velocity.metrics.movement import MovementScope, parse_scope
from sales_velocity.metrics.settings import MetricsSettings
from sales_velocity.metrics.velocity import cycle_seconds, scope_labels
from sales_velocity.metrics.window import close_time, closed_in_window, open_at, window_bounds
from sales_velocity.sync.store import UTCDateTime, deals_table, stages_table

__all__ = [
    "LEVERS", "REASONS", "DealLine", "DrillDown", "Lever", "Tally", "deal_lines", "drill_down",
    "resolve_scope",
]

Lever = Literal["open", "won", "lost", "cycle", "excluded"]
LEVERS: tuple[Lever, ...] = ("open", "won", "lost", "cycle", "excluded")

REASONS: dict[str, str] = {
    "no_amount": "won without an amount: out of the average deal value",
    "no_rate": "won in a currency without a rate to the base currency: out of the average deal value",
    "no_created": "won without a creation date: out of the cycle length",
    "no_close_date": "closed without a close date or last update: out of every window and of the open count",
    "dated_by_update": "closed without a close date: dated by its last update (counted in the window)",
}
"""The reasons of the ``excluded`` lever, in the order they are listed."""

SECONDS_PER_DAY = Decimal(86400)
_YIELD_PER = 1000


@dataclass(frozen=True, slots=True)
class DealLine:
    """One deal of one lever (``excluded``: one deal and one reason)."""

    lever: Lever
    source: str
    external_id: str
    title: str | None
    owner_id: str | None
    owner: str | None
    """The owner's name (else e-mail, else id)."""
    pipeline_id: str | None
    pipeline: str | None
    stage_id: str | None
    stage: str | None
    status: str
    currency: str
    """The deal's currency (the base currency when the CRM gave none)."""
    original_amount: Decimal | None
    amount: Decimal | None
    """In the base currency; ``None`` without an amount or a rate."""
    created_at: dt.datetime | None
    closed_at: dt.datetime | None
    """The close time: the CRM's close date, else the last update (won and lost deals only)."""
    cycle_seconds: int | None
    """Won deals with a creation date: creation to close in whole seconds, at least 0."""
    reason: str | None = None
    """``excluded`` only: a key of :data:`REASONS`."""

    @property
    def cycle_days(self) -> Decimal | None:
        """The cycle in days (exact)."""
        return None if self.cycle_seconds is None else Decimal(self.cycle_seconds) / SECONDS_PER_DAY


@dataclass(frozen=True, slots=True)
class DrillDown:
    """What is listed: the scope, the day and window, and the levers."""

    as_of: dt.date
    window_days: int
    currency: str
    timezone: str
    scope: MovementScope
    levers: tuple[Lever, ...]
    start: dt.datetime
    """``start(T-W+1)``, UTC."""
    end: dt.datetime
    """``start(T+1)``, UTC."""


@dataclass
class Tally:
    """The figures of one lever, summed line by line as the lines stream past."""

    deals: int = 0
    amount_deals: int = 0
    amount_sum: Decimal = Decimal(0)
    cycle_seconds: int = 0
    reasons: Counter[str] = field(default_factory=Counter)

    def add(self, line: DealLine) -> None:
        """Count one line."""
        self.deals += 1
        if line.amount is not None:
            self.amount_deals += 1
            self.amount_sum += line.amount
        if line.cycle_seconds is not None:
            self.cycle_seconds += line.cycle_seconds
        if line.reason is not None:
            self.reasons[line.reason] += 1

    @property
    def avg_deal_value(self) -> Decimal | None:
        """Mean amount (base currency) of the lines with one."""
        return self.amount_sum / self.amount_deals if self.amount_deals else None

    @property
    def cycle_days(self) -> Decimal | None:
        """Mean cycle in days of the lines (``cycle`` lever)."""
        return Decimal(self.cycle_seconds) / (SECONDS_PER_DAY * self.deals) if self.deals else None


# --------------------------------------------------------------------------- scope and plan


def resolve_scope(engine: sa.Engine, text: str) -> MovementScope:
    """``all``, ``pipeline:KEY`` or ``owner:KEY`` (KEY: ``<source>/<id>``, an id, or a name).

    As ``metrics.movement.parse_scope``; a ``<source>/<id>`` that only the deals
    name (no catalog row; the report labels such a scope by its id) is found too,
    so every scope of ``report`` can be listed.

    Raises:
        ConfigError: unknown kind, or a key that matches nothing or several.
    """
    try:
        return parse_scope(engine, text)
    except ConfigError:
        kind, _, key = text.partition(":")
        source, _, ident = key.partition("/")
        if kind in ("pipeline", "owner") and ident:
            column = deals_table.c.pipeline_id if kind == "pipeline" else deals_table.c.owner_id
            with engine.connect() as conn:
                found = conn.execute(sa.select(deals_table.c.source).where(
                    deals_table.c.source == source, column == ident).limit(1)).first()
            if found is not None:
                return MovementScope(kind, source, ident, ident)  # type: ignore[arg-type]
        raise


def drill_down(settings: MetricsSettings, as_of: dt.date, window_days: int | None = None,
               scope: MovementScope | None = None, levers: Sequence[Lever] = LEVERS) -> DrillDown:
    """The plan of a listing: ``window_days`` defaults to ``settings.window_days``; all levers by default.

    Raises:
        ValueError: a window shorter than 1 day, or an unknown lever.
    """
    window = settings.window_days if window_days is None else window_days
    if window < 1:
        raise ValueError(f"window_days must be at least 1, got {window}")
    unknown = [lever for lever in levers if lever not in LEVERS]
    if unknown:
        raise ValueError(f"unknown lever {unknown[0]!r}; use {', '.join(LEVERS)}")
    start, end = window_bounds(as_of, window, settings.zone)
    return DrillDown(as_of, window, settings.currency, settings.timezone, scope or MovementScope(),
                     tuple(levers), start, end)


# --------------------------------------------------------------------------- SQL


def _in_scope(scope: MovementScope) -> sa.ColumnElement[bool]:
    d = deals_table.c
    if scope.kind == "all":
        return sa.true()
    column = d.pipeline_id if scope.kind == "pipeline" else d.owner_id
    return sa.and_(d.source == scope.source, column == scope.key)


def _columns(reason: str | None = None, rank: int = 0, *, cycle: bool = True) -> list[sa.ColumnElement[Any]]:
    """The columns of a line; the cycle only for won deals with a creation date, and when ``cycle``."""
    d = deals_table.c
    won_with_created = sa.and_(d.status == "won", d.created_at.is_not(None))
    per_deal = sa.case((won_with_created, cycle_seconds()), else_=None) if cycle else sa.null()
    return [
        d.source, d.external_id, d.title, d.owner_id, d.pipeline_id, d.stage_id, d.status, d.amount,
        d.currency, d.created_at,
        sa.case((d.status.in_(("won", "lost")), close_time()), else_=None).label("close_time"),
        sa.cast(per_deal, sa.BigInteger).label("cycle"),
        sa.literal(reason, sa.String()).label("reason"),
        sa.literal(rank, sa.Integer()).label("rank"),
    ]


def _no_rate(settings: MetricsSettings) -> sa.ColumnElement[bool]:
    """SQL: an amount in a currency that is neither the base currency nor one with a rate."""
    d = deals_table.c
    code = sa.func.upper(sa.func.coalesce(sa.func.nullif(d.currency, ""), settings.currency))
    return sa.and_(d.amount.is_not(None), code.not_in([settings.currency, *settings.rates]))


def _excluded(drill: DrillDown, settings: MetricsSettings) -> sa.CompoundSelect[Any]:
    """The ``excluded`` lever: one ``SELECT`` per reason, ``UNION ALL``."""
    d = deals_table.c
    won = sa.and_(d.status == "won", closed_in_window(drill.start, drill.end))
    undated = sa.and_(d.status.in_(("won", "lost")), d.closed_at.is_(None))
    start = sa.literal(drill.start, UTCDateTime())
    end = sa.literal(drill.end, UTCDateTime())
    conditions = {
        "no_amount": sa.and_(won, d.amount.is_(None)),
        "no_rate": sa.and_(won, _no_rate(settings)),
        "no_created": sa.and_(won, d.created_at.is_(None)),
        "no_close_date": sa.and_(undated, d.updated_at.is_(None)),
        "dated_by_update": sa.and_(undated, d.updated_at >= start, d.updated_at < end),
    }
    return sa.union_all(*(
        sa.select(*_columns(reason, rank)).where(condition, _in_scope(drill.scope))
        for rank, (reason, condition) in enumerate(conditions.items())
    ))


def _query(lever: Lever, drill: DrillDown, settings: MetricsSettings) -> sa.Select[Any]:
    """The deals of one lever, in listing order."""
    d = deals_table.c
    if lever == "excluded":
        union = _excluded(drill, settings).subquery("excluded")
        u = union.c
        return sa.select(union).order_by(u.rank, u.source, u.external_id)
    won = sa.and_(d.status == "won", closed_in_window(drill.start, drill.end))
    conditions = {
        "open": open_at(drill.end),
        "won": won,
        "lost": sa.and_(d.status == "lost", closed_in_window(drill.start, drill.end)),
        "cycle": sa.and_(won, d.created_at.is_not(None)),
    }
    order = (d.created_at.is_(None), d.created_at) if lever == "open" else (close_time(),)
    columns = _columns(cycle=lever != "open")  # a deal open at T has no cycle yet
    return (sa.select(*columns).where(conditions[lever], _in_scope(drill.scope))
            .order_by(*order, d.source, d.external_id))


def _base_amount(amount: Decimal | None, currency: str, settings: MetricsSettings) -> Decimal | None:
    """``amount`` in the base currency, as ``metrics.velocity`` converts it (``None``: no rate)."""
    if amount is None:
        return None
    if currency == settings.currency:
        return amount
    rate = settings.rates.get(currency)
    return None if rate is None else amount * rate


def _stage_names(conn: sa.Connection) -> dict[tuple[str, str | None, str], str]:
    s = stages_table.c
    names: dict[tuple[str, str | None, str], str] = {}
    for row in conn.execute(sa.select(s.source, s.pipeline_id, s.external_id, s.name)):
        names[(row.source, row.pipeline_id, row.external_id)] = row.name
        names.setdefault((row.source, None, row.external_id), row.name)
    return names


def deal_lines(engine: sa.Engine, settings: MetricsSettings, drill: DrillDown) -> Iterator[DealLine]:
    """The deals of each lever of ``drill``, lever by lever, streamed from the database.

    Only the catalog (pipeline, owner and stage names) is read into memory.
    """
    with engine.connect() as conn:
        pipelines, owners = scope_labels(conn)
        stages = _stage_names(conn)
        streaming = conn.execution_options(stream_results=True, yield_per=_YIELD_PER)
        for lever in drill.levers:
            for row in streaming.execute(_query(lever, drill, settings)):
                currency = (row.currency or settings.currency).upper()
                amount = None if row.amount is None else Decimal(row.amount)
                stage = None
                if row.stage_id is not None:
                    stage = stages.get((row.source, row.pipeline_id, row.stage_id),
                                       stages.get((row.source, None, row.stage_id), row.stage_id))
                yield DealLine(
                    lever=lever, source=row.source, external_id=row.external_id, title=row.title,
                    owner_id=row.owner_id,
                    owner=None if row.owner_id is None else owners.get(
                        (row.source, row.owner_id), row.owner_id),
                    pipeline_id=row.pipeline_id,
                    pipeline=None if row.pipeline_id is None else pipelines.get(
                        (row.source, row.pipeline_id), row.pipeline_id),
                    stage_id=row.stage_id, stage=stage, status=row.status, currency=currency,
                    original_amount=amount,
                    amount=None if row.reason == "no_rate" else _base_amount(amount, currency, settings),
                    created_at=row.created_at, closed_at=_aware(row.close_time),
                    cycle_seconds=None if row.cycle is None else max(int(row.cycle), 0),
                    reason=row.reason,
                )


def _aware(value: dt.datetime | str | None) -> dt.datetime | None:
    """A close time from ``coalesce``/``CASE`` as aware UTC (SQLite may hand back text)."""
    if value is None:
        return None
    return UTCDateTime().process_result_value(value, None)  # type: ignore[arg-type]
