"""The outbox: every message is stored before it is delivered, and delivered at most once.

Life of a row (one per channel and dedupe key; the unique key makes a rerun of
the same day queue nothing new)::

    pending --claim (own committed transaction)--> sending --delivered--> sent
       ^                                              |
       +------------- delivery failed ---------------+   (last_error, attempts)
    pending --older than expire_after_days--> expired     (never sent late)
    sending --found by a later run--> unknown             (never re-sent)

A row still ``sending`` when a run starts means a process died between the
network call and recording its outcome: the message may or may not have
arrived. Sending it again could deliver it twice, so it is marked ``unknown``,
logged as a warning and reported, and not re-sent (at most once). Channels also
pass a stable id derived from the dedupe key (e-mail ``Message-ID``, webhook
``Idempotency-Key``) so a receiver can drop a duplicate if an operator re-queues
one by hand.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
import structlog
from sqlalchemy.exc import IntegrityError

from sales_velocity.notify.message import Message
from sales_velocity.sync.store import outbox_table

__all__ = [
    "OutboxRow",
    "claim",
    "enqueue",
    "expire_old",
    "mark_failed",
    "mark_sent",
    "mark_unknown",
    "pending",
    "recover_interrupted",
]

log = structlog.get_logger(__name__)
ERROR_LIMIT = 500


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


def recover_interrupted(engine: sa.Engine, channels: list[str]) -> list[OutboxRow]:
    """Mark rows left ``sending`` by a dead process as ``unknown``; return them."""
    box = outbox_table.c
    with engine.begin() as conn:
        rows = _rows(conn, sa.and_(box.status == "sending", box.channel.in_(channels)))
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
    """The channel's pending rows of ``kinds``, oldest first."""
    box = outbox_table.c
    with engine.connect() as conn:
        return _rows(conn, sa.and_(box.channel == channel, box.status == "pending", box.kind.in_(kinds)))


def _rows(conn: sa.Connection, where: sa.ColumnElement[bool]) -> list[OutboxRow]:
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
        .order_by(box.id)
    )
    return [OutboxRow(*row) for row in conn.execute(query)]


def claim(engine: sa.Engine, row_id: int) -> bool:
    """Move a row from ``pending`` to ``sending`` and commit; ``False`` if someone else has it."""
    box = outbox_table.c
    with engine.begin() as conn:
        result = conn.execute(
            sa.update(outbox_table)
            .where(box.id == row_id, box.status == "pending")
            .values(status="sending", attempts=box.attempts + 1)
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


def mark_unknown(engine: sa.Engine, row_id: int, error: str) -> None:
    """Record a delivery whose outcome is unknown (sent, no answer): ``unknown``, never re-sent."""
    with engine.begin() as conn:
        conn.execute(
            sa.update(outbox_table)
            .where(outbox_table.c.id == row_id)
            .values(status="unknown", last_error=error[:ERROR_LIMIT])
        )


def mark_failed(engine: sa.Engine, row_id: int, error: str) -> None:
    """Record a failed attempt; the row goes back to ``pending`` for the next run."""
    with engine.begin() as conn:
        conn.execute(
            sa.update(outbox_table)
            .where(outbox_table.c.id == row_id)
            .values(status="pending", last_error=error[:ERROR_LIMIT])
        )
