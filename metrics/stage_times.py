"""Where deals wait: the median days deals won in the window spent in each stage.

From ``deal_stage_events``: a deal's time in a stage runs from entering it to
entering the next one (``LEAD`` over the deal's events by time), or to its close
for the last stage it was in. Only deals won in the window ``[start(T-W+1), start(T+1))``
count (close time: ``closed_at``, else ``updated_at``, see ``metrics.window``),
and won/lost stages themselves are left out (nobody waits in "Won").

The won deals are materialised first (``WITH won AS MATERIALIZED``, SQLite 3.35+
and PostgreSQL 12+): without it SQLite scanned every stage event and looked its
deal up, where a few thousand won deals need only their own events (2.4x faster
at 100,000 deals, see ``bench/README.md``).

The median is computed in SQL on every backend: each duration is ranked within
its stage (``ROW_NUMBER``) next to the stage's count (``COUNT(*) OVER``), and the
middle one or two are averaged. No deal is loaded into Python.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal

import sqlalchemy as sa

from sales_velocity.metrics.settings import MetricsSettings
from sales_velocity.metrics.sql import elapsed_days
from sales_velocity.metrics.window import close_time, closed_in_window, window_bounds
from sales_velocity.sync.store import deals_table, pipelines_table, stage_events_table, stages_table

__all__ = ["StageWait", "stage_wait_times"]

TENTH = Decimal("0.1")


@dataclass(frozen=True, slots=True)
class StageWait:
    """The median days spent in one stage by the deals won in the window."""

    source: str
    pipeline_id: str
    pipeline_name: str
    stage_id: str
    stage_name: str
    median_days: Decimal
    deals: int


def stage_wait_times(
    engine: sa.Engine, settings: MetricsSettings, as_of: dt.date, window_days: int | None = None,
    where: sa.ColumnElement[bool] | None = None,
) -> list[StageWait]:
    """Median days per stage for deals won in the window, in pipeline and stage order.

    Args:
        engine: the store.
        settings: the metrics settings (time zone and default window).
        as_of: the local day the window ends with.
        window_days: the window; ``settings.window_days`` when not given.
        where: only deals this holds for (a digest's scope, on the deals table).
    """
    window = window_days or settings.window_days
    start, end = window_bounds(as_of, window, settings.zone)
    d, e = deals_table.c, stage_events_table.c
    won = (
        sa.select(d.source, d.external_id, d.pipeline_id, close_time().label("closed"))
        .where(d.status == "won", closed_in_window(start, end), *([where] if where is not None else []))
        .cte("won")
        .prefix_with("MATERIALIZED")
    )
    left_at = sa.func.lead(e.entered_at).over(
        partition_by=(e.source, e.external_id), order_by=(e.entered_at, e.id),
    )
    visits = (
        sa.select(
            e.source,
            sa.func.coalesce(e.pipeline_id, won.c.pipeline_id).label("pipeline_id"),
            e.stage_id,
            e.entered_at,
            sa.func.coalesce(left_at, won.c.closed).label("left_at"),
        )
        .join(won, sa.and_(won.c.source == e.source, won.c.external_id == e.external_id))
        .cte("visits")
    )
    days = elapsed_days(visits.c.entered_at, visits.c.left_at)
    group = (visits.c.source, visits.c.pipeline_id, visits.c.stage_id)
    durations = (
        sa.select(*group, days.label("days"))
        .where(visits.c.left_at >= visits.c.entered_at)
        .cte("durations")
    )
    dgroup = (durations.c.source, durations.c.pipeline_id, durations.c.stage_id)
    ranked = sa.select(
        *dgroup,
        durations.c.days,
        sa.func.row_number().over(partition_by=dgroup, order_by=durations.c.days).label("rn"),
        sa.func.count().over(partition_by=dgroup).label("n"),
    ).cte("ranked")
    middle = sa.or_(ranked.c.rn == (ranked.c.n + 1) // 2, ranked.c.rn == (ranked.c.n + 2) // 2)
    medians = (
        sa.select(
            ranked.c.source, ranked.c.pipeline_id, ranked.c.stage_id,
            sa.func.avg(ranked.c.days).label("median"), sa.func.max(ranked.c.n).label("n"),
        )
        .where(middle)
        .group_by(ranked.c.source, ranked.c.pipeline_id, ranked.c.stage_id)
        .subquery("medians")
    )
    p, s = pipelines_table.c, stages_table.c
    query = (
        sa.select(
            medians.c.source, medians.c.pipeline_id, medians.c.stage_id, medians.c.median, medians.c.n,
            p.name.label("pipeline_name"), s.name.label("stage_name"),
        )
        .select_from(
            medians.outerjoin(
                pipelines_table, sa.and_(p.source == medians.c.source, p.external_id == medians.c.pipeline_id)
            ).outerjoin(
                stages_table,
                sa.and_(s.source == medians.c.source, s.pipeline_id == medians.c.pipeline_id,
                        s.external_id == medians.c.stage_id),
            )
        )
        .where(sa.func.coalesce(s.is_won, sa.false()) == sa.false(),
               sa.func.coalesce(s.is_lost, sa.false()) == sa.false())
        .order_by(p.display_order, medians.c.source, p.name, s.display_order, medians.c.stage_id)
    )
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    return [
        StageWait(
            source=row.source, pipeline_id=row.pipeline_id or "", pipeline_name=row.pipeline_name or (
                row.pipeline_id or ""), stage_id=row.stage_id, stage_name=row.stage_name or row.stage_id,
            median_days=Decimal(str(row.median)).quantize(TENTH, ROUND_HALF_UP), deals=int(row.n),
        )
        for row in rows
    ]
