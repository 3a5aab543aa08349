"""One sync per source (and one daily run) at a time, across processes and hosts.

* PostgreSQL: a session-level advisory lock (``pg_try_advisory_lock``) on a
  connection held for the duration; the server releases it when the process
  dies, so a crash never leaves a stale lock.
* SQLite (and anything else): a lease row in ``sync_leases`` with an expiry. A
  holder renews it while it works (``Lease.renew``); a process killed while
  holding it blocks others only until the lease expires.

Both are used the same way::

    with source_lock(engine, "hubspot", holder=run_id) as lease:
        if not lease:
            ...  # someone else is syncing this source: skip it, exit 0
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager

import sqlalchemy as sa
import structlog

from sales_velocity.sync.store import leases_table

__all__ = ["DEFAULT_LEASE", "Lease", "daily_lock", "named_lock", "source_lock"]

log = structlog.get_logger(__name__)

DEFAULT_LEASE = dt.timedelta(minutes=30)
Clock = Callable[[], dt.datetime]


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Lease:
    """A held (or refused) lock. Truthy when held."""

    def __init__(self, engine: sa.Engine, name: str, holder: str, held: bool,
                 ttl: dt.timedelta, clock: Clock) -> None:
        self.engine = engine
        self.name = name
        self.holder = holder
        self.held = held
        self.ttl = ttl
        self.clock = clock

    def __bool__(self) -> bool:
        return self.held

    def renew(self) -> None:
        """Push the lease's expiry ``ttl`` ahead (a no-op for advisory locks)."""
        if not self.held or self.engine.dialect.name == "postgresql":
            return
        with self.engine.begin() as conn:
            conn.execute(
                leases_table.update()
                .where(leases_table.c.name == self.name, leases_table.c.holder == self.holder)
                .values(expires_at=self.clock() + self.ttl)
            )


def _advisory_key(name: str) -> int:
    """A stable signed 64-bit key for ``name``."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


def _try_lease(engine: sa.Engine, name: str, holder: str, ttl: dt.timedelta, now: dt.datetime) -> bool:
    """Take the lease row if it is free or expired; one atomic statement decides."""
    with engine.begin() as conn:
        conn.execute(
            leases_table.delete().where(leases_table.c.name == name,
                                        leases_table.c.expires_at <= now)
        )
        try:
            conn.execute(leases_table.insert().values(
                name=name, holder=holder, acquired_at=now, expires_at=now + ttl))
        except sa.exc.IntegrityError:
            return False
    return True


@contextmanager
def named_lock(engine: sa.Engine, name: str, *, holder: str, ttl: dt.timedelta = DEFAULT_LEASE,
               clock: Clock = _utcnow) -> Iterator[Lease]:
    """Hold the lock ``name`` for the ``with`` block if nobody else does; yield a ``Lease``."""
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            key = _advisory_key(name)
            held = bool(conn.execute(sa.select(sa.func.pg_try_advisory_lock(key))).scalar())
            conn.commit()
            try:
                yield Lease(engine, name, holder, held, ttl, clock)
            finally:
                if held:
                    conn.execute(sa.select(sa.func.pg_advisory_unlock(key)))
                    conn.commit()
        return
    try:
        held = _try_lease(engine, name, holder, ttl, clock())
    except sa.exc.OperationalError as exc:  # e.g. database locked for longer than busy_timeout
        log.warning("lock.unavailable", lock=name, error=str(exc.orig))
        held = False
    try:
        yield Lease(engine, name, holder, held, ttl, clock)
    finally:
        if held:
            with engine.begin() as conn:
                conn.execute(leases_table.delete().where(
                    leases_table.c.name == name, leases_table.c.holder == holder))


def source_lock(engine: sa.Engine, source: str, *, holder: str,
                ttl: dt.timedelta = DEFAULT_LEASE, clock: Clock = _utcnow) -> AbstractContextManager[Lease]:
    """The lock that keeps one sync per source."""
    return named_lock(engine, f"sync:{source}", holder=holder, ttl=ttl, clock=clock)


def daily_lock(engine: sa.Engine, as_of: dt.date, *, holder: str,
               ttl: dt.timedelta = DEFAULT_LEASE, clock: Clock = _utcnow) -> AbstractContextManager[Lease]:
    """The lock that keeps one daily metrics-and-notify step at a time."""
    return named_lock(engine, "daily", holder=holder, ttl=ttl, clock=clock)
