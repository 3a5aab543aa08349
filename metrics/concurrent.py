"""Independent read queries run side by side, one connection each.

The daily digest needs several aggregates that do not depend on each other
(hygiene, stage waits, the worst stalled deals). Each is one SQL statement whose
work happens inside the database: PostgreSQL runs them in separate backends,
and Python's ``sqlite3`` releases the GIL while SQLite steps through a query, so
on SQLite too they use more than one core. On a two-core machine this takes the
digest from the sum of its queries to about the longest one (see
``bench/README.md``).

An in-memory SQLite database is private to one connection, so there the calls
run one after the other.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import sqlalchemy as sa

from sales_velocity.sync.store import reading_only

__all__ = ["can_read_concurrently", "read_concurrently"]


def can_read_concurrently(engine: sa.Engine) -> bool:
    """Whether separate connections of ``engine`` see the same data (not in-memory SQLite)."""
    if engine.dialect.name != "sqlite":
        return True
    database = engine.url.database
    return bool(database) and database != ":memory:" and "mode=memory" not in str(engine.url)


def read_concurrently(engine: sa.Engine, calls: list[Callable[[], Any]]) -> list[Any]:
    """Run ``calls`` (each opening its own connection of ``engine``) at once; return results in order.

    The first exception raised by a call is re-raised after all calls finished.
    The calls only read: on SQLite their transactions are deferred (``reading_only``),
    so they run side by side and never wait for a writer.
    """

    def read(call: Callable[[], Any]) -> Any:
        with reading_only():
            return call()

    if len(calls) < 2 or not can_read_concurrently(engine):
        return [read(call) for call in calls]
    with ThreadPoolExecutor(max_workers=len(calls), thread_name_prefix="velocity-read") as pool:
        futures = [pool.submit(read, call) for call in calls]
        return [future.result() for future in futures]
