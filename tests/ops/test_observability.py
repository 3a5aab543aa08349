"""The Prometheus textfile written by run/status, and `status` showing a sync in progress and the digest."""

from __future__ import annotations

import datetime as dt
import io
import shutil
from pathlib import Path

import pytest
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

from sales_velocity.scheduler import main
from sales_velocity.sync.lock import source_lock
from sales_velocity.sync.prometheus import package_version
from sales_velocity.sync.store import make_engine, sync_runs_table

SEED = Path(__file__).resolve().parents[1] / "fixtures" / "csv" / "seed_example.csv"
NOW = dt.datetime(2026, 11, 26, 9, 0, tzinfo=dt.UTC)


def velocity(args: list[str], env: dict[str, str], now: dt.datetime = NOW) -> tuple[int, str]:
    """Run the CLI in-process with a pinned clock; return (exit code, stdout)."""
    out = io.StringIO()
    return main(args, env=env, out=out, now=lambda: now), out.getvalue()


def config(tmp_path: Path, textfile: bool = True) -> Path:
    """The seed CSV, a file channel for the digest and (optionally) a [metrics] textfile."""
    shutil.copy(SEED, tmp_path / "seed.csv")
    path = tmp_path / "velocity.toml"
    metrics = '[metrics]\ntextfile = "out/velocity.prom"\n' if textfile else ""
    path.write_text(
        'timezone = "UTC"\ncurrency = "NOK"\n' + metrics
        + '[[sources]]\nname = "seed"\nkind = "csv"\npath = "seed.csv"\n'
        '[[notify.channels]]\nname = "box"\nkind = "file"\npath = "sent"\nsend = ["digest"]\n',
        encoding="utf-8")
    return path


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus text exposition, parsed by prometheus_client's own parser."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


class TestTextfile:
    def test_run_writes_every_metric_and_the_seed_velocity(self, tmp_path: Path, db_url: str) -> None:
        """`run` with [metrics] textfile writes a parseable file: the seed's levers, digest, build info."""
        code, _ = velocity(["--config", str(config(tmp_path)), "run", "--as-of", "2026-11-26"],
                           {"VELOCITY_DATABASE_URL": db_url})
        assert code == 0
        got = samples((tmp_path / "out" / "velocity.prom").read_text())
        everything = (("key", ""), ("scope", "all"))
        # the seed: N=100, V=50 000, p=0.20, L=90 -> 100 * 50000 * 0.2 / 90 per day
        assert got[("velocity_per_day", everything)] == pytest.approx(100 * 50000 * 0.2 / 90, abs=0.01)
        assert got[("velocity_opportunities", everything)] == 100
        assert got[("velocity_win_rate", everything)] == pytest.approx(0.2)
        assert got[("velocity_average_deal_value", everything)] == pytest.approx(50000)
        assert got[("velocity_cycle_days", everything)] == pytest.approx(90)
        assert got[("velocity_defined", everything)] == 1
        assert got[("velocity_digest_last_sent_timestamp_seconds", ())] == NOW.timestamp()
        assert got[("velocity_sync_in_progress", (("source", "seed"),))] == 0
        assert got[("velocity_sync_rejected_rows", (("source", "seed"),))] == 0
        assert got[("velocity_sync_last_run_ok", (("source", "seed"),))] == 1
        assert got[("velocity_sync_deals", (("kind", "inserted"), ("source", "seed")))] == 150
        build = [k for k in got if k[0] == "velocity_build_info"]
        assert len(build) == 1
        assert ("version", package_version()) in build[0][1]

    def test_metrics_file_option_overrides_the_config(self, tmp_path: Path) -> None:
        """`run --metrics-file` writes there even without [metrics] textfile."""
        target = tmp_path / "elsewhere.prom"
        code, _ = velocity(["--config", str(config(tmp_path, textfile=False)), "run",
                            "--metrics-file", str(target)], {})
        assert code == 0
        assert ("velocity_sync_last_run_ok", (("source", "seed"),)) in samples(target.read_text())

    def test_a_textfile_not_ending_in_prom_is_a_config_problem(self, tmp_path: Path) -> None:
        """node-exporter reads only *.prom files: another name is refused at start."""
        path = config(tmp_path)
        path.write_text(path.read_text().replace("velocity.prom", "velocity.txt"), encoding="utf-8")
        assert velocity(["--config", str(path), "check"], {})[0] == 2


class TestStatus:
    def test_a_running_sync_and_the_last_digest_are_shown(self, tmp_path: Path, db_url: str) -> None:
        """A sync another process is running shows with its start and count; the last digest with channels."""
        env = {"VELOCITY_DATABASE_URL": db_url}
        path = config(tmp_path)
        assert velocity(["--config", str(path), "run", "--as-of", "2026-11-26"], env)[0] == 0
        engine = make_engine(db_url)
        with engine.begin() as conn:  # what another process's sync looks like mid-way
            conn.execute(sa.insert(sync_runs_table).values(
                run_id="other", source="seed", full=False, status="running", seen=148_000,
                started_at=dt.datetime(2026, 11, 26, 7, 50, tzinfo=dt.UTC)))
        with source_lock(engine, "seed", holder="other"):  # that process holds the source's lock
            code, out = velocity(["--config", str(path), "status"], env, now=NOW + dt.timedelta(hours=1))
        engine.dispose()
        assert code == 0
        assert "seed  running since 2026-11-26 07:50, 148,000 deals so far" in out
        assert "seed  ok" in out  # the last finished sync is still shown
        assert "digest:2026-11-26 sent 2026-11-26 09:00 to box" in out
        got = samples((tmp_path / "out" / "velocity.prom").read_text())
        assert got[("velocity_sync_in_progress", (("source", "seed"),))] == 1
        assert got[("velocity_sync_in_progress_deals", (("source", "seed"),))] == 148_000
