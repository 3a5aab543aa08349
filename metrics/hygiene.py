"""Pipeline hygiene: which open deals are stalled, and why (see ``shared/DESIGN.md``).

Seven rules, each evaluated in SQL over the deals open at ``as_of`` (``metrics.window.open_at``:
not archived, created before ``start(as_of + 1)``, not closed nor deleted before it):

=====================  ==================================================================
rule                   holds when
=====================  ==================================================================
``no_next_step``       no next activity date and no (non-blank) next-step text
``next_step_overdue``  the next activity is before today (local midnight starting ``as_of``)
``close_date_passed``  the expected close date is before ``as_of``
``stuck_in_stage``     more than the stage's limit of days since the deal entered its stage
``inactive``           more than ``inactive_days`` since the last activity (or, with no
                       activity recorded, since the deal was created)
``missing_amount``     the deal has no amount
``repeatedly_pushed``  the expected close date was moved later ``pushed_times`` times or
                       more (default 3), counted in the sync's ``deal_changes``
=====================  ==================================================================

Day counts are measured at ``at = min(now, end of as_of)`` in exact elapsed time.

Thresholds resolve from the most specific setting: a configured stage override,
then the CRM's own rotting days for the stage (Pipedrive), then a configured
pipeline override, then the default. ``inactive_days`` has no CRM counterpart:
stage override, pipeline override, default.

The digest groups the rules into the seed article's four bottlenecks
(:data:`BOTTLENECKS`); :func:`hygiene_summary` counts them with SQL aggregates
and :func:`find_stalled` streams the stalled deals, worst first.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field

from sales_velocity.metrics.sql import elapsed_days
from sales_velocity.metrics.window import day_start, open_at
from sales_velocity.sync.store import (
    UTCDateTime,
    deal_changes_table,
    deals_table,
    owners_table,
    pipelines_table,
    stages_table,
)

__all__ = [
    "BOTTLENECKS",
    "RULES",
    "Bottleneck",
    "HygieneSettings",
    "HygieneSummary",
    "Rule",
    "RuleHit",
    "StalledDeal",
    "ThresholdOverride",
    "find_stalled",
    "hygiene_summary",
    "reference_instant",
]

Rule = Literal[
    "no_next_step", "next_step_overdue", "close_date_passed", "stuck_in_stage", "inactive", "missing_amount",
    "repeatedly_pushed",
]
RULES: tuple[Rule, ...] = (
    "no_next_step", "next_step_overdue", "close_date_passed", "stuck_in_stage", "inactive", "missing_amount",
    "repeatedly_pushed",
)

Bottleneck = Literal["dead_deals", "inconsistent_process", "missing_next_steps", "poor_data_quality"]
BOTTLENECKS: dict[Bottleneck, tuple[Rule, ...]] = {
    "dead_deals": ("inactive", "repeatedly_pushed"),
    "inconsistent_process": ("stuck_in_stage",),
    "missing_next_steps": ("no_next_step", "next_step_overdue"),
    "poor_data_quality": ("missing_amount", "close_date_passed"),
}
"""The seed's four bottlenecks and the rules that show each one."""


# --------------------------------------------------------------------------- settings


class ThresholdOverride(BaseModel):
    """Different limits for one pipeline, or one stage of it (``[[reminders.overrides]]``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    pipeline: str = Field(description="Pipeline id or name.")
    stage: str | None = Field(default=None, description="Stage id or name; none: the whole pipeline.")
    source: str | None = Field(default=None, description="Only this source; none: any source.")
    stuck_days: int | None = Field(default=None, ge=1, description="Days in the stage before it is stuck.")
    inactive_days: int | None = Field(default=None, ge=1, description="Days without activity.")


class HygieneSettings(BaseModel):
    """Thresholds of the hygiene rules."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    inactive_days: int = Field(
        default=14, ge=1, description="Days without activity before a deal is inactive.",
    )
    stuck_days: int = Field(
        default=30, ge=1, description="Default days in one stage before a deal is stuck.",
    )
    pushed_times: int = Field(
        default=3, ge=1, le=100,
        description="Times the close date is pushed later before a deal is repeatedly pushed.",
    )
    use_crm_rotting_days: bool = Field(
        default=True, description="Use the CRM's rotting days of a stage (Pipedrive) where set.",
    )
    overrides: tuple[ThresholdOverride, ...] = Field(default=(), description="Per pipeline or stage limits.")


# --------------------------------------------------------------------------- results


@dataclass(frozen=True, slots=True)
class RuleHit:
    """One rule holding for one deal, with what a person needs to act on it.

    ``days`` is the elapsed whole days for ``stuck_in_stage``/``inactive``,
    ``limit`` their threshold; ``since`` the overdue next-activity day or the
    passed close date (local dates); ``times`` how often the close date was
    pushed (``repeatedly_pushed``, with ``limit`` its threshold).
    """

    rule: Rule
    days: int | None = None
    limit: int | None = None
    since: dt.date | None = None
    times: int | None = None


@dataclass(frozen=True, slots=True)
class StalledDeal:
    """An open deal for which at least one rule holds."""

    source: str
    external_id: str
    title: str | None
    amount: Decimal | None
    currency: str | None
    pipeline_id: str | None
    pipeline_name: str | None
    stage_id: str | None
    stage_name: str | None
    owner_id: str | None
    owner_name: str | None
    owner_email: str | None
    link: str | None
    hits: tuple[RuleHit, ...]

    @property
    def rules(self) -> tuple[Rule, ...]:
        """The rules that hold, in :data:`RULES` order."""
        return tuple(h.rule for h in self.hits)


@dataclass(frozen=True, slots=True)
class HygieneSummary:
    """How many open deals break each rule, and each bottleneck's share of open deals."""

    open_deals: int
    stalled_deals: int
    by_rule: dict[Rule, int]
    by_bottleneck: dict[Bottleneck, int]

    def share(self, bottleneck: Bottleneck) -> Decimal | None:
        """Share (0..1) of open deals showing ``bottleneck``; ``None`` with no open deal."""
        if not self.open_deals:
            return None
        return Decimal(self.by_bottleneck[bottleneck]) / Decimal(self.open_deals)


# --------------------------------------------------------------------------- SQL


def reference_instant(as_of: dt.date, now: dt.datetime, zone: ZoneInfo) -> dt.datetime:
    """The instant day counts are measured at: ``now``, or ``start(as_of + 1)`` if earlier."""
    return min(now.astimezone(dt.UTC), day_start(as_of + dt.timedelta(days=1), zone))


def _match(override: ThresholdOverride) -> sa.ColumnElement[bool]:
    d, p, s = deals_table.c, pipelines_table.c, stages_table.c
    clauses: list[sa.ColumnElement[bool]] = [
        sa.or_(d.pipeline_id == override.pipeline, p.name == override.pipeline)
    ]
    if override.stage is not None:
        clauses.append(sa.or_(d.stage_id == override.stage, s.name == override.stage))
    if override.source is not None:
        clauses.append(d.source == override.source)
    return sa.and_(*clauses)


def _limit(settings: HygieneSettings, field: Literal["stuck_days", "inactive_days"]) -> sa.ColumnElement[Any]:
    """The per-deal threshold as a SQL ``CASE``, most specific setting first."""
    whens: list[tuple[sa.ColumnElement[bool], Any]] = []
    for o in settings.overrides:
        if o.stage is not None and getattr(o, field) is not None:
            whens.append((_match(o), getattr(o, field)))
    if field == "stuck_days" and settings.use_crm_rotting_days:
        whens.append((stages_table.c.rotting_days.is_not(None), stages_table.c.rotting_days))
    for o in settings.overrides:
        if o.stage is None and getattr(o, field) is not None:
            whens.append((_match(o), getattr(o, field)))
    default = sa.literal(getattr(settings, field), sa.Integer())
    if not whens:
        return default
    return sa.case(*whens, else_=default)


def _flag(condition: sa.ColumnElement[bool]) -> sa.ColumnElement[int]:
    return sa.case((condition, 1), else_=0)


def _flags_query(
    settings: HygieneSettings, as_of: dt.date, now: dt.datetime, zone: ZoneInfo,
    off: Mapping[Rule, Sequence[str]] | None = None, skip_sources: Sequence[str] = (),
    where: sa.ColumnElement[bool] | None = None,
) -> sa.Subquery:
    """Open deals with one 0/1 column per rule, the limits and the names to show.

    ``off`` maps a rule to the sources it is off for (a field it needs is
    unknown there, see ``metrics.coverage``): it never holds for their deals.
    Deals of ``skip_sources`` are left out altogether, and so are deals
    ``where`` (a digest's scope, on the deals table) does not hold for.
    """
    d, p, s, o = deals_table.c, pipelines_table.c, stages_table.c, owners_table.c
    at = sa.literal(reference_instant(as_of, now, zone), UTCDateTime())
    today_start = sa.literal(day_start(as_of, zone), UTCDateTime())
    stuck_limit = _limit(settings, "stuck_days").label("stuck_limit")
    inactive_limit = _limit(settings, "inactive_days").label("inactive_limit")
    last_touch = sa.func.coalesce(d.last_activity_at, d.created_at)
    c = deal_changes_table.c
    pushes_q = (
        sa.select(c.source, c.external_id, sa.func.count().label("pushes"))
        .where(c.field == "expected_close_date", c.new_date > c.old_date)
        .group_by(c.source, c.external_id)
        .subquery("pushes")
    )
    pushes = sa.func.coalesce(pushes_q.c.pushes, 0)
    blank_step = sa.or_(d.next_step.is_(None), sa.func.trim(d.next_step) == "")
    flags = {
        "no_next_step": _flag(sa.and_(d.next_activity_at.is_(None), blank_step)),
        "next_step_overdue": _flag(d.next_activity_at < today_start),
        "close_date_passed": _flag(d.expected_close_date < sa.literal(as_of, sa.Date())),
        "stuck_in_stage": _flag(elapsed_days(d.stage_entered_at, at) > stuck_limit),
        "inactive": _flag(elapsed_days(last_touch, at) > inactive_limit),
        "missing_amount": _flag(d.amount.is_(None)),
        "repeatedly_pushed": _flag(pushes >= settings.pushed_times),
    }
    for rule, sources in (off or {}).items():
        if sources:
            flags[rule] = _flag(sa.and_(flags[rule] == 1, d.source.not_in(list(sources))))
    pipeline_join = sa.and_(p.source == d.source, p.external_id == d.pipeline_id)
    stage_join = sa.and_(s.source == d.source, s.pipeline_id == d.pipeline_id, s.external_id == d.stage_id)
    return (
        sa.select(
            d.source, d.external_id, d.title, d.amount, d.currency, d.pipeline_id, d.stage_id,
            d.owner_id, d.link, d.next_activity_at, d.expected_close_date, d.stage_entered_at,
            last_touch.label("last_touch"),
            p.name.label("pipeline_name"), s.name.label("stage_name"),
            o.name.label("owner_name"), o.email.label("owner_email"),
            stuck_limit, inactive_limit, pushes.label("pushes"),
            *(expr.label(rule) for rule, expr in flags.items()),
        )
        .select_from(
            deals_table.outerjoin(pipelines_table, pipeline_join)
            .outerjoin(stages_table, stage_join)
            .outerjoin(owners_table, sa.and_(o.source == d.source, o.external_id == d.owner_id))
            .outerjoin(pushes_q, sa.and_(pushes_q.c.source == d.source,
                                         pushes_q.c.external_id == d.external_id))
        )
        .where(open_at(day_start(as_of + dt.timedelta(days=1), zone)),
               *([d.source.not_in(list(skip_sources))] if skip_sources else []),
               *([where] if where is not None else []))
        .subquery("flags")
    )


def hygiene_summary(
    engine: sa.Engine, settings: HygieneSettings, *, as_of: dt.date, now: dt.datetime, zone: ZoneInfo,
    off: Mapping[Rule, Sequence[str]] | None = None, where: sa.ColumnElement[bool] | None = None,
) -> HygieneSummary:
    """Count open deals, deals breaking each rule and each bottleneck, in one aggregate query.

    ``off``: per rule, the sources it is off for (see :func:`_flags_query`).
    """
    f = _flags_query(settings, as_of, now, zone, off, where=where)
    columns: list[sa.ColumnElement[Any]] = [sa.func.count().label("open_deals")]
    columns.append(sa.func.sum(_flag(sa.or_(*(f.c[r] == 1 for r in RULES)))).label("stalled"))
    columns += [sa.func.sum(f.c[r]).label(r) for r in RULES]
    columns += [
        sa.func.sum(_flag(sa.or_(*(f.c[r] == 1 for r in rules)))).label(name)
        for name, rules in BOTTLENECKS.items()
    ]
    with engine.connect() as conn:
        row = conn.execute(sa.select(*columns).select_from(f)).mappings().one()
    return HygieneSummary(
        open_deals=int(row["open_deals"] or 0),
        stalled_deals=int(row["stalled"] or 0),
        by_rule={r: int(row[r] or 0) for r in RULES},
        by_bottleneck={b: int(row[b] or 0) for b in BOTTLENECKS},
    )


def find_stalled(
    engine: sa.Engine,
    settings: HygieneSettings,
    *,
    as_of: dt.date,
    now: dt.datetime,
    zone: ZoneInfo,
    rules: Sequence[Rule] = RULES,
    limit: int | None = None,
    by_owner: bool = False,
    off: Mapping[Rule, Sequence[str]] | None = None,
    skip_sources: Sequence[str] = (),
    where: sa.ColumnElement[bool] | None = None,
) -> Iterator[StalledDeal]:
    """Stream open deals for which one of ``rules`` holds, worst first.

    Worst means most rules holding, then the largest amount, then the title.
    With ``by_owner`` the deals come grouped by owner (source, owner id) first,
    so a caller can build one message per owner without holding every deal.
    Rows are fetched in batches; ``limit`` caps them in SQL. ``off`` maps a
    rule to the sources it is off for; deals of ``skip_sources`` are left out
    (reminders skip a source whose last sync failed).
    """
    f = _flags_query(settings, as_of, now, zone, off, skip_sources, where)
    count = sum((f.c[r] for r in rules), sa.literal(0))
    order: list[Any] = []
    if by_owner:
        order += [f.c.source, f.c.owner_id.is_(None), f.c.owner_id]
    order += [count.desc(), f.c.amount.is_(None), f.c.amount.desc(), f.c.title, f.c.external_id]
    query = sa.select(f).where(sa.or_(*(f.c[r] == 1 for r in rules))).order_by(*order)
    if limit is not None:
        query = query.limit(limit)
    at = reference_instant(as_of, now, zone)
    with engine.connect() as conn:
        result = conn.execution_options(yield_per=500).execute(query).mappings()
        for row in result:
            yield _stalled(row, rules, at, zone, settings.pushed_times)


def _stalled(row: sa.RowMapping, rules: Sequence[Rule], at: dt.datetime, zone: ZoneInfo,
             limit_pushed: int) -> StalledDeal:
    hits: list[RuleHit] = []
    for rule in RULES:
        if rule not in rules or not row[rule]:
            continue
        if rule == "stuck_in_stage":
            days = _whole_days(row["stage_entered_at"], at)
            hits.append(RuleHit(rule, days=days, limit=row["stuck_limit"]))
        elif rule == "inactive":
            hits.append(RuleHit(rule, days=_whole_days(row["last_touch"], at), limit=row["inactive_limit"]))
        elif rule == "next_step_overdue":
            hits.append(RuleHit(rule, since=_aware(row["next_activity_at"]).astimezone(zone).date()))
        elif rule == "close_date_passed":
            hits.append(RuleHit(rule, since=row["expected_close_date"]))
        elif rule == "repeatedly_pushed":
            hits.append(RuleHit(rule, times=int(row["pushes"]), limit=limit_pushed))
        else:
            hits.append(RuleHit(rule))
    return StalledDeal(
        source=row["source"], external_id=row["external_id"], title=row["title"], amount=row["amount"],
        currency=row["currency"], pipeline_id=row["pipeline_id"], pipeline_name=row["pipeline_name"],
        stage_id=row["stage_id"], stage_name=row["stage_name"], owner_id=row["owner_id"],
        owner_name=row["owner_name"], owner_email=row["owner_email"], link=row["link"], hits=tuple(hits),
    )


def _aware(value: Any) -> dt.datetime:
    """A timestamp from a row (raw text on SQLite for computed columns) as aware UTC."""
    moment = dt.datetime.fromisoformat(value) if isinstance(value, str) else value
    if not isinstance(moment, dt.datetime):
        raise TypeError(f"expected a timestamp, got {value!r}")
    return moment.replace(tzinfo=dt.UTC) if moment.tzinfo is None else moment.astimezone(dt.UTC)


def _whole_days(since: Any, at: dt.datetime) -> int:
    return int((at - _aware(since)).total_seconds() // 86400)
