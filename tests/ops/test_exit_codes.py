"""Exit codes and one-line errors of the `velocity` command, run as a real process."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from sales_velocity.sync.store import make_engine

ROOT = Path(__file__).resolve().parents[2]
SEED = ROOT / "tests" / "fixtures" / "csv" / "seed_example.csv"


def base_env(**extra: str) -> dict[str, str]:
    """The process environment without any VELOCITY_* variable, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VELOCITY_")}
    return {**env, **extra}


def velocity(args: list[str], cwd: Path, env: dict[str, str] | None = None,
             code: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run `velocity ARGS` in a new interpreter (``code`` runs first, e.g. to hide a module)."""
    prelude = (code or "") + "\nfrom sales_velocity.scheduler import main\nraise SystemExit(main())"
    return subprocess.run([sys.executable, "-c", prelude, *args], cwd=cwd, env=env or base_env(),
                          capture_output=True, text=True, timeout=120, check=False)


def seed_config(tmp_path: Path, extra: str = "", store: str = 'url = "sqlite:///velocity.db"') -> Path:
    """A config on the seed CSV with its store in ``tmp_path``."""
    shutil.copy(SEED, tmp_path / "seed.csv")
    path = tmp_path / "velocity.toml"
    path.write_text('timezone = "UTC"\ncurrency = "NOK"\n[store]\n' + store + "\n"
                    '[[sources]]\nname = "seed"\nkind = "csv"\npath = "seed.csv"\n' + extra,
                    encoding="utf-8")
    return path


def assert_one_line(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    """Exit 2, a single line for people on stderr (JSON log events aside) with every needle, no traceback."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [ln for ln in result.stderr.strip().splitlines() if not ln.startswith("{")]
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


class TestNoConfig:
    def test_no_config_anywhere_is_exit_2_naming_the_three_places(self, tmp_path: Path) -> None:
        """No --config, no $VELOCITY_CONFIG, no ./velocity.toml: exit 2 naming all three; no store made."""
        result = velocity(["run"], cwd=tmp_path)
        assert_one_line(result, "--config", "$VELOCITY_CONFIG", str(tmp_path / "velocity.toml"))
        assert list(tmp_path.iterdir()) == []

    def test_config_is_a_directory(self, tmp_path: Path) -> None:
        """--config naming a directory is one line and exit 2."""
        assert_one_line(velocity(["--config", str(tmp_path), "run"], cwd=tmp_path), "is a directory")

    @pytest.mark.skipif(os.geteuid() == 0, reason="root reads every file")
    def test_config_unreadable(self, tmp_path: Path) -> None:
        """--config naming a file without read permission is one line and exit 2."""
        path = seed_config(tmp_path)
        path.chmod(0)
        assert_one_line(velocity(["--config", str(path), "check"], cwd=tmp_path), "permission denied")

    def test_velocity_config_variable_is_used(self, tmp_path: Path) -> None:
        """$VELOCITY_CONFIG is the second place looked."""
        path = seed_config(tmp_path)
        result = velocity(["check"], cwd=ROOT, env=base_env(VELOCITY_CONFIG=str(path)))
        assert result.returncode == 0, result.stderr
        assert f"config: OK ({path})" in result.stdout


class TestOrdinaryMistakes:
    def test_postgresql_url_without_the_driver_says_what_to_install(self, tmp_path: Path) -> None:
        """A postgresql+psycopg:// store with psycopg not importable: exit 2, says to install [postgres]."""
        path = seed_config(tmp_path, store='url = "postgresql+psycopg://velocity@127.0.0.1/velocity"')
        result = velocity(["--config", str(path), "check"], cwd=tmp_path,
                          code="import sys; sys.modules['psycopg'] = None")
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr
        assert "store.url: a PostgreSQL store needs the driver" in result.stderr
        assert "pip install 'sales-velocity[postgres]'" in result.stderr

    def test_report_window_days_0_is_a_usage_error(self, tmp_path: Path) -> None:
        """`report --window-days 0` exits 2 with argparse's usage error naming the option."""
        result = velocity(["--config", str(seed_config(tmp_path)), "report", "--window-days", "0"],
                          cwd=tmp_path)
        assert result.returncode == 2
        assert "argument --window-days: 0 must be at least 1" in result.stderr
        assert "Traceback" not in result.stderr

    def test_metrics_as_of_in_the_future_is_refused(self, tmp_path: Path) -> None:
        """`metrics --as-of` after today stores nothing: one line, exit 2."""
        path = seed_config(tmp_path)
        result = velocity(["--config", str(path), "metrics", "--as-of", "2999-01-01"], cwd=tmp_path)
        assert_one_line(result, "--as-of 2999-01-01 is in the future")

    def test_a_plugin_that_fails_to_import(self, tmp_path: Path) -> None:
        """An installed connector whose module raises on import: exit 2, one problem naming it."""
        site = tmp_path / "site"
        info = site / "broken_crm-0.1.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-crm\nVersion: 0.1\n")
        (info / "entry_points.txt").write_text("[sales_velocity.connectors]\nbroken = broken_crm:Connector\n")
        (site / "broken_crm.py").write_text("import not_a_module_anywhere\n")
        path = tmp_path / "velocity.toml"
        path.write_text('[[sources]]\nname = "b"\nkind = "broken"\n')
        env = base_env(PYTHONPATH=str(site))
        result = velocity(["--config", str(path), "check"], cwd=tmp_path, env=env)
        assert result.returncode == 2
        assert "Traceback" not in result.stderr
        assert "sources[0].kind: connector 'broken'" in result.stderr
        assert ("failed to import: ModuleNotFoundError: No module named 'not_a_module_anywhere'"
                in result.stderr)


class TestReadOnlyCommands:
    @pytest.mark.parametrize("command", [["report"], ["deals"], ["export"], ["status"],
                                         ["notify", "--preview"]])
    def test_never_create_a_store(self, tmp_path: Path, command: list[str]) -> None:
        """Against a store that does not exist, read-only commands say `velocity init`; no file appears."""
        path = seed_config(tmp_path)
        result = velocity(["--config", str(path), *command], cwd=tmp_path)
        assert_one_line(result, "store not initialised", "run `velocity init`")
        assert not (tmp_path / "velocity.db").exists()

    def test_an_empty_database_gets_no_tables(self, tmp_path: Path, db_url: str) -> None:
        """An existing but empty database (both backends): report refuses and creates no table."""
        path = seed_config(tmp_path)
        if db_url.startswith("sqlite"):
            make_engine(db_url).connect().close()  # the file exists, empty
        result = velocity(["--config", str(path), "report"], cwd=tmp_path,
                          env=base_env(VELOCITY_DATABASE_URL=db_url))
        assert_one_line(result, "store not initialised", "has no schema")
        engine = make_engine(db_url)
        assert sa.inspect(engine).get_table_names() == []
        engine.dispose()

    def test_check_before_the_first_run_warns_and_passes(self, tmp_path: Path) -> None:
        """`check` with no store yet: a WARNING line, the sources are still tried, exit 0, nothing created."""
        path = seed_config(tmp_path)
        result = velocity(["--config", str(path), "check"], cwd=tmp_path)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "store: WARNING: store not initialised" in result.stdout
        assert "source seed: OK (seed.csv: 150 rows" in result.stdout
        assert not (tmp_path / "velocity.db").exists()

    def test_check_names_host_and_port_of_an_unreachable_source(self, tmp_path: Path) -> None:
        """A HubSpot source on a port nobody listens on fails at once with host:port, exit 1."""
        with socket.socket() as s:  # a port that was free a moment ago, now closed
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        extra = textwrap.dedent(f"""
            [[sources]]
            name = "hs"
            kind = "hubspot"
            access_token = "pat-na1-abcdef"
            base_url = "http://127.0.0.1:{port}"
        """)
        result = velocity(["--config", str(seed_config(tmp_path, extra)), "check", "--timeout", "2"],
                          cwd=tmp_path)
        assert result.returncode == 1
        assert f"source hs: FAILED: cannot reach 127.0.0.1:{port}: connection refused" in result.stdout


    def test_check_tries_a_source_once(self, tmp_path: Path, httpserver: Any) -> None:
        """A HubSpot answering 503: `check` reports it after one request, not after the retry policy."""
        httpserver.expect_request("/crm/v3/objects/deals").respond_with_json({"message": "down"}, status=503)
        extra = textwrap.dedent(f"""
            [[sources]]
            name = "hs"
            kind = "hubspot"
            access_token = "pat-na1-abcdef"
            base_url = "{httpserver.url_for("/").rstrip("/")}"
        """)
        result = velocity(["--config", str(seed_config(tmp_path, extra)), "check"], cwd=tmp_path)
        assert result.returncode == 1
        assert "source hs: FAILED:" in result.stdout
        assert len(httpserver.log) == 1


class TestBrokenPipe:
    def _piped(self, args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
        """Run with stdout a pipe whose reader is already gone."""
        read, write = os.pipe()
        os.close(read)
        try:
            return subprocess.run([sys.executable, "-m", "sales_velocity.scheduler", *args], cwd=cwd,
                                  env=base_env(), stdout=write, stderr=subprocess.PIPE, text=True,
                                  timeout=120, check=False)
        finally:
            os.close(write)

    def test_output_only_commands_end_quietly(self, tmp_path: Path) -> None:
        """`velocity export | head` (reader gone): exit 0, no error line nor error event on stderr."""
        path = seed_config(tmp_path)
        assert velocity(["--config", str(path), "sync"], cwd=tmp_path).returncode == 0
        result = self._piped(["--config", str(path), "export"], tmp_path)
        assert result.returncode == 0
        events = [json.loads(line) for line in result.stderr.splitlines()]  # JSON events only
        assert [e for e in events if e["level"] != "info"] == []

    def test_a_job_does_not_hide_behind_a_closed_pipe(self, tmp_path: Path) -> None:
        """`velocity run | head` (reader gone): exit 1 and a line saying the output was closed."""
        path = seed_config(tmp_path)
        result = self._piped(["--config", str(path), "run"], tmp_path)
        assert result.returncode == 1
        assert "run stopped: its output was closed (broken pipe)" in result.stderr
