"""One digest after an outage: a newer digest supersedes an undelivered older one.

When a channel was down for a day, its outbox still holds yesterday's digest
and reminders (``pending``). Delivering them before today's would post two
digests back to back, the first already out of date. So when a run is about to
queue today's messages, every pending message of an earlier day is marked
``superseded`` (never sent; the row stays, with the reason, for ``status`` and
audits):

* an older digest: today's digest says everything it said, with newer numbers;
* older reminders: their (deal, rule) pairs were recorded as reminded when they
  were queued; they are set back to "not reminded" (``last_sent_at`` cleared),
  so today's plan lists each pair again if its rule still holds: the
  reminders are re-planned, not replayed (a deal fixed since is not nagged about).

Rows of today (the same dedupe key) are left alone: they are today's messages.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
import structlog

from sales_velocity.sync.store import outbox_table, reminder_state_table

__all__ = ["Superseded", "supersede_older"]

log = structlog.get_logger(__name__)
REASON = "superseded by a newer {kind} (not sent: the newer one says it with today's numbers)"


@dataclass(frozen=True, slots=True)
class Superseded:
    """One outbox row that will not be sent."""

    channel: str
    kind: str
    dedupe_key: str


def _day(key: str) -> dt.date | None:
    parts = key.split(":")
    try:
        return dt.date.fromisoformat(parts[1]) if len(parts) > 1 else None
    except ValueError:
        return None


def _pairs(payload: dict[str, Any]) -> set[tuple[str, str, str]]:
    data = payload.get("data") or {}
    return {
        (str(deal["source"]), str(deal["id"]), str(rule))
        for owner in data.get("owners", [])
        for deal in owner.get("deals", [])
        for rule in deal.get("rules", [])
    }


def supersede_older(
    engine: sa.Engine, channels: list[str], kinds: tuple[str, ...], as_of: dt.date
) -> list[Superseded]:
    """Mark pending ``kinds`` rows of days before ``as_of`` superseded; re-open their reminder pairs."""
    box = outbox_table.c
    rs = reminder_state_table.c
    done: list[Superseded] = []
    with engine.begin() as conn:
        rows = conn.execute(
            sa.select(box.id, box.channel, box.kind, box.dedupe_key, box.payload)
            .where(box.status == "pending", box.channel.in_(channels), box.kind.in_(kinds))
            .order_by(box.id)
        ).all()
        pairs: set[tuple[str, str, str]] = set()
        for row in rows:
            day = _day(row.dedupe_key)
            if day is None or day >= as_of:
                continue
            conn.execute(
                sa.update(outbox_table)
                .where(box.id == row.id, box.status == "pending")
                .values(status="superseded", last_error=REASON.format(kind=row.kind.rstrip("s")))
            )
            if row.kind == "reminders":
                pairs |= _pairs(row.payload or {})
            done.append(Superseded(row.channel, row.kind, row.dedupe_key))
            log.info("notify.outbox.superseded", channel=row.channel, key=row.dedupe_key)
        for source, external_id, rule in sorted(pairs):
            conn.execute(
                sa.update(reminder_state_table)
                .where(rs.source == source, rs.external_id == external_id, rs.rule == rule,
                       rs.resolved_at.is_(None))
                .values(last_sent_at=None)
            )
    return done
