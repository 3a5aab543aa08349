"""Sync runs that will never finish: ``running`` rows whose holder is gone.

A ``sync_runs`` row says ``running`` from the moment a sync starts until it
ends. A process killed with SIGKILL (or OOM, or a lost node) never closes it.
Such a row's holder is gone when

* it ran on this host and its pid is dead; or
* nobody holds the source's sync lock any more (SQLite: no live lease of that
  run; PostgreSQL: no session holds the source's advisory lock); a live sync
  always holds it from before its row is written until after it is closed.

``velocity status`` (read-only) reports such rows as ``interrupted`` without
writing; the next sync of the source, which holds the lock and so knows every
other ``running`` row of it is dead, closes them as ``interrupted`` in the store.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import sqlalchemy as sa
import structlog

from sales_velocity.sync.lock import advisory_key, holder_alive
from sales_velocity.sync.store import leases_table, sync_runs_table

__all__ = ["INTERRUPTED", "RunningRow", "close_interrupted", "gone_reason", "running_rows"]

log = structlog.get_logger(__name__)

INTERRUPTED = "interrupted"


@dataclass(frozen=True, slots=True)
class RunningRow:
    """A ``running`` row of ``sync_runs``."""

    id: int
    run_id: str
    source: str
    started_at: dt.datetime
    seen: int
    host: str | None
    pid: int | None

    def where(self) -> str:
        """``pid N on host`` (or ``run <id>`` before host and pid were recorded)."""
        return f"pid {self.pid} on {self.host}" if self.pid else f"run {self.run_id}"


def running_rows(conn: sa.Connection, source: str) -> list[RunningRow]:
    """The source's ``running`` rows, newest first."""
    r = sync_runs_table.c
    rows = conn.execute(
        sa.select(r.id, r.run_id, r.source, r.started_at, r.seen, r.host, r.pid)
        .where(r.source == source, r.status == "running")
        .order_by(r.started_at.desc(), r.id.desc())
    ).all()
    return [RunningRow(int(x.id), x.run_id, x.source, x.started_at, int(x.seen or 0), x.host, x.pid)
            for x in rows]


def _lock_held(conn: sa.Connection, row: RunningRow) -> bool:
    """Whether the source's sync lock is held (on SQLite: by this row's run, not expired)."""
    name = f"sync:{row.source}"
    if conn.dialect.name == "postgresql":
        key = advisory_key(conn, name) & 0xFFFFFFFFFFFFFFFF
        held = conn.execute(sa.text(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
            "AND classid::bigint = :hi AND objid::bigint = :lo AND objsubid = 1"
        ), {"hi": key >> 32, "lo": key & 0xFFFFFFFF}).scalar()
        return bool(held)
    c = leases_table.c
    lease = conn.execute(sa.select(c.expires_at).where(c.name == name, c.holder == row.run_id)).first()
    return lease is not None and lease.expires_at > dt.datetime.now(dt.UTC)  # leases run on real time


def gone_reason(conn: sa.Connection, row: RunningRow) -> str | None:
    """Why ``row``'s holder is gone (it will never finish), or ``None`` while it may be running."""
    if holder_alive(row.host, row.pid) is False:
        return f"interrupted: its process ({row.where()}) is gone"
    if not _lock_held(conn, row):
        return f"interrupted: its process ({row.where()}) no longer holds the source's lock"
    return None


def close_interrupted(engine: sa.Engine, source: str, *, by: str) -> int:
    """Close every ``running`` row of ``source`` as ``interrupted``; return how many.

    Call only while holding the source's sync lock (and before this run's own
    row exists): then no other sync of the source is alive.
    """
    r = sync_runs_table.c
    with engine.begin() as conn:
        rows = running_rows(conn, source)
        for row in rows:
            conn.execute(sync_runs_table.update().where(r.id == row.id, r.status == "running").values(
                status=INTERRUPTED,
                error=f"interrupted: its process ({row.where()}) stopped before the sync finished; "
                      f"found by run {by}"))
    for row in rows:
        log.warning("sync.interrupted_found", source=source, run_id=row.run_id, where=row.where(),
                    started_at=row.started_at.isoformat(), seen=row.seen)
    return len(rows)
