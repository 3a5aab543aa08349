"""Store errors outside the sync loop: a failed source or channel, a summary, a true exit code, no traceback.

PostgreSQL: the test kills the `velocity run` process's own server connections
(``pg_terminate_backend`` from another connection, what a server restart does
to them) mid-sync and mid-notify. SQLite: the store is full during notify
(``PRAGMA max_page_count`` caps the file, SQLite's own "database or disk is full").
"""

from __future__ import annotations

import datetime as dt
import io
import os
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from werkzeug import Request, Response

from sales_velocity.kernel.testing.fake_hubspot import FakeHubSpot
from sales_velocity.kernel.testing.fake_pipedrive import FakePipedrive
from sales_velocity.scheduler import main
from sales_velocity.sync.store import make_engine, outbox_table, sync_runs_table, upgrade
from tests.crm_sources import hubspot_source, pipedrive_source

PG_URL = os.environ.get("VELOCITY_TEST_DATABASE_URL", "")
SEED = Path(__file__).parent / "fixtures" / "csv" / "seed_example.csv"
NOW = dt.datetime(2026, 11, 26, 9, 0, tzinfo=dt.UTC)
postgres_only = pytest.mark.parametrize("db_url", [pytest.param("postgres", marks=pytest.mark.postgres)],
                                        indirect=True)


def seed_pipedrive(fake: FakePipedrive, count: int) -> None:
    """``count`` deals 30 s apart, every seventh won or lost."""
    fake.now = dt.datetime(2026, 10, 1, 8, 0, tzinfo=dt.UTC)
    for n in range(count):
        fake.advance(30)
        deal = fake.add_deal(title=f"Deal {n}", value=100 * (1 + n % 50), stage_id=1 + n % 5,
                             pipeline_id=1, owner_id=11 + n % 2)
        if n % 7 == 0:
            fake.update_deal(deal["id"], status="won" if n % 2 else "lost")
    fake.advance(3600)


@pytest.fixture
def app_name() -> str:
    """A PostgreSQL application_name that marks the connections of the process under test."""
    return f"velocity-{uuid.uuid4().hex[:10]}"


def terminate(app: str) -> int:
    """Terminate every server connection named ``app`` from another connection; return how many."""
    admin = make_engine(PG_URL)
    with admin.connect() as conn:
        killed = conn.execute(sa.text(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = :app AND pid <> pg_backend_pid()"), {"app": app}).scalar()
    admin.dispose()
    return int(killed or 0)


def run_process(config: Path, url: str) -> subprocess.CompletedProcess[str]:
    """`velocity run` in a process of its own."""
    env = {**os.environ, "VELOCITY_DATABASE_URL": url}
    return subprocess.run([sys.executable, "-m", "sales_velocity.scheduler", "--config", str(config), "run"],
                          capture_output=True, text=True, timeout=300, env=env)


@pytest.fixture
def crms() -> Iterator[tuple[FakeHubSpot, FakePipedrive, str]]:
    """The fake HubSpot (600 deals: several pages) and Pipedrive (200 deals) on loopback."""
    hubspot = FakeHubSpot()
    hubspot.add_deals(600)
    pipedrive = FakePipedrive()
    seed_pipedrive(pipedrive, 200)
    with hubspot.serve(), pipedrive.serve() as pipedrive_url:
        yield hubspot, pipedrive, pipedrive_url


@postgres_only
def test_connections_killed_mid_sync_fail_that_source_only(
    tmp_path: Path, db_url: str, app_name: str, crms: tuple[FakeHubSpot, FakePipedrive, str],
) -> None:
    """Connections killed mid-HubSpot: it fails with a store error, Pipedrive syncs, digest sent, exit 1."""
    hubspot, pipedrive, pipedrive_url = crms
    url = f"{db_url}&application_name={app_name}"
    engine = make_engine(db_url)
    upgrade(engine)
    killed: list[int] = []

    def kill_on_third_page(endpoint: str) -> None:
        if endpoint == "deals" and hubspot.counts["deals"] == 3 and not killed:
            killed.append(terminate(app_name))

    hubspot.on_request.append(kill_on_third_page)
    config = tmp_path / "velocity.toml"
    config.write_text(f"""
timezone = "UTC"
{hubspot_source(hubspot)}{pipedrive_source(pipedrive, pipedrive_url)}[[notify.channels]]
kind = "file"
name = "files"
path = "out"
send = ["digest"]
""", encoding="utf-8")
    done = run_process(config, url)
    assert killed, "the hook ran"
    assert killed[0] >= 1, "the hook killed the run's connections"
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 1, done.stdout + done.stderr
    hub_line = next(line for line in done.stdout.splitlines() if line.startswith("hubspot: "))
    assert hub_line.startswith("hubspot: failed:")
    # the driver's class for a killed backend: OperationalError, or its subclass AdminShutdown when
    # the kill lands inside a batch's savepoint
    assert re.search(r"error: store error: (OperationalError|AdminShutdown)", done.stdout), done.stdout
    assert any(line.startswith("pipedrive: ok:") for line in done.stdout.splitlines())
    with engine.connect() as conn:
        runs = {r.source: r for r in conn.execute(sa.select(sync_runs_table))}
        digests = conn.execute(sa.select(outbox_table.c.status).where(outbox_table.c.kind == "digest")).all()
    engine.dispose()
    assert runs["hubspot"].status == "failed", "the interrupted run is closed, not left running"
    assert "store error" in runs["hubspot"].error
    assert runs["pipedrive"].status == "ok"
    assert runs["pipedrive"].seen == len(pipedrive.deals)
    assert [d.status for d in digests] == ["sent"], "the daily step still ran, on a fresh connection"


@postgres_only
def test_connections_killed_mid_notify_cost_nothing(tmp_path: Path, db_url: str, app_name: str,
                                                    httpserver: Any) -> None:
    """Connections killed while a webhook receives the digest: both channels deliver, no traceback, exit 0."""
    killed: list[int] = []

    def receive(_request: Request) -> Response:
        killed.append(terminate(app_name))
        return Response("ok", status=200)

    httpserver.expect_request("/hook").respond_with_handler(receive)
    shutil.copy(SEED, tmp_path / "seed.csv")
    config = tmp_path / "velocity.toml"
    config.write_text(
        'timezone = "UTC"\ncurrency = "NOK"\n'
        '[[sources]]\nname = "seed"\nkind = "csv"\npath = "seed.csv"\n'
        f'[[notify.channels]]\nname = "hook"\nkind = "webhook"\nurl = "{httpserver.url_for("/hook")}"\n'
        'send = ["digest"]\n'
        '[[notify.channels]]\nname = "files"\nkind = "file"\npath = "out"\nsend = ["digest"]\n',
        encoding="utf-8")
    engine = make_engine(db_url)
    upgrade(engine)
    done = run_process(config, f"{db_url}&application_name={app_name}")
    assert killed, "the webhook was called"
    assert killed[0] >= 1, "the daily step's connections were killed mid-send"
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 0, done.stdout + done.stderr
    assert "channel hook: sent digest:" in done.stdout
    assert "channel files: sent digest:" in done.stdout
    assert "lock.lost" in done.stderr, "losing the locks with their session is logged"
    with engine.connect() as conn:
        box = conn.execute(sa.select(outbox_table.c.channel, outbox_table.c.status)).all()
    engine.dispose()
    assert sorted(box) == [("files", "sent"), ("hook", "sent")]


def test_a_full_sqlite_store_during_notify_is_a_failed_run_not_a_crash(tmp_path: Path) -> None:
    """A full store while queueing: a summary line, exit 1, nothing half-queued; the next run sends."""
    shutil.copy(SEED, tmp_path / "seed.csv")
    config = tmp_path / "velocity.toml"
    config.write_text(
        'timezone = "UTC"\ncurrency = "NOK"\n'
        '[[sources]]\nname = "seed"\nkind = "csv"\npath = "seed.csv"\n'
        '[[notify.channels]]\nname = "files"\nkind = "file"\npath = "out"\nsend = ["digest"]\n',
        encoding="utf-8")
    url = f"sqlite:///{tmp_path / 'velocity.db'}"
    env = {"VELOCITY_DATABASE_URL": url}

    def velocity(*args: str) -> tuple[int, str]:
        out = io.StringIO()
        return main(["--config", str(config), *args], env=env, out=out, now=lambda: NOW), out.getvalue()

    assert velocity("run", "--no-notify", "--as-of", "2026-11-26")[0] == 0
    engine = make_engine(url)
    with engine.connect() as conn:
        pages = int(conn.exec_driver_sql("PRAGMA page_count").scalar() or 0)
        assert conn.exec_driver_sql("PRAGMA freelist_count").scalar() == 0
    engine.dispose()

    def cap(dbapi_conn: Any, _record: Any) -> None:  # the disk is full: the file cannot grow
        dbapi_conn.execute(f"PRAGMA max_page_count = {pages}")

    sa.event.listen(sa.Engine, "connect", cap)
    try:
        code, out = velocity("notify", "--as-of", "2026-11-26")
    finally:
        sa.event.remove(sa.Engine, "connect", cap)
    assert code == 1, out
    assert ("nothing new sent: today's messages could not be queued (store error: OperationalError: "
            "database or disk is full)") in out
    engine = make_engine(url)
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(outbox_table)).scalar() == 0
    engine.dispose()
    code, out = velocity("notify", "--as-of", "2026-11-26")
    assert code == 0, out
    assert "channel files: sent digest:2026-11-26" in out


def test_a_read_only_sqlite_store_is_one_line_and_exit_1(tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """A store refusing writes (SQLite query_only): `sync` says so in one stderr line, exit 1, not skipped."""
    shutil.copy(SEED, tmp_path / "seed.csv")
    config = tmp_path / "velocity.toml"
    config.write_text('timezone = "UTC"\n[[sources]]\nname = "seed"\nkind = "csv"\npath = "seed.csv"\n',
                      encoding="utf-8")
    url = f"sqlite:///{tmp_path / 'velocity.db'}"
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()

    def refuse_writes(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.execute("PRAGMA query_only = ON")

    out = io.StringIO()
    sa.event.listen(sa.Engine, "connect", refuse_writes)
    try:
        code = main(["--config", str(config), "sync"], env={"VELOCITY_DATABASE_URL": url}, out=out,
                    now=lambda: NOW)
    finally:
        sa.event.remove(sa.Engine, "connect", refuse_writes)
    err = capsys.readouterr().err
    assert code == 1, out.getvalue()
    assert "skipped" not in out.getvalue()
    line = next(x for x in err.splitlines() if x.startswith("velocity: "))
    assert "attempt to write a readonly database" in line
    assert "Traceback" not in err
