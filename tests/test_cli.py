"""The `velocity` command end to end: demo job, seed example, failures, back-fill, concurrent runs."""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from sales_velocity.scheduler import main
from sales_velocity.sync.store import deals_table, make_engine, snapshots_table, sync_runs_table

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).parent / "fixtures" / "csv"
NOW = dt.datetime(2026, 11, 26, 9, 0, tzinfo=dt.UTC)


def velocity(args: list[str], *, env: dict[str, str] | None = None,
             now: dt.datetime = NOW) -> tuple[int, str]:
    """Run the CLI in-process with a pinned clock; return (exit code, stdout)."""
    out = io.StringIO()
    code = main(args, env=env or {}, out=out, now=lambda: now)
    return code, out.getvalue()


def seed_config(tmp_path: Path, extra: str = "") -> Path:
    """A config on the seed-shaped CSV (UTC, NOK), store in tmp_path."""
    shutil.copy(FIXTURES / "seed_example.csv", tmp_path / "seed.csv")
    path = tmp_path / "velocity.toml"
    path.write_text(
        'timezone = "UTC"\ncurrency = "NOK"\n'
        '[store]\nurl = "sqlite:///velocity.db"\n'
        '[[sources]]\nname = "seed"\nkind = "csv"\npath = "seed.csv"\n' + extra,
        encoding="utf-8",
    )
    return path


def store_env(db_url: str) -> dict[str, str]:
    """Environment pointing the CLI at the test's database."""
    return {"VELOCITY_DATABASE_URL": db_url}


class TestDemo:
    def test_example_config_runs_as_is(self, tmp_path: Path) -> None:
        """config.example.toml with the bundled demo CSV syncs, computes and prints a digest: exit 0."""
        shutil.copy(ROOT / "config.example.toml", tmp_path / "config.toml")
        shutil.copytree(ROOT / "connectors" / "demo", tmp_path / "connectors" / "demo")
        code, out = velocity(["--config", str(tmp_path / "config.toml"), "run"])
        assert code == 0, out
        assert "demo: ok: 400 seen, 400 new" in out
        assert "velocity" in out.lower()
        # history from the first run: both changes and the trend, marked as rebuilt
        assert "no history yet" not in out
        assert "Change over 7 days: " in out
        assert "Change over 30 days: " in out
        assert "Trend: " in out
        assert "89 of the 90 days in the trend are rebuilt from deal dates" in out
        assert (tmp_path / "velocity.db").exists()
        code, report = velocity(["--config", str(tmp_path / "config.toml"), "report",
                                 "--format", "json"])
        data = json.loads(report)
        scopes = {(s["scope"], s["key"]): s for s in data["scopes"]}
        assert scopes[("all", "")]["velocity_per_day"] is not None
        assert len([s for s in data["scopes"] if s["scope"] == "pipeline"]) == 2
        assert all(s["velocity_per_day"] is not None for s in data["scopes"])


class TestSeedExample:
    def test_report_json_gives_the_seed_velocity(self, tmp_path: Path, db_url: str) -> None:
        """Syncing the seed-shaped CSV and reporting as of 2026-11-26 gives 11111.11 per day."""
        config = str(seed_config(tmp_path))
        code, out = velocity(["--config", config, "sync"], env=store_env(db_url))
        assert code == 0, out
        code, out = velocity(["--config", config, "report", "--as-of", "2026-11-26",
                              "--format", "json"], env=store_env(db_url))
        assert code == 0
        report = json.loads(out)
        everything = report["scopes"][0]
        assert (report["as_of"], report["window_days"], report["currency"]) == ("2026-11-26", 90, "NOK")
        assert everything["scope"] == "all"
        assert everything["opportunities"] == 100
        assert everything["velocity_per_day"] == "11111.11"

    def test_metrics_stores_snapshots_and_backfills_a_gap(self, tmp_path: Path, db_url: str) -> None:
        """The first `run` rebuilds the 90 days before it; one 4 days later back-fills the 3 missed days."""
        config = str(seed_config(tmp_path))
        env = store_env(db_url)
        code, _ = velocity(["--config", config, "run", "--no-notify", "--as-of", "2026-11-20"], env=env)
        assert code == 0
        code, _ = velocity(["--config", config, "run", "--no-notify", "--as-of", "2026-11-24"], env=env)
        assert code == 0
        engine = make_engine(db_url)
        with engine.connect() as conn:
            days = conn.execute(
                sa.select(snapshots_table.c.as_of).where(snapshots_table.c.scope == "all")
                .order_by(snapshots_table.c.as_of)).scalars().all()
        engine.dispose()
        first = dt.date(2026, 11, 20) - dt.timedelta(days=90)
        assert days == [first + dt.timedelta(days=n) for n in range(90)] + [
            dt.date(2026, 11, d) for d in (20, 21, 22, 23, 24)]

    def test_first_run_has_history_and_since_rebuilds(self, tmp_path: Path, db_url: str) -> None:
        """A first run stores 90 rebuilt days and today's snapshot, taken on the day; --since rebuilds."""
        since = dt.date(2026, 6, 1)
        config = str(seed_config(tmp_path))
        env = store_env(db_url)
        assert velocity(["--config", config, "run", "--no-notify"], env=env)[0] == 0
        engine = make_engine(db_url)
        s = snapshots_table

        def flags() -> dict[dt.date, bool]:
            with engine.connect() as conn:
                rows = conn.execute(sa.select(s.c.as_of, s.c.rebuilt).where(s.c.scope == "all"))
                return {row.as_of: bool(row.rebuilt) for row in rows}

        today = dt.date(2026, 11, 26)
        expected = {today - dt.timedelta(days=n): n > 0 for n in range(91)}
        assert flags() == expected
        code, out = velocity(["--config", config, "metrics", "--since", "2026-06-01"], env=env)
        assert code == 0, out
        assert "rebuilt from deal dates for 178 days (2026-06-01 to 2026-11-25)" in out
        assert flags() == {**expected, **{since + dt.timedelta(days=n): True for n in range(178)}}
        code, out = velocity(["--config", config, "metrics", "--since", "2026-11-20", "--overwrite"], env=env)
        assert "for 6 days (2026-11-20 to 2026-11-25) in" in out
        code, _ = velocity(["--config", config, "metrics", "--since", "2026-11-26"], env=env)
        assert code == 2
        engine.dispose()


class TestFaults:
    def test_failing_source_does_not_stop_the_others(self, tmp_path: Path) -> None:
        """A source whose file is missing fails with a clear message; the next source still loads; exit 1."""
        extra = '[[sources]]\nname = "gone"\nkind = "csv"\npath = "missing.csv"\n'
        config = seed_config(tmp_path, extra)
        text = config.read_text(encoding="utf-8")
        # put the broken source first
        first, second = text.split("[[sources]]")[1:]
        config.write_text(text.split("[[sources]]")[0] + "[[sources]]" + second + "[[sources]]" + first,
                          encoding="utf-8")
        code, out = velocity(["--config", str(config), "sync"])
        assert code == 1
        assert "gone: failed" in out
        assert "missing.csv" in out
        assert "seed: ok" in out
        engine = make_engine(f"sqlite:///{tmp_path / 'velocity.db'}")
        with engine.connect() as conn:
            sources = conn.execute(sa.select(deals_table.c.source).distinct()).scalars().all()
        engine.dispose()
        assert sources == ["seed"]

    def test_unknown_source_name_is_a_usage_error(self, tmp_path: Path) -> None:
        """`velocity sync nosuch` exits 2 and names the configured sources."""
        code, _ = velocity(["--config", str(seed_config(tmp_path)), "sync", "nosuch"])
        assert code == 2

    def test_maven_dataset_every_row_is_accounted_for(self, tmp_path: Path) -> None:
        """The 8,800-row Maven data set loads with a column mapping; loaded + rejected = 8,800."""
        shutil.copy(FIXTURES / "maven_sales_pipeline.csv", tmp_path / "maven.csv")
        config = tmp_path / "velocity.toml"
        config.write_text(
            'currency = "USD"\n[[sources]]\nname = "maven"\nkind = "csv"\npath = "maven.csv"\n'
            '[sources.columns]\nid = "opportunity_id"\nowner = "sales_agent"\ntitle = "account"\n'
            'stage = "deal_stage"\ncreated_at = "engage_date"\nclosed_at = "close_date"\n'
            'amount = "close_value"\n[sources.status]\nwon = ["Won"]\nlost = ["Lost"]\n',
            encoding="utf-8",
        )
        code, out = velocity(["--config", str(config), "sync"])
        assert code == 0, out
        line = next(ln for ln in out.splitlines() if ln.startswith("maven: ok"))
        seen = int(line.split(": ok: ")[1].split(" seen")[0])
        rejected = int(line.split(" deleted, ")[1].split(" rejected")[0])
        assert seen + rejected == 8800
        code, report = velocity(["--config", str(config), "report", "--as-of", "2017-12-31",
                                 "--format", "json"])
        assert code == 0
        assert json.loads(report)["scopes"][0]["velocity_per_day"] is not None


def maven_config(tmp_path: Path) -> Path:
    """A config on the Maven data set (8,800 rows), ids and stages only."""
    shutil.copy(FIXTURES / "maven_sales_pipeline.csv", tmp_path / "maven.csv")
    config = tmp_path / "velocity.toml"
    config.write_text(
        '[[sources]]\nname = "maven"\nkind = "csv"\npath = "maven.csv"\n'
        '[sources.columns]\nid = "opportunity_id"\nstage = "deal_stage"\n'
        '[sources.status]\nwon = ["Won"]\nlost = ["Lost"]\n', encoding="utf-8")
    return config


def spawn_sync(config: Path, db_url: str) -> subprocess.Popen[str]:
    """Start `velocity sync` as a separate process against ``db_url``."""
    env = {**os.environ, "VELOCITY_DATABASE_URL": db_url}
    command = [sys.executable, "-m", "sales_velocity.scheduler",
               "--config", str(config), "sync"]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


class TestConcurrency:
    def test_a_second_process_skips_a_held_source_and_exits_0(self, tmp_path: Path, db_url: str) -> None:
        """While another run holds a source, `velocity sync` in a new process skips it, says so, exits 0."""
        from sales_velocity.sync.lock import source_lock

        config = maven_config(tmp_path)
        assert velocity(["--config", str(config), "init"], env=store_env(db_url))[0] == 0
        engine = make_engine(db_url)
        with source_lock(engine, "maven", holder="someone-else") as lease:
            assert lease
            proc = spawn_sync(config, db_url)
            out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        assert "maven: skipped (another run holds this source's lock)" in out
        with engine.connect() as conn:
            assert conn.execute(sa.select(sa.func.count()).select_from(deals_table)).scalar() == 0
        engine.dispose()

    def test_two_runs_started_together_both_succeed_without_double_work(self, tmp_path: Path,
                                                                        db_url: str) -> None:
        """Two `velocity sync` processes racing: each exits 0, the source is synced once per lock hold."""
        config = maven_config(tmp_path)
        assert velocity(["--config", str(config), "init"], env=store_env(db_url))[0] == 0
        procs = [spawn_sync(config, db_url) for _ in range(2)]
        outputs = [p.communicate(timeout=120) for p in procs]
        assert [p.returncode for p in procs] == [0, 0], outputs
        stdout = "".join(o[0] for o in outputs)
        engine = make_engine(db_url)
        with engine.connect() as conn:
            runs = conn.execute(sa.select(sync_runs_table.c.status)).scalars().all()
            deals = conn.execute(sa.select(sa.func.count()).select_from(deals_table)).scalar()
        engine.dispose()
        assert deals == 8800
        skipped = stdout.count("maven: skipped")
        assert runs.count("ok") + skipped == 2
        assert "failed" not in runs


@pytest.mark.parametrize("fmt", ["table", "csv"])
def test_report_formats_print(tmp_path: Path, fmt: str) -> None:
    """`report` prints the table and CSV forms after a sync."""
    config = str(seed_config(tmp_path))
    velocity(["--config", config, "sync"])
    code, out = velocity(["--config", config, "report", "--as-of", "2026-11-26", "--format", fmt])
    assert code == 0
    assert "11,111.11" in out or "11111.11" in out


class TestOperations:
    def test_check_reports_each_item(self, tmp_path: Path) -> None:
        """`velocity check` prints OK per item and FAILED with the reason for a broken source; exit 1."""
        extra = '[[sources]]\nname = "gone"\nkind = "csv"\npath = "missing.csv"\n'
        config = str(seed_config(tmp_path, extra))
        velocity(["--config", config, "init"])
        code, out = velocity(["--config", config, "check"])
        assert code == 1
        assert "config: OK" in out
        assert "store: OK" in out
        assert "source seed: OK (seed.csv: 150 rows" in out
        assert "source gone: FAILED:" in out
        assert "missing.csv" in out

    def test_status_shows_last_runs_and_writes_prometheus(self, tmp_path: Path) -> None:
        """`velocity status` lists the last sync per source and writes Prometheus textfile metrics."""
        config = str(seed_config(tmp_path))
        velocity(["--config", config, "sync"])
        prom = tmp_path / "velocity.prom"
        code, out = velocity(["--config", config, "status", "--metrics-file", str(prom)],
                             now=NOW + dt.timedelta(minutes=5))
        assert code == 0
        assert "seed  ok" in out
        assert "150 seen, 150 new" in out
        assert "Next runs" in out
        text = prom.read_text()
        assert 'velocity_sync_last_run_ok{source="seed"} 1.0' in text
        assert 'velocity_sync_deals{kind="inserted",source="seed"} 150.0' in text


class TestSecrets:
    def test_a_token_never_appears_in_output_logs_or_the_store(
        self, tmp_path: Path, httpserver, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A CRM that echoes the token in its error body: stdout, logs and stored errors show *** instead."""
        token = "pd-SECRET-4242-token"
        httpserver.expect_request("/api/v1/users").respond_with_json(
            {"success": False, "error": f"unauthorized: token {token} rejected"}, status=401)
        httpserver.expect_request("/api/v2/pipelines").respond_with_json(
            {"success": False, "error": f"unauthorized: token {token} rejected"}, status=401)
        config = tmp_path / "velocity.toml"
        config.write_text(
            '[[sources]]\nname = "pd"\nkind = "pipedrive"\napi_token = "${PIPEDRIVE_TOKEN}"\n'
            f'company_domain = "acme"\nbase_url = "{httpserver.url_for("/").rstrip("/")}"\n',
            encoding="utf-8")
        env = {"PIPEDRIVE_TOKEN": token}
        code, out = velocity(["--config", str(config), "--log-level", "debug", "sync"], env=env)
        code_check, out_check = velocity(["--config", str(config), "check"], env=env)
        code_status, out_status = velocity(["--config", str(config), "status"], env=env)
        captured = capsys.readouterr()
        assert (code, code_check, code_status) == (1, 1, 0)
        everything = out + out_check + out_status + captured.out + captured.err
        assert "rejected" in everything
        assert token not in everything
        assert "***" in everything
        engine = make_engine(f"sqlite:///{tmp_path / 'velocity.db'}")
        with engine.connect() as conn:
            errors = conn.execute(sa.select(sync_runs_table.c.error)).scalars().all()
        engine.dispose()
        assert errors
        assert all(token not in (e or "") for e in errors)


STDOUT_CHANNEL = ('[notify]\nfallback_to = "lead@example.com"\n'
                  '[[notify.channels]]\nname = "out"\nkind = "stdout"\nsend = ["digest", "reminders"]\n')


class TestHonestData:
    def test_first_run_with_a_missing_file_sends_nothing_and_exits_1(self, tmp_path: Path) -> None:
        """No source ever synced: no digest, no reminders, no 'Well done!'; the run says why, exit 1."""
        config = seed_config(tmp_path, STDOUT_CHANNEL)
        (tmp_path / "seed.csv").unlink()
        code, out = velocity(["--config", str(config), "run"])
        assert code == 1
        assert "nothing sent: no source has ever synced successfully: seed (last sync failed: " in out
        assert "seed.csv" in out
        assert "Well done" not in out
        assert "Sales velocity ·" not in out

    def test_a_later_failure_puts_a_banner_on_the_digest(self, tmp_path: Path) -> None:
        """Day 2 without the file: a banner with the error and the last good sync, exit 1; report too."""
        config = seed_config(tmp_path, STDOUT_CHANNEL)
        code, out = velocity(["--config", str(config), "run", "--as-of", "2026-11-26"])
        assert code == 0, out
        assert "Data: last good sync seed Nov 26, 2026 09:00" in out
        assert "⚠" not in out
        (tmp_path / "seed.csv").rename(tmp_path / "away.csv")
        later = NOW + dt.timedelta(days=1)
        code, out = velocity(["--config", str(config), "run", "--as-of", "2026-11-27"], now=later)
        assert code == 1
        assert "⚠ seed failed to sync (" in out
        assert "Its numbers are from its last good sync, Nov 26, 2026 09:00." in out
        assert "Reminders for deals of seed are held back until it syncs again." in out
        code, report = velocity(["--config", str(config), "report", "--as-of", "2026-11-27"], now=later)
        assert code == 0
        assert "Data: last good sync seed 2026-11-26 09:00" in report
        assert "! seed: last sync failed (" in report

    def test_an_export_without_next_steps_turns_the_rule_off(self, tmp_path: Path) -> None:
        """The seed CSV lacks next-step and activity columns: the digest says so; no reminder, no praise."""
        config = seed_config(tmp_path, STDOUT_CHANNEL)
        code, out = velocity(["--config", str(config), "run", "--as-of", "2026-11-26"])
        assert code == 0, out
        assert ("Next steps and next activity dates are not in the data of seed: the rules "
                "“no next step” and “next step overdue” are off for it.") in out
        assert "Activity dates are not in the data of seed: the rule “no activity” is off for it." in out
        assert "no next step" not in out.replace("“no next step”", "")
        assert "No stalled deals by the rules this data allows (see above)." in out
        assert "Well done" not in out
