"""What a person at a terminal reads: progress, human lines per channel, a second run, preview, help."""

from __future__ import annotations

import argparse
import datetime as dt
import io
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from sales_velocity.kernel.console import SyncProgress
from sales_velocity.scheduler import build_parser, main
from sales_velocity.sync.prometheus import package_version

SEED = Path(__file__).resolve().parents[1] / "fixtures" / "csv" / "seed_example.csv"
NOW = dt.datetime(2026, 11, 26, 7, 2, tzinfo=dt.UTC)


class Tty(io.StringIO):
    """A stream that says it is a terminal."""

    def isatty(self) -> bool:
        """Always: this stream plays a terminal."""
        return True


def velocity(args: list[str], now: dt.datetime = NOW) -> tuple[int, str]:
    """Run the CLI in-process with a pinned clock; return (exit code, stdout)."""
    out = io.StringIO()
    return main(args, env={}, out=out, now=lambda: now), out.getvalue()


def config(tmp_path: Path, channels: str) -> Path:
    """The seed CSV in Europe/Oslo with the given channel tables."""
    shutil.copy(SEED, tmp_path / "seed.csv")
    path = tmp_path / "velocity.toml"
    path.write_text('timezone = "Europe/Oslo"\ncurrency = "NOK"\n'
                    '[[sources]]\nname = "seed"\nkind = "csv"\npath = "seed.csv"\n' + channels,
                    encoding="utf-8")
    return path


FILE_CHANNEL = '[[notify.channels]]\nname = "box"\nkind = "file"\npath = "sent"\nsend = ["digest"]\n'


class TestNotifyLines:
    def test_a_second_run_says_the_digest_was_already_sent(self, tmp_path: Path) -> None:
        """The second `run` the same day names when and to which channel the digest went."""
        path = str(config(tmp_path, FILE_CHANNEL))
        code, first = velocity(["--config", path, "run", "--as-of", "2026-11-26"])
        assert code == 0
        assert "channel box: sent digest:2026-11-26" in first
        code, second = velocity(["--config", path, "run", "--as-of", "2026-11-26"],
                                now=NOW + dt.timedelta(hours=2))
        assert code == 0
        assert "digest:2026-11-26 was already sent at 2026-11-26 08:02 CET to box; not sent again" in second
        assert "channel box: sent" not in second

    def test_preview_renders_the_digest_even_when_sent(self, tmp_path: Path) -> None:
        """`notify --preview` after the digest went out prints it again and queues nothing."""
        path = str(config(tmp_path, FILE_CHANNEL))
        assert velocity(["--config", path, "run", "--as-of", "2026-11-26"])[0] == 0
        sent = sorted((tmp_path / "sent").iterdir())
        code, out = velocity(["--config", path, "notify", "--preview", "--as-of", "2026-11-26"])
        assert code == 0
        assert "Sales velocity · Nov 26, 2026" in sent[0].read_text()
        assert "Sales velocity · Nov 26, 2026" in out
        assert "NOK 11,111 per day" in out  # the seed: 100 * 50 000 * 0.20 / 90
        assert sorted((tmp_path / "sent").iterdir()) == sent

    def test_a_failed_channel_prints_a_human_line(self, tmp_path: Path) -> None:
        """A webhook on a closed port: one line naming channel, message, reason and the retry; exit 1."""
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        hook = (f'[[notify.channels]]\nname = "hook"\nkind = "webhook"\nurl = "http://127.0.0.1:{port}/x"\n'
                'send = ["digest"]\n')
        code, out = velocity(["--config", str(config(tmp_path, hook)), "run", "--as-of", "2026-11-26"])
        assert code == 1
        line = next(ln for ln in out.splitlines() if ln.startswith("channel hook:"))
        assert line.startswith("channel hook: FAILED to send digest:2026-11-26: ")
        assert line.endswith("(kept in the outbox; the next run retries it)")


class TestProgress:
    def test_a_terminal_gets_a_bar_with_total_and_count(self) -> None:
        """On a terminal the bar shows the source, deals so far of the total, and a rate."""
        stream = Tty()
        with SyncProgress("hubspot", total=400, stream=stream) as bar:
            for seen in (100, 200, 400):
                bar.update(seen)
        text = stream.getvalue()
        assert "hubspot" in text
        assert "400/400" in text
        assert "100%" in text

    def test_off_a_terminal_nothing_is_drawn(self) -> None:
        """Off a terminal the display is off and writes nothing."""
        stream = io.StringIO()
        with SyncProgress("hubspot", total=400, stream=stream) as bar:
            bar.update(400)
        assert not bar.enabled
        assert stream.getvalue() == ""

    def test_a_sync_in_a_pipe_prints_no_progress(self, tmp_path: Path) -> None:
        """`velocity sync` with stderr a pipe: stderr holds JSON log lines only, no progress marks."""
        path = config(tmp_path, "")
        result = subprocess.run([sys.executable, "-m", "sales_velocity.scheduler", "--config", str(path),
                                 "sync"], capture_output=True, text=True, timeout=120, check=False)
        assert result.returncode == 0, result.stderr
        assert "\r" not in result.stderr
        assert all(line.startswith("{") for line in result.stderr.splitlines())
        assert "seed: ok: 150 seen, 150 new" in result.stdout


class TestHelp:
    def test_version(self, capsys: pytest.CaptureFixture[str]) -> None:
        """`velocity --version` prints the installed version and exits 0."""
        with pytest.raises(SystemExit) as info:
            build_parser().parse_args(["--version"])
        assert info.value.code == 0
        assert capsys.readouterr().out.strip() == f"velocity {package_version()}"

    def test_every_option_has_help_text(self) -> None:
        """Every option and positional of every command explains itself in --help."""
        parser = build_parser()
        commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        missing = []
        for name, sub in [("velocity", parser), *commands.choices.items()]:
            for action in sub._actions:
                if isinstance(action, argparse._SubParsersAction | argparse._HelpAction):
                    continue
                if not action.help:
                    missing.append(f"{name} {action.option_strings or action.dest}")
        assert missing == []
        assert set(commands.choices) >= {"init", "sync", "metrics", "report", "export", "notify", "run",
                                         "check", "status", "schedule"}
