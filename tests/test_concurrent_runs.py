"""Two and four `velocity run` processes at once on one store, against the fake HubSpot and Pipedrive.

Each must end with a complete store (every deal, with the CRM's status), one
digest per channel built after every sync that started before it had finished
and counting every open deal of both CRMs, and one reminder per owner; none may
fail with "database is locked". Runs once on SQLite and once on PostgreSQL (a
schema of its own) with ``VELOCITY_TEST_DATABASE_URL``.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from sales_velocity.kernel.testing.fake_hubspot import FakeHubSpot
from sales_velocity.kernel.testing.fake_pipedrive import FakePipedrive
from sales_velocity.sync.store import deals_table, make_engine, outbox_table, sync_runs_table, upgrade
from tests.crm_sources import hubspot_source, pipedrive_source

HUBSPOT_DEALS = 2500
PIPEDRIVE_DEALS = 1100


def seed_pipedrive(fake: FakePipedrive, count: int) -> None:
    """``count`` deals 30 s apart, some won or lost, owners 11 and 12."""
    fake.now = dt.datetime(2026, 10, 1, 8, 0, tzinfo=dt.UTC)
    for n in range(count):
        fake.advance(30)
        stage = 1 + n % 5
        deal = fake.add_deal(title=f"Deal {n}", value=100 * (1 + n % 50), stage_id=stage,
                             pipeline_id=2 if stage == 5 else 1, owner_id=11 + n % 2)
        if n % 7 == 0:
            fake.update_deal(deal["id"], status="won" if n % 2 else "lost")
    fake.advance(3600)


@pytest.fixture
def crms() -> Iterator[tuple[FakeHubSpot, FakePipedrive, str]]:
    """Both fake CRMs served on loopback, seeded; yields them and the Pipedrive URL."""
    hubspot = FakeHubSpot()
    hubspot.add_deals(HUBSPOT_DEALS)
    pipedrive = FakePipedrive()
    seed_pipedrive(pipedrive, PIPEDRIVE_DEALS)
    with hubspot.serve(), pipedrive.serve() as pipedrive_url:
        yield hubspot, pipedrive, pipedrive_url


def write_config(tmp_path: Path, hubspot: FakeHubSpot, pipedrive: FakePipedrive, pipedrive_url: str) -> Path:
    """Both CRMs as sources; two file channels that take the digest and the reminders."""
    config = tmp_path / "velocity.toml"
    config.write_text(f"""
timezone = "UTC"
{hubspot_source(hubspot)}{pipedrive_source(pipedrive, pipedrive_url)}[[notify.channels]]
kind = "file"
name = "files-a"
path = "out-a"
send = ["digest", "reminders"]
[[notify.channels]]
kind = "file"
name = "files-b"
path = "out-b"
send = ["digest", "reminders"]
""", encoding="utf-8")
    return config


def open_at(status: str, closed: str | None, end: dt.datetime) -> bool:
    """Open at ``end``: open now, or closed at a time not before ``end``."""
    if status == "open":
        return True
    if not closed:
        return False
    moment = dt.datetime.fromisoformat(closed.replace("Z", "+00:00"))
    return (moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)) >= end


def spawn_run(config: Path, db_url: str) -> subprocess.Popen[str]:
    """`velocity run` in a process of its own."""
    env = {**os.environ, "VELOCITY_DATABASE_URL": db_url}
    command = [sys.executable, "-m", "sales_velocity.scheduler", "--config", str(config), "run"]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("processes", [2, 4])
def test_runs_at_once_end_with_a_complete_store_and_one_message_each(
    tmp_path: Path, db_url: str, crms: tuple[FakeHubSpot, FakePipedrive, str], processes: int,
) -> None:
    """N `run`s at once: every deal kept, one digest per channel after all syncs, one reminder per owner."""
    hubspot, pipedrive, pipedrive_url = crms
    config = write_config(tmp_path, hubspot, pipedrive, pipedrive_url)
    engine = make_engine(db_url)
    upgrade(engine)
    procs = [spawn_run(config, db_url) for _ in range(processes)]
    outputs = [p.communicate(timeout=300) for p in procs]
    codes = [p.returncode for p in procs]
    text = "\n".join(o[0] + o[1] for o in outputs)
    assert "database is locked" not in text
    assert codes == [0] * processes, text
    with engine.connect() as conn:
        counts: dict[str, int] = {row[0]: row[1] for row in conn.execute(
            sa.select(deals_table.c.source, sa.func.count()).group_by(deals_table.c.source))}
        runs = conn.execute(sa.select(sync_runs_table.c.status, sync_runs_table.c.started_at,
                                      sync_runs_table.c.finished_at)).all()
        box = conn.execute(sa.select(outbox_table.c.channel, outbox_table.c.kind, outbox_table.c.recipient,
                                     outbox_table.c.dedupe_key, outbox_table.c.created_at,
                                     outbox_table.c.status, outbox_table.c.payload)).all()
        stored = {(row.source, row.external_id): row.status for row in conn.execute(
            sa.select(deals_table.c.source, deals_table.c.external_id, deals_table.c.status))}
    engine.dispose()
    assert counts == {"hubspot": HUBSPOT_DEALS, "pipedrive": len(pipedrive.deals)}
    assert {key: status for (source, key), status in stored.items() if source == "hubspot"} == {
        key: status for key, (status, _stage) in hubspot.expected().items()}
    assert {key: status for (source, key), status in stored.items() if source == "pipedrive"} == {
        str(deal_id): deal["status"] for deal_id, deal in pipedrive.deals.items()}
    assert {r.status for r in runs} == {"ok"}
    assert all(r.finished_at is not None for r in runs), "no sync is left running"
    digests = Counter(r.channel for r in box if r.kind == "digest")
    assert digests == {"files-a": 1, "files-b": 1}
    # counted in plain Python from the fakes: deals open at the end of today (UTC), i.e. open now
    # or closed at a time after today (HubSpot's closedate may lie ahead)
    tomorrow = dt.datetime.combine(dt.datetime.now(dt.UTC).date() + dt.timedelta(days=1), dt.time(),
                                   dt.UTC)
    expected = hubspot.expected()
    open_deals = sum(open_at(status, deal.props.get("closedate"), tomorrow) for deal in hubspot.deals.values()
                     if (status := expected[str(deal.id)][0]) != "deleted")
    open_deals += sum(open_at(deal["status"], deal.get("close_time"), tomorrow)
                      for deal in pipedrive.deals.values())
    for row in box:
        if row.kind != "digest":
            continue
        not_done = [r for r in runs if r.started_at < row.created_at and not r.finished_at <= row.created_at]
        assert not not_done, f"the digest was built before these syncs finished: {not_done}"
        overall = row.payload["data"]["overall"]
        assert overall["opportunities"] == str(open_deals), "the digest was built from the complete store"
        assert overall["undefined_reason"] is None
    reminders = Counter((r.channel, r.dedupe_key.split(":")[2]) for r in box if r.kind == "reminders")
    assert reminders, "the fakes' deals have stalled ones: reminders are expected"
    assert set(reminders.values()) == {1}, reminders
    assert {r.status for r in box} == {"sent"}
    for folder in ("out-a", "out-b"):
        files = sorted(p.name for p in (tmp_path / folder).iterdir())
        assert sum(name.startswith("digest") for name in files) == 1
