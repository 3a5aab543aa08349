"""``kind = "teams"``: Adaptive Cards 1.4 to a Microsoft Teams Workflows webhook.

Office 365 connectors (the old incoming webhooks) are retired; a Teams channel
takes posts through a Workflows flow "Post to a channel when a webhook request
is received", whose URL is a secret::

    [[notify.channels]]
    name = "teams"
    kind = "teams"
    webhook_url = "${TEAMS_WEBHOOK_URL}"
    send = ["digest"]                   # reminders too, to a channel of the team's choice

The card is rendered when the message is queued (``notify.teams_card``) and
posted as it was queued. Retries follow the outbox's at-most-once rule: only a
refused or failed connection (nothing was sent), a ``429`` or a ``503`` with
``Retry-After`` is tried again; a read timeout means the post may have arrived,
so it is not repeated (the outbox records it as unknown).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, ClassVar, TextIO

import requests
import structlog
from pydantic import Field, SecretStr, field_validator
from urllib3.exceptions import MaxRetryError, NewConnectionError

from sales_velocity.kernel.errors import DeliveryError
from sales_velocity.kernel.http import new_session
from sales_velocity.notify.channels import ChannelSettings
from sales_velocity.notify.message import Message
from sales_velocity.notify.slack_bot import DeliveryUnknownError

__all__ = ["TeamsChannel", "TeamsSettings"]

log = structlog.get_logger(__name__)


class TeamsSettings(ChannelSettings):
    """``kind = "teams"``: a Workflows webhook URL (a secret)."""

    webhook_url: SecretStr = Field(description="The Workflows 'when a webhook request is received' URL.")
    timeout_seconds: float = Field(default=10.0, gt=0, le=300)
    max_attempts: int = Field(
        default=4, ge=1, le=10, description="Attempts on refused connections, 429, 503."
    )
    max_retry_after_seconds: float = Field(default=120.0, ge=0, le=3600)

    @field_validator("webhook_url")
    @classmethod
    def _url(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value().startswith(("https://", "http://")):
            raise ValueError("must be an http(s) URL")
        return value


def _not_sent(exc: requests.RequestException) -> bool:
    """Whether the request failed before anything was sent (no connection was made)."""
    if isinstance(exc, requests.ConnectTimeout):
        return True
    if isinstance(exc, requests.ConnectionError):
        reason = exc.args[0] if exc.args else None
        if isinstance(reason, MaxRetryError):
            reason = reason.reason
        return isinstance(reason, NewConnectionError)
    return False


class TeamsChannel:
    """Post the queued Adaptive Card in the message envelope."""

    settings_model: ClassVar[type[ChannelSettings]] = TeamsSettings
    needs_recipient: ClassVar[bool] = False

    def __init__(
        self,
        settings: TeamsSettings,
        *,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.settings = settings
        self._session = session or new_session()
        self._sleep = sleep

    def check(self) -> str:
        """Nothing to check without posting."""
        return "nothing to check"

    def bind_output(self, out: TextIO) -> None:
        """This channel does not print; nothing to bind."""

    def _what(self) -> str:
        return f"teams channel {self.settings.name!r}"

    def send(self, message: Message) -> None:
        """Post the message's card; refused (4xx) fails this message, 5xx or no connection the channel."""
        payload = message.formats.get("teams")
        if payload is None:
            raise DeliveryError(f"{message.key} was queued without its Teams card", channel_down=False)
        self._post(payload)

    def _post(self, payload: dict[str, Any]) -> None:
        s = self.settings
        for attempt in range(1, s.max_attempts + 1):
            last = attempt == s.max_attempts
            try:
                response = self._session.post(
                    s.webhook_url.get_secret_value(),
                    json=payload,
                    timeout=(min(10.0, s.timeout_seconds), s.timeout_seconds),
                )
            except requests.RequestException as exc:
                if not _not_sent(exc):
                    raise DeliveryUnknownError(
                        f"{self._what()}: no answer after posting ({type(exc).__name__}); it may have "
                        "arrived, "
                        "so it is not posted again",
                        channel_down=True,
                    ) from None
                if last:
                    raise DeliveryError(
                        f"{self._what()}: cannot connect ({type(exc).__name__})", channel_down=True
                    ) from None
                self._sleep(min(30.0, 2.0 ** (attempt - 1)))
                continue
            if response.status_code < 300:
                return
            retry_after = response.headers.get("Retry-After")
            wait = float(retry_after) if retry_after and retry_after.replace(".", "", 1).isdigit() else None
            if response.status_code in (429, 503) and wait is not None and not last:
                if wait > s.max_retry_after_seconds:
                    break
                log.warning(
                    "notify.teams.retry_after", channel=s.name, status=response.status_code, retry_after=wait
                )
                self._sleep(wait)
                continue
            reason = f"{self._what()}: HTTP {response.status_code}: {response.text[:200]}"
            raise DeliveryError(
                reason, channel_down=response.status_code >= 500 or response.status_code == 429
            )
        raise DeliveryError(f"{self._what()}: throttled beyond max_retry_after_seconds", channel_down=True)
