"""One sync per source (and one daily run) at a time, across processes and hosts.

* PostgreSQL: a session-level advisory lock (``pg_try_advisory_lock``, keyed by
  schema and name) on a connection held for the duration; the server releases it when the process
  dies, so a crash never leaves a stale lock.
* SQLite (and anything else): a lease row in ``sync_leases`` naming its holder
  (run id, host, pid) with a short expiry (``DEFAULT_LEASE``, one minute). A
  heartbeat thread renews it every third of its TTL while the holder works. A
  lease is taken over when its holder is gone: it ran on this host and its pid
  is dead (``kill -9``, OOM), or it was not renewed within its TTL (a holder on
  another host that died or hangs). A refused lease whose holder has stopped
  renewing says so (``Lease.holder_stale``): skipping because of it is not success.

Both are used the same way::

    with source_lock(engine, "hubspot", holder=run_id) as lease:
        if not lease:
            ...  # someone else is syncing this source: skip it, exit 0

``hold_all`` takes several locks, waiting (bounded) for the busy ones: the daily
step holds every source's sync lock while it computes, so it never reads a
source that is mid-sync.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass

import sqlalchemy as sa
import structlog

from sales_velocity.sync.store import leases_table

__all__ = [
    "DEFAULT_LEASE",
    "Lease",
    "LeaseHolder",
    "advisory_key",
    "daily_lock",
    "hold_all",
    "holder_alive",
    "named_lock",
    "source_lock",
]

log = structlog.get_logger(__name__)

DEFAULT_LEASE = dt.timedelta(seconds=60)
"""A lease's TTL: a heartbeat renews it every third of this while the holder lives."""
Clock = Callable[[], dt.datetime]


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


HOST = socket.gethostname()[:255]


def holder_alive(host: str | None, pid: int | None) -> bool | None:
    """Whether process ``pid`` on ``host`` lives: ``None`` when it cannot be told (another host)."""
    if host != HOST or not pid:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


@dataclass(frozen=True, slots=True)
class LeaseHolder:
    """Who holds a lease row, and since when it was last renewed."""

    holder: str
    host: str | None
    pid: int | None
    renewed_at: dt.datetime | None
    expires_at: dt.datetime

    def describe(self) -> str:
        """``run <id> (pid N on host)`` for messages."""
        where = f" (pid {self.pid} on {self.host})" if self.pid else ""
        return f"run {self.holder}{where}"


class Lease:
    """A held (or refused) lock. Truthy when held; ``other`` names the holder when refused."""

    def __init__(self, engine: sa.Engine, name: str, holder: str, held: bool,
                 ttl: dt.timedelta, clock: Clock, other: LeaseHolder | None = None) -> None:
        self.engine = engine
        self.name = name
        self.holder = holder
        self.held = held
        self.ttl = ttl
        self.clock = clock
        self.other = other

    def __bool__(self) -> bool:
        return self.held

    @property
    def holder_stale(self) -> bool:
        """Refused by a holder that has not renewed for more than half its TTL (it may be hung)."""
        if self.held or self.other is None:
            return False
        renewed = self.other.renewed_at or (self.other.expires_at - self.ttl)
        return self.clock() - renewed > self.ttl / 2

    def renew(self) -> None:
        """Push the lease's expiry ``ttl`` ahead (a no-op for advisory locks)."""
        if not self.held or self.engine.dialect.name == "postgresql":
            return
        now = self.clock()
        with self.engine.begin() as conn:
            conn.execute(
                leases_table.update()
                .where(leases_table.c.name == self.name, leases_table.c.holder == self.holder)
                .values(expires_at=now + self.ttl, renewed_at=now)
            )


def advisory_key(conn: sa.Connection, name: str) -> int:
    """The signed 64-bit PostgreSQL advisory lock key of ``name`` in the connection's schema.

    Advisory locks are per database; the schema is part of the key, so stores
    in two schemas of one database never block each other's syncs.
    """
    schema = conn.execute(sa.select(sa.func.current_schema())).scalar() or ""
    return int.from_bytes(hashlib.sha256(f"{schema}/{name}".encode()).digest()[:8], "big", signed=True)


def _read_holder(conn: sa.Connection, name: str) -> LeaseHolder | None:
    c = leases_table.c
    row = conn.execute(sa.select(c.holder, c.host, c.pid, c.renewed_at, c.expires_at)
                       .where(c.name == name)).first()
    return None if row is None else LeaseHolder(*row)


def _try_lease(engine: sa.Engine, name: str, holder: str, ttl: dt.timedelta,
               now: dt.datetime) -> LeaseHolder | None:
    """Take the lease row if it is free or its holder is gone; return the holder that keeps it."""
    c = leases_table.c
    with engine.begin() as conn:  # BEGIN IMMEDIATE on SQLite: the check and the insert are one step
        other = _read_holder(conn, name)
        if other is not None:
            gone = other.expires_at <= now or holder_alive(other.host, other.pid) is False
            if not gone:
                return other
            conn.execute(leases_table.delete().where(c.name == name, c.holder == other.holder))
            log.warning("lock.taken_over", lock=name, previous=other.describe(),
                        reason="expired" if other.expires_at <= now else "its process is gone")
        try:
            with conn.begin_nested():
                conn.execute(leases_table.insert().values(
                    name=name, holder=holder, acquired_at=now, expires_at=now + ttl,
                    host=HOST, pid=os.getpid(), renewed_at=now))
        except sa.exc.IntegrityError:
            return _read_holder(conn, name) or LeaseHolder("unknown", None, None, now, now + ttl)
    return None


class _Heartbeat:
    """Renews a lease every ``interval`` seconds on a daemon thread until stopped."""

    def __init__(self, lease: Lease, interval: float) -> None:
        self.lease = lease
        self.interval = interval
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"lease-{lease.name}", daemon=True)

    def _run(self) -> None:
        while not self.stopped.wait(self.interval):
            try:
                self.lease.renew()
            except Exception as exc:  # the next beat tries again; the TTL leaves room for two misses
                log.warning("lock.renew_failed", lock=self.lease.name, error=f"{type(exc).__name__}")

    def __enter__(self) -> _Heartbeat:
        self.thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stopped.set()
        self.thread.join(timeout=30)


@contextmanager
def named_lock(engine: sa.Engine, name: str, *, holder: str, ttl: dt.timedelta = DEFAULT_LEASE,
               clock: Clock = _utcnow, heartbeat: bool = True) -> Iterator[Lease]:
    """Hold the lock ``name`` for the ``with`` block if nobody else does; yield a ``Lease``.

    The lock is released in ``finally``: also on SIGINT and SIGTERM (which the CLI
    turns into ``KeyboardInterrupt``). On SQLite a heartbeat renews the lease
    while it is held (``heartbeat=False`` for tests that drive the clock).
    """
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            key = advisory_key(conn, name)
            held = bool(conn.execute(sa.select(sa.func.pg_try_advisory_lock(key))).scalar())
            conn.commit()
            try:
                yield Lease(engine, name, holder, held, ttl, clock)
            finally:
                if held:
                    _unlock(conn, name, key)
        return
    other: LeaseHolder | None = None
    try:
        other = _try_lease(engine, name, holder, ttl, clock())
        held = other is None
    except sa.exc.OperationalError as exc:  # database locked for longer than busy_timeout
        if "locked" not in str(exc.orig):  # read-only, full, gone: a store error, not someone else's lock
            raise
        log.warning("lock.unavailable", lock=name, error=str(exc.orig))
        held = False
    lease = Lease(engine, name, holder, held, ttl, clock, other)
    try:
        if held and heartbeat:
            with _Heartbeat(lease, ttl.total_seconds() / 3):
                yield lease
        else:
            yield lease
    finally:
        if held:
            _release(engine, name, holder)


def _unlock(conn: sa.Connection, name: str, key: int) -> None:
    """Release an advisory lock; a session the server dropped took its locks with it."""
    try:
        conn.execute(sa.select(sa.func.pg_advisory_unlock(key)))
        conn.commit()
    except (sa.exc.DBAPIError, sa.exc.PendingRollbackError) as exc:
        log.warning("lock.lost", lock=name, error=type(getattr(exc, "orig", exc)).__name__,
                    note="the store dropped the session holding it; the lock went with it")
        conn.invalidate()


def _release(engine: sa.Engine, name: str, holder: str) -> None:
    """Delete a lease row; if the store cannot be written, the lease expires (or its pid is seen dead)."""
    try:
        with engine.begin() as conn:
            conn.execute(leases_table.delete().where(
                leases_table.c.name == name, leases_table.c.holder == holder))
    except sa.exc.DBAPIError as exc:
        log.warning("lock.not_released", lock=name, error=str(exc.orig).splitlines()[0] if exc.orig else "",
                    note="taken over once it expires or this process is gone")


def source_lock(engine: sa.Engine, source: str, *, holder: str,
                ttl: dt.timedelta = DEFAULT_LEASE, clock: Clock = _utcnow,
                heartbeat: bool = True) -> AbstractContextManager[Lease]:
    """The lock that keeps one sync per source."""
    return named_lock(engine, f"sync:{source}", holder=holder, ttl=ttl, clock=clock,
                      heartbeat=heartbeat)


def daily_lock(engine: sa.Engine, as_of: dt.date, *, holder: str,
               ttl: dt.timedelta = DEFAULT_LEASE, clock: Clock = _utcnow,
               heartbeat: bool = True) -> AbstractContextManager[Lease]:
    """The lock that keeps one daily metrics-and-notify step at a time."""
    return named_lock(engine, "daily", holder=holder, ttl=ttl, clock=clock, heartbeat=heartbeat)


@contextmanager
def hold_all(engine: sa.Engine, sources: Sequence[str], *, holder: str, wait_s: float,
             poll_s: float = 0.5, ttl: dt.timedelta = DEFAULT_LEASE,
             sleep: Callable[[float], None] = time.sleep,
             monotonic: Callable[[], float] = time.monotonic) -> Iterator[dict[str, Lease]]:
    """Take every source's sync lock, waiting up to ``wait_s`` for busy ones.

    Yields the refused leases by source (empty when all are held). Every lock
    taken is held until the block ends, so no sync of these sources starts while
    it runs; they are released in ``finally``.
    """
    deadline = monotonic() + wait_s
    busy: dict[str, Lease] = {}
    with ExitStack() as stack:
        todo = list(dict.fromkeys(sources))
        while True:
            busy = {}
            for source in todo:
                cm = source_lock(engine, source, holder=holder, ttl=ttl)
                lease = cm.__enter__()
                if lease:
                    stack.push(cm.__exit__)
                else:
                    cm.__exit__(None, None, None)
                    busy[source] = lease
            todo = list(busy)
            if not todo or monotonic() >= deadline:
                break
            log.info("daily.waiting", sources=todo)
            sleep(min(poll_s, max(0.0, deadline - monotonic())))
        yield busy
