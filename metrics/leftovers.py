"""What the levers left out, counted where people read the numbers (digest footer, report table).

* won deals in the window **without an amount**: out of the average deal value;
* won deals in the window **in a currency without a rate** to the base currency:
  out of the average deal value;
* closed (won or lost) deals **without a close date**: one that has a last
  update time is placed in the window by it (counted here as "dated by their
  last update"); one without either is out of every window and of ``N``.

The first two come from the velocity report's "all" scope; the third is one
count query of its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from zoneinfo import ZoneInfo

import sqlalchemy as sa

from sales_velocity.metrics.velocity import VelocityReport, window_bounds
from sales_velocity.sync.store import UTCDateTime, deals_table

__all__ = ["LeftOut", "left_out"]


@dataclass(frozen=True, slots=True)
class LeftOut:
    """Counts of deals the levers could not use, and why."""

    no_amount: int = 0
    """Won deals in the window without an amount."""
    no_rate: int = 0
    """Won deals in the window in a currency without a configured rate."""
    no_close_date: int = 0
    """Closed deals with neither a close date nor a last update: out of every window."""
    dated_by_update: int = 0
    """Closed deals without a close date placed in the window by their last update."""

    @property
    def any(self) -> bool:
        """Whether anything was left out or approximated."""
        return bool(self.no_amount or self.no_rate or self.no_close_date or self.dated_by_update)


def left_out(engine: sa.Engine, report: VelocityReport, zone_name: str | None = None) -> LeftOut:
    """Count what ``report``'s levers left out (its "all" scope plus the undated closed deals)."""
    overall = report.all
    start, end = window_bounds(report.as_of, report.window_days, ZoneInfo(zone_name or report.timezone))
    d = deals_table.c
    start_p, end_p = sa.literal(start, UTCDateTime()), sa.literal(end, UTCDateTime())
    undated = sa.and_(d.status.in_(("won", "lost")), d.closed_at.is_(None))
    query = sa.select(
        sa.func.sum(sa.case((d.updated_at.is_(None), 1), else_=0)),
        sa.func.sum(sa.case((sa.and_(d.updated_at >= start_p, d.updated_at < end_p), 1), else_=0)),
    ).where(undated)
    with engine.connect() as conn:
        none, by_update = conn.execute(query).one()
    return LeftOut(
        no_amount=overall.excluded_no_amount if overall else 0,
        no_rate=overall.excluded_currency if overall else 0,
        no_close_date=int(none or 0),
        dated_by_update=int(by_update or 0),
    )

