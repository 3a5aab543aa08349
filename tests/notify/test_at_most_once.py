"""At most once on slow receivers: no retry once a message may have arrived (issue 14, item 4)."""

from __future__ import annotations

import datetime as dt
import io
from typing import Any

import pytest
import sqlalchemy as sa

from sales_velocity.notify.channels import DeliveryError, DeliveryUncertain, WebhookChannel, build_channel
from sales_velocity.notify.job import run_notify
from sales_velocity.notify.message import Message
from sales_velocity.notify.settings import NotifySettings, RemindersSettings, load_notify_settings
from sales_velocity.notify.summary import notify_lines
from sales_velocity.sync.status import collect_status, render_status
from sales_velocity.sync.store import outbox_table
from tests.notify.conftest import METRICS
from tests.notify.factory import AS_OF, NOW
from tests.notify.receivers import stalling_smtp_server, webhook_receiver
from tests.notify.smtp import free_port

DIGEST = f"digest:{AS_OF.isoformat()}"


def settings(channel: dict[str, Any]) -> tuple[NotifySettings, RemindersSettings]:
    """Notifier settings with one channel that takes the digest only."""
    return load_notify_settings({"locale": "en", "chart": False, "channels": [channel]}, {}, {})


def notify(engine, channel: dict[str, Any]):
    """One notifier run on AS_OF."""
    notify_settings, reminders = settings(channel)
    return run_notify(engine, notify_settings, reminders, METRICS, as_of=AS_OF, now=NOW, out=io.StringIO())


def row_states(engine) -> list[tuple[str, str]]:
    """(dedupe key, status) of every outbox row."""
    box = outbox_table.c
    with engine.connect() as conn:
        return [(k, s) for k, s in conn.execute(sa.select(box.dedupe_key, box.status).order_by(box.id))]


def small(key: str = DIGEST) -> Message:
    """A minimal digest message."""
    return Message(kind="digest", key=key, subject="s", text="t", markdown="m", html="<p>h</p>",
                   slack={"text": "t"}, data={})


def hook_channel(url: str, **extra) -> tuple[WebhookChannel, list[float]]:
    """A webhook channel that never really sleeps between attempts, and the waits it asked for."""
    channel = build_channel({"kind": "webhook", "name": "hook", "url": url, **extra}, "notify.channels[0]")
    assert isinstance(channel, WebhookChannel)
    waits: list[float] = []
    return WebhookChannel(channel.settings, sleep=waits.append), waits


class TestSlowWebhook:
    @pytest.mark.parametrize("kind", ["webhook", "slack"])
    def test_answer_after_the_timeout_is_delivered_once_and_unknown(self, seeded, kind):
        """The receiver takes the body and answers after the client's timeout: 1 delivery across 2 runs."""
        with webhook_receiver(delay=1.5) as hook:
            channel = {"kind": kind, "name": "hook", "url" if kind == "webhook" else "webhook_url": hook.url,
                       "timeout_seconds": 0.3}
            first = notify(seeded, channel)
            second = notify(seeded, channel)
            assert len(hook.bodies) == 1
        if kind == "webhook":
            assert hook.keys == [small().message_id]
        assert [(c, k) for c, k, _ in first.uncertain] == [("hook", DIGEST)]
        assert first.failed == []
        assert first.sent == []
        assert row_states(seeded) == [(DIGEST, "unknown")]
        assert second.sent == []
        assert second.uncertain == []
        assert any("may or may not have been delivered" in line for line in notify_lines(first))
        status = collect_status(seeded, sources=["demo"], channels=["hook"], schedule={}, timezone="UTC",
                                now=NOW)
        assert "1 of uncertain delivery (check by hand)" in render_status(status)

    def test_503_without_retry_after_is_not_retried(self):
        """A plain 503 may have been processed behind a proxy: one request, then the run reports it."""
        with webhook_receiver() as hook:
            hook.answers.append((503, {}))
            with pytest.raises(DeliveryError) as info:
                hook_channel(hook.url)[0].send(small())
            assert len(hook.bodies) == 1
        assert info.value.channel_down
        assert not isinstance(info.value, DeliveryUncertain)

    def test_429_and_503_with_retry_after_are_retried_after_the_wait(self):
        """429 and 503 + Retry-After say "not processed": retried after the asked-for wait, then delivered."""
        with webhook_receiver() as hook:
            hook.answers += [(429, {"Retry-After": "3"}), (503, {"Retry-After": "1"})]
            channel, waits = hook_channel(hook.url)
            channel.send(small())
            assert len(hook.bodies) == 3
        assert waits == [3.0, 1.0]

    def test_gateway_timeout_is_unknown(self):
        """A 504 means a gateway gave up waiting on the receiver: uncertain, not retried."""
        with webhook_receiver() as hook:
            hook.answers.append((504, {}))
            with pytest.raises(DeliveryUncertain):
                hook_channel(hook.url)[0].send(small())
            assert len(hook.bodies) == 1

    def test_connection_refused_is_retried_and_not_uncertain(self):
        """Nothing listens: the request cannot have arrived, so it is retried, then fails as "down"."""
        channel, waits = hook_channel(f"http://127.0.0.1:{free_port()}/hook", max_attempts=3)
        with pytest.raises(DeliveryError) as info:
            channel.send(small())
        assert not isinstance(info.value, DeliveryUncertain)
        assert info.value.channel_down
        assert len(waits) == 2

    def test_redirect_is_not_followed(self):
        """A 307 is not followed (the secret headers stay with the configured host) and not success."""
        with webhook_receiver() as hook:
            hook.answers.append((307, {"Location": "http://127.0.0.2:9/elsewhere"}))
            with pytest.raises(DeliveryError, match="redirected"):
                hook_channel(hook.url, headers={"X-Api-Key": "k"})[0].send(small())
            assert len(hook.bodies) == 1


class TestStallingSmtp:
    def test_timeout_after_data_is_unknown_and_not_resent(self, seeded):
        """The SMTP server keeps the message but answers DATA after the timeout: 1 e-mail across 2 runs."""
        with stalling_smtp_server(stall=1.5) as (inbox, port):
            channel = {"kind": "email", "name": "mail", "smtp_host": "127.0.0.1", "smtp_port": port,
                       "starttls": False, "from": "velocity@example.com", "to": ["team@example.com"],
                       "timeout_seconds": 0.5}
            first = notify(seeded, channel)
            second = notify(seeded, channel)
            assert len(inbox.received) == 1
        assert [(c, k) for c, k, _ in first.uncertain] == [("mail", DIGEST)]
        assert "did not confirm" in first.uncertain[0][2]
        assert row_states(seeded) == [(DIGEST, "unknown")]
        assert second.sent == []
        assert second.failed == []

    def test_timeout_before_data_stays_pending(self, seeded):
        """Nothing listening on the SMTP port: the message cannot have arrived, so it stays pending."""
        channel = {"kind": "email", "name": "mail", "smtp_host": "127.0.0.1", "smtp_port": free_port(),
                   "starttls": False, "from": "velocity@example.com", "to": ["team@example.com"],
                   "timeout_seconds": 0.5}
        result = notify(seeded, channel)
        assert result.uncertain == []
        assert len(result.failed) == 1
        assert row_states(seeded) == [(DIGEST, "pending")]


def test_uncertain_send_fails_the_cli_run_and_shows_in_status(tmp_path, seeded_file):
    """`velocity notify` exits 1 after a send with no answer; `status` shows it; a rerun sends nothing."""
    from tests.test_cli import velocity

    with webhook_receiver(delay=1.5) as hook:
        config = seeded_file(f"""
[[notify.channels]]
kind = "webhook"
name = "hook"
url = "{hook.url}"
timeout_seconds = 0.3
""")
        code, out = velocity(["--config", str(config), "notify", "--as-of", AS_OF.isoformat()],
                             now=NOW + dt.timedelta(minutes=1))
        again, out2 = velocity(["--config", str(config), "notify", "--as-of", AS_OF.isoformat()],
                               now=NOW + dt.timedelta(minutes=2))
        assert len(hook.bodies) == 1
    assert code == 1, out
    assert "may or may not have been delivered" in out
    assert again == 0, out2
    code, status = velocity(["--config", str(config), "status"], now=NOW + dt.timedelta(minutes=3))
    assert "1 of uncertain delivery" in status
