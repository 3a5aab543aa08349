"""``kind = "slack"``: an incoming webhook, or a bot token with the Slack Web API (``slack_sdk``).

One kind, two modes, chosen by the key that is set::

    [[notify.channels]]
    name = "slack"
    kind = "slack"
    bot_token = "${SLACK_BOT_TOKEN}"   # scopes: chat:write, users:read.email, files:write
    channel = "#sales"                 # where the digest goes
    send = ["digest", "reminders"]     # reminders go to each owner as a direct message

With ``webhook_url`` instead of ``bot_token`` the channel is the incoming
webhook of ``notify.channels`` (everything is posted where the webhook points).

In bot mode the digest is a short message in ``channel`` (velocity, change, the
biggest mover, the top stalled deals, and the freshness banner), the whole
digest as a reply in its thread, and the trend chart uploaded into that thread
with ``files_upload_v2``. A reminder goes to its owner as a direct message (the
Slack user found by e-mail, ``users.lookupByEmail``); an owner without a Slack
account goes to the Slack user of ``notify.fallback_to``, never to the channel.

Retries follow the outbox's at-most-once rule: a call is repeated only when it
cannot have arrived (the connection was refused or could not be made) or Slack
said so (``429`` after its ``Retry-After``, ``503`` with ``Retry-After``); no
answer after sending (a read timeout, a dropped connection) means the message
may have arrived, so it is not repeated and the outbox records it as unknown.
Once the channel message is posted the digest counts as delivered: a failing
thread reply or upload is logged, never a reason to post the digest again.
The token is never logged or put in an error.
"""

from __future__ import annotations

import http.client
import time
import urllib.error
from collections.abc import Callable
from typing import Any, ClassVar, TextIO

import structlog
from pydantic import Field, SecretStr, field_validator, model_validator
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackClientError

from sales_velocity.kernel.errors import DeliveryError
from sales_velocity.notify.channels import ChannelSettings, SlackChannel, SlackSettings
from sales_velocity.notify.delivery import DeliveryUncertain
from sales_velocity.notify.message import Message

__all__ = ["DeliveryUnknownError", "Slack", "SlackBotChannel", "SlackModeSettings"]

log = structlog.get_logger(__name__)
DEFAULT_API_URL = "https://slack.com/api"
SCOPE_USE = {
    "chat:write": "to post messages",
    "users:read.email": "to find each owner's Slack user by e-mail",
    "files:write": "to upload the chart",
}


class DeliveryUnknownError(DeliveryUncertain):
    """The request went out and no answer came: it may have arrived, so it must not be repeated."""

    may_have_arrived = True


class SlackModeSettings(ChannelSettings):
    """``kind = "slack"``: ``webhook_url`` (incoming webhook) or ``bot_token`` (Web API), not both."""

    webhook_url: SecretStr | None = Field(default=None, description="Incoming webhook URL (webhook mode).")
    bot_token: SecretStr | None = Field(default=None, description="Bot token xoxb-... (bot mode).")
    channel: str | None = Field(
        default=None, description='Bot mode: where the digest goes ("#sales" or an id).'
    )
    api_url: str = Field(default=DEFAULT_API_URL, description="Bot mode: the Web API base URL.")
    timeout_seconds: float = Field(default=10.0, gt=0, le=300)
    max_attempts: int = Field(default=4, ge=1, le=10, description="Attempts on refused connections and 429.")
    max_retry_after_seconds: float = Field(
        default=120.0, ge=0, le=3600, description="Bot mode: wait at most this long for one Retry-After."
    )

    @field_validator("webhook_url")
    @classmethod
    def _url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().startswith(("https://", "http://")):
            raise ValueError("must be an http(s) URL")
        return value

    @field_validator("api_url")
    @classmethod
    def _api(cls, value: str) -> str:
        if not value.startswith(("https://", "http://")):
            raise ValueError("must be an http(s) URL")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _mode(self) -> SlackModeSettings:
        if (self.webhook_url is None) == (self.bot_token is None):
            raise ValueError("set webhook_url (incoming webhook) or bot_token (bot mode), exactly one")
        if self.bot_token is not None and "digest" in self.send and not self.channel:
            raise ValueError('bot mode needs `channel` (e.g. "#sales") to send the digest')
        if self.webhook_url is not None and self.channel is not None:
            raise ValueError("`channel` is for bot mode; an incoming webhook posts where it was made for")
        return self


class Slack:
    """The ``slack`` entry point: builds the webhook channel or the bot channel from one table."""

    settings_model: ClassVar[type[ChannelSettings]] = SlackModeSettings

    def __new__(cls, settings: SlackModeSettings) -> Any:
        """The webhook channel for ``webhook_url``, the bot channel for ``bot_token``."""
        if settings.bot_token is None:
            fields = settings.model_dump(
                exclude={"bot_token", "channel", "api_url", "max_retry_after_seconds"}
            )
            return SlackChannel(SlackSettings.model_validate(fields))
        return SlackBotChannel(settings)


def _header(headers: Any, name: str) -> str | None:
    for key, value in dict(headers or {}).items():
        if key.lower() == name.lower():
            return str(value[0] if isinstance(value, list) else value)
    return None


class SlackBotChannel:
    """Digest into a channel with its thread and chart; reminders as direct messages."""

    settings_model: ClassVar[type[ChannelSettings]] = SlackModeSettings
    needs_recipient: ClassVar[bool] = True
    """A reminder needs its owner's e-mail (or the fallback's) to find the Slack user."""

    def __init__(
        self,
        settings: SlackModeSettings,
        *,
        sleep: Callable[[float], None] = time.sleep,
        client: WebClient | None = None,
    ) -> None:
        assert settings.bot_token is not None  # noqa: S101 - Slack() builds this class only with one
        self.settings = settings
        self._sleep = sleep
        self._client = client or WebClient(
            token=settings.bot_token.get_secret_value(),
            base_url=settings.api_url + "/",
            timeout=max(1, round(settings.timeout_seconds)),
            retry_handlers=[],  # retries are ours: only where the call cannot have arrived
        )
        self._users: dict[str, str | None] = {}

    def bind_output(self, out: TextIO) -> None:
        """This channel does not print; nothing to bind."""

    # ----------------------------------------------------------------- calls

    def _what(self) -> str:
        return f"slack channel {self.settings.name!r}"

    def _call(self, method: str, **kwargs: Any) -> dict[str, Any]:
        """One Web API call with the at-most-once retry rule; Slack's errors as ``DeliveryError``."""
        fn = getattr(self._client, method)
        api = method.replace("_", ".", 1) if "_" in method else method
        for attempt in range(1, self.settings.max_attempts + 1):
            last = attempt == self.settings.max_attempts
            try:
                return dict(fn(**kwargs).data)
            except SlackApiError as exc:
                status = exc.response.status_code
                retry_after = _header(exc.response.headers, "Retry-After")
                if status in (429, 503) and retry_after is not None and not last:
                    wait = float(retry_after) if retry_after.replace(".", "", 1).isdigit() else 1.0
                    if wait > self.settings.max_retry_after_seconds:
                        raise DeliveryError(
                            f"{self._what()}: {api} rate limited for {wait:g} s "
                            f"(more than max_retry_after_seconds)",
                            channel_down=True,
                        ) from None
                    log.warning(
                        "notify.slack.rate_limited",
                        channel=self.settings.name,
                        method=api,
                        retry_after=wait,
                        attempt=attempt,
                    )
                    self._sleep(wait)
                    continue
                raise self._api_error(api, exc) from None
            except urllib.error.HTTPError as exc:  # an answer (the upload URL's): not repeated
                raise DeliveryError(f"{self._what()}: {api}: HTTP {exc.code}", channel_down=exc.code >= 500
                                    ) from None
            except urllib.error.URLError as exc:
                # urllib wraps errors while connecting and sending: nothing was answered, nothing arrived
                if not last:
                    self._sleep(min(30.0, 2.0 ** (attempt - 1)))
                    continue
                raise DeliveryError(
                    f"{self._what()}: cannot reach Slack ({api}): {type(exc.reason).__name__}",
                    channel_down=True,
                ) from None
            except (TimeoutError, http.client.HTTPException, ConnectionError) as exc:
                raise DeliveryUnknownError(
                    f"{self._what()}: no answer from Slack to {api} after sending ({type(exc).__name__}); "
                    "it may have arrived, so it is not sent again",
                    channel_down=True,
                ) from None
            except SlackClientError as exc:
                raise DeliveryError(
                    f"{self._what()}: {api}: {type(exc).__name__}", channel_down=True
                ) from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _api_error(self, api: str, exc: SlackApiError) -> DeliveryError:
        data = exc.response.data if isinstance(exc.response.data, dict) else {}
        error = str(data.get("error") or f"HTTP {exc.response.status_code}")
        if error == "missing_scope":
            needed = str(data.get("needed") or "?")
            use = SCOPE_USE.get(needed, f"for {api}")
            return DeliveryError(
                f"{self._what()}: the bot token lacks the scope {needed} (needed {use}, {api}); add it under "
                "OAuth & Permissions in the Slack app and reinstall the app",
                channel_down=needed == "chat:write",
            )
        down = error in ("invalid_auth", "not_authed", "account_inactive", "token_revoked", "ratelimited")
        return DeliveryError(f"{self._what()}: Slack refused {api}: {error}", channel_down=down)

    def check(self) -> str:
        """``auth.test``: the token works (sends nothing)."""
        data = self._call("auth_test")
        return f"bot {data.get('user', '?')} in {data.get('team', '?')}"

    def user_id(self, email: str) -> str | None:
        """The Slack user of ``email``, or ``None`` when the workspace has none (cached per run)."""
        key = email.lower()
        if key not in self._users:
            try:
                self._users[key] = str(self._call("users_lookupByEmail", email=email)["user"]["id"])
            except DeliveryError as exc:
                if "users_not_found" not in str(exc):
                    raise
                self._users[key] = None
        return self._users[key]

    # ----------------------------------------------------------------- sending

    def send(self, message: Message) -> None:
        """The digest into the channel (thread, chart); a reminder as a direct message."""
        payload = message.formats.get("slack_bot")
        if payload is None:
            raise DeliveryError(
                f"{message.key} was queued without its Slack bot rendering", channel_down=False
            )
        if message.kind == "digest":
            self._send_digest(message, payload)
        else:
            self._send_reminder(message, payload)

    def _send_digest(self, message: Message, payload: dict[str, Any]) -> None:
        summary = payload["summary"]
        posted = self._call(
            "chat_postMessage",
            channel=self.settings.channel,
            text=summary["text"],
            blocks=summary["blocks"],
            unfurl_links=False,
            unfurl_media=False,
        )
        channel_id, ts = str(posted["channel"]), str(posted["ts"])
        try:
            details = payload["details"]
            self._call(
                "chat_postMessage",
                channel=channel_id,
                thread_ts=ts,
                text=details["text"],
                blocks=details["blocks"],
                unfurl_links=False,
                unfurl_media=False,
            )
            for image in message.images:
                self._call(
                    "files_upload_v2",
                    channel=channel_id,
                    thread_ts=ts,
                    content=image.png,
                    filename=f"{image.cid}.png",
                    title=image.alt or payload.get("chart_title", ""),
                )
        except DeliveryError as exc:  # posted already: never post the digest twice
            log.warning(
                "notify.slack.thread_incomplete", channel=self.settings.name, key=message.key, error=str(exc)
            )

    def _send_reminder(self, message: Message, payload: dict[str, Any]) -> None:
        owner_email = message.recipient
        fallback = message.data.get("fallback_to")
        target = self.user_id(owner_email) if owner_email else None
        blocks = payload["dm"]
        if target is None and fallback and fallback != owner_email:
            target = self.user_id(str(fallback))
            blocks = payload["forwarded"]
        if target is None:
            who = owner_email or "an owner without an e-mail address"
            tail = (
                f" nor for notify.fallback_to {fallback}" if fallback else " and no notify.fallback_to is set"
            )
            raise DeliveryError(
                f"{self._what()}: no Slack account for {who}{tail}; not posted to any channel",
                channel_down=False,
            )
        self._call(
            "chat_postMessage",
            channel=target,
            text=blocks["text"],
            blocks=blocks["blocks"],
            unfurl_links=False,
            unfurl_media=False,
        )
