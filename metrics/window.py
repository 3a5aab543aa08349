"""The window on the grid of local days, and the three SQL predicates every metric shares.

For an as-of date ``T`` and a window of ``W`` days in the configured zone, the
window is the half-open interval ``[start(T-W+1), start(T+1))``, where
``start(d)`` is local midnight starting day ``d`` (:func:`window_bounds`). Every
comparison is half-open on that grid (see ``shared/DESIGN.md``):

* closed in the window: ``start(T-W+1) <= close < start(T+1)``
  (:func:`closed_in_window`);
* created by ``T``: ``created < start(T+1)``, or no creation date
  (:func:`created_by`);
* open at ``T``: not archived, created by ``T``, and not closed (won, lost) nor
  deleted before ``start(T+1)`` (:func:`open_at`).

A date-only value is stored at its local midnight, so a deal closed on ``T+1``
is out, one closed on ``T-W+1`` is in, and a 90-day window holds 90 days.

A won or lost deal's *close time* is ``closed_at``, or ``updated_at`` when the
CRM gave no close date (:func:`close_time`); with neither it is closed at an
unknown time: out of every window and never open. A deleted deal without
``deleted_at`` was deleted at an unknown time: never open.

Velocity, the drill-down, hygiene, stage times and the history rebuild all use
these functions, so they cannot disagree on a boundary.
"""

from __future__ import annotations

import datetime as dt
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa

from sales_velocity.sync.store import UTCDateTime, deals_table

__all__ = ["close_time", "closed_in_window", "created_by", "day_start", "open_at", "window_bounds"]


def day_start(day: dt.date, zone: ZoneInfo) -> dt.datetime:
    """``start(day)``: local midnight starting ``day``, in UTC."""
    return dt.datetime.combine(day, dt.time(0), tzinfo=zone).astimezone(dt.UTC)


def window_bounds(as_of: dt.date, window_days: int, zone: ZoneInfo) -> tuple[dt.datetime, dt.datetime]:
    """``(start(T-W+1), start(T+1))`` in UTC: the window ``[start, end)`` ending with local day ``as_of``.

    Both bounds are local midnights, so a DST change inside the window does not
    shift it by an hour.
    """
    end_day = as_of + dt.timedelta(days=1)
    return day_start(end_day - dt.timedelta(days=window_days), zone), day_start(end_day, zone)


def _at(moment: dt.datetime | sa.ColumnElement[Any]) -> sa.ColumnElement[Any]:
    if isinstance(moment, dt.datetime):
        return sa.literal(moment, UTCDateTime())
    return moment


def close_time() -> sa.ColumnElement[Any]:
    """SQL: a deal's close time, ``closed_at`` else ``updated_at`` (``NULL``: unknown)."""
    d = deals_table.c
    return sa.func.coalesce(d.closed_at, d.updated_at)


def closed_in_window(start: dt.datetime, end: dt.datetime) -> sa.ColumnElement[bool]:
    """SQL: the close time is in ``[start, end)`` (the status is the caller's to test)."""
    close = close_time()
    return sa.and_(close >= _at(start), close < _at(end))


def created_by(end: dt.datetime) -> sa.ColumnElement[bool]:
    """SQL: created before ``end`` = ``start(T+1)``, or without a creation date."""
    d = deals_table.c
    return sa.or_(d.created_at.is_(None), d.created_at < _at(end))


def open_at(end: dt.datetime) -> sa.ColumnElement[bool]:
    """SQL: the deal was open at ``T``, where ``end`` = ``start(T+1)``, rebuilt from its dates.

    Not archived; created by ``T``; and status ``open``, or won/lost with a close
    time at or after ``end``, or deleted with ``deleted_at`` at or after ``end``.
    """
    d = deals_table.c
    end_p = _at(end)
    return sa.and_(
        sa.not_(d.archived),
        created_by(end),
        sa.or_(
            d.status == "open",
            sa.and_(d.status.in_(("won", "lost")), close_time() >= end_p),
            sa.and_(d.status == "deleted", d.deleted_at >= end_p),
        ),
    )
