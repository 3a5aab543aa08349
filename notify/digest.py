"""The daily digest as data: one model that every format is rendered from.

It reads what the metrics job stored: today's velocity snapshot per scope
(``metrics.job.snapshot_for``; computed on the fly, read-only, if the day has no
snapshot yet), the overall velocity 7 and 30 days earlier (``load_history``;
"no history yet" when that day has none; marked when it was rebuilt from deal
dates), the what-ifs, where deals wait
(``metrics.stage_times``), the hygiene summary and the worst stalled deals
(``metrics.hygiene``), and, when asked (weekly by default, see
``notify.movement_section``), the pipeline movement of the last days
(``metrics.movement``).

It also carries the facts that say how far the numbers can be trusted, as
small plain records every renderer shows: per source the last good sync and
whether it failed or is stale (``metrics.freshness``: the banner on top), the
fields a source does not provide and the rules that are off for it
(``metrics.coverage``), and what the levers left out (``metrics.leftovers``:
the footer). The two "+x %" what-ifs on average deal value and on open
opportunities are one line when they give the same velocity (velocity is
linear in both, so with equal percentages they always do).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from sales_velocity.metrics.concurrent import read_concurrently
from sales_velocity.metrics.coverage import Coverage, read_coverage
from sales_velocity.metrics.forecast import Forecast, compute_forecast
from sales_velocity.metrics.forecast_view import forecast_json
from sales_velocity.metrics.freshness import DEFAULT_MAX_AGE_HOURS, Freshness, read_freshness
from sales_velocity.metrics.history import rebuild_reports
from sales_velocity.metrics.hygiene import (
    BOTTLENECKS,
    HygieneSettings,
    HygieneSummary,
    StalledDeal,
    find_stalled,
    hygiene_summary,
)
from sales_velocity.metrics.job import load_history, snapshot_for
from sales_velocity.metrics.leftovers import LeftOut, left_out
from sales_velocity.metrics.movement import Movement, MovementScope, compute_movement, period_bounds
from sales_velocity.metrics.movement_report import movement_data
from sales_velocity.metrics.scope import DealFilter
from sales_velocity.metrics.settings import MetricsSettings
from sales_velocity.metrics.stage_times import StageWait, stage_wait_times
from sales_velocity.metrics.targets import periods_for
from sales_velocity.metrics.velocity import (
    Levers,
    ScopeVelocity,
    Velocity,
    WhatIf,
    compute_velocity,
    what_ifs,
)

__all__ = ["LINEAR_LEVER", "TREND_DAYS", "Digest", "Trend", "build_digest", "digest_data", "merge_linear"]

TREND_DAYS = (7, 30)


@dataclass(frozen=True, slots=True)
class Trend:
    """Overall velocity ``days`` earlier and the change since.

    ``available`` is false when no snapshot exists for that day ("no history
    yet"); ``previous`` is ``None`` when that day's velocity was undefined;
    ``rebuilt`` when that day's snapshot was rebuilt from deal dates.
    """

    days: int
    available: bool
    previous: Decimal | None = None
    change: Decimal | None = None
    change_pct: Decimal | None = None
    rebuilt: bool = False


@dataclass(frozen=True, slots=True)
class Digest:
    """Everything the daily digest shows."""

    as_of: dt.date
    currency: str
    window_days: int
    overall: ScopeVelocity
    trends: tuple[Trend, ...]
    what_ifs: tuple[WhatIf, ...]
    pipelines: tuple[ScopeVelocity, ...]
    owners: tuple[ScopeVelocity, ...]
    more_pipelines: int
    more_owners: int
    waits: tuple[StageWait, ...]
    hygiene: HygieneSummary
    worst: tuple[StalledDeal, ...]
    history: tuple[tuple[dt.date, Decimal | None], ...]
    rebuilt_days: int = 0
    """Days of ``history`` whose snapshot was rebuilt from deal dates, not taken on the day."""
    movement: Movement | None = None
    """The pipeline movement of the last ``movement_days`` days, when the digest carries it."""
    timezone: str = "UTC"
    """The configured zone: times (last syncs) are shown in it."""
    freshness: Freshness = field(default_factory=lambda: Freshness(()))
    """Per source: last good sync, failed or stale; ``banner`` lists the ones to warn about."""
    coverage: Coverage = field(default_factory=Coverage)
    """Fields a source does not provide, and the hygiene rules off for it."""
    left_out: LeftOut = field(default_factory=LeftOut)
    """What the levers left out (the footer)."""
    forecast: Forecast | None = None
    """The won value expected in the next 30/60/90 days and its targets (``metrics.forecast``), when asked."""

    @property
    def trustworthy(self) -> bool:
        """No source failed or is stale (so a clean result may be praised)."""
        return not self.freshness.banner


LINEAR_LEVER = "deal_value_or_opportunities"
"""The ``lever`` of the one what-if line that stands for both deal value and opportunities."""


def merge_linear(ifs: Sequence[WhatIf]) -> tuple[WhatIf, ...]:
    """The what-ifs, with deal value and opportunities as one line when they give the same velocity.

    Velocity is linear in ``V`` and in ``N``, so "+10 % deal value" and "+10 %
    opportunities" always give the same number; two lines would suggest a
    choice that is not there. With different percentages both lines stay.
    """
    by_lever = {w.lever: w for w in ifs}
    value, count = by_lever.get("deal_value"), by_lever.get("opportunities")
    if value is None or count is None or value.velocity.value != count.velocity.value:
        return tuple(ifs)
    merged = dataclasses.replace(value, lever=LINEAR_LEVER, label=value.label.replace(
        "deal value", "deal value or opportunities"))
    return tuple(merged if w is value else w for w in ifs if w is not count)


def _trend(
    days: int, current: Decimal | None, history: dict[dt.date, Decimal | None], as_of: dt.date,
    rebuilt: set[dt.date],
) -> Trend:
    day = as_of - dt.timedelta(days=days)
    if day not in history:
        return Trend(days, available=False)
    previous = history[day]
    if previous is None or current is None:
        return Trend(days, available=True, previous=previous, rebuilt=day in rebuilt)
    change = current - previous
    pct = (change / previous * 100).quantize(Decimal("0.1")) if previous else None
    return Trend(days, available=True, previous=previous, change=change, change_pct=pct,
                 rebuilt=day in rebuilt)


def build_digest(
    engine: sa.Engine,
    metrics: MetricsSettings,
    hygiene: HygieneSettings,
    *,
    as_of: dt.date,
    now: dt.datetime,
    top_deals: int = 10,
    top_scopes: int = 15,
    chart_days: int = 90,
    movement_days: int | None = None,
    sources: Sequence[str] | None = None,
    max_data_age_hours: int = DEFAULT_MAX_AGE_HOURS,
    freshness: Freshness | None = None,
    deal_filter: DealFilter | None = None,
    forecast: bool = False,
) -> Digest:
    """Assemble the digest for ``as_of`` from the store.

    With ``movement_days`` set, it carries the movement of those days.
    ``sources`` are the configured source names (their freshness is shown;
    ``None``: every source with a sync run); a last good sync older than
    ``max_data_age_hours`` is stale. A caller that has read ``freshness``
    already passes it in. ``deal_filter`` (a channel's scope, ``metrics.scope``)
    narrows velocity, trend, hygiene, waits and worst deals to its deals; a
    scope's trend is rebuilt from deal dates (snapshots are stored for "all").
    With ``forecast`` it carries the forecast of all deals (and the targets of
    ``[metrics.targets]`` containing ``as_of``); the notifier never asks for it
    in a scoped digest.
    """
    window = metrics.window_days
    scoped = deal_filter is not None and (deal_filter.pipelines is not None or deal_filter.owners is not None)
    where = None if deal_filter is None else deal_filter.where()
    report = None if scoped else snapshot_for(engine, as_of, window, timezone=metrics.timezone)
    if report is None:
        report = compute_velocity(engine, _scope_settings(metrics, scoped), as_of,
                                  keep=deal_filter.keeps if scoped and deal_filter else None)
    overall = next((s for s in report.scopes if s.scope == "all"), None)
    if overall is None:
        levers = Levers(0, 0, 0, None, None, None)
        overall = ScopeVelocity("all", "", "All pipelines", levers, Velocity(None, "no data"))
    since = as_of - dt.timedelta(days=max(chart_days, *TREND_DAYS))
    stored = (_scope_history(engine, _scope_settings(metrics, True), since, as_of, deal_filter)
              if scoped and deal_filter else load_history(engine, "all", "", since, as_of, window))
    series = [(day, value) for day, value, _ in stored]
    rebuilt = {day for day, _, was_rebuilt in stored if was_rebuilt}
    by_day = dict(series)
    trends = tuple(_trend(days, overall.velocity.value, by_day, as_of, rebuilt) for days in TREND_DAYS)
    chart_start = as_of - dt.timedelta(days=chart_days - 1)
    history = tuple((day, value) for day, value in series if day >= chart_start)
    if as_of not in by_day:
        history += ((as_of, overall.velocity.value),)
    pipelines = [s for s in report.scopes if s.scope == "pipeline"]
    owners = sorted(
        (s for s in report.scopes if s.scope == "owner"),
        key=lambda s: (s.velocity.value is None, -(s.velocity.value or 0), s.label.casefold()),
    )
    zone = metrics.zone
    if freshness is None:
        freshness = read_freshness(engine, sources, now=now, max_age_hours=max_data_age_hours)
    coverage = read_coverage(engine)
    off = coverage.rules_off
    waits, summary, worst, leftovers = read_concurrently(engine, [
        lambda: stage_wait_times(engine, metrics, as_of, where=where),
        lambda: hygiene_summary(engine, hygiene, as_of=as_of, now=now, zone=zone, off=off, where=where),
        lambda: tuple(find_stalled(engine, hygiene, as_of=as_of, now=now, zone=zone, limit=top_deals,
                                   off=off, where=where))
        if top_deals else (),  # find_stalled streams: consume it on the worker
        lambda: left_out(engine, report, metrics.timezone),
    ])
    movement = None
    if movement_days is not None and not scoped:
        since, until = period_bounds(None, as_of, today=as_of, zone=zone, days=movement_days)
        movement = compute_movement(engine, metrics, since=since, until=until)
    outlook = None
    if forecast:
        everything = MovementScope()
        outlook = compute_forecast(engine, metrics, as_of, scope=everything,
                                   periods=periods_for(metrics.targets, everything, as_of))
    return Digest(
        as_of=as_of,
        currency=report.currency,
        window_days=window,
        overall=overall,
        trends=trends,
        what_ifs=merge_linear(what_ifs(overall.levers, metrics.what_if)),
        pipelines=tuple(pipelines[:top_scopes]),
        owners=tuple(owners[:top_scopes]),
        more_pipelines=max(0, len(pipelines) - top_scopes),
        more_owners=max(0, len(owners) - top_scopes),
        waits=tuple(waits),
        hygiene=summary,
        worst=tuple(worst),
        history=history,
        rebuilt_days=sum(1 for day, _ in history if day in rebuilt),
        movement=movement,
        timezone=metrics.timezone,
        freshness=freshness,
        coverage=coverage,
        left_out=leftovers,
        forecast=outlook,
    )


def _scope_settings(metrics: MetricsSettings, scoped: bool) -> MetricsSettings:
    """A scope names its pipelines: within it, nothing is excluded from its "all"."""
    return metrics.model_copy(update={"exclude_pipelines": ()}) if scoped else metrics


def _scope_history(engine: sa.Engine, metrics: MetricsSettings, since: dt.date, until: dt.date,
                   deal_filter: DealFilter) -> list[tuple[dt.date, Decimal | None, bool]]:
    """A scope's daily velocity, rebuilt from deal dates in one pass (every day marked rebuilt)."""
    out = []
    last = until - dt.timedelta(days=1)
    for report in rebuild_reports(engine, metrics, since, last, keep=deal_filter.keeps):
        overall = report.all
        out.append((report.as_of, overall.velocity.value if overall else None, True))
    return out


def _dec(value: Decimal | int | None) -> str | None:
    return None if value is None else str(value)


def _scope(s: ScopeVelocity) -> dict[str, Any]:
    lv = s.levers
    return {
        "scope": s.scope,
        "key": s.key,
        "label": s.label,
        "velocity": _dec(s.velocity.value),
        "undefined_reason": s.velocity.undefined_reason,
        "opportunities": _dec(lv.opportunities),
        "won": lv.won,
        "lost": lv.lost,
        "win_rate": _dec(lv.win_rate),
        "avg_deal_value": _dec(lv.avg_deal_value),
        "cycle_days": _dec(lv.cycle_days),
    }


def _when(value: dt.datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def digest_data(d: Digest) -> dict[str, Any]:
    """The digest as JSON-ready data (decimals as strings), for webhooks and files."""
    return {
        "sources": [
            {
                "source": s.source,
                "last_ok_at": _when(s.last_ok_at),
                "last_attempt_at": _when(s.last_attempt_at),
                "failed": s.failed,
                "stale": s.stale,
                "error": s.error,
            }
            for s in d.freshness.sources
        ],
        "max_data_age_hours": d.freshness.max_age_hours,
        "banner": [s.source for s in d.freshness.banner],
        "unknown_fields": [
            {"source": u.source, "fields": list(u.fields), "rules_off": list(u.rules)}
            for u in d.coverage.unknown
        ],
        "left_out": {
            "won_without_amount": d.left_out.no_amount,
            "won_without_rate": d.left_out.no_rate,
            "closed_without_close_date": d.left_out.no_close_date,
            "closed_dated_by_last_update": d.left_out.dated_by_update,
        },
        "as_of": d.as_of.isoformat(),
        "currency": d.currency,
        "window_days": d.window_days,
        "overall": _scope(d.overall),
        "trends": [
            {
                "days": t.days,
                "available": t.available,
                "previous": _dec(t.previous),
                "change": _dec(t.change),
                "change_pct": _dec(t.change_pct),
                "rebuilt": t.rebuilt,
            }
            for t in d.trends
        ],
        "what_ifs": [
            {"lever": w.lever, "label": w.label, "velocity": _dec(w.velocity.value), "change": _dec(w.change)}
            for w in d.what_ifs
        ],
        "pipelines": [_scope(s) for s in d.pipelines],
        "owners": [_scope(s) for s in d.owners],
        "where_deals_wait": [
            {
                "pipeline": w.pipeline_name,
                "stage": w.stage_name,
                "median_days": _dec(w.median_days),
                "deals": w.deals,
            }
            for w in d.waits
        ],
        "hygiene": {
            "open_deals": d.hygiene.open_deals,
            "stalled_deals": d.hygiene.stalled_deals,
            "by_rule": dict(d.hygiene.by_rule),
            "bottlenecks": {
                b: {
                    "deals": d.hygiene.by_bottleneck[b],
                    "rules": list(BOTTLENECKS[b]),
                    "share": _dec(d.hygiene.share(b)),
                }
                for b in BOTTLENECKS
            },
        },
        "movement": None if d.movement is None else movement_data(d.movement),
        "forecast": None if d.forecast is None else forecast_json(d.forecast),
        "worst_deals": [
            {
                "source": s.source,
                "id": s.external_id,
                "title": s.title,
                "owner": s.owner_name,
                "amount": _dec(s.amount),
                "currency": s.currency,
                "link": s.link,
                "rules": list(s.rules),
            }
            for s in d.worst
        ],
    }
