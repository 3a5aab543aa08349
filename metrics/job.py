"""The daily metrics job: compute velocity and keep one snapshot per scope and day.

``run_metrics`` replaces the snapshots of ``(as_of, window_days)`` in one
transaction, so re-running a day (or back-filling a missed one) is idempotent.
Snapshots feed the digest's trends (``load_snapshots``) and let a report be
rebuilt without recomputing it (``snapshot_for``).

A snapshot of a day computed after that day ended (a back-fill, ``--as-of`` in
the past, or the history rebuild of ``metrics.history``) is marked ``rebuilt``.

Stored levers are rounded to the columns' precision (win rate to 10 places,
average value to 4, cycle days to 6); the stored velocity is the computed one.
"""

from __future__ import annotations

import datetime as dt
import time
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import sqlalchemy as sa
import structlog

from sales_velocity.metrics.settings import MetricsSettings
from sales_velocity.metrics.velocity import (
    Levers,
    ScopeKind,
    ScopeVelocity,
    Velocity,
    VelocityReport,
    compute_velocity,
)
from sales_velocity.sync.store import snapshots_table

__all__ = ["load_history", "load_snapshots", "run_metrics", "snapshot_for", "snapshot_rows"]

log = structlog.get_logger(__name__)

_SCOPE_ORDER: dict[str, int] = {"all": 0, "pipeline": 1, "owner": 2}
_WIN_RATE_PLACES = Decimal("1e-10")
_MONEY_PLACES = Decimal("1e-4")
_CYCLE_PLACES = Decimal("1e-6")


def _has_timezone_column() -> bool:
    """Whether the snapshot table records the time zone (added by a later migration)."""
    return "timezone" in snapshots_table.c


def _round(value: Decimal | int | None, places: Decimal) -> Decimal | None:
    return None if value is None else Decimal(value).quantize(places, rounding=ROUND_HALF_UP)


def snapshot_rows(report: VelocityReport, computed_at: dt.datetime, *, rebuilt: bool) -> list[dict[str, Any]]:
    """The snapshot rows of a report, one per scope (``rebuilt``: reconstructed after its day)."""
    return [_row(report, s, computed_at, rebuilt) for s in report.scopes]


def _row(report: VelocityReport, s: ScopeVelocity, computed_at: dt.datetime, rebuilt: bool) -> dict[str, Any]:
    row: dict[str, Any] = {
        "as_of": report.as_of,
        "window_days": report.window_days,
        "scope": s.scope,
        "key": s.key,
        "label": s.label,
        "currency": report.currency,
        "opportunities": int(s.levers.opportunities),
        "won": s.levers.won,
        "lost": s.levers.lost,
        "win_rate": _round(s.levers.win_rate, _WIN_RATE_PLACES),
        "avg_deal_value": _round(s.levers.avg_deal_value, _MONEY_PLACES),
        "cycle_days": _round(s.levers.cycle_days, _CYCLE_PLACES),
        "velocity": s.velocity.value,
        "undefined_reason": s.velocity.undefined_reason,
        "excluded_no_amount": s.excluded_no_amount,
        "excluded_currency": s.excluded_currency,
        "computed_at": computed_at,
        "rebuilt": rebuilt,
    }
    if _has_timezone_column():
        row["timezone"] = report.timezone
    return row


def run_metrics(engine: sa.Engine, settings: MetricsSettings, as_of: dt.date, *,
                now: dt.datetime | None = None) -> VelocityReport:
    """Compute velocity for ``as_of`` and store one snapshot row per scope.

    Uses ``settings.window_days``. Rows already stored for ``(as_of,
    window_days)`` are replaced in the same transaction, so re-running a day
    (or back-filling a past one) gives the same table.

    Args:
        engine: The store.
        settings: The metrics settings.
        as_of: The local date whose end the metrics describe.
        now: When the computation happens (stored as ``computed_at``); default: now.

    Returns:
        The computed report.
    """
    started = time.monotonic()
    computed_at = now or dt.datetime.now(dt.UTC)
    report = compute_velocity(engine, settings, as_of)
    # a day that had ended before the computation is a reconstruction, not a snapshot taken on the day
    rebuilt = as_of < computed_at.astimezone(settings.zone).date()
    snaps = snapshots_table
    with engine.begin() as conn:
        conn.execute(sa.delete(snaps).where(snaps.c.as_of == as_of,
                                            snaps.c.window_days == report.window_days))
        conn.execute(sa.insert(snaps), snapshot_rows(report, computed_at, rebuilt=rebuilt))
    overall = report.all
    log.info(
        "metrics.computed",
        as_of=as_of.isoformat(),
        window_days=report.window_days,
        scopes=len(report.scopes),
        velocity=None if overall is None or overall.velocity.value is None else str(overall.velocity.value),
        undefined_reason=None if overall is None else overall.velocity.undefined_reason,
        duration_ms=round((time.monotonic() - started) * 1000),
    )
    return report


def load_snapshots(engine: sa.Engine, scope: str, key: str, since: dt.date, until: dt.date,
                   window_days: int) -> list[tuple[dt.date, Decimal | None]]:
    """Stored velocity of one scope for each day in ``[since, until]`` that has a snapshot.

    Args:
        engine: The store.
        scope: ``all``, ``pipeline`` or ``owner``.
        key: The scope key (``""`` for all).
        since: First day, inclusive.
        until: Last day, inclusive.
        window_days: The window the snapshots were computed with.

    Returns:
        ``(as_of, velocity)`` pairs by date; velocity ``None`` where it was undefined.
    """
    snaps = snapshots_table
    query = (
        sa.select(snaps.c.as_of, snaps.c.velocity)
        .where(snaps.c.scope == scope, snaps.c.key == key, snaps.c.window_days == window_days,
               snaps.c.as_of >= since, snaps.c.as_of <= until)
        .order_by(snaps.c.as_of)
    )
    with engine.connect() as conn:
        return [(row.as_of, row.velocity) for row in conn.execute(query)]


def load_history(engine: sa.Engine, scope: str, key: str, since: dt.date, until: dt.date,
                 window_days: int) -> list[tuple[dt.date, Decimal | None, bool]]:
    """Like :func:`load_snapshots`, with whether each day's snapshot was rebuilt (not taken on the day)."""
    snaps = snapshots_table
    query = (
        sa.select(snaps.c.as_of, snaps.c.velocity, snaps.c.rebuilt)
        .where(snaps.c.scope == scope, snaps.c.key == key, snaps.c.window_days == window_days,
               snaps.c.as_of >= since, snaps.c.as_of <= until)
        .order_by(snaps.c.as_of)
    )
    with engine.connect() as conn:
        return [(row.as_of, row.velocity, bool(row.rebuilt)) for row in conn.execute(query)]


def has_snapshots(engine: sa.Engine, window_days: int, before: dt.date) -> bool:
    """Whether any snapshot of this window exists before ``before`` (false on the first run)."""
    snaps = snapshots_table
    with engine.connect() as conn:
        return conn.execute(
            sa.select(snaps.c.as_of)
            .where(snaps.c.window_days == window_days, snaps.c.as_of < before).limit(1)
        ).first() is not None


def snapshot_for(engine: sa.Engine, as_of: dt.date, window_days: int, *,
                 timezone: str | None = None) -> VelocityReport | None:
    """The report stored for ``(as_of, window_days)``, or ``None`` when there is none.

    Args:
        engine: The store.
        as_of: The as-of date.
        window_days: The window length.
        timezone: The report's time zone when the table does not record it
            (the current schema does not); default ``""`` (unknown).

    Returns:
        The rebuilt report, scopes in report order, levers at stored precision.
    """
    snaps = snapshots_table
    query = sa.select(snaps).where(snaps.c.as_of == as_of, snaps.c.window_days == window_days)
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    if not rows:
        return None
    scopes = [
        ScopeVelocity(
            scope=_scope_kind(row.scope),
            key=row.key,
            label=row.label,
            levers=Levers(row.opportunities, row.won, row.lost, row.win_rate, row.avg_deal_value,
                          row.cycle_days),
            velocity=Velocity(row.velocity, row.undefined_reason),
            excluded_no_amount=row.excluded_no_amount,
            excluded_currency=row.excluded_currency,
        )
        for row in rows
    ]
    scopes.sort(key=lambda s: (_SCOPE_ORDER[s.scope], s.label.casefold(), s.key))
    stored_zone = rows[0]._mapping.get("timezone") if _has_timezone_column() else None
    return VelocityReport(as_of, window_days, rows[0].currency, stored_zone or timezone or "", tuple(scopes))


def _scope_kind(value: str) -> ScopeKind:
    if value == "pipeline":
        return "pipeline"
    if value == "owner":
        return "owner"
    return "all"


def missed_days(engine: sa.Engine, window_days: int, as_of: dt.date, limit: int) -> list[dt.date]:
    """Days before ``as_of`` without a snapshot since the last one (at most ``limit``)."""
    snaps = snapshots_table
    last = None
    with engine.connect() as conn:
        last = conn.execute(
            sa.select(sa.func.max(snaps.c.as_of)).where(
                snaps.c.window_days == window_days, snaps.c.as_of < as_of)
        ).scalar()
    if last is None or limit <= 0:
        return []
    first = max(last + dt.timedelta(days=1), as_of - dt.timedelta(days=limit))
    return [first + dt.timedelta(days=n) for n in range((as_of - first).days)]
