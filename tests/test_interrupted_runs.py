"""A sync killed with SIGKILL shows: `status` and Prometheus say interrupted; the next sync closes it.

Real processes: `velocity sync` against the fake HubSpot on loopback, stalled
mid-pull by the fake and killed with SIGKILL; `status` and the next `sync` are
processes of their own.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

from sales_velocity.kernel.testing.fake_hubspot import FakeHubSpot
from sales_velocity.sync.store import make_engine, sync_runs_table
from tests.crm_sources import hubspot_source


def hubspot_config(tmp_path: Path, hubspot: FakeHubSpot) -> Path:
    """The fake HubSpot as the one source; no channel."""
    config = tmp_path / "velocity.toml"
    config.write_text(f"""
timezone = "UTC"
{hubspot_source(hubspot)}""", encoding="utf-8")
    return config


def velocity(config: Path, db_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`velocity` in a process of its own on the store at ``db_url``."""
    env = {**os.environ, "VELOCITY_DATABASE_URL": db_url}
    return subprocess.run([sys.executable, "-m", "sales_velocity.scheduler", "--config", str(config), *args],
                          capture_output=True, text=True, timeout=120, env=env)


def samples(text: str) -> dict[tuple[str, str], float]:
    """``(metric, source label) -> value`` from a Prometheus text file."""
    return {(s.name, s.labels.get("source", "")): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_a_killed_sync_is_interrupted_in_status_prometheus_and_the_store(tmp_path: Path, db_url: str) -> None:
    """SIGKILL mid-sync: status and the textfile say interrupted, not the last ok; the next sync closes it."""
    hubspot = FakeHubSpot()
    ids = hubspot.add_deals(300)
    stalled, release = threading.Event(), threading.Event()

    def stall(_endpoint: str) -> None:
        if stalled.is_set():
            release.wait(60)

    hubspot.on_request.append(stall)
    prom = tmp_path / "velocity.prom"
    try:
        with hubspot.serve():
            config = hubspot_config(tmp_path, hubspot)
            first = velocity(config, db_url, "sync")
            assert first.returncode == 0, first.stdout + first.stderr
            hubspot.modify(ids[:10], dealname="Renamed")
            stalled.set()
            env = {**os.environ, "VELOCITY_DATABASE_URL": db_url}
            command = [sys.executable, "-m", "sales_velocity.scheduler", "--config", str(config), "sync"]
            proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            engine = make_engine(db_url)
            runs = sync_runs_table.c
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                with engine.connect() as conn:
                    if conn.execute(sa.select(runs.id).where(runs.pid == proc.pid)).first() is not None:
                        break
                time.sleep(0.1)
            else:
                raise AssertionError("the second sync never started")
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)

            shown = velocity(config, db_url, "status", "--metrics-file", str(prom))
            assert shown.returncode == 0, shown.stderr
            assert "hubspot  interrupted" in shown.stdout
            assert f"its process (pid {proc.pid} on {socket.gethostname()}) is gone" in shown.stdout
            assert "running since" not in shown.stdout
            got = samples(prom.read_text())
            assert got[("velocity_sync_last_run_ok", "hubspot")] == 0
            assert got[("velocity_sync_last_run_interrupted", "hubspot")] == 1
            assert got[("velocity_sync_interrupted_runs", "hubspot")] == 1
            assert got[("velocity_sync_in_progress", "hubspot")] == 0
            with engine.connect() as conn:  # `status` is read-only: it wrote nothing
                assert conn.execute(sa.select(runs.status).where(runs.pid == proc.pid)).scalar() == "running"

            stalled.clear()
            release.set()
            again = velocity(config, db_url, "sync")
            assert again.returncode == 0, again.stdout + again.stderr
            with engine.connect() as conn:
                rows = conn.execute(sa.select(runs.status, runs.pid, runs.error).order_by(runs.id)).all()
            assert [r.status for r in rows] == ["ok", "interrupted", "ok"]
            assert rows[1].pid == proc.pid
            assert f"pid {proc.pid}" in rows[1].error

            after = velocity(config, db_url, "status", "--metrics-file", str(prom))
            engine.dispose()
    finally:
        release.set()
    assert "hubspot  ok" in after.stdout
    got = samples(prom.read_text())
    assert got[("velocity_sync_last_run_ok", "hubspot")] == 1
    assert got[("velocity_sync_last_run_interrupted", "hubspot")] == 0
    assert got[("velocity_sync_interrupted_runs", "hubspot")] == 1
