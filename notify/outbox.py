"""The outbox: every message is stored before it is delivered, and delivered at most once.

Life of a row (one per channel and dedupe key; the unique key makes a rerun of
the same day queue nothing new)::

    pending --claim (own committed transaction)--> sending --delivered--> sent
       ^                                              |
       +------- not delivered (cannot have arrived) --+   (last_error, attempts)
    sending --sent, no answer (read timeout, after DATA)--> unknown   (never re-sent)
    sending --the message can never go out as it is-----> failed    (last_error)
    pending --older than expire_after_days--> expired     (never sent late)
    sending --its holder is gone--> unknown               (never re-sent)

A claim records its holder (``claimed_by`` = ``host:pid:run``) and time. A row
still ``sending`` when a run starts is either being sent right now by another
run (its holder lives: left alone, no warning) or was left by a process that
died between the network call and recording its outcome (same host and the pid
is gone, or this process's own earlier run, or no outcome for ``CLAIM_STALE``
when the holder is on another host): the message may or may not have arrived.
Sending it again could deliver it twice, so it is marked ``unknown``, logged as
a warning and reported, and not re-sent (at most once). A send that went out
and got no answer is recorded the same way. Channels also pass a stable id
derived from the dedupe key (e-mail ``Message-ID``, webhook ``Idempotency-Key``)
so a receiver can drop a duplicate if an operator re-queues one by hand.

Digests come before reminders in every channel's queue, so a reminder that
cannot go out never holds up a digest. Every error text is passed through the
caller's redactor and stripped of URL paths and queries before it is stored.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
import structlog
from sqlalchemy.exc import IntegrityError

from sales_velocity.notify.message import Message
from sales_velocity.sync.lock import HOST, holder_alive
from sales_velocity.sync.store import outbox_table

__all__ = [
    "CLAIM_STALE",
    "OutboxRow",
    "claim",
    "clean_error",
    "enqueue",
    "expire_old",
    "holder_id",
    "mark_failed",
    "mark_rejected",
    "mark_sent",
    "mark_unknown",
    "pending",
    "recover_interrupted",
]

log = structlog.get_logger(__name__)
ERROR_LIMIT = 500
CLAIM_STALE = dt.timedelta(hours=2)
"""A claim by a process on another host with no outcome for this long is taken as interrupted
(longer than any send can take: 10 attempts of at most 300 s plus their waits)."""
_URL = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)([^/\s?#'\"<>]*)[^\s'\"<>]*")
Redact = Callable[[str], str]


def holder_id(run_id: str | None = None) -> str:
    """The ``claimed_by`` of this process: ``host:pid:run``."""
    return f"{HOST}:{os.getpid()}:{run_id or uuid.uuid4().hex[:12]}"


def clean_error(error: str, redact: Redact | None = None) -> str:
    """``error`` fit to store or print: secrets masked, URLs cut to scheme and host, bounded."""
    text = redact(error) if redact is not None else error
    text = _URL.sub(lambda m: f"{m.group(1)}{m.group(2).rsplit('@', 1)[-1]}/…", text)
    return text[:ERROR_LIMIT]


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """A queued message of one channel."""

    id: int
    channel: str
    kind: str
    dedupe_key: str
    recipient: str | None
    payload: dict[str, Any]
    attempts: int
    created_at: dt.datetime

    def message(self) -> Message:
        """The message as it was queued."""
        return Message.from_payload(self.payload)


def enqueue(conn: sa.Connection, channel: str, message: Message, now: dt.datetime) -> bool:
    """Queue ``message`` for ``channel`` in the caller's transaction; ``False`` if already queued."""
    box = outbox_table.c
    exists = conn.execute(
        sa.select(box.id).where(box.channel == channel, box.dedupe_key == message.key)
    ).first()
    if exists is not None:
        return False
    try:
        with conn.begin_nested():
            conn.execute(
                sa.insert(outbox_table).values(
                    channel=channel,
                    kind=message.kind,
                    dedupe_key=message.key,
                    recipient=message.recipient,
                    payload=message.to_payload(),
                    status="pending",
                    attempts=0,
                    last_error=None,
                    created_at=now,
                    sent_at=None,
                )
            )
    except IntegrityError:  # queued by a concurrent run in the meantime
        return False
    return True


def _holder_gone(claimed_by: str | None, claimed_at: dt.datetime | None, me: str,
                 now: dt.datetime) -> bool:
    """Whether the run that claimed a row can no longer record its outcome."""
    if not claimed_by:
        return True  # claimed before holders were recorded
    host, _, rest = claimed_by.partition(":")
    pid_text, _, run = rest.partition(":")
    pid = int(pid_text) if pid_text.isdigit() else None
    my_host, _, my_rest = me.partition(":")
    my_pid, _, my_run = my_rest.partition(":")
    if host == my_host and pid_text == my_pid:
        return run != my_run  # this process's own earlier run is over
    alive = holder_alive(host, pid)
    if alive is not None:
        return not alive
    if claimed_at is None:
        return True
    if claimed_at.tzinfo is None:
        claimed_at = claimed_at.replace(tzinfo=dt.UTC)
    return now - claimed_at > CLAIM_STALE


def recover_interrupted(engine: sa.Engine, channels: list[str], *, holder: str | None = None,
                        now: dt.datetime | None = None) -> list[OutboxRow]:
    """Mark rows left ``sending`` by a run that is gone as ``unknown``; return them.

    A row another live run is sending right now is left alone (no warning).
    """
    box = outbox_table.c
    me = holder or holder_id()
    now = now or dt.datetime.now(dt.UTC)
    with engine.begin() as conn:
        candidates = conn.execute(
            sa.select(box.id, box.claimed_by, box.claimed_at)
            .where(box.status == "sending", box.channel.in_(channels))
        ).all()
        gone = [r.id for r in candidates if _holder_gone(r.claimed_by, r.claimed_at, me, now)]
        rows = _rows(conn, box.id.in_(gone)) if gone else []
        for row in rows:
            conn.execute(
                sa.update(outbox_table)
                .where(box.id == row.id, box.status == "sending")
                .values(
                    status="unknown",
                    last_error="delivery was interrupted; not re-sent, since it may have arrived",
                )
            )
            log.warning("notify.outbox.interrupted", channel=row.channel, key=row.dedupe_key)
    return rows


def expire_old(engine: sa.Engine, channels: list[str], before: dt.datetime) -> list[OutboxRow]:
    """Mark pending rows created before ``before`` as ``expired``; return them."""
    box = outbox_table.c
    with engine.begin() as conn:
        rows = _rows(
            conn, sa.and_(box.status == "pending", box.channel.in_(channels), box.created_at < before)
        )
        if rows:
            conn.execute(
                sa.update(outbox_table).where(box.id.in_([r.id for r in rows])).values(status="expired")
            )
    return rows


def pending(engine: sa.Engine, channel: str, kinds: tuple[str, ...]) -> list[OutboxRow]:
    """The channel's pending rows of ``kinds``: digests first, then reminders, each oldest first."""
    box = outbox_table.c
    with engine.connect() as conn:
        return _rows(conn, sa.and_(box.channel == channel, box.status == "pending", box.kind.in_(kinds)),
                     digests_first=True)


def _rows(conn: sa.Connection, where: sa.ColumnElement[bool], *,
          digests_first: bool = False) -> list[OutboxRow]:
    box = outbox_table.c
    query = (
        sa.select(
            box.id,
            box.channel,
            box.kind,
            box.dedupe_key,
            box.recipient,
            box.payload,
            box.attempts,
            box.created_at,
        )
        .where(where)
        .order_by(*([sa.case((box.kind == "digest", 0), else_=1)] if digests_first else []), box.id)
    )
    return [OutboxRow(*row) for row in conn.execute(query)]


def claim(engine: sa.Engine, row_id: int, *, holder: str | None = None,
          now: dt.datetime | None = None) -> bool:
    """Move a row from ``pending`` to ``sending`` as ``holder`` and commit; ``False`` if another has it."""
    box = outbox_table.c
    with engine.begin() as conn:
        result = conn.execute(
            sa.update(outbox_table)
            .where(box.id == row_id, box.status == "pending")
            .values(status="sending", attempts=box.attempts + 1, claimed_by=(holder or holder_id())[:200],
                    claimed_at=now or dt.datetime.now(dt.UTC))
        )
    return result.rowcount == 1


def mark_sent(engine: sa.Engine, row_id: int, now: dt.datetime) -> None:
    """Record a delivery."""
    with engine.begin() as conn:
        conn.execute(
            sa.update(outbox_table)
            .where(outbox_table.c.id == row_id)
            .values(status="sent", sent_at=now, last_error=None)
        )


def _finish(engine: sa.Engine, row_id: int, status: str, error: str, redact: Redact | None) -> None:
    with engine.begin() as conn:
        conn.execute(
            sa.update(outbox_table)
            .where(outbox_table.c.id == row_id)
            .values(status=status, last_error=clean_error(error, redact))
        )


def mark_failed(engine: sa.Engine, row_id: int, error: str, redact: Redact | None = None) -> None:
    """Record a failed attempt that cannot have delivered it; the row goes back to ``pending``."""
    _finish(engine, row_id, "pending", error, redact)


def mark_unknown(engine: sa.Engine, row_id: int, error: str, redact: Redact | None = None) -> None:
    """Record a send that went out without an answer: ``unknown``, never re-sent automatically."""
    _finish(engine, row_id, "unknown", error, redact)
    log.warning("notify.outbox.uncertain", row=row_id)


def mark_rejected(engine: sa.Engine, row_id: int, error: str, redact: Redact | None = None) -> None:
    """Record a message that can never go out as it is: ``failed`` for good."""
    _finish(engine, row_id, "failed", error, redact)
