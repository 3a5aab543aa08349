"""End to end: the Pipedrive connector against the local fake company, synced into the store."""

from __future__ import annotations

import datetime as dt
import io
import random
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from sales_velocity.connectors.pipedrive import PipedriveConnector, PipedriveSettings
from sales_velocity.kernel.testing.contract import check_connector, check_stream
from sales_velocity.kernel.testing.fake_pipedrive import FIXTURES, FakePipedrive, FakeTime
from sales_velocity.sync.engine import SyncResult, read_cursor, sync_source
from sales_velocity.sync.store import (
    deals_table,
    owners_table,
    stage_events_table,
    stages_table,
    sync_runs_table,
)

SOURCE = "pipedrive"
START = dt.datetime(2026, 9, 1, 8, 0, tzinfo=dt.UTC)
STAGES = {1: 1, 2: 1, 3: 1, 4: 1, 5: 2}  # stage -> pipeline, as in the fixtures
CATALOG_REQUESTS = 3  # pipelines, stages, users


def seed(fake: FakePipedrive, count: int, *, seed_value: int = 7) -> None:
    """``count`` deals made 30 s apart: mostly open, some won/lost, some with activities."""
    rng = random.Random(seed_value)
    fake.now = START
    for n in range(count):
        fake.advance(30)
        stage = rng.choice(list(STAGES))
        status = rng.choices(["open", "won", "lost"], weights=[7, 2, 1])[0]
        deal = fake.add_deal(title=f"Deal {n}", value=rng.randrange(1, 500) * 100, stage_id=stage,
                             pipeline_id=STAGES[stage], owner_id=rng.choice([11, 12]))
        if status != "open":
            fake.update_deal(deal["id"], status=status)
        elif n % 5 == 0:
            fake.add_activity(deal["id"], "2026-12-01", "09:30:00")
            fake.add_activity(deal["id"], "2026-08-15", done=True)
    fake.advance(3600)


@pytest.fixture
def fake() -> FakePipedrive:
    """A company of 1,100 deals (three pages of the deal list)."""
    company = FakePipedrive()
    seed(company, 1100)
    return company


@pytest.fixture
def url(fake: FakePipedrive) -> Iterator[str]:
    """The fake, served on 127.0.0.1."""
    with fake.serve() as base_url:
        yield base_url


@pytest.fixture
def fake_time() -> FakeTime:
    """Waits that take no time."""
    return FakeTime()


def make(fake: FakePipedrive, url: str, fake_time: FakeTime, **overrides: Any) -> PipedriveConnector:
    """A connector on the fake, with fake time."""
    raw: dict[str, Any] = {"name": SOURCE, "kind": "pipedrive", "api_token": fake.token,
                           "company_domain": "acme", "base_url": url,
                           "custom_fields": {"Next step": "next_step"}}
    raw.update(overrides)
    return PipedriveConnector(PipedriveSettings.model_validate(raw), sleep=fake_time.sleep,
                              clock=fake_time.clock, now=lambda: fake.now)


def sync(store: sa.Engine, fake: FakePipedrive, url: str, fake_time: FakeTime, *, full: bool = False,
         **overrides: Any) -> SyncResult:
    """One sync of the fake into the store."""
    return sync_source(store, make(fake, url, fake_time, **overrides), full=full, now=lambda: fake.now)


def server_view(fake: FakePipedrive) -> dict[str, tuple[Any, ...]]:
    """What the store should hold for each deal the server still has."""
    return {
        str(d["id"]): (
            "deleted" if d["is_deleted"] else d["status"], bool(d["is_archived"]), str(d["stage_id"]),
            None if d["value"] is None else Decimal(str(d["value"])), d["title"],
            dt.datetime.fromisoformat(d["update_time"]),
        )
        for d in fake.deals.values()
    }


def store_view(store: sa.Engine) -> dict[str, tuple[Any, ...]]:
    """The store's deals of the source, in ``server_view``'s shape."""
    t = deals_table
    with store.connect() as conn:
        rows = conn.execute(sa.select(t.c.external_id, t.c.status, t.c.archived, t.c.stage_id, t.c.amount,
                                      t.c.title, t.c.updated_at).where(t.c.source == SOURCE))
        return {row[0]: tuple(row[1:]) for row in rows}


def cursor(store: sa.Engine) -> str | None:
    """The stored cursor of the source."""
    with store.connect() as conn:
        return read_cursor(conn, SOURCE)


def deal_requests(fake: FakePipedrive, since: int = 0) -> list[str]:
    """Requests to the deal list after the first ``since`` log lines."""
    return [line for line in fake.log[since:] if line.startswith("GET /api/v2/deals?")]


class TestFirstSync:
    def test_every_deal_and_the_catalog_reach_the_store(self, store, fake, url, fake_time):
        """A first sync stores all deals as the server has them, with owners and stages."""
        result = sync(store, fake, url, fake_time)
        assert (result.status, result.error) == ("ok", None)
        assert result.seen == result.inserted == 1100
        assert store_view(store) == server_view(fake)
        assert len(deal_requests(fake)) == 3  # 500 + 500 + 100
        assert cursor(store) == max(d["update_time"] for d in fake.deals.values())
        with store.connect() as conn:
            emails = dict(conn.execute(sa.select(owners_table.c.external_id, owners_table.c.email)).all())
        assert emails == {"11": "kari@example.com", "12": "ola@example.com"}

    def test_stage_rotting_settings_reach_the_store(self, store, fake, url, fake_time):
        """Rotting days where rotting is on, none where it is off; never won/lost stages."""
        sync(store, fake, url, fake_time)
        s = stages_table
        with store.connect() as conn:
            rows = conn.execute(sa.select(s.c.external_id, s.c.rotting_days, s.c.probability, s.c.is_won,
                                          s.c.is_lost).where(s.c.source == SOURCE)).all()
        by_id = {row[0]: row[1:] for row in rows}
        assert by_id["3"] == (14, Decimal("0.6"), False, False)
        assert by_id["5"][0] == 7
        assert by_id["4"][0] is None  # days_to_rotten is set, rotting is off
        assert "6" not in by_id       # deleted stage

    def test_activity_dates_and_the_next_step_field_arrive(self, store, fake, url, fake_time):
        """Open deals get next/last activity times and the 'Next step' custom field."""
        deal = next(d for d in fake.deals.values() if d["next_activity_id"] and d["status"] == "open")
        fake.update_deal(deal["id"], custom_fields={"5f2d8c7a1e0b4c3d9a8b7c6d5e4f3a2b1c0d9e8f": "Call CFO"})
        sync(store, fake, url, fake_time)
        t = deals_table
        with store.connect() as conn:
            row = conn.execute(sa.select(t.c.next_activity_at, t.c.last_activity_at, t.c.next_step, t.c.link)
                               .where(t.c.external_id == str(deal["id"]))).one()
        assert row.next_activity_at == dt.datetime(2026, 12, 1, 9, 30, tzinfo=dt.UTC)
        assert row.last_activity_at == dt.datetime(2026, 8, 15, tzinfo=dt.UTC)
        assert row.next_step == "Call CFO"
        assert row.link == f"https://acme.pipedrive.com/deal/{deal['id']}"

    def test_the_stream_keeps_the_connector_contract(self, fake, url, fake_time):
        """The contract suite holds on a real pull from the fake."""
        connector = make(fake, url, fake_time)
        check_connector(connector)
        deals, rejects, checkpoints = check_stream(connector.deals(None), SOURCE)
        assert len(deals) == 1100
        assert not rejects
        assert checkpoints[-1].complete


class TestLaterSyncs:
    def test_changes_and_new_deals_are_picked_up(self, store, fake, url, fake_time):
        """After updates, a stage move, a win and new deals, the store equals the server again."""
        sync(store, fake, url, fake_time)
        ids = sorted(fake.deals)
        fake.advance(600)
        fake.update_deal(ids[0], value=123456, title="Renamed")
        fake.update_deal(ids[1], stage_id=4 if fake.deals[ids[1]]["stage_id"] != 4 else 3)
        fake.update_deal(ids[2], status="won")
        fake.add_deal(title="Brand new", stage_id=2)
        before = len(fake.log)
        result = sync(store, fake, url, fake_time)
        assert result.status == "ok"
        assert (result.inserted, result.updated) == (1, 3)
        assert store_view(store) == server_view(fake)
        (first,) = deal_requests(fake, before)
        assert "updated_since=" in first
        with store.connect() as conn:
            moved = conn.execute(sa.select(stage_events_table.c.stage_id).where(
                stage_events_table.c.external_id == str(ids[1]))).scalars().all()
        assert len(moved) == 2

    def test_a_sync_with_nothing_changed_makes_a_handful_of_requests(self, store, fake, url, fake_time):
        """Nothing changed, catalog still fresh: dealFields and the two deal lists, nothing written."""
        sync(store, fake, url, fake_time)
        fake.advance(1800)
        before = len(fake.log)
        result = sync(store, fake, url, fake_time)
        assert (result.status, result.inserted, result.updated) == ("ok", 0, 0)
        assert len(fake.log) - before <= 3, fake.log[before:]

    def test_deleted_deals_become_deleted(self, store, fake, url, fake_time):
        """A soft delete (status=deleted) is caught by the next incremental sync."""
        sync(store, fake, url, fake_time)
        gone = sorted(fake.deals)[10:13]
        fake.advance(60)
        for deal_id in gone:
            fake.delete_deal(deal_id)
        result = sync(store, fake, url, fake_time)
        view = store_view(store)
        assert result.status == "ok"
        assert {view[str(i)][0] for i in gone} == {"deleted"}
        assert view == server_view(fake)

    def test_a_full_sync_catches_deals_purged_from_the_server(self, store, fake, url, fake_time):
        """A deal gone for good is only seen missing by a full pull, which marks it deleted."""
        sync(store, fake, url, fake_time)
        purged = sorted(fake.deals)[20]
        fake.purge_deal(purged)
        fake.advance(60)
        sync(store, fake, url, fake_time)
        assert store_view(store)[str(purged)][0] != "deleted"  # incremental cannot know
        result = sync(store, fake, url, fake_time, full=True)
        view = store_view(store)
        assert result.deleted == 1
        assert view.pop(str(purged))[0] == "deleted"
        assert view == server_view(fake)

    def test_archived_deals_are_stored_as_archived(self, store, fake, url, fake_time):
        """Archiving moves a deal to the archived list; the store keeps it, flagged archived."""
        sync(store, fake, url, fake_time)
        archived = sorted(fake.deals)[30:32]
        fake.advance(60)
        for deal_id in archived:
            fake.archive_deal(deal_id)
        result = sync(store, fake, url, fake_time)
        view = store_view(store)
        assert result.status == "ok"
        assert [view[str(i)][1] for i in archived] == [True, True]
        assert view == server_view(fake)
        assert sync(store, fake, url, fake_time, full=True).deleted == 0  # archived is not gone


class TestFaults:
    def test_a_429_in_the_middle_of_paging_is_waited_out(self, store, fake, url, fake_time):
        """The second deal page answers 429 once; the sync waits for the reset and completes."""
        fake.rate_limit("/api/v2/deals", skip=1, reset=2)
        result = sync(store, fake, url, fake_time)
        assert result.status == "ok"
        assert store_view(store) == server_view(fake)
        assert len(deal_requests(fake)) == 4  # three pages, one of them twice
        assert sum(fake_time.sleeps) == pytest.approx(2)  # backoff, then the rest of the reset

    def test_a_bad_token_fails_the_source_without_leaking(self, store, fake, url, fake_time):
        """401 fails the sync with a clear error, once, and no token in it."""
        result = sync(store, fake, url, fake_time, api_token="wrong-token-abc")
        assert result.status == "failed"
        assert result.error is not None
        assert "HTTP 401" in result.error
        assert "wrong-token-abc" not in result.error
        assert fake.token not in result.error
        assert len(fake.log) == 1
        assert store_view(store) == {}

    def test_a_403_html_block_stops_at_once(self, store, fake, url, fake_time):
        """Cloudflare's block page fails the source as 'blocked' without a retry loop."""
        html = (FIXTURES / "blocked_403.html").read_text()
        fake.fail("/api/v2/deals", 403, times=50, body=html, content_type="text/html")
        result = sync(store, fake, url, fake_time)
        assert result.status == "failed"
        assert "blocked" in (result.error or "")
        assert len(deal_requests(fake)) == 1

    def test_a_spent_daily_budget_stops_and_the_next_day_resumes(self, store, fake, url, fake_time):
        """The budget runs out mid-pull: what was read is kept; the next run resumes and completes."""
        fake.daily_tokens = 5 + 5 + 20 + 10 + 20 + 10 + 10 * 4  # catalog, fields, archived, one page
        first = sync(store, fake, url, fake_time)
        assert first.status == "failed"
        assert "daily API budget is spent" in (first.error or "")
        kept = store_view(store)
        assert 0 < len(kept) < 1100
        assert cursor(store) is not None
        fake.daily_tokens = None  # midnight
        before = len(fake.log)
        second = sync(store, fake, url, fake_time)
        assert second.status == "ok"
        assert "updated_since=" in deal_requests(fake, before)[0]
        assert store_view(store) == server_view(fake)

    def test_a_crash_mid_sync_then_a_new_run_leaves_store_equal_to_server(self, store, fake, url, fake_time):
        """A server that dies after the first page: the page stays, the next run finishes the job."""
        fake.fail("/api/v2/deals", 500, skip=1, times=100)
        crashed = sync(store, fake, url, fake_time, max_attempts=2)
        assert crashed.status == "failed"
        assert len(store_view(store)) == 500
        resumed_from = cursor(store)
        assert resumed_from is not None
        fake.failures.clear()
        fake.advance(60)
        fake.update_deal(sorted(fake.deals)[0], title="Changed while we were down")
        before = len(fake.log)
        again = sync(store, fake, url, fake_time)
        assert again.status == "ok"
        assert store_view(store) == server_view(fake)
        assert len(deal_requests(fake, before)) == 2  # resumed: 600 deals left, not 1,100
        with store.connect() as conn:
            statuses = conn.execute(sa.select(sync_runs_table.c.status).order_by(sync_runs_table.c.id))
            assert statuses.scalars().all() == ["failed", "ok"]


@pytest.mark.slow
class TestFiveThousandDeals:
    def test_velocity_sync_pipedrive_stores_a_company_of_5000_deals(self, tmp_path: Path):
        """``velocity sync pipedrive`` stores 5,000 deals; after changes the next sync matches again."""
        from sales_velocity.scheduler import main  # the CLI is the composition root: import it only here

        fake = FakePipedrive()
        seed(fake, 5000, seed_value=11)
        db = tmp_path / "velocity.db"
        with fake.serve() as base_url:
            config = tmp_path / "velocity.toml"
            config.write_text(
                'timezone = "Europe/Oslo"\ncurrency = "EUR"\n'
                f'[store]\nurl = "sqlite:///{db}"\n'
                '[[sources]]\nname = "pipedrive"\nkind = "pipedrive"\n'
                'api_token = "${PIPEDRIVE_TOKEN}"\ncompany_domain = "acme"\n'
                f'base_url = "{base_url}"\nrequests_per_window = 1000\n',
                encoding="utf-8",
            )
            env = {"PIPEDRIVE_TOKEN": fake.token}

            def velocity(*args: str) -> tuple[int, str]:
                out = io.StringIO()
                code = main(["--config", str(config), "--log-level", "warning", *args], env=env, out=out,
                            now=lambda: fake.now)
                return code, out.getvalue()

            assert velocity("init")[0] == 0
            code, printed = velocity("sync", "pipedrive")
            assert code == 0, printed
            store = sa.create_engine(f"sqlite:///{db}")
            assert len(store_view(store)) == 5000
            assert store_view(store) == server_view(fake)
            ids = sorted(fake.deals)
            fake.advance(600)
            for deal_id in ids[:40]:
                fake.update_deal(deal_id, value=777)
            for deal_id in ids[40:60]:
                fake.delete_deal(deal_id)
            for deal_id in ids[60:70]:
                fake.archive_deal(deal_id)
            code, printed = velocity("sync", "pipedrive")
            assert code == 0, printed
            assert store_view(store) == server_view(fake)
            fake.advance(600)
            before = len(fake.log)
            assert velocity("sync", "pipedrive")[0] == 0
            assert len(fake.log) - before <= 7
            assert fake.token not in printed
            store.dispose()
