"""The daily step never beside a sync; leases of dead, killed or stopped holders; SIGTERM.

Process-level behaviour is tested with real processes: `velocity run` in a
subprocess, a holder killed with SIGKILL, a sync stopped with SIGTERM.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import sqlalchemy as sa

from sales_velocity.sync.lock import holder_alive, named_lock, source_lock
from sales_velocity.sync.store import (
    leases_table,
    make_engine,
    outbox_table,
    snapshots_table,
    sync_runs_table,
)

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).parent / "fixtures" / "csv"


def seed_config(tmp_path: Path, db_url: str, extra: str = "") -> Path:
    """The seed CSV as one source, a file channel for the digest, the store at ``db_url``."""
    shutil.copy(FIXTURES / "seed_example.csv", tmp_path / "seed.csv")
    config = tmp_path / "velocity.toml"
    config.write_text(
        'timezone = "UTC"\ncurrency = "NOK"\n'
        f'[store]\nurl = "{db_url}"\n'
        '[[sources]]\nname = "seed"\nkind = "csv"\npath = "seed.csv"\n'
        '[[notify.channels]]\nkind = "file"\nname = "files"\npath = "out"\n' + extra,
        encoding="utf-8",
    )
    return config


def run_cli(config: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`velocity` in a process of its own."""
    return subprocess.run([sys.executable, "-m", "sales_velocity.scheduler", "--config", str(config), *args],
                          capture_output=True, text=True, timeout=timeout, env={**os.environ})


def init(config: Path) -> sa.Engine:
    """Create the store; return an engine on it."""
    done = run_cli(config, "init")
    assert done.returncode == 0, done.stderr
    url = next(line.split('"')[1] for line in config.read_text().splitlines() if line.startswith("url"))
    return make_engine(url)


class TestDailyStepWaitsForSyncs:
    def test_digest_is_held_and_names_the_source_still_syncing(self, tmp_path: Path, db_url: str) -> None:
        """Another run holds a source past the wait: `run` computes and sends nothing, says which, exits 1."""
        config = seed_config(tmp_path, db_url, "[sync]\ndaily_wait_seconds = 1\n")
        engine = init(config)
        with source_lock(engine, "seed", holder="other-run"):
            done = run_cli(config, "run")
        assert done.returncode == 1, done.stdout + done.stderr
        assert "seed: skipped (another run holds this source's lock)" in done.stdout
        assert "daily step held: seed still syncing" in done.stdout
        with engine.connect() as conn:
            assert conn.execute(sa.select(sa.func.count()).select_from(outbox_table)).scalar() == 0
            assert conn.execute(sa.select(sa.func.count()).select_from(snapshots_table)).scalar() == 0
        engine.dispose()

    def test_digest_waits_until_the_other_sync_finished(self, tmp_path: Path, db_url: str) -> None:
        """The daily step waits (bounded) for a source another run holds; it builds the digest after."""
        config = seed_config(tmp_path, db_url, "[sync]\ndaily_wait_seconds = 60\n")
        engine = init(config)
        first = run_cli(config, "sync")  # a good sync before: the digest has data to speak of
        assert first.returncode == 0, first.stdout + first.stderr
        released: list[dt.datetime] = []
        lease_held = threading.Event()

        def other_sync() -> None:
            with source_lock(engine, "seed", holder="other-run"):
                lease_held.set()
                time.sleep(4)
                released.append(dt.datetime.now(dt.UTC))

        thread = threading.Thread(target=other_sync)
        thread.start()
        lease_held.wait(10)
        done = run_cli(config, "run")
        thread.join()
        assert done.returncode == 0, done.stdout + done.stderr
        with engine.connect() as conn:
            created = conn.execute(sa.select(outbox_table.c.created_at)
                                   .where(outbox_table.c.kind == "digest")).scalar_one()
        engine.dispose()
        assert created >= released[0]

    def test_the_scheduler_daily_job_syncs_first(self, tmp_path: Path, db_url: str) -> None:
        """The scheduler's daily job runs that moment's sync before it computes (never beside it)."""
        from sales_velocity.kernel.logs import SecretRedactor
        from sales_velocity.scheduler import Context, cmd_run_daily_locked, load_config

        config = seed_config(tmp_path, db_url)
        engine = init(config)
        import io

        ctx = Context(config=load_config(config, {}), out=io.StringIO(),
                      now=lambda: dt.datetime.now(dt.UTC), redactor=SecretRedactor([]))
        assert cmd_run_daily_locked(ctx) == 0
        with engine.connect() as conn:
            finished = conn.execute(sa.select(sync_runs_table.c.finished_at)).scalar_one()
            created = conn.execute(sa.select(outbox_table.c.created_at)).scalar_one()
        engine.dispose()
        ctx.engine.dispose()
        assert finished <= created


HOLD_SCRIPT = textwrap.dedent("""
    import sys, time
    from sales_velocity.sync.lock import named_lock
    from sales_velocity.sync.store import make_engine
    engine = make_engine(sys.argv[1])
    with named_lock(engine, sys.argv[2], holder="doomed") as lease:
        assert lease
        print("held", flush=True)
        time.sleep(600)
""")


class TestLeases:
    def test_lease_of_a_killed_process_is_taken_over_at_once(self, sqlite_store: sa.Engine) -> None:
        """A holder killed with SIGKILL: the next run takes its lease right away (same host, pid dead)."""
        url = sqlite_store.url.render_as_string()
        proc = subprocess.Popen([sys.executable, "-c", HOLD_SCRIPT, url, "sync:seed"],
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "held"
        with source_lock(sqlite_store, "seed", holder="me") as lease:
            assert not lease, "a live holder keeps its lease"
        proc.kill()
        proc.wait()
        with source_lock(sqlite_store, "seed", holder="me") as lease:
            assert lease, "a dead holder's lease is taken over without waiting for it to expire"

    def test_a_heartbeat_keeps_a_short_lease_alive(self, sqlite_store: sa.Engine) -> None:
        """With a 0.6 s TTL, a holder working for 2 s keeps its lease: the heartbeat renews it."""
        with named_lock(sqlite_store, "sync:x", holder="worker", ttl=dt.timedelta(seconds=0.6)) as lease:
            assert lease
            time.sleep(2)
            with source_lock(sqlite_store, "x", holder="intruder") as other:
                assert not other
            with sqlite_store.connect() as conn:
                row = conn.execute(sa.select(leases_table)).one()
        assert row.holder == "worker"
        assert row.pid == os.getpid()
        assert row.renewed_at > row.acquired_at

    def test_held_by_a_holder_that_stopped_renewing_is_a_failure(self, tmp_path: Path) -> None:
        """A lease on another host not renewed for most of its TTL: `sync` says the source failed, exit 1."""
        db = tmp_path / "velocity.db"
        config = seed_config(tmp_path, f"sqlite:///{db}")
        engine = init(config)
        now = dt.datetime.now(dt.UTC)
        with engine.begin() as conn:
            conn.execute(leases_table.insert().values(
                name="sync:seed", holder="hung", host="elsewhere", pid=1,
                acquired_at=now - dt.timedelta(seconds=50), renewed_at=now - dt.timedelta(seconds=50),
                expires_at=now + dt.timedelta(seconds=10)))
        done = run_cli(config, "sync")
        engine.dispose()
        assert done.returncode == 1, done.stdout
        assert "seed: failed" in done.stdout
        assert "has not renewed its lease" in done.stdout

    def test_holder_alive_tells_dead_from_live(self) -> None:
        """This process is alive; a reaped child is dead; another host cannot be told."""
        proc = subprocess.Popen([sys.executable, "-c", "pass"])
        proc.wait()
        assert holder_alive(os.uname().nodename, os.getpid()) is True
        assert holder_alive(os.uname().nodename, proc.pid) is False
        assert holder_alive("another-host", os.getpid()) is None


SLOW_FEED = textwrap.dedent("""
    import sys, time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    class Slow(BaseHTTPRequestHandler):
        def do_GET(self):
            time.sleep(60)
        def log_message(self, *a):
            pass
    server = ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    print(server.server_port, flush=True)
    server.serve_forever()
""")


class TestSigterm:
    def test_sigterm_releases_the_lease_and_closes_the_run_as_failed(self, tmp_path: Path,
                                                                      db_url: str) -> None:
        """SIGTERM mid-sync (what Docker and Kubernetes send): lease released, the run row failed, exit 1."""
        server = subprocess.Popen([sys.executable, "-c", SLOW_FEED], stdout=subprocess.PIPE, text=True)
        try:
            assert server.stdout is not None
            port = int(server.stdout.readline())
            config = tmp_path / "velocity.toml"
            config.write_text(
                f'[store]\nurl = "{db_url}"\n[[sources]]\nname = "slow"\nkind = "pipedrive"\n'
                f'api_token = "tok-123456"\ncompany_domain = "acme"\nbase_url = "http://127.0.0.1:{port}"\n',
                encoding="utf-8")
            engine = init(config)
            command = [sys.executable, "-m", "sales_velocity.scheduler", "--config", str(config), "sync"]
            proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                with engine.connect() as conn:
                    if conn.execute(sa.select(sync_runs_table.c.id)).first() is not None:
                        break
                time.sleep(0.1)
            time.sleep(0.5)
            proc.send_signal(signal.SIGTERM)
            _out, err = proc.communicate(timeout=30)
        finally:
            server.kill()
            server.wait()
        assert proc.returncode == 1, err
        with engine.connect() as conn:
            status, error = conn.execute(sa.select(sync_runs_table.c.status, sync_runs_table.c.error)).one()
        assert status == "failed"
        assert "interrupted" in error
        with source_lock(engine, "slow", holder="next") as lease:
            assert lease, "the lock was released on the way out"
        with engine.connect() as conn:
            assert conn.execute(sa.select(sa.func.count()).select_from(leases_table)).scalar() == 0
        engine.dispose()
