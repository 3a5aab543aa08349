"""Stalled-deal reminders: who gets which deals today, and the dedupe state behind it.

A ``(deal, rule)`` pair is *due* when the rule holds and it was never sent, or
was last sent ``remind_every_days`` or more local days before ``as_of``. A pair
whose rule stops holding is marked resolved (``resolved_at``); if it holds again
later it counts as new. Only due pairs are listed, so an owner is never told
today what they were told yesterday.

Deals are grouped per owner (one message per owner with an address). Owners
without an address (or deals without an owner) go together in one message to
``fallback_to``, listed by owner.

:func:`record_plan` writes the state in the caller's transaction, the same one
that queues the messages in the outbox: once the outbox has a message, its pairs
count as sent, and the outbox guarantees the delivery (see ``notify.outbox``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from zoneinfo import ZoneInfo

import sqlalchemy as sa

from sales_velocity.kernel.addresses import valid_address
from sales_velocity.metrics.hygiene import Rule, StalledDeal, find_stalled
from sales_velocity.notify.settings import RemindersSettings
from sales_velocity.sync.store import reminder_state_table

__all__ = ["OwnerReminders", "ReminderMessage", "ReminderPlan", "plan_reminders", "record_plan"]

Pair = tuple[str, str, str]  # (source, external id, rule)


@dataclass(frozen=True, slots=True)
class OwnerReminders:
    """One owner's due deals; each deal carries only its due rules."""

    owner_key: str
    owner_name: str | None
    email: str | None
    deals: tuple[StalledDeal, ...]


@dataclass(frozen=True, slots=True)
class ReminderMessage:
    """One reminder message: to an owner, or to the fallback listing several owners."""

    key: str
    recipient: str | None
    fallback: bool
    owners: tuple[OwnerReminders, ...]
    more: int = 0
    """Due deals left out of this message by the cap (they stay due: a later reminder lists them)."""

    @property
    def deal_count(self) -> int:
        """Deals listed in the message."""
        return sum(len(o.deals) for o in self.owners)


@dataclass
class ReminderPlan:
    """Today's reminder messages and the state changes that go with them."""

    as_of: dt.date
    messages: list[ReminderMessage] = field(default_factory=list)
    sent: list[Pair] = field(default_factory=list)
    """Pairs listed in a message today (new or repeated)."""
    new: list[Pair] = field(default_factory=list)
    """Pairs with no open state row (first seen, or holding again after resolving)."""
    resolved: list[Pair] = field(default_factory=list)
    """Open pairs whose rule no longer holds."""
    held: int = 0
    """Pairs holding today, due or not."""


def _open_state(engine: sa.Engine) -> dict[Pair, dt.datetime | None]:
    """Unresolved pairs and when each was last sent."""
    rs = reminder_state_table.c
    query = sa.select(rs.source, rs.external_id, rs.rule, rs.last_sent_at).where(rs.resolved_at.is_(None))
    with engine.connect() as conn:
        return {(r.source, r.external_id, r.rule): r.last_sent_at for r in conn.execute(query)}


def _key(as_of: dt.date, who: str, pairs: Iterable[Pair]) -> str:
    digest = hashlib.sha256("\n".join(sorted("\t".join(p) for p in pairs)).encode()).hexdigest()[:10]
    return f"reminders:{as_of.isoformat()}:{who}:{digest}"


def plan_reminders(
    engine: sa.Engine,
    settings: RemindersSettings,
    *,
    fallback_to: str | None,
    as_of: dt.date,
    now: dt.datetime,
    zone: ZoneInfo,
    off: Mapping[Rule, Sequence[str]] | None = None,
    skip_sources: Sequence[str] = (),
    max_deals: int | None = None,
) -> ReminderPlan:
    """Work out today's reminders without writing anything.

    ``max_deals`` caps the deals listed in one message (the first ones in the
    usual order, worst first per owner); the message says how many more there
    are, and those are not counted as sent, so the next reminders list them.

    ``off`` maps a hygiene rule to the sources it is off for (a field it needs
    is unknown there); no reminder is planned for deals of ``skip_sources``
    (their last sync failed: their data may be stale), and their reminder
    state is left as it is.
    """
    state = _open_state(engine)
    plan = ReminderPlan(as_of)
    holding: set[Pair] = set()
    direct: list[OwnerReminders] = []
    orphans: list[OwnerReminders] = []
    current: list[StalledDeal] = []
    current_owner: tuple[str, str | None] | None = None

    def flush() -> None:
        if not current:
            return
        first = current[0]
        owner_key = f"{first.source}/{first.owner_id}" if first.owner_id else ""
        email = valid_address(first.owner_email)  # also for addresses stored before they were checked
        group = OwnerReminders(owner_key, first.owner_name, email, tuple(current))
        (direct if email and first.owner_id else orphans).append(group)
        current.clear()

    for deal in find_stalled(engine, settings, as_of=as_of, now=now, zone=zone, by_owner=True, off=off,
                             skip_sources=skip_sources):
        due_hits = []
        for hit in deal.hits:
            pair = (deal.source, deal.external_id, hit.rule)
            holding.add(pair)
            if pair not in state:
                plan.new.append(pair)
                due_hits.append(hit)
                continue
            last = state[pair]
            if last is None or (as_of - last.astimezone(zone).date()).days >= settings.remind_every_days:
                due_hits.append(hit)
        if not due_hits:
            continue
        plan.sent += [(deal.source, deal.external_id, h.rule) for h in due_hits]
        owner = (deal.source, deal.owner_id)
        if owner != current_owner:
            flush()
            current_owner = owner
        current.append(replace(deal, hits=tuple(due_hits)))
    flush()
    plan.held = len(holding)
    skipped = set(skip_sources)  # not re-evaluated this time: neither holding nor resolved
    plan.resolved = sorted(p for p in state if p not in holding and p[0] not in skipped)

    def pairs_of(groups: Iterable[OwnerReminders]) -> list[Pair]:
        return [(d.source, d.external_id, h.rule) for g in groups for d in g.deals for h in d.hits]

    hidden: set[Pair] = set()

    def capped(groups: Sequence[OwnerReminders]) -> tuple[tuple[OwnerReminders, ...], int]:
        if max_deals is None:
            return tuple(groups), 0
        left, kept, more = max_deals, [], 0
        for group in groups:
            shown = group.deals[:max(left, 0)]
            left -= len(shown)
            more += len(group.deals) - len(shown)
            hidden.update((d.source, d.external_id, h.rule) for d in group.deals[len(shown):] for h in d.hits)
            if shown:
                kept.append(replace(group, deals=shown))
        return tuple(kept), more

    for group in direct:
        shown, more = capped([group])
        plan.messages.append(
            ReminderMessage(_key(as_of, group.owner_key, pairs_of(shown)), group.email, False, shown, more)
        )
    if orphans:
        shown, more = capped(orphans)
        plan.messages.append(
            ReminderMessage(_key(as_of, "fallback", pairs_of(shown)), fallback_to, True, shown, more)
        )
    if hidden:
        plan.sent = [p for p in plan.sent if p not in hidden]
    return plan


def record_plan(conn: sa.Connection, plan: ReminderPlan, now: dt.datetime) -> None:
    """Write the plan's state changes in the caller's transaction.

    New pairs get a fresh row (a resolved row for the same pair is reopened);
    sent pairs get ``last_sent_at = now``; resolved pairs get ``resolved_at = now``.
    """
    rs = reminder_state_table.c
    sent = set(plan.sent)
    for source, external_id, rule in plan.new:
        key = (rs.source == source) & (rs.external_id == external_id) & (rs.rule == rule)
        values = {
            "first_seen_at": now,
            "resolved_at": None,
            "last_sent_at": now if (source, external_id, rule) in sent else None,
        }
        updated = conn.execute(sa.update(reminder_state_table).where(key).values(**values)).rowcount
        if not updated:
            conn.execute(
                sa.insert(reminder_state_table).values(
                    source=source, external_id=external_id, rule=rule, **values
                )
            )
    new = set(plan.new)
    for source, external_id, rule in plan.sent:
        if (source, external_id, rule) in new:
            continue
        conn.execute(
            sa.update(reminder_state_table)
            .where((rs.source == source) & (rs.external_id == external_id) & (rs.rule == rule))
            .values(last_sent_at=now)
        )
    for source, external_id, rule in plan.resolved:
        conn.execute(
            sa.update(reminder_state_table)
            .where((rs.source == source) & (rs.external_id == external_id) & (rs.rule == rule))
            .values(resolved_at=now)
        )
