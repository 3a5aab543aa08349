"""Delivery channels: stdout, file, Slack, webhook and e-mail, and their registry.

Channels are found through the entry-point group ``sales_velocity.channels``;
the entry point's name is the ``kind`` of a ``[[notify.channels]]`` table. Each
class has a pydantic ``settings_model`` (``kind``, ``name``, ``send``; secrets
as ``SecretStr``), is built as ``Cls(settings)`` and delivers with
``send(message)``, raising :class:`DeliveryError` on failure. Channels never
touch the store: the outbox (``notify.outbox``) decides what to send.

Errors say whether the channel itself is down (``channel_down``: connection
refused, 5xx, a timeout), in which case the notifier stops using it for this
run, or only this message failed (a refused recipient, a 4xx). Two subclasses
(``notify.delivery``) tell the outbox more: ``DeliveryUncertain`` (sent, no
answer: recorded ``unknown``, never re-sent) and ``MessageRejected`` (this
message can never go out as it is: its row fails for good).
"""

from __future__ import annotations

import json
import os
import smtplib
import ssl
import sys
import time
from collections.abc import Callable, Mapping
from email.message import EmailMessage
from email.utils import formatdate
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol, TextIO, runtime_checkable

import requests
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationInfo, field_validator, model_validator

from sales_velocity.kernel.addresses import address_problem
from sales_velocity.kernel.errors import DeliveryError
from sales_velocity.kernel.http import new_session
from sales_velocity.kernel.plugins import PluginRegistry
from sales_velocity.metrics.scope import DigestScope
from sales_velocity.notify.delivery import (
    DeliveryUncertain,
    MessageRejected,
    post_at_most_once,
    send_mail_at_most_once,
)
from sales_velocity.notify.message import Message, MessageKind

__all__ = [
    "ENTRY_POINT_GROUP",
    "Channel",
    "ChannelSettings",
    "DeliveryError",
    "DeliveryUncertain",
    "EmailChannel",
    "EmailSettings",
    "FileChannel",
    "FileSettings",
    "MessageRejected",
    "SlackChannel",
    "SlackSettings",
    "StdoutChannel",
    "StdoutSettings",
    "WebhookChannel",
    "WebhookSettings",
    "build_channel",
    "installed_channel_kinds",
]

ENTRY_POINT_GROUP = "sales_velocity.channels"
SLACK_TEXT_LIMIT = 3000


# --------------------------------------------------------------------------- settings


class ChannelSettings(BaseModel):
    """Settings every channel has."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    name: str = Field(min_length=1, max_length=100, description="Unique name; the outbox keys by it.")
    kind: str = Field(description="The channel kind (entry-point name).")
    send: tuple[MessageKind, ...] = Field(default=("digest",), description='"digest" and/or "reminders".')
    scope: DigestScope | None = Field(
        default=None, description="The digest of these pipelines and/or owners only (metrics.scope).",
    )

    @field_validator("send")
    @classmethod
    def _some(cls, value: tuple[MessageKind, ...]) -> tuple[MessageKind, ...]:
        if not value:
            raise ValueError('must name at least one of "digest", "reminders"')
        return tuple(dict.fromkeys(value))


class StdoutSettings(ChannelSettings):
    """``kind = "stdout"``: print messages (plain text or Markdown)."""

    format: Literal["text", "markdown"] = "text"


class FileSettings(ChannelSettings):
    """``kind = "file"``: write each message as a file into a folder."""

    path: Path = Field(description="Folder for the files (relative to the config file).")
    format: Literal["markdown", "json"] = "markdown"

    @field_validator("path")
    @classmethod
    def _resolve(cls, value: Path, info: ValidationInfo) -> Path:
        base = (info.context or {}).get("config_dir")
        return value if value.is_absolute() or base is None else Path(base) / value


class _HttpSettings(ChannelSettings):
    timeout_seconds: float = Field(default=10.0, gt=0, le=300)
    max_attempts: int = Field(
        default=4, ge=1, le=10,
        description="Attempts while it cannot have arrived: connect errors, 429, 503 with Retry-After.",
    )


def _http_url(value: SecretStr) -> SecretStr:
    if not value.get_secret_value().startswith(("https://", "http://")):
        raise ValueError("must be an http(s) URL")
    return value


class SlackSettings(_HttpSettings):
    """``kind = "slack"``: an incoming webhook (the URL is a secret)."""

    webhook_url: SecretStr

    _check_url = field_validator("webhook_url")(_http_url)


class WebhookSettings(_HttpSettings):
    """``kind = "webhook"``: a JSON POST to any URL."""

    url: SecretStr
    headers: dict[str, SecretStr] = Field(default_factory=dict, description="Extra headers (Authorization).")

    _check_url = field_validator("url")(_http_url)


class EmailSettings(ChannelSettings):
    """``kind = "email"``: SMTP with STARTTLS or SSL and optional login."""

    smtp_host: str
    smtp_port: int = Field(default=587, ge=1, le=65535)
    starttls: bool = True
    ssl: bool = False
    username: str | None = None
    password: SecretStr | None = None
    from_: str = Field(alias="from", pattern=r"^[^@\s]+@[^@\s]+$")
    to: tuple[str, ...] = Field(default=(), description="Digest recipients; reminders go to each owner.")
    timeout_seconds: float = Field(default=30.0, gt=0, le=300)

    @field_validator("to")
    @classmethod
    def _addresses(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        bad = [a for a in value if address_problem(a) is not None]
        if bad:
            raise ValueError(f"not an e-mail address: {', '.join(repr(a) for a in bad)}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> EmailSettings:
        if self.ssl and self.starttls and "starttls" in self.model_fields_set:
            raise ValueError("set either ssl (implicit TLS, port 465) or starttls, not both")
        if (self.username is None) != (self.password is None):
            raise ValueError("username and password go together")
        if "digest" in self.send and not self.to:
            raise ValueError("`to` is required to send the digest")
        return self


# --------------------------------------------------------------------------- protocol


@runtime_checkable
class Channel(Protocol):
    """What the notifier and the CLI need from a channel (everything they use)."""

    needs_recipient: ClassVar[bool]
    """Reminders need a recipient address on this channel (e-mail); others post them as they are."""

    @property
    def settings(self) -> ChannelSettings:
        """The validated ``[[notify.channels]]`` table the channel was built from."""
        ...

    def check(self) -> str:
        """Make one cheap check that sends nothing; return what was checked."""
        ...

    def bind_output(self, out: TextIO) -> None:
        """Write to ``out`` (the CLI's output) where the channel prints; others ignore it."""
        ...

    def send(self, message: Message) -> None:
        """Deliver one message; raise (preferably ``DeliveryError``) on failure."""
        ...


# --------------------------------------------------------------------------- channels


class StdoutChannel:
    """Print each message to the run's output (plain text or Markdown)."""

    settings_model: ClassVar[type[ChannelSettings]] = StdoutSettings
    needs_recipient: ClassVar[bool] = False

    def __init__(self, settings: StdoutSettings, *, stream: TextIO | None = None) -> None:
        self.settings = settings
        self.stream = stream

    def check(self) -> str:
        """Nothing to check without sending."""
        return "nothing to check"

    def bind_output(self, out: TextIO) -> None:
        """Print to ``out`` (the CLI's output) instead of ``sys.stdout``."""
        self.stream = out

    def send(self, message: Message) -> None:
        """Write the message with a subject line."""
        body = message.markdown if self.settings.format == "markdown" else message.text
        stream = self.stream or sys.stdout
        stream.write(body.rstrip("\n") + "\n\n")
        stream.flush()


class FileChannel:
    """Write each message to ``<path>/<dedupe key>.md`` or ``.json`` (atomically, 0600; new folders 0700)."""

    settings_model: ClassVar[type[ChannelSettings]] = FileSettings
    needs_recipient: ClassVar[bool] = False

    def __init__(self, settings: FileSettings) -> None:
        self.settings = settings

    def bind_output(self, out: TextIO) -> None:
        """This channel does not print; nothing to bind."""

    def check(self) -> str:
        """Check that the folder exists or can be created (0700)."""
        _private_dirs(self.settings.path)
        return f"writing to {self.settings.path}"

    def send(self, message: Message) -> None:
        """Write the message; a retry overwrites the same file."""
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in message.key)
        if self.settings.format == "json":
            target = self.settings.path / f"{safe}.json"
            body = (
                json.dumps(
                    {
                        "kind": message.kind,
                        "key": message.key,
                        "subject": message.subject,
                        "recipient": message.recipient,
                        "data": message.data,
                    },
                    ensure_ascii=False,
                    indent=2,
                )
                + "\n"
            )
        else:
            target = self.settings.path / f"{safe}.md"
            body = message.markdown
        try:
            _private_dirs(self.settings.path)
            tmp = target.with_suffix(target.suffix + ".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                os.fchmod(handle.fileno(), 0o600)  # also when a stale .tmp had other modes
                handle.write(body)
            tmp.replace(target)
        except OSError as exc:
            raise DeliveryError(f"cannot write {target}: {exc.strerror or exc}") from None


def _private_dirs(path: Path) -> None:
    """Create ``path`` and any missing parents as 0700 (messages name sellers and amounts)."""
    missing = []
    for folder in (path, *path.parents):
        if folder.exists():
            break
        missing.append(folder)
    for folder in reversed(missing):
        folder.mkdir(mode=0o700, exist_ok=True)
        folder.chmod(0o700)  # mkdir's mode is masked by the umask


class _HttpChannel:
    settings: _HttpSettings
    needs_recipient: ClassVar[bool] = False

    def __init__(
        self,
        settings: Any,
        *,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.settings = settings
        self._session = session or new_session()
        self._sleep = sleep

    def check(self) -> str:
        """Nothing to check without sending."""
        return "nothing to check"

    def bind_output(self, out: TextIO) -> None:
        """This channel does not print; nothing to bind."""

    def _post(self, url: str, payload: Mapping[str, Any], headers: Mapping[str, str]) -> None:
        """POST at most once per outcome (see ``notify.delivery``): no retry once it may have arrived."""
        post_at_most_once(
            self._session,
            url,
            what=f"{self.settings.kind} channel {self.settings.name!r}",
            payload=payload,
            headers=headers,
            timeout=(min(10.0, self.settings.timeout_seconds), self.settings.timeout_seconds),
            max_attempts=self.settings.max_attempts,
            sleep=self._sleep,
        )


class SlackChannel(_HttpChannel):
    """Post Block Kit messages to a Slack incoming webhook."""

    settings_model: ClassVar[type[ChannelSettings]] = SlackSettings
    settings: SlackSettings

    def send(self, message: Message) -> None:
        """Post the message's blocks (with a plain-text fallback)."""
        self._post(self.settings.webhook_url.get_secret_value(), message.slack, {})


class WebhookChannel(_HttpChannel):
    """POST the message as JSON; ``Idempotency-Key`` lets the receiver drop a duplicate."""

    settings_model: ClassVar[type[ChannelSettings]] = WebhookSettings
    settings: WebhookSettings

    def send(self, message: Message) -> None:
        """Post ``{kind, key, subject, recipient, text, data}``."""
        headers = {k: v.get_secret_value() for k, v in self.settings.headers.items()}
        headers["Idempotency-Key"] = message.message_id
        payload = {
            "kind": message.kind,
            "key": message.key,
            "subject": message.subject,
            "recipient": message.recipient,
            "text": message.text,
            "data": message.data,
        }
        self._post(self.settings.url.get_secret_value(), payload, headers)


class EmailChannel:
    """Send multipart e-mail (text + HTML with inline images) over SMTP."""

    settings_model: ClassVar[type[ChannelSettings]] = EmailSettings
    needs_recipient: ClassVar[bool] = True
    """Reminders need an owner address (or the fallback) to go through this channel."""

    def __init__(self, settings: EmailSettings, *, ssl_context: ssl.SSLContext | None = None) -> None:
        self.settings = settings
        self._ssl_context = ssl_context

    def recipients(self, message: Message) -> list[str]:
        """The digest goes to ``to``; a reminder to its owner (or the fallback)."""
        if message.kind == "digest":
            return list(self.settings.to)
        return [message.recipient] if message.recipient else []

    def build(self, message: Message) -> EmailMessage:
        """The MIME message: text and HTML alternatives, images related to the HTML."""
        mail = EmailMessage()
        mail["Subject"] = message.subject
        mail["From"] = self.settings.from_
        mail["To"] = ", ".join(self.recipients(message))
        mail["Date"] = formatdate(localtime=False)
        domain = self.settings.from_.rsplit("@", 1)[-1]
        mail["Message-ID"] = f"<{message.message_id}@{domain}>"
        mail["Auto-Submitted"] = "auto-generated"  # RFC 3834: no out-of-office replies back to us
        mail["X-Auto-Response-Suppress"] = "All"  # the same for Exchange/Outlook
        mail.set_content(message.text)
        mail.add_alternative(message.html, subtype="html")
        html_part = mail.get_body(preferencelist=("html",))
        for image in message.images:
            assert html_part is not None  # noqa: S101 - just added above
            html_part.add_related(
                image.png,
                "image",
                "png",
                cid=f"<{image.cid}>",
                filename=f"{image.cid}.png",
                disposition="inline",
            )
        return mail

    def _connect(self) -> smtplib.SMTP:
        s = self.settings
        context = self._ssl_context or ssl.create_default_context()
        smtp: smtplib.SMTP
        if s.ssl:
            smtp = smtplib.SMTP_SSL(s.smtp_host, s.smtp_port, timeout=s.timeout_seconds, context=context)
        else:
            smtp = smtplib.SMTP(s.smtp_host, s.smtp_port, timeout=s.timeout_seconds)
            if s.starttls:  # (ignored with ssl: the connection is already encrypted)
                smtp.starttls(context=context)
        if s.username is not None and s.password is not None:
            smtp.login(s.username, s.password.get_secret_value())
        return smtp

    def bind_output(self, out: TextIO) -> None:
        """This channel does not print; nothing to bind."""

    def check(self) -> str:
        """Connect, log in and say hello, without sending anything."""
        try:
            with self._connect() as smtp:
                smtp.noop()
        except (OSError, smtplib.SMTPException) as exc:
            raise DeliveryError(_smtp_reason(exc)) from None
        return f"{self.settings.smtp_host}:{self.settings.smtp_port} answered"

    def send(self, message: Message) -> None:
        """Send one e-mail; a refused recipient or a message that cannot be built fails this message only.

        Raises:
            MessageRejected: no usable recipient, or the message cannot be built.
            DeliveryUncertain: the server took the body but did not confirm it.
            DeliveryError: not delivered (``channel_down`` when the server cannot be used).
        """
        to = self.recipients(message)
        if not to:
            raise MessageRejected(f"no recipient for {message.key}")
        for address in to:
            problem = address_problem(address)
            if problem is not None:
                raise MessageRejected(f"recipient {address!r} cannot be used: {problem}")
        try:
            mail = self.build(message)
            body = mail.as_bytes(policy=mail.policy.clone(linesep="\r\n"))
        except Exception as exc:  # a hostile value in a header or body: this message only
            raise MessageRejected(f"the e-mail cannot be built: {type(exc).__name__}: {exc}"[:300]) from None
        send_mail_at_most_once(self._connect, body, from_addr=self.settings.from_, to_addrs=to,
                               reason=_smtp_reason)


def _smtp_reason(exc: BaseException) -> str:
    """A short reason; SMTP replies carry server text, never our password."""
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        return "recipient refused: " + ", ".join(sorted(exc.recipients))
    if isinstance(exc, smtplib.SMTPResponseException):
        error = exc.smtp_error
        text = error.decode("utf-8", "replace") if isinstance(error, bytes) else error
        return f"SMTP {exc.smtp_code}: {str(text)[:200]}"
    if isinstance(exc, OSError) and not isinstance(exc, smtplib.SMTPException):
        return f"cannot reach the SMTP server: {type(exc).__name__}: {exc.strerror or exc}"
    return f"{type(exc).__name__}: {exc}"[:300]


# --------------------------------------------------------------------------- registry


CHANNELS = PluginRegistry(ENTRY_POINT_GROUP, "channel")


def installed_channel_kinds() -> list[str]:
    """Return the sorted names of every installed channel kind."""
    return CHANNELS.installed()


def build_channel(raw: Mapping[str, Any], path: str, context: Mapping[str, Any] | None = None) -> Channel:
    """Validate one ``[[notify.channels]]`` table and build its channel.

    Args:
        raw: the table as read from TOML, environment variables already expanded.
        path: its key path for error messages, e.g. ``notify.channels[1]``.
        context: validation context (``config_dir``: the config file's folder).

    Raises:
        ConfigError: unknown kind (listing the installed ones) or invalid settings,
            every problem with its key path.
    """
    channel: Channel = CHANNELS.build(raw, path, context)
    return channel
