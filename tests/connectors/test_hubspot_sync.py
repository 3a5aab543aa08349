"""HubSpot end to end: the sync engine and the store against the fake portal.

The store must end equal to the portal after changes, archives, hard deletes and
crashes in the middle of a sync, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

import sales_velocity.sync.engine as engine_module
from sales_velocity.connectors.hubspot import HubSpotConnector
from sales_velocity.kernel.testing.fake_hubspot import TOKEN, FakeHubSpot, RealClock, make_connector
from sales_velocity.scheduler import main
from sales_velocity.sync.engine import SyncResult, read_cursor, sync_source
from sales_velocity.sync.store import deals_table, make_engine

CENT = Decimal("0.0001")
State = dict[str, tuple[str, str | None, Decimal | None, str | None]]


@pytest.fixture
def fake() -> Iterator[FakeHubSpot]:
    """A served portal with 600 deals, an hour old."""
    portal = FakeHubSpot()
    portal.add_deals(600)
    portal.clock.advance(3600)
    with portal.serve():
        yield portal


def store_state(engine: sa.Engine, source: str = "hubspot") -> State:
    """Map id -> (status, stage, amount, owner) for every stored deal of ``source``."""
    d = deals_table
    with engine.connect() as conn:
        rows = conn.execute(sa.select(d.c.external_id, d.c.status, d.c.stage_id, d.c.amount,
                                      d.c.owner_id).where(d.c.source == source))
        return {r.external_id: (r.status, r.stage_id, r.amount, r.owner_id) for r in rows}


def portal_state(fake: FakeHubSpot, purged: State | None = None) -> State:
    """What the store must hold: every deal's status, stage, amount (store precision), owner.

    Hard-deleted deals keep what the store last knew, marked deleted.
    """
    state: State = {}
    for key, (status, stage) in fake.expected().items():
        props = fake.deals[int(key)].props
        raw = props.get("amount")
        amount = Decimal(raw).quantize(CENT) if raw else None
        state[key] = (status, stage, amount, props.get("hubspot_owner_id"))
    for key, (_, stage, amount, owner) in (purged or {}).items():
        state[key] = ("deleted", stage, amount, owner)
    return state


def sync(engine: sa.Engine, connector: HubSpotConnector, fake: FakeHubSpot,
         **kwargs: Any) -> SyncResult:
    """One sync with the portal's clock; the clock then moves an hour on."""
    result = sync_source(engine, connector, now=fake.clock.now, **kwargs)
    fake.clock.advance(3600)
    return result


def change_portal(fake: FakeHubSpot, n: int = 300) -> None:
    """Modify, move, archive and add deals."""
    ids = fake.live_ids()
    fake.modify(ids[:n], amount="4321.5")
    fake.modify(ids[n:n + 20], dealstage="closedwon")
    fake.modify(ids[n + 20:n + 30], dealstage="closedlost", hubspot_owner_id="6166860")
    fake.archive(ids[-15:])
    fake.add_deals(25)


class TestStoreEqualsPortal:
    """After any sequence of syncs the store holds exactly what the portal holds."""

    def test_full_then_incremental(self, store: sa.Engine, fake: FakeHubSpot) -> None:
        """A first sync stores every deal; after changes and archives the next one catches up."""
        connector = make_connector(fake)
        first = sync(store, connector, fake)
        assert (first.status, first.inserted, first.full) == ("ok", 600, False)
        assert store_state(store) == portal_state(fake)
        change_portal(fake)
        second = sync(store, connector, fake)
        assert second.status == "ok"
        assert second.deleted == 0  # incremental: deletes come as archived deals
        assert store_state(store) == portal_state(fake)
        assert fake.counts["search"] >= 2

    def test_nothing_changed_is_a_handful_of_requests(self, store: sa.Engine,
                                                      fake: FakeHubSpot) -> None:
        """A sync with no change makes three requests (catalog still fresh) and writes nothing."""
        connector = make_connector(fake)
        sync(store, connector, fake)
        fake.counts.clear()
        result = sync(store, connector, fake)
        assert fake.counts == {"pipelines": 1, "archived": 1, "search": 1}
        assert (result.seen, result.inserted, result.updated) == (0, 0, 0)

    def test_hard_deletes_caught_by_the_periodic_sweep(self, store: sa.Engine,
                                                       fake: FakeHubSpot) -> None:
        """Deals purged without passing the recycle bin are marked deleted by the next sweep."""
        connector = make_connector(fake, full_sync_every_days=1)
        sync(store, connector, fake)
        before = store_state(store)
        gone = fake.live_ids()[:4]
        fake.purge(gone)
        assert sync(store, connector, fake).deleted == 0  # incremental cannot see a purge
        fake.clock.advance(86_400)
        result = sync(store, connector, fake)
        assert result.deleted == 4
        assert store_state(store) == portal_state(fake, {k: before[k] for k in gone})

    def test_rejects_are_kept_out_and_recorded(self, store: sa.Engine,
                                               fake: FakeHubSpot) -> None:
        """Unreadable deals are counted and listed with their id; the good ones are stored."""
        bad = fake.add_deals(2, amount="12abc")
        fake.clock.advance(3600)
        result = sync(store, make_connector(fake), fake)
        assert result.rejected == 2
        assert {r.external_id for r in result.rejects} == set(bad)
        stored = store_state(store)
        assert set(stored) == set(fake.expected()) - set(bad)


class TestCrashes:
    """A sync that dies mid-way, then a new run: nothing lost, nothing duplicated."""

    def test_server_breaks_mid_full_sweep(self, store: sa.Engine, fake: FakeHubSpot) -> None:
        """A first sync cut off after 3 pages resumes from its checkpoint and completes."""
        connector = make_connector(fake)
        fake.break_after(4, status=500)  # pipelines, owners and 2 pages go through
        failed = sync(store, connector, fake)
        assert failed.status == "failed"
        assert "gave up after 6 attempts" in (failed.error or "")
        assert len(store_state(store)) == 200
        fake.heal()
        change_portal(fake, n=50)
        fake.counts.clear()
        resumed = sync(store, connector, fake)
        assert resumed.status == "ok"
        assert fake.counts["deals"] == 5  # pages 3-7 only: the sweep resumed
        assert store_state(store) == portal_state(fake)

    def test_server_breaks_mid_search(self, store: sa.Engine, fake: FakeHubSpot) -> None:
        """An incremental sync cut off mid-walk keeps its pages; the next run finishes the job.

        No look-back here, so the resumed walk shows it starts where the failed one stopped.
        """
        connector = make_connector(fake, lookback_minutes=0)
        sync(store, connector, fake)
        with store.connect() as conn:
            before = read_cursor(conn, "hubspot")
        change_portal(fake, n=500)
        fake.break_after(2, status=502, endpoint="search")
        failed = sync(store, connector, fake)
        assert failed.status == "failed"
        with store.connect() as conn:
            after = read_cursor(conn, "hubspot")
        assert after != before  # the pages before the failure were checkpointed
        fake.heal()
        fake.counts.clear()
        assert sync(store, connector, fake).status == "ok"
        assert fake.counts["search"] == 1
        assert store_state(store) == portal_state(fake)

    def test_consumer_crashes_after_n_deals(
        self, store: sa.Engine, fake: FakeHubSpot, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The process dying while storing (here: the progress hook raises) loses nothing."""
        monkeypatch.setattr(engine_module, "COMMIT_INTERVAL_S", 0.0)  # every page commits and reports
        connector = make_connector(fake)
        sync(store, connector, fake)
        change_portal(fake, n=550)

        def die(seen: int) -> None:
            if seen >= 300:
                raise RuntimeError("killed")

        crashed = sync(store, connector, fake, batch_size=100, progress=die)
        assert crashed.status == "failed"
        assert sync(store, connector, fake).status == "ok"
        assert store_state(store) == portal_state(fake)

    def test_storm_during_sync(self, store: sa.Engine, fake: FakeHubSpot) -> None:
        """429s and 502s all through both syncs change nothing in the result."""
        fake.storm(0.5, (429, 502, 503), seed=11)
        connector = make_connector(fake)
        assert sync(store, connector, fake).status == "ok"
        change_portal(fake)
        assert sync(store, connector, fake).status == "ok"
        assert store_state(store) == portal_state(fake)
        assert sum(1 for r in fake.log if r.status in (429, 502, 503)) >= 3


@pytest.mark.slow
def test_velocity_sync_twelve_thousand_deals(tmp_path: Path) -> None:
    """``velocity sync hubspot`` stores a 12,000-deal portal, catches up, and exports it.

    This runs on the wall clock in seconds, so a look-back would re-read every deal on
    every sync; it is off here (the look-back is tested with the fake clock).
    """
    fake = FakeHubSpot(clock=RealClock())
    fake.add_deals(12_000)
    config = tmp_path / "velocity.toml"
    config.write_text(f"""
timezone = "Europe/Oslo"
currency = "USD"

[store]
url = "sqlite:///{tmp_path / 'velocity.db'}"

[[sources]]
name = "hubspot"
kind = "hubspot"
access_token = "${{HUBSPOT_TOKEN}}"
base_url = "{{url}}"
portal_id = 1234567
requests_per_10s = 1000
search_requests_per_second = 50
lookback_minutes = 0
""")
    env = {"HUBSPOT_TOKEN": TOKEN}
    with fake.serve():
        config.write_text(config.read_text().replace("{url}", fake.url))

        def velocity(*args: str) -> str:
            out = io.StringIO()
            code = main(["--config", str(config), *args], env=env, out=out)
            assert code == 0, out.getvalue()
            return out.getvalue()

        velocity("init")
        assert "hubspot: ok: 12000 seen, 12000 new" in velocity("sync", "hubspot")
        engine = make_engine(f"sqlite:///{tmp_path / 'velocity.db'}")
        assert store_state(engine) == portal_state(fake)

        ids = fake.live_ids()
        fake.modify(ids[:10_500], amount="123.45")
        fake.modify(ids[10_500:10_600], dealstage="closedwon", hubspot_owner_id="193567884")
        fake.archive(ids[-40:])
        assert "hubspot: ok" in velocity("sync", "hubspot")
        assert store_state(engine) == portal_state(fake)
        assert all(r.status == 200 for r in fake.log)

        fake.counts.clear()
        velocity("sync", "hubspot")
        assert sum(fake.counts.values()) <= 5

        rows = {r["id"]: r for r in map(json.loads,
                                        velocity("export", "--format", "json").splitlines())}
        engine.dispose()
    won = rows[ids[10_500]]
    assert (won["status"], won["stage"], won["owner"]) == ("won", "Closed Won", "Kari Nordmann")
    assert Decimal(rows[ids[0]]["amount"]) == Decimal("123.45")
    assert rows[ids[-1]]["status"] == "deleted"
    assert rows[ids[0]]["link"] == f"https://app.hubspot.com/contacts/1234567/deal/{ids[0]}"
    assert len(rows) == 12_000
