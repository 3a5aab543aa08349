"""Configuration loading: env expansion, every problem with its key path, before anything runs."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import structlog

from sales_velocity.kernel.config import expand_env
from sales_velocity.kernel.errors import ConfigError, ConfigProblem
from sales_velocity.kernel.logs import SecretRedactor, configure_logging
from sales_velocity.scheduler import load_config, main

GOOD = """
timezone = "Europe/Oslo"
currency = "NOK"
[store]
url = "sqlite:///velocity.db"
[[sources]]
name = "demo"
kind = "csv"
path = "deals.csv"
"""


def write(tmp_path: Path, text: str) -> Path:
    """Write a config file and return its path."""
    path = tmp_path / "velocity.toml"
    path.write_text(text, encoding="utf-8")
    return path


class TestLoad:
    def test_good_config_resolves_paths_against_the_config_folder(self, tmp_path: Path) -> None:
        """Relative SQLite and CSV paths are taken relative to the config file, not the cwd."""
        config = load_config(write(tmp_path, GOOD), env={})
        assert config.store.url == f"sqlite:///{tmp_path.resolve() / 'velocity.db'}"
        assert [s.name for s in config.sources] == ["demo"]
        assert config.timezone == "Europe/Oslo"
        assert config.metrics.currency == "NOK"

    def test_database_url_from_the_environment_wins(self, tmp_path: Path) -> None:
        """VELOCITY_DATABASE_URL overrides [store] url."""
        url = "postgresql+psycopg://velocity@db/velocity"
        config = load_config(write(tmp_path, GOOD), env={"VELOCITY_DATABASE_URL": url})
        assert config.store.url == url

    def test_every_problem_is_reported_at_once_with_its_key_path(self, tmp_path: Path) -> None:
        """Unknown kind, unknown keys, bad values and unset variables all come back together."""
        text = """
timezone = "Mars/Olympus"
colour = "blue"
[store]
url = "mysql://x"
[[sources]]
name = "a"
kind = "salesforce"
[[sources]]
name = "b"
kind = "csv"
path = "${MISSING_PATH}"
bogus = 1
[schedule]
sync = "every day"
timezone = "Nowhere/Atlantis"
"""
        with pytest.raises(ConfigError) as info:
            load_config(write(tmp_path, text), env={})
        paths = {p.path for p in info.value.problems}
        message = str(info.value)
        assert "colour" in paths
        assert "timezone" in paths
        assert "Mars/Olympus" in message
        # a bad top level stops early; fix it and the per-section problems all show up together
        text = text.replace('timezone = "Mars/Olympus"\ncolour = "blue"\n', "")
        with pytest.raises(ConfigError) as info:
            load_config(write(tmp_path, text), env={})
        paths = {p.path for p in info.value.problems}
        assert {"store.url", "sources[0].kind", "sources[1].path", "sources[1].bogus",
                "schedule.sync", "schedule.timezone"} <= paths
        assert "installed: csv, demo, hubspot, pipedrive" in str(info.value)
        assert "environment variable MISSING_PATH is not set" in str(info.value)

    def test_duplicate_source_names_are_an_error(self, tmp_path: Path) -> None:
        """Two sources with one name are refused, naming both places."""
        text = GOOD + '[[sources]]\nname = "demo"\nkind = "csv"\npath = "other.csv"\n'
        with pytest.raises(ConfigError, match=r"sources\[1\]\.name: duplicate source name 'demo'"):
            load_config(write(tmp_path, text), env={})

    def test_invalid_toml_is_a_config_error(self, tmp_path: Path) -> None:
        """A TOML syntax error is reported with where it is."""
        with pytest.raises(ConfigError, match="not valid TOML"):
            load_config(write(tmp_path, "[store\nurl=1"), env={})

    def test_cli_exits_2_on_bad_config_before_doing_anything(self, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
        """`velocity sync` with a broken config exits 2, prints the problems and creates no store."""
        path = write(tmp_path, GOOD.replace('kind = "csv"', 'kind = "nope"'))
        code = main(["--config", str(path), "sync"], env={}, out=io.StringIO())
        assert code == 2
        assert "sources[0].kind" in capsys.readouterr().err
        assert not (tmp_path / "velocity.db").exists()


class TestEnvAndSecrets:
    def test_env_expansion_with_defaults(self) -> None:
        """${VAR} is replaced, ${VAR:-x} falls back to x, and secret-looking values are remembered."""
        problems: list[ConfigProblem] = []
        secrets: list[str] = []
        raw = {"a": "${TOKEN_X}", "b": ["${NOPE:-fallback}"], "c": 3}
        out = expand_env(raw, {"TOKEN_X": "tok-123"}, "", problems, secrets)
        assert out == {"a": "tok-123", "b": ["fallback"], "c": 3}
        assert secrets == ["tok-123"]
        assert problems == []

    def test_redactor_masks_secrets_in_every_log_line(self) -> None:
        """A token in an event value, a nested value or a traceback is masked in the output."""
        stream = io.StringIO()
        configure_logging(None, ["pat-na1-SECRET"], stream=stream)
        logger = structlog.get_logger("t")
        logger.info("calling", url="https://x/?token=pat-na1-SECRET", nested={"t": "pat-na1-SECRET"})
        try:
            raise RuntimeError("failed with pat-na1-SECRET")
        except RuntimeError:
            logger.exception("boom")
        assert "pat-na1-SECRET" not in stream.getvalue()
        assert stream.getvalue().count("***") >= 3

    def test_store_password_is_a_secret(self, tmp_path: Path) -> None:
        """The password in a PostgreSQL store URL is masked like a token."""
        url = "postgresql+psycopg://velocity:hunter2-pw@db/velocity"
        config = load_config(write(tmp_path, GOOD), env={"VELOCITY_DATABASE_URL": url})
        assert "hunter2-pw" in config.secrets

    def test_redactor_prefers_longest_secret(self) -> None:
        """Overlapping secrets are masked whole."""
        assert SecretRedactor(["abcd", "abcdefgh"]).redact("x abcdefgh y") == "x *** y"


def test_default_store_sits_next_to_the_config_file(tmp_path: Path) -> None:
    """Without [store], the default SQLite file is next to the config file, not in the cwd."""
    config = load_config(write(tmp_path, '[[sources]]\nname = "a"\nkind = "csv"\npath = "a.csv"\n'), env={})
    assert config.store.url == f"sqlite:///{tmp_path.resolve() / 'velocity.db'}"
