"""What the notifier did, in lines for the person who ran it (the JSON events are for the logs).

One line per channel that sent, failed or held something back, and, on a second
run the same day, that the digest already went out (when, and to which
channels) instead of silence.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from zoneinfo import ZoneInfo

from sales_velocity.notify.job import NotifyResult

__all__ = ["already_sent_line", "notify_lines"]


def _when(value: dt.datetime, zone: ZoneInfo) -> str:
    return value.astimezone(zone).strftime("%Y-%m-%d %H:%M %Z")


def already_sent_line(key: str, sent_at: dt.datetime, channels: Sequence[str], zone: ZoneInfo) -> str:
    """``digest:2026-11-26 was already sent at 07:02 CET to team, mail; not sent again``."""
    return (f"{key} was already sent at {_when(sent_at, zone)} to {', '.join(channels)}; not sent again "
            "(`velocity notify --preview` prints it)")


def notify_lines(result: NotifyResult) -> list[str]:
    """Human lines for a notifier run: sent, failed (with the reason and what happens next), unknown."""
    lines = []
    for c in result.channels:
        if c.sent:
            lines.append(f"channel {c.channel}: sent {', '.join(c.sent)}")
        for key, reason in c.failed:
            after = ("it cannot be sent as it is; not retried" if key in c.rejected
                     else "kept in the outbox; the next run retries it")
            lines.append(f"channel {c.channel}: FAILED to send {key}: {reason} ({after})")
        for key, reason in c.uncertain:
            lines.append(f"channel {c.channel}: {key} may or may not have been delivered: {reason}; "
                         "not sent again: check by hand")
        for key in c.unknown:
            lines.append(f"channel {c.channel}: {key} may or may not have been delivered (a run died "
                         "while sending it); not sent again: check by hand")
        held = [(key, reason) for key, reason in c.skipped if reason != "dry run"]
        for key, reason in held:
            lines.append(f"channel {c.channel}: not sent {key}: {reason}")
    return lines
