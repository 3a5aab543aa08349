"""The Slack bot mode and the Teams channel through `velocity run`, against loopback fakes."""

from __future__ import annotations

import datetime as dt
import io
import json
import socket
import threading
from pathlib import Path

import pytest
import sqlalchemy as sa

from sales_velocity.kernel.errors import DeliveryError
from sales_velocity.kernel.testing.fake_slack import FakeSlack
from sales_velocity.kernel.testing.fake_teams import FakeTeams
from sales_velocity.notify.channels import build_channel
from sales_velocity.notify.job import run_notify
from sales_velocity.notify.message import Message
from sales_velocity.notify.settings import load_notify_settings
from sales_velocity.notify.slack_bot import DeliveryUnknownError, SlackBotChannel
from sales_velocity.notify.teams import TeamsChannel
from sales_velocity.scheduler import main
from sales_velocity.sync.store import make_engine, outbox_table
from tests.notify.conftest import METRICS
from tests.notify.factory import AS_OF

NOW = dt.datetime(2026, 11, 26, 9, 0, tzinfo=dt.UTC)
TOKEN = "xoxb-1234-secret-bot-token"
SLEEPS: list[float] = []  # the waits of the last channel built by bot()
HEADER = ("id,title,amount,currency,pipeline,stage,status,owner,owner_email,created_at,closed_at,"
          "stage_entered_at,next_step,next_activity_at,last_activity_at\n")
ROWS = [
    "W1,Won one,50000,NOK,New Business,Won,won,Kari Nordmann,kari@example.com,2026-09-01,2026-10-01,,,,",
    "W2,Won two,60000,NOK,New Business,Won,won,Ola Hansen,ola@example.com,2026-09-10,2026-10-20,,,,",
    "W3,Won three,30000,NOK,Renewals,Won,won,Per Berg,,2026-08-01,2026-10-05,,,,",
    "L1,Lost one,10000,NOK,New Business,Lost,lost,Kari Nordmann,kari@example.com,2026-09-05,2026-10-10,,,,",
    "O1,Kari stalled deal,40000,NOK,New Business,Proposal,open,Kari Nordmann,kari@example.com,"
    "2026-08-20,,2026-09-01,,,2026-09-01",
    "O2,Ola stalled deal,20000,NOK,New Business,Proposal,open,Ola Hansen,ola@example.com,"
    "2026-08-20,,2026-09-01,,,2026-09-01",
    "O3,Per stalled deal,15000,NOK,Renewals,Proposal,open,Per Berg,,2026-08-20,,2026-09-01,,,2026-09-01",
    "O4,Kari healthy deal,30000,NOK,New Business,Lead,open,Kari Nordmann,kari@example.com,"
    "2026-11-01,,2026-11-20,Call,2026-11-30,2026-11-25",
]


def write_config(tmp_path: Path, slack_api: str, teams_url: str | None = None, locale: str = "en") -> Path:
    """A CSV source, the Slack bot channel and (optionally) a Teams channel."""
    (tmp_path / "deals.csv").write_text(HEADER + "\n".join(ROWS) + "\n", encoding="utf-8")
    teams = ('[[notify.channels]]\nname = "teams"\nkind = "teams"\nwebhook_url = "${TEAMS_WEBHOOK_URL}"\n'
             'send = ["digest"]\n') if teams_url else ""
    path = tmp_path / "velocity.toml"
    path.write_text(
        'timezone = "UTC"\ncurrency = "NOK"\n[store]\nurl = "sqlite:///velocity.db"\n'
        '[[sources]]\nname = "crm"\nkind = "csv"\npath = "deals.csv"\n'
        f'[notify]\nlocale = "{locale}"\nfallback_to = "lead@example.com"\nchart = true\n'
        '[[notify.channels]]\nname = "slack"\nkind = "slack"\nbot_token = "${SLACK_BOT_TOKEN}"\n'
        f'channel = "#sales"\nsend = ["digest", "reminders"]\napi_url = "{slack_api}"\n' + teams,
        encoding="utf-8",
    )
    return path


def run(config: Path, env: dict[str, str]) -> tuple[int, str]:
    """`velocity run` in-process with the pinned clock."""
    out = io.StringIO()
    code = main(["--config", str(config), "run"], env=env, out=out, now=lambda: NOW)
    return code, out.getvalue()


def everything(posted) -> str:
    """The text and blocks of messages, as one string to search."""
    return json.dumps([[m.text, m.blocks] for m in posted], ensure_ascii=False)


@pytest.fixture
def slack():
    """The fake workspace: Kari and the team lead have accounts; Ola and Per do not."""
    fake = FakeSlack(token=TOKEN)
    fake.add_user("kari@example.com")
    fake.add_user("lead@example.com")
    with fake.serve() as url:
        yield fake, url


class TestVelocityRun:
    def test_digest_in_channel_with_thread_and_chart_reminders_as_dms(self, tmp_path, slack, capsys):
        """One digest with thread reply and PNG; one DM per owner with an account; the rest to the lead."""
        fake, url = slack
        teams = FakeTeams()
        with teams.serve() as hook:
            config = write_config(tmp_path, url, hook)
            env = {"SLACK_BOT_TOKEN": TOKEN, "TEAMS_WEBHOOK_URL": hook}
            code, out = run(config, env)
            assert code == 0, out
            top = fake.in_channel("#sales")
            assert len(top) == 1
            assert "per day" in top[0].text
            thread = fake.replies(top[0].channel, top[0].ts)
            assert len(thread) == 1
            assert "Per pipeline" in everything(thread)
            assert [(f.channel, f.thread_ts) for f in fake.files] == [(top[0].channel, top[0].ts)]
            assert fake.files[0].content.startswith(b"\x89PNG")
            # reminders: Kari's own DM; Ola (no Slack account) and Per (no e-mail) reach the lead
            kari = fake.dms("kari@example.com")
            assert len(kari) == 1
            assert "Kari stalled deal" in everything(kari)
            assert "Ola stalled deal" not in everything(kari)
            lead = everything(fake.dms("lead@example.com"))
            assert len(fake.dms("lead@example.com")) == 2
            assert "Ola Hansen has no Slack account" in lead
            assert "Per stalled deal" in lead
            # nothing private in the channel: only the digest and its thread
            channel_posts = [m for m in fake.messages if m.channel == top[0].channel]
            assert len(channel_posts) == 2
            assert "Hi Kari" not in everything(channel_posts)
            assert "has no Slack account" not in everything(channel_posts)
            # Teams: one valid 1.4 card with the same headline
            assert len(teams.cards) == 1
            assert teams.cards[0]["version"] == "1.4"
            assert top[0].text in json.dumps(teams.cards[0], ensure_ascii=False)
            # at most once: a second run the same day posts nothing
            before = (len(fake.messages), len(fake.files), len(teams.cards))
            code, out = run(config, env)
            assert code == 0, out
            assert (len(fake.messages), len(fake.files), len(teams.cards)) == before
        captured = capsys.readouterr()
        assert TOKEN not in out + captured.out + captured.err
        assert TOKEN.encode() not in (tmp_path / "velocity.db").read_bytes()
        assert "SECRETSIG" not in captured.out + captured.err

    def test_norwegian_digest_and_dm(self, tmp_path, slack):
        """With locale nb the channel message and the DMs are in Norwegian."""
        fake, url = slack
        code, out = run(write_config(tmp_path, url, locale="nb"), {"SLACK_BOT_TOKEN": TOKEN})
        assert code == 0, out
        assert "per dag" in fake.in_channel("sales")[0].text
        assert "Hei Kari" in everything(fake.dms("kari@example.com"))

    def test_missing_scope_fails_the_run_and_names_it(self, tmp_path, slack):
        """Without users:read.email the reminders fail with the scope named; the digest still goes out."""
        fake, url = slack
        fake.scopes.discard("users:read.email")
        code, out = run(write_config(tmp_path, url), {"SLACK_BOT_TOKEN": TOKEN})
        assert code == 1
        assert "lacks the scope users:read.email" in out
        assert len(fake.in_channel("sales")) == 1
        assert not [m for m in fake.messages if m.channel.startswith("D")]
        engine = make_engine(f"sqlite:///{tmp_path / 'velocity.db'}")
        with engine.connect() as conn:
            statuses = set(conn.execute(sa.select(outbox_table.c.status)
                                        .where(outbox_table.c.kind == "reminders")).scalars())
        engine.dispose()
        assert statuses == {"pending"}  # nothing lost: tried again on the next run


def bot(url: str, **extra) -> SlackBotChannel:
    """A bot channel on the fake, with a recording sleep."""
    table = {"kind": "slack", "name": "s", "bot_token": TOKEN, "channel": "#sales", "api_url": url,
             "send": ["digest", "reminders"], **extra}
    channel = build_channel(table, "notify.channels[0]")
    assert isinstance(channel, SlackBotChannel)
    channel._sleep = SLEEPS.append
    SLEEPS.clear()
    return channel


def reminder(recipient: str | None, fallback_to: str | None = "lead@example.com"):
    """A queued reminder message with its Slack bot rendering."""
    dm = {"text": "2 deals", "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": "Hi"}}]}
    return Message(kind="reminders", key="reminders:2026-11-26:x", subject="s", text="t", markdown="m",
                   html="h", slack=dm, data={"fallback_to": fallback_to, "owners": []}, recipient=recipient,
                   formats={"slack_bot": {"dm": dm, "forwarded": dm}})


class TestChannel:
    def test_rate_limit_waits_for_retry_after_and_sends_once(self, slack):
        """A 429 with Retry-After: 7 is waited out (7 s) and the DM is posted once."""
        fake, url = slack
        fake.rate_limit("chat.postMessage", retry_after=7)
        channel = bot(url)
        channel.send(reminder("kari@example.com"))
        assert SLEEPS == [7.0]
        assert len(fake.dms("kari@example.com")) == 1
        assert fake.calls("chat.postMessage") == 2

    def test_missing_chat_write_names_the_scope(self, slack):
        """Without chat:write the error names the scope and what it is for."""
        fake, url = slack
        fake.scopes.discard("chat:write")
        with pytest.raises(DeliveryError, match=r"lacks the scope chat:write \(needed to post messages"):
            bot(url).send(reminder("kari@example.com"))

    def test_owner_without_account_and_no_fallback_is_never_posted_to_the_channel(self, slack):
        """No Slack user and no fallback: an error for this message only; nothing in any channel."""
        fake, url = slack
        with pytest.raises(DeliveryError, match=r"no Slack account for ola@example\.com") as info:
            bot(url).send(reminder("ola@example.com", fallback_to=None))
        assert info.value.channel_down is False
        assert fake.messages == []

    def test_read_timeout_is_unknown_not_retried(self):
        """A server that takes the request and never answers: DeliveryUnknownError after one attempt."""
        server = socket.socket()
        server.bind(("127.0.0.1", 0))
        server.listen()
        seen: list[bytes] = []

        def accept() -> None:
            conn, _ = server.accept()
            seen.append(conn.recv(65536))
            threading.Event().wait(3)
            conn.close()

        threading.Thread(target=accept, daemon=True).start()
        channel = bot(f"http://127.0.0.1:{server.getsockname()[1]}/api", timeout_seconds=1)
        with pytest.raises(DeliveryUnknownError, match="may have arrived"):
            channel.send(reminder("kari@example.com"))
        assert len(seen) == 1
        assert SLEEPS == []
        server.close()

    def test_connection_refused_is_retried_then_channel_down(self):
        """Nothing listens: retried (backoff), then the channel is down."""
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        sock.close()
        channel = bot(f"http://127.0.0.1:{port}/api", max_attempts=3)
        with pytest.raises(DeliveryError, match="cannot reach Slack") as info:
            channel.send(reminder("kari@example.com"))
        assert info.value.channel_down is True
        assert SLEEPS == [1.0, 2.0]

    def test_webhook_mode_still_builds_the_webhook_channel(self):
        """webhook_url builds the incoming-webhook channel; both keys at once is a config error."""
        from sales_velocity.kernel.errors import ConfigError
        from sales_velocity.notify.channels import SlackChannel

        hook = {"kind": "slack", "name": "s", "webhook_url": "https://hooks.slack.com/services/T/B/X"}
        assert isinstance(build_channel(hook, "p"), SlackChannel)
        with pytest.raises(ConfigError, match="exactly one"):
            build_channel({**hook, "bot_token": TOKEN}, "p")
        with pytest.raises(ConfigError, match="needs `channel`"):
            build_channel({"kind": "slack", "name": "s", "bot_token": TOKEN}, "p")


class TestTeams:
    def test_retry_after_on_429_then_posted_once(self):
        """A 429 with Retry-After is waited out; the card is posted once."""
        teams = FakeTeams()
        teams.fail(429, retry_after=2)
        with teams.serve() as hook:
            sleeps: list[float] = []
            channel = build_channel({"kind": "teams", "name": "t", "webhook_url": hook}, "p")
            assert isinstance(channel, TeamsChannel)
            channel._sleep = sleeps.append
            card = {"type": "AdaptiveCard", "version": "1.4", "body": [{"type": "TextBlock", "text": "x"}]}
            env = {"type": "message", "attachments": [
                {"contentType": "application/vnd.microsoft.card.adaptive", "content": card}]}
            message = reminder("x@example.com")
            message.formats["teams"] = env
            channel.send(message)
        assert sleeps == [2.0]
        assert teams.requests == 2
        assert teams.cards == [card]

    def test_a_500_without_retry_after_is_not_repeated(self):
        """A 500 may have been processed: one attempt, the channel is down."""
        teams = FakeTeams()
        teams.fail(500)
        with teams.serve() as hook:
            channel = build_channel({"kind": "teams", "name": "t", "webhook_url": hook}, "p")
            message = reminder("x@example.com")
            message.formats["teams"] = {"type": "message", "attachments": []}
            with pytest.raises(DeliveryError, match="HTTP 500") as info:
                channel.send(message)
        assert info.value.channel_down is True
        assert teams.requests == 1


def silent_server() -> tuple[socket.socket, list[bytes]]:
    """A loopback server that reads each request and never answers (a read timeout)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    seen: list[bytes] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            seen.append(conn.recv(65536))

    threading.Thread(target=serve, daemon=True).start()
    return server, seen


class TestOutbox:
    def test_no_answer_is_unknown_and_never_sent_again(self, seeded_sqlite):
        """A Teams post without an answer is marked unknown; the next run does not post it again."""
        server, seen = silent_server()
        url = f"http://127.0.0.1:{server.getsockname()[1]}/workflows/trigger"
        notify, reminders = load_notify_settings({"chart": False, "channels": [
            {"kind": "teams", "name": "t", "webhook_url": url, "timeout_seconds": 1}]}, {}, {})
        first = run_notify(seeded_sqlite, notify, reminders, METRICS, as_of=AS_OF, now=NOW,
                           out=io.StringIO())
        second = run_notify(seeded_sqlite, notify, reminders, METRICS, as_of=AS_OF, now=NOW,
                            out=io.StringIO())
        server.close()
        assert [key for key, _ in first.channels[0].uncertain] == [f"digest:{AS_OF.isoformat()}"]
        assert len(seen) == 1
        assert second.sent == []
        with seeded_sqlite.connect() as conn:
            assert set(conn.execute(sa.select(outbox_table.c.status)).scalars()) == {"unknown"}

    def test_check_calls_auth_test(self, slack):
        """`velocity check` on a bot channel makes one auth.test call and posts nothing."""
        fake, url = slack
        assert bot(url).check() == "bot velocity in Fake Co"
        assert fake.calls("auth.test") == 1
        assert fake.messages == []
