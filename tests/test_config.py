"""Configuration loading: env expansion, every problem with its key path, before anything runs."""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import pytest
import structlog

from sales_velocity.kernel.config import expand_env, secret_values
from sales_velocity.kernel.errors import ConfigError, ConfigProblem
from sales_velocity.kernel.logs import LoggingSettings, SecretRedactor, colour_supported, configure_logging
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


GOLDEN = Path(__file__).parent / "fixtures" / "golden"
CONFIGS = Path(__file__).parent / "fixtures" / "config"


class TestEveryProblemAtOnce:
    def test_the_error_list_matches_the_golden_file(self, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
        """Top-level and section mistakes, typos with suggestions, plain wording: one list, exit 2."""
        path = tmp_path / "velocity.toml"
        shutil.copy(CONFIGS / "many_mistakes.toml", path)
        code = main(["--config", str(path), "check"], env={}, out=io.StringIO())
        text = capsys.readouterr().err.replace(str(tmp_path), "<tmp>")
        golden = GOLDEN / "config_problems.txt"
        if os.environ.get("UPDATE_GOLDEN") == "1":
            golden.write_text(text, encoding="utf-8")
        assert code == 2
        assert text == golden.read_text(encoding="utf-8")

    def test_a_bad_top_level_no_longer_hides_the_sections(self, tmp_path: Path) -> None:
        """A bad timezone and a typo at the top still let every section's problems through."""
        text = 'timezone = "Nowhere"\ncurency = "NOK"\n[store]\nurl = "mysql://x"\n[sync]\nbatch_size = 0\n'
        with pytest.raises(ConfigError) as info:
            load_config(write(tmp_path, text), env={})
        paths = [p.path for p in info.value.problems]
        assert paths == ["timezone", "curency", "store.url", "sync.batch_size"]
        assert "did you mean `currency`?" in str(info.value)
        assert "sync.batch_size: must be at least 1" in str(info.value)

    def test_a_missing_variable_is_reported_once(self, tmp_path: Path) -> None:
        """An unset ${VAR} in a required secret is one problem, not also "too short" or "required"."""
        text = '[[sources]]\nname = "hs"\nkind = "hubspot"\naccess_token = "${HUBSPOT_TOKEN}"\n'
        with pytest.raises(ConfigError) as info:
            load_config(write(tmp_path, text), env={})
        assert [str(p) for p in info.value.problems] == [
            "sources[0].access_token: environment variable HUBSPOT_TOKEN is not set (nor HUBSPOT_TOKEN_FILE)"]

    def test_wording_a_list_where_a_string_was_written(self, tmp_path: Path) -> None:
        """`send = "reminders"` is answered with the list it should be, not "a valid tuple"."""
        text = '[[notify.channels]]\nname = "t"\nkind = "stdout"\nsend = "reminders"\n'
        wanted = r'notify.channels\[0\].send: must be a list, like \["reminders"\]'
        with pytest.raises(ConfigError, match=wanted):
            load_config(write(tmp_path, text), env={})


class TestSecretFiles:
    def test_file_reference_reads_a_mounted_secret(self, tmp_path: Path) -> None:
        """${file:/run/secrets/x} reads the file (trailing newline dropped) and masks its value."""
        secret = tmp_path / "hubspot_token"
        secret.write_text("pat-na1-from-a-file\n", encoding="utf-8")
        text = f'[[sources]]\nname = "hs"\nkind = "hubspot"\naccess_token = "${{file:{secret}}}"\n'
        config = load_config(write(tmp_path, text), env={})
        assert "pat-na1-from-a-file" in list(secret_values(config.sources))
        assert "pat-na1-from-a-file" in config.secrets

    def test_name_file_variable_fills_in_for_an_unset_variable(self, tmp_path: Path) -> None:
        """HUBSPOT_TOKEN unset but HUBSPOT_TOKEN_FILE set: the file's content is used."""
        secret = tmp_path / "token"
        secret.write_text("pat-na1-via-env-file", encoding="utf-8")
        text = '[[sources]]\nname = "hs"\nkind = "hubspot"\naccess_token = "${HUBSPOT_TOKEN}"\n'
        config = load_config(write(tmp_path, text), env={"HUBSPOT_TOKEN_FILE": str(secret)})
        assert "pat-na1-via-env-file" in list(secret_values(config.sources))

    def test_a_missing_secret_file_is_a_located_problem(self, tmp_path: Path) -> None:
        """A ${file:...} that does not exist is one problem at its key path, naming the file."""
        text = '[store]\nurl = "${file:/nonexistent/db_url}"\n'
        with pytest.raises(ConfigError) as info:
            load_config(write(tmp_path, text), env={})
        assert [str(p) for p in info.value.problems] == [
            "store.url: secret file /nonexistent/db_url (${file:/nonexistent/db_url}) does not exist"]


class TestStoreUrlPrecedence:
    def test_the_config_beats_the_images_default(self, tmp_path: Path) -> None:
        """VELOCITY_DEFAULT_DATABASE_URL (set by the image) never beats the config's [store] url."""
        url = "postgresql+psycopg://velocity@db/velocity"
        text = GOOD.replace('url = "sqlite:///velocity.db"', f'url = "{url}"')
        image = {"VELOCITY_DEFAULT_DATABASE_URL": "sqlite:////var/lib/velocity/velocity.db"}
        config = load_config(write(tmp_path, text), env=image)
        assert config.store.url == url
        assert config.store_reason.startswith("[store] url in ")

    def test_the_images_default_fills_in_without_store_url(self, tmp_path: Path) -> None:
        """A config without [store] url takes the image's default, and says so."""
        text = '[[sources]]\nname = "a"\nkind = "csv"\npath = "a.csv"\n'
        image = {"VELOCITY_DEFAULT_DATABASE_URL": "sqlite:////var/lib/velocity/velocity.db"}
        config = load_config(write(tmp_path, text), env=image)
        assert config.store.url == "sqlite:////var/lib/velocity/velocity.db"
        assert "VELOCITY_DEFAULT_DATABASE_URL" in config.store_reason

    def test_the_operator_variable_beats_the_config_and_is_logged_masked(
            self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """VELOCITY_DATABASE_URL wins; the log names the URL (password masked) and why."""
        url = f"sqlite:///{tmp_path / 'other.db'}"
        code = main(["--config", str(write(tmp_path, GOOD)), "--log-format", "json", "--log-level", "info",
                     "init"], env={"VELOCITY_DATABASE_URL": url}, out=io.StringIO())
        assert code == 0
        events = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
        chosen = next(e for e in events if e["event"] == "store.url")
        assert chosen["url"] == url
        assert chosen["reason"].startswith("$VELOCITY_DATABASE_URL is set")
        assert (tmp_path / "other.db").exists()

    def test_password_is_masked_where_the_url_is_shown(self, tmp_path: Path) -> None:
        """`check` shows the PostgreSQL URL it uses with *** for the password."""
        out = io.StringIO()
        url = "postgresql+psycopg://velocity:hunter2-pw@127.0.0.1:1/velocity"
        main(["--config", str(write(tmp_path, GOOD)), "check"], env={"VELOCITY_DATABASE_URL": url}, out=out)
        assert "velocity:***@127.0.0.1:1/velocity" in out.getvalue()
        assert "hunter2-pw" not in out.getvalue()


class TestLogs:
    def test_json_tracebacks_carry_no_frame_locals(self) -> None:
        """An error logged with its exception lists frames but not the values of their locals."""
        stream = io.StringIO()
        configure_logging(LoggingSettings(format="json"), stream=stream)

        def fail() -> None:
            owners = ["Ada Lovelace", "Grace Hopper"]  # a local a traceback must not print
            raise RuntimeError(f"{len(owners)} owners")

        try:
            fail()
        except RuntimeError:
            structlog.get_logger("t").exception("failed")
        event = json.loads(stream.getvalue())
        frames = event["exception"][0]["frames"]
        assert any(f["name"] == "fail" for f in frames)
        assert all("locals" not in f for f in frames)
        assert "Grace Hopper" not in stream.getvalue()

    def test_on_a_terminal_info_events_only_when_asked(self) -> None:
        """On a terminal the default level is warning; --log-level info shows developer events."""

        class Tty(io.StringIO):
            def isatty(self) -> bool:
                return True

        quiet, loud = Tty(), Tty()
        configure_logging(None, stream=quiet)
        structlog.get_logger("t").info("sync.summary", run_id="abc")
        structlog.get_logger("t").warning("source.stale")
        configure_logging(LoggingSettings(level="info"), stream=loud)
        structlog.get_logger("t").info("sync.summary", run_id="abc")
        assert "sync.summary" not in quiet.getvalue()
        assert "source.stale" in quiet.getvalue()
        assert "sync.summary" in loud.getvalue()

    def test_colour_follows_the_terminal(self) -> None:
        """Colour on a terminal; NO_COLOR or TERM=dumb turn it off; never off a terminal."""

        class Tty(io.StringIO):
            def isatty(self) -> bool:
                return True

        assert colour_supported(Tty(), {"TERM": "xterm-256color"})
        assert not colour_supported(Tty(), {"NO_COLOR": "1"})
        assert not colour_supported(Tty(), {"TERM": "dumb"})
        assert not colour_supported(io.StringIO(), {})
