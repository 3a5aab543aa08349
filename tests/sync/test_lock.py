"""Per-source locks: advisory locks on PostgreSQL, expiring leases on SQLite."""

from __future__ import annotations

import datetime as dt
import os
import threading
import uuid
from urllib.parse import quote

import pytest
import sqlalchemy as sa

from sales_velocity.sync.lock import DEFAULT_LEASE, named_lock, source_lock
from sales_velocity.sync.store import leases_table, make_engine

T0 = dt.datetime(2026, 11, 26, 7, 0, tzinfo=dt.UTC)


class TestLocks:
    def test_second_holder_is_refused_while_the_first_holds(self, store: sa.Engine) -> None:
        """While one run holds a source's lock, another gets a falsy lease; afterwards it can take it."""
        with source_lock(store, "hubspot", holder="run-a") as first:
            assert first
            with source_lock(store, "hubspot", holder="run-b") as second:
                assert not second
            with source_lock(store, "pipedrive", holder="run-b") as other:
                assert other, "locks are per source"
        with source_lock(store, "hubspot", holder="run-b") as later:
            assert later

    def test_racing_threads_get_the_lock_once(self, store: sa.Engine) -> None:
        """Of several runs racing for the same source at once, exactly one wins."""
        barrier = threading.Barrier(4)
        winners: list[str] = []
        release = threading.Event()

        def race(name: str) -> None:
            barrier.wait()
            with source_lock(store, "csv", holder=name) as lease:
                if lease:
                    winners.append(name)
                    release.wait(timeout=5)

        threads = [threading.Thread(target=race, args=(f"run-{i}",)) for i in range(4)]
        for t in threads:
            t.start()
        while not winners and any(t.is_alive() for t in threads):
            threading.Event().wait(0.01)
        threading.Event().wait(0.2)
        release.set()
        for t in threads:
            t.join(timeout=10)
        assert len(winners) == 1


class TestLeases:
    def test_expired_lease_of_a_killed_process_is_taken_over(self, sqlite_store: sa.Engine) -> None:
        """A lease left by a dead process blocks until it expires, then the next run takes it."""
        with sqlite_store.begin() as conn:  # a process died holding this lease
            conn.execute(leases_table.insert().values(
                name="sync:csv", holder="dead", acquired_at=T0,
                expires_at=T0 + dt.timedelta(minutes=30)))
        with named_lock(sqlite_store, "sync:csv", holder="new",
                        clock=lambda: T0 + dt.timedelta(minutes=10)) as early:
            assert not early
        with named_lock(sqlite_store, "sync:csv", holder="new",
                        clock=lambda: T0 + dt.timedelta(minutes=31)) as late:
            assert late

    def test_renew_pushes_the_expiry(self, sqlite_store: sa.Engine) -> None:
        """Renewing a held lease moves its expiry ttl ahead of now."""
        now = [T0]
        with named_lock(sqlite_store, "daily", holder="me", clock=lambda: now[0],
                        heartbeat=False) as lease:
            now[0] = T0 + dt.timedelta(minutes=20)
            lease.renew()
            with sqlite_store.connect() as conn:
                expires = conn.execute(sa.select(leases_table.c.expires_at)).scalar_one()
        assert expires == T0 + dt.timedelta(minutes=20) + DEFAULT_LEASE
        with sqlite_store.connect() as conn:
            assert conn.execute(sa.select(sa.func.count()).select_from(leases_table)).scalar() == 0


@pytest.mark.parametrize("db_url", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True)
def test_stores_in_two_schemas_of_one_database_do_not_block_each_other(db_url: str) -> None:
    """PostgreSQL advisory locks are per database: the schema is in the key, so each store locks its own."""
    other_schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = make_engine(os.environ["VELOCITY_TEST_DATABASE_URL"])
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{other_schema}"'))
    first = make_engine(db_url)
    second = make_engine(db_url.split("?options=")[0] + "?options=" + quote(f"-csearch_path={other_schema}"))
    try:
        with source_lock(first, "hubspot", holder="a") as a, source_lock(second, "hubspot", holder="b") as b:
            assert a
            assert b, "a store in another schema is not held by this one's sync"
            with source_lock(first, "hubspot", holder="c") as c:
                assert not c, "within one store the lock still holds"
    finally:
        first.dispose()
        second.dispose()
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{other_schema}" CASCADE'))
        admin.dispose()
