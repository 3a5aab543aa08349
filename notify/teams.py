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
from pydantic import Field, SecretStr, field_validator

from sales_velocity.kernel.errors import DeliveryError
from sales_velocity.kernel.http import new_session
from sales_velocity.notify.channels import ChannelSettings
from sales_velocity.notify.delivery import post_at_most_once
from sales_velocity.notify.message import Message

__all__ = ["TeamsChannel", "TeamsSettings"]



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
        """One POST under the notifier's at-most-once rule (``notify.delivery``)."""
        s = self.settings
        post_at_most_once(
            self._session, s.webhook_url.get_secret_value(), what=self._what(), payload=payload,
            headers={}, timeout=(min(10.0, s.timeout_seconds), s.timeout_seconds),
            max_attempts=s.max_attempts, sleep=self._sleep, max_delay=s.max_retry_after_seconds,
        )
