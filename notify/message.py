"""One rendered message, in every format a channel may want, and its outbox form.

A message is rendered once, when it is queued, and stored in the outbox as JSON
(:meth:`Message.to_payload`); a retry on a later run delivers exactly what was
queued. Each channel picks the format it needs (Slack blocks, HTML e-mail, ...).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["InlineImage", "Message", "MessageKind"]

MessageKind = Literal["digest", "reminders"]


@dataclass(frozen=True, slots=True)
class InlineImage:
    """A PNG shown inside the HTML e-mail, referenced as ``cid:<cid>``."""

    cid: str
    png: bytes
    alt: str = ""


@dataclass(frozen=True, slots=True)
class Message:
    """A digest or a reminder list, rendered for every format.

    ``key`` is the outbox dedupe key (unique per channel); ``message_id`` is a
    stable id derived from it that channels send along (e-mail ``Message-ID``,
    webhook ``Idempotency-Key``) so a receiver can drop a duplicate.
    ``recipient`` is the e-mail address of a reminder's owner (or the fallback);
    ``None`` for the digest, which goes to the channel's own recipients.
    """

    kind: MessageKind
    key: str
    subject: str
    text: str
    markdown: str
    html: str
    slack: dict[str, Any]
    data: dict[str, Any]
    recipient: str | None = None
    images: tuple[InlineImage, ...] = field(default=())
    formats: dict[str, Any] = field(default_factory=dict)
    """Channel-specific renderings queued with the message (``slack_bot``, ``teams``)."""

    @property
    def message_id(self) -> str:
        """A stable id for this message (the same on every delivery attempt)."""
        return "velocity-" + "".join(c if c.isalnum() or c in "-." else "-" for c in self.key)

    def to_payload(self) -> dict[str, Any]:
        """The JSON form stored in the outbox."""
        return {
            "kind": self.kind,
            "key": self.key,
            "subject": self.subject,
            "text": self.text,
            "markdown": self.markdown,
            "html": self.html,
            "slack": self.slack,
            "data": self.data,
            "recipient": self.recipient,
            "formats": self.formats,
            "images": [
                {"cid": i.cid, "alt": i.alt, "png": base64.b64encode(i.png).decode("ascii")}
                for i in self.images
            ],
        }

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> Message:
        """Rebuild a message from its outbox JSON."""
        images = tuple(
            InlineImage(i["cid"], base64.b64decode(i["png"]), i.get("alt", ""))
            for i in payload.get("images", [])
        )
        return cls(
            kind=payload["kind"],
            key=payload["key"],
            subject=payload["subject"],
            text=payload["text"],
            markdown=payload["markdown"],
            html=payload["html"],
            slack=payload["slack"],
            data=payload["data"],
            recipient=payload.get("recipient"),
            images=images,
            formats=payload.get("formats") or {},
        )
