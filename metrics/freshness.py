"""How fresh the store's data is, per source: the facts every digest and report show.

Read from ``sync_runs`` for each configured source:

* ``last_ok_at``: when its last good sync finished (``None``: never);
* its last finished sync attempt (``running`` rows are ignored): when it
  ended, and, when it failed, the error the sync stored (secrets are masked
  before errors are stored, see ``sync.engine``).

A source is **failed** when its last attempt failed (in ``velocity run`` that is
this run's sync), **stale** when its last good sync is older than
``max_age_hours`` (``notify.max_data_age_hours``, default 26) or never
happened. Either puts a banner line on top of the digest. When no source ever
synced well there is nothing to report: ``nothing_synced`` is true, and the
notifier sends neither digest nor reminders.

The record is small and plain so that every renderer (text, Markdown, HTML,
Slack, and others) can show it without reading the store.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa

from sales_velocity.sync.store import sync_runs_table

__all__ = ["DEFAULT_MAX_AGE_HOURS", "Freshness", "SourceFreshness", "read_freshness"]

DEFAULT_MAX_AGE_HOURS = 26


@dataclass(frozen=True, slots=True)
class SourceFreshness:
    """One source's freshness row.

    ``failed`` means its last sync attempt failed (``error`` says why);
    ``stale`` that its last good sync (``last_ok_at``) is older than the
    allowed age, or never happened.
    """

    source: str
    last_ok_at: dt.datetime | None
    last_attempt_at: dt.datetime | None
    failed: bool
    stale: bool
    error: str | None = None

    @property
    def needs_banner(self) -> bool:
        """Whether this source puts a warning on top of the digest."""
        return self.failed or self.stale


@dataclass(frozen=True, slots=True)
class Freshness:
    """Every source's freshness, and the age beyond which data is stale."""

    sources: tuple[SourceFreshness, ...]
    max_age_hours: int = DEFAULT_MAX_AGE_HOURS
    checked_at: dt.datetime | None = None

    @property
    def banner(self) -> tuple[SourceFreshness, ...]:
        """The sources to warn about on top of the digest (failed or stale)."""
        return tuple(s for s in self.sources if s.needs_banner)

    @property
    def nothing_synced(self) -> bool:
        """No source has ever synced well: no digest, no reminders."""
        return not any(s.last_ok_at is not None for s in self.sources)

    @property
    def failed_sources(self) -> tuple[str, ...]:
        """Sources whose last sync failed: their reminders are held back."""
        return tuple(s.source for s in self.sources if s.failed)


def _aware(value: dt.datetime | str | None) -> dt.datetime | None:
    """Aggregates over UTCDateTime come back raw on SQLite; make them aware UTC."""
    if value is None:
        return None
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def read_freshness(
    engine: sa.Engine,
    sources: Sequence[str] | None,
    *,
    now: dt.datetime,
    max_age_hours: int = DEFAULT_MAX_AGE_HOURS,
) -> Freshness:
    """Read each source's last good sync and last attempt from ``sync_runs``.

    Args:
        engine: the store.
        sources: the configured source names, in order; ``None``: every source
            that has a sync run in the store.
        now: the clock (aware).
        max_age_hours: a last good sync older than this is stale.
    """
    runs = sync_runs_table.c
    rows: list[SourceFreshness] = []
    limit = now - dt.timedelta(hours=max_age_hours)
    with engine.connect() as conn:
        if sources is None:
            sources = sorted(conn.execute(sa.select(runs.source).distinct()).scalars())
        for name in sources:
            last_ok = _aware(conn.execute(
                sa.select(sa.func.max(runs.finished_at)).where(runs.source == name, runs.status == "ok")
            ).scalar())
            last = conn.execute(
                sa.select(runs.status, runs.finished_at, runs.started_at, runs.error)
                .where(runs.source == name, runs.status.in_(("ok", "failed", "interrupted")))
                .order_by(runs.started_at.desc(), runs.id.desc()).limit(1)
            ).first()
            failed = last is not None and last.status != "ok"
            rows.append(SourceFreshness(
                source=name,
                last_ok_at=last_ok,
                last_attempt_at=_aware(last.finished_at or last.started_at) if last is not None else None,
                failed=failed,
                stale=last_ok is None or last_ok < limit,
                error=(last.error or "unknown error") if failed and last is not None else None,
            ))
    return Freshness(tuple(rows), max_age_hours, now)
