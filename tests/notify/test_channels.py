from __future__ import annotations

import json
import os
import stat

import pytest
import responses
from responses import matchers

from sales_velocity.kernel.errors import ConfigError
from sales_velocity.notify.channels import (
    DeliveryError,
    EmailChannel,
    FileChannel,
    SlackChannel,
    WebhookChannel,
    build_channel,
)
from sales_velocity.notify.message import InlineImage, Message
from sales_velocity.notify.settings import load_notify_settings
from tests.notify.smtp import free_port, smtp_server

HOOK = "https://hooks.slack.com/services/T000/B000/SECRETTOKEN"
PNG = b"\x89PNG\r\n\x1a\nfake"


def message(kind="digest", recipient=None, key="digest:2026-11-26") -> Message:
    """A small rendered message."""
    return Message(
        kind=kind,
        key=key,
        subject="Sales velocity",
        text="plain body",
        markdown="# md body",
        html='<p>html body <img src="cid:velocity-trend"></p>',
        slack={"text": "t", "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": "x"}}]},
        data={"as_of": "2026-11-26"},
        recipient=recipient,
        images=(InlineImage("velocity-trend", PNG),),
    )


def build(raw, context=None):
    """Build a channel from a raw table."""
    return build_channel(raw, "notify.channels[0]", context or {})


class TestRegistry:
    def test_unknown_kind_lists_installed(self):
        """An unknown kind is a ConfigError at the kind's key path, listing installed kinds."""
        with pytest.raises(ConfigError) as info:
            build({"kind": "pigeon", "name": "x"})
        assert info.value.problems[0].path == "notify.channels[0].kind"
        assert "email, file, slack, stdout, teams, webhook" in str(info.value)

    def test_every_problem_with_its_path(self):
        """load_notify_settings reports every problem of both tables with key paths, no secrets."""
        with pytest.raises(ConfigError) as info:
            load_notify_settings(
                {
                    "locale": "de",
                    "channels": [
                        {"kind": "stdout", "name": "a"},
                        {"kind": "webhook", "name": "b"},
                        {"kind": "slack", "name": "a", "webhook_url": "ftp://" + "SECRETTOKEN"},
                        {"kind": "email", "name": "m", "smtp_host": "h", "from": "x@y", "send": ["digest"]},
                    ],
                },
                {"remind_every_days": 0, "overrides": [{"stage": "x"}]},
                {},
            )
        paths = [p.path for p in info.value.problems]
        assert paths == [
            "notify.channels[1].url",
            "notify.channels[2].name",
            "notify.channels[2].webhook_url",
            "notify.channels[3]",
            "notify.locale",
            "reminders.overrides[0].pipeline",
            "reminders.remind_every_days",
        ]
        assert "SECRETTOKEN" not in str(info.value)

    def test_file_path_is_relative_to_the_config(self, tmp_path):
        """A relative file path resolves against the config file's folder."""
        channel = build({"kind": "file", "name": "f", "path": "out"}, {"config_dir": tmp_path})
        assert channel.settings.path == tmp_path / "out"


class TestSlack:
    @responses.activate
    def test_posts_blocks(self):
        """The message's Block Kit payload is posted to the webhook."""
        responses.post(HOOK, body="ok", match=[matchers.json_params_matcher(message().slack)])
        SlackChannel(build({"kind": "slack", "name": "s", "webhook_url": HOOK}).settings).send(message())
        assert len(responses.calls) == 1

    @responses.activate
    def test_retries_503_with_retry_after_then_succeeds(self):
        """A 503 with Retry-After (not processed, come back later) is retried after that wait."""
        responses.post(HOOK, status=503, headers={"Retry-After": "2"})
        responses.post(HOOK, body="ok")
        sleeps: list[float] = []
        settings = build({"kind": "slack", "name": "s", "webhook_url": HOOK}).settings
        SlackChannel(settings, sleep=sleeps.append).send(message())
        assert len(responses.calls) == 2
        assert sleeps == [2.0]

    @responses.activate
    def test_gives_up_as_channel_down_without_leaking_the_url(self):
        """Persistent 5xx is a DeliveryError marking the channel down; the secret URL is not in it."""
        responses.post(HOOK, status=500)
        settings = build({"kind": "slack", "name": "s", "webhook_url": HOOK, "max_attempts": 2}).settings
        with pytest.raises(DeliveryError) as info:
            SlackChannel(settings, sleep=lambda _s: None).send(message())
        assert info.value.channel_down
        assert "SECRETTOKEN" not in str(info.value)

    @responses.activate
    def test_4xx_fails_only_the_message(self):
        """A 400 (invalid payload) is not retried and does not mark the channel down."""
        responses.post(HOOK, status=400, body="invalid_payload")
        settings = build({"kind": "slack", "name": "s", "webhook_url": HOOK}).settings
        with pytest.raises(DeliveryError) as info:
            SlackChannel(settings, sleep=lambda _s: None).send(message())
        assert not info.value.channel_down
        assert len(responses.calls) == 1


class TestWebhook:
    @responses.activate
    def test_json_with_idempotency_key_and_headers(self):
        """The webhook gets kind, key, subject, text and data, plus an Idempotency-Key header."""
        url = "https://example.com/hook"
        responses.post(
            url,
            json={},
            match=[
                matchers.header_matcher(
                    {"Idempotency-Key": "velocity-digest-2026-11-26", "Authorization": "Bearer t0k"}
                )
            ],
        )
        settings = build(
            {"kind": "webhook", "name": "w", "url": url, "headers": {"Authorization": "Bearer t0k"}}
        ).settings
        WebhookChannel(settings).send(message())
        body = json.loads(responses.calls[0].request.body or "")
        assert body == {
            "kind": "digest",
            "key": "digest:2026-11-26",
            "subject": "Sales velocity",
            "recipient": None,
            "text": "plain body",
            "data": {"as_of": "2026-11-26"},
        }


class TestFile:
    def test_markdown_and_json(self, tmp_path):
        """Markdown writes the Markdown body; JSON writes the data; one file per dedupe key."""
        FileChannel(build({"kind": "file", "name": "f", "path": str(tmp_path)}).settings).send(message())
        assert (tmp_path / "digest_2026-11-26.md").read_text() == "# md body"
        settings = build({"kind": "file", "name": "j", "path": str(tmp_path), "format": "json"}).settings
        FileChannel(settings).send(message())
        assert json.loads((tmp_path / "digest_2026-11-26.json").read_text())["data"] == {
            "as_of": "2026-11-26"
        }

    def test_files_0600_and_new_folders_0700_whatever_the_umask(self, tmp_path):
        """Messages name sellers and amounts: files are 0600, folders the channel creates 0700."""
        target = tmp_path / "out" / "nested"
        stale = target / "digest_2026-11-26.md.tmp"
        old = os.umask(0o000)
        try:
            channel = FileChannel(build({"kind": "file", "name": "f", "path": str(target)}).settings)
            channel.check()
            stale.write_text("left by a crash")
            stale.chmod(0o666)
            channel.send(message())
        finally:
            os.umask(old)
        assert stat.S_IMODE((target / "digest_2026-11-26.md").stat().st_mode) == 0o600
        assert stat.S_IMODE(target.stat().st_mode) == 0o700
        assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o700
        assert not stale.exists()


class TestEmail:
    def settings(self, port, **extra):
        """E-mail settings for the loopback server."""
        raw = {
            "kind": "email",
            "name": "mail",
            "smtp_host": "127.0.0.1",
            "smtp_port": port,
            "starttls": False,
            "from": "velocity@example.com",
            "to": ["team@example.com", "lead@example.com"],
            "send": ["digest", "reminders"],
            **extra,
        }
        return build(raw).settings

    def test_digest_multipart_with_inline_chart(self):
        """The digest goes to `to` as text + HTML with the PNG related to the HTML by its CID."""
        with smtp_server() as (inbox, port):
            EmailChannel(self.settings(port)).send(message())
        [got] = inbox.received
        assert got.rcpt_tos == ["team@example.com", "lead@example.com"]
        mail = got.message
        assert mail["Subject"] == "Sales velocity"
        assert mail["Message-ID"] == "<velocity-digest-2026-11-26@example.com>"
        plain, html = mail.get_body(("plain",)), mail.get_body(("html",))
        assert plain is not None
        assert html is not None
        assert plain.get_content().strip() == "plain body"
        assert "cid:velocity-trend" in html.get_content()
        [image] = [p for p in mail.walk() if p.get_content_type() == "image/png"]
        assert image["Content-ID"] == "<velocity-trend>"
        assert image.get_payload(decode=True) == PNG

    def test_reminder_goes_to_its_owner(self):
        """A reminder is sent to the message's recipient only."""
        with smtp_server() as (inbox, port):
            EmailChannel(self.settings(port)).send(message("reminders", "kari@example.com", "reminders:x"))
        assert inbox.received[0].rcpt_tos == ["kari@example.com"]

    def test_server_down_is_channel_down(self):
        """A refused connection is a DeliveryError that marks the channel down."""
        with pytest.raises(DeliveryError) as info:
            EmailChannel(self.settings(free_port(), timeout_seconds=2)).send(message())
        assert info.value.channel_down
        assert "cannot reach the SMTP server" in str(info.value)

    def test_ssl_and_starttls_conflict(self):
        """Explicit ssl and starttls together is a configuration error."""
        with pytest.raises(ConfigError, match="either ssl"):
            self.settings(465, ssl=True, starttls=True)
