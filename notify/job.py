"""``velocity notify``: build today's digest and reminders, queue them, deliver them.

1. Rows a dead run left ``sending`` become ``unknown`` (never re-sent; see
   ``notify.outbox``), and pending rows older than ``expire_after_days`` expire.
2. The digest (``digest:<as_of>``) and the reminder messages (one per owner, one
   for the fallback) are rendered and queued for every channel that takes them,
   in one transaction with the reminder state, so a crash before the commit
   leaves nothing half-done and a rerun the same day queues nothing twice.
3. Each channel delivers its pending rows, digests first, then oldest first,
   each claimed (with this run as holder) in its own committed transaction. A
   failure that cannot have delivered it keeps the row pending for the next run;
   a send without an answer makes it ``unknown`` (never re-sent); a message that
   can never go out as it is fails alone. A channel that is down (connection
   refused, no answer, 5xx) is left alone for the rest of this run, and the
   other channels go on.
   A store error (the server restarted, the disk is full) fails that channel's
   remaining messages, not the others.

``dry_run`` prints what would be sent and writes nothing.
"""

from __future__ import annotations

import datetime as dt
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TextIO

import sqlalchemy as sa
import structlog

from sales_velocity.kernel.errors import DeliveryError
from sales_velocity.metrics.coverage import read_coverage
from sales_velocity.metrics.freshness import Freshness, read_freshness
from sales_velocity.metrics.scope import DigestScope, resolve
from sales_velocity.metrics.settings import MetricsSettings
from sales_velocity.notify import outbox
from sales_velocity.notify.channels import Channel
from sales_velocity.notify.chart import trend_png
from sales_velocity.notify.delivery import DeliveryUncertain, MessageRejected
from sales_velocity.notify.digest import Digest, build_digest, digest_data
from sales_velocity.notify.formatting import Formatter
from sales_velocity.notify.message import InlineImage, Message, MessageKind
from sales_velocity.notify.movement_section import movement_due
from sales_velocity.notify.reminders import ReminderPlan, plan_reminders, record_plan
from sales_velocity.notify.render import texts
from sales_velocity.notify.settings import NotifySettings, RemindersSettings
from sales_velocity.notify.slack_render import (
    Mover,
    biggest_mover,
    digest_slack_bot,
    mover_text,
    reminder_slack_bot,
)
from sales_velocity.notify.supersede import supersede_older
from sales_velocity.notify.teams_card import digest_card, envelope, reminders_card
from sales_velocity.notify.views import digest_view, reminders_view, render_digest, render_reminders
from sales_velocity.sync.store import STORE_ERRORS, outbox_table, store_error

__all__ = ["ChannelResult", "NotifyResult", "build_messages", "held_reason", "preview_digest", "run_notify"]

log = structlog.get_logger(__name__)
CHART_CID = "velocity-trend"


@dataclass
class ChannelResult:
    """What happened on one channel: dedupe keys sent, failed (with reason), skipped (with reason)."""

    channel: str
    kind: str
    sent: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    """Keys a dead run left mid-send (found at the start of this run)."""
    uncertain: list[tuple[str, str]] = field(default_factory=list)
    """``(key, reason)`` sent in this run without an answer: may have arrived; never re-sent."""
    rejected: list[str] = field(default_factory=list)
    """Keys of ``failed`` that can never go out as they are (not retried)."""


@dataclass
class NotifyResult:
    """The outcome of one notifier run, per channel.

    ``held`` says why nothing new was queued (no source has ever synced well);
    such a run failed.
    """

    channels: list[ChannelResult]
    dry_run: bool = False
    held: str | None = None

    @property
    def failed(self) -> list[tuple[str, str, str]]:
        """``(channel, key, reason)`` for every failed delivery; the run failed if any."""
        return [(c.channel, key, reason) for c in self.channels for key, reason in c.failed]

    @property
    def uncertain(self) -> list[tuple[str, str, str]]:
        """``(channel, key, reason)`` for every send of this run that got no answer; the run failed if any."""
        return [(c.channel, key, reason) for c in self.channels for key, reason in c.uncertain]

    @property
    def sent(self) -> list[tuple[str, str]]:
        """``(channel, key)`` for every delivered message."""
        return [(c.channel, key) for c in self.channels for key in c.sent]

    @property
    def skipped(self) -> list[tuple[str, str, str]]:
        """``(channel, key, reason)`` for every message not attempted."""
        return [(c.channel, key, reason) for c in self.channels for key, reason in c.skipped]


def _name(channel: Channel) -> str:
    return str(channel.settings.name)


def _takes(channel: Channel, kind: MessageKind) -> bool:
    return kind in channel.settings.send


def _as_message(
    kind: MessageKind,
    key: str,
    rendered: Any,
    data: dict[str, Any],
    recipient: str | None = None,
    images: tuple[InlineImage, ...] = (),
    formats: dict[str, Any] | None = None,
) -> Message:
    return Message(
        kind=kind,
        key=key,
        subject=rendered.subject,
        text=rendered.text,
        markdown=rendered.markdown,
        html=rendered.html,
        slack=rendered.slack,
        data=data,
        recipient=recipient,
        images=images,
        formats=formats or {},
    )


def _digest_message(d: Digest, notify: NotifySettings, metrics: MetricsSettings,
                    mover: Mover | None = None, scope_label: str = "") -> Message:
    png = (
        trend_png(d.history, title=texts(notify.locale)("chart_alt", days=len(d.history)),
                  money=Formatter(notify.locale, d.currency).money,
                  date_text=Formatter(notify.locale, d.currency).short_date)
        if notify.chart
        else None
    )
    images = (InlineImage(CHART_CID, png, "velocity trend"),) if png else ()
    rendered = render_digest(d, notify.locale, metrics.what_if, chart_cid=CHART_CID if png else None,
                             movement_top=notify.movement_top, movement_days=notify.movement_days)
    view = digest_view(d, notify.locale, metrics.what_if, movement_top=notify.movement_top,
                       movement_days=notify.movement_days)
    formats = {
        "slack_bot": digest_slack_bot(view, rendered.slack, mover_text(mover, notify.locale, d.currency)),
        "teams": envelope(digest_card(view, scope=scope_label)),
    }
    return _as_message("digest", f"digest:{d.as_of.isoformat()}", rendered, digest_data(d), images=images,
                       formats=formats)


def _reminder_messages(
    plan: ReminderPlan, notify: NotifySettings, reminders: RemindersSettings, currency: str
) -> list[Message]:
    out = []
    for m in plan.messages:
        rendered = render_reminders(
            m, notify.locale, currency=currency, remind_every_days=reminders.remind_every_days
        )
        data = {
            "as_of": plan.as_of.isoformat(),
            "fallback": m.fallback,
            "more": m.more,
            "owners": [
                {
                    "owner": o.owner_key,
                    "name": o.owner_name,
                    "email": o.email,
                    "deals": [
                        {
                            "source": d.source,
                            "id": d.external_id,
                            "title": d.title,
                            "link": d.link,
                            "rules": list(d.rules),
                        }
                        for d in o.deals
                    ],
                }
                for o in m.owners
            ],
            "fallback_to": notify.fallback_to,
        }
        view = reminders_view(m, notify.locale, currency=currency,
                              remind_every_days=reminders.remind_every_days)
        names = [o["name"] for o in view["owners"]]
        formats = {"slack_bot": reminder_slack_bot(rendered.slack, notify.locale, names),
                   "teams": envelope(reminders_card(view))}
        out.append(_as_message("reminders", m.key, rendered, data, recipient=m.recipient, formats=formats))
    return out


def build_messages(
    engine: sa.Engine,
    notify: NotifySettings,
    reminders: RemindersSettings,
    metrics: MetricsSettings,
    *,
    as_of: dt.date,
    now: dt.datetime,
    only: Literal["digest", "reminders"] | None = None,
    sources: Sequence[str] | None = None,
    freshness: Freshness | None = None,
) -> tuple[list[Message], ReminderPlan | None]:
    """Render today's digest and reminder messages (and the reminder plan), writing nothing.

    ``sources`` are the configured source names (``None``: every source with a
    sync run). Nothing is built when no source has ever synced well; reminders
    leave out the deals of a source whose last sync failed, and a hygiene rule
    is off for a source that does not provide a field it needs.
    """
    channels = notify.channels
    messages: list[Message] = []
    plan = None
    if freshness is None:
        freshness = read_freshness(engine, sources, now=now, max_age_hours=notify.max_data_age_hours)
    if freshness.nothing_synced:
        return messages, plan
    if only in (None, "digest"):
        # one digest per scope the channels ask for (None: the whole company but exclude_pipelines)
        for scope in dict.fromkeys(c.settings.scope for c in channels if _takes(c, "digest")):
            messages.append(_todays_digest(engine, notify, reminders, metrics, as_of=as_of, now=now,
                                           freshness=freshness, scope=scope))
    if only in (None, "reminders") and any(_takes(c, "reminders") for c in channels):
        plan = plan_reminders(
            engine, reminders, fallback_to=notify.fallback_to, as_of=as_of, now=now, zone=metrics.zone,
            off=read_coverage(engine).rules_off, skip_sources=freshness.failed_sources,
            max_deals=notify.max_deals_per_reminder,
        )
        messages += _reminder_messages(plan, notify, reminders, metrics.currency)
    return messages, plan


def preview_digest(
    engine: sa.Engine,
    notify: NotifySettings,
    reminders: RemindersSettings,
    metrics: MetricsSettings,
    *,
    as_of: dt.date,
    now: dt.datetime,
) -> Message:
    """Today's digest as it would read now, whether or not it was sent; nothing is queued or recorded."""
    return _todays_digest(engine, notify, reminders, metrics, as_of=as_of, now=now, freshness=None)


def _todays_digest(
    engine: sa.Engine,
    notify: NotifySettings,
    reminders: RemindersSettings,
    metrics: MetricsSettings,
    *,
    as_of: dt.date,
    now: dt.datetime,
    freshness: Freshness | None,
    scope: DigestScope | None = None,
) -> Message:
    """The digest message for ``as_of`` with the channel settings: one place for send and preview."""
    deal_filter = resolve(engine, scope, metrics.exclude_pipelines)
    d = build_digest(
        engine,
        metrics,
        reminders,
        as_of=as_of,
        now=now,
        top_deals=notify.top_deals,
        top_scopes=notify.top_scopes,
        chart_days=notify.chart_days,
        movement_days=notify.movement_days
        if movement_due(engine, notify.movement, notify.movement_week_starts, as_of) else None,
        max_data_age_hours=notify.max_data_age_hours,
        freshness=freshness,
        deal_filter=None if deal_filter.is_everything else deal_filter,
        forecast=notify.forecast and deal_filter.is_everything,
    )
    mover = biggest_mover(engine, d) if scope is None else None  # snapshots are unscoped
    message = _digest_message(d, notify, metrics, mover, scope.label if scope else "")
    message.data["scope"] = scope.as_data() if scope else None
    return message


def _for_channel(channel: Channel, message: Message) -> bool:
    """A digest goes to the channels of its scope; reminders to every channel that takes them."""
    if message.kind != "digest":
        return True
    scope = channel.settings.scope
    return message.data.get("scope") == (scope.as_data() if scope else None)


def _targets(channel: Channel, message: Message) -> str | None:
    """Why ``channel`` cannot take ``message``, or ``None`` when it can."""
    if not _takes(channel, message.kind):
        return "not sent on this channel"
    if message.kind == "reminders" and channel.needs_recipient and not message.recipient:
        owners = ", ".join(o.get("name") or o.get("owner") or "?" for o in message.data.get("owners", []))
        return f"no e-mail address for {owners} and no notify.fallback_to"
    return None


def run_notify(
    engine: sa.Engine,
    notify: NotifySettings,
    reminders: RemindersSettings,
    metrics: MetricsSettings,
    *,
    as_of: dt.date,
    now: dt.datetime,
    dry_run: bool = False,
    only: Literal["digest", "reminders"] | None = None,
    out: TextIO = sys.stdout,
    sources: Sequence[str] | None = None,
    holder: str | None = None,
    redact: Callable[[str], str] | None = None,
) -> NotifyResult:
    """Queue and deliver today's digest and reminders on every configured channel.

    When no source (of ``sources``, the configured names; ``None``: every
    source with a sync run) has ever synced well, nothing new is queued:
    ``held`` says why. Messages already queued are still delivered.
    ``holder`` names this run in the rows it claims (default ``host:pid:random``);
    ``redact`` masks secrets in every error text stored or reported.
    """
    holder = holder or outbox.holder_id()
    channels = list(notify.channels)
    for channel in channels:
        channel.bind_output(out)
    results = {_name(c): ChannelResult(_name(c), str(c.settings.kind)) for c in channels}
    names = list(results)
    if not dry_run:
        for row in outbox.recover_interrupted(engine, names, holder=holder, now=now):
            results[row.channel].unknown.append(row.dedupe_key)
        for row in outbox.expire_old(engine, names, now - dt.timedelta(days=notify.expire_after_days)):
            results[row.channel].skipped.append((row.dedupe_key, "expired before it could be delivered"))
    freshness = read_freshness(engine, sources, now=now, max_age_hours=notify.max_data_age_hours)
    held = held_reason(freshness)
    if held is not None:
        log.error("notify.held", reason=held)
        out.write(f"nothing sent: {held}\n")
    if not dry_run and held is None:
        for old in supersede_older(engine, names, (only,) if only else ("digest", "reminders"), as_of):
            results[old.channel].skipped.append((old.dedupe_key, f"superseded by the {as_of} {old.kind}"))
    messages, plan = build_messages(engine, notify, reminders, metrics, as_of=as_of, now=now, only=only,
                                    sources=sources, freshness=freshness)
    if dry_run:
        result = _dry_run(engine, channels, messages, results, out, only)
        result.held = held
        return result
    try:
        with engine.begin() as conn:
            for message in messages:
                for channel in channels:
                    if not _for_channel(channel, message):
                        continue
                    reason = _targets(channel, message)
                    if reason is None:
                        outbox.enqueue(conn, _name(channel), message, now)
                    elif _takes(channel, message.kind):
                        results[_name(channel)].skipped.append((message.key, reason))
            if plan is not None:
                record_plan(conn, plan, now)
    except STORE_ERRORS as exc:  # e.g. disk full: nothing of today's is queued, the next run does it
        for channel_result in results.values():
            channel_result.skipped.clear()
        held = f"today's messages could not be queued ({store_error(exc)}); the next run queues them"
        log.error("notify.not_queued", error=str(store_error(exc)))
        out.write(f"nothing new sent: {held}\n")
    kinds: tuple[str, ...] = (only,) if only else ("digest", "reminders")
    for channel in channels:
        try:
            _deliver(engine, channel, results[_name(channel)], kinds, now, holder=holder, redact=redact)
        except STORE_ERRORS as exc:  # one reconnect was tried (pool_pre_ping); the next channel goes on
            error = str(store_error(exc))
            log.error("notify.store_failed", channel=_name(channel), error=error)
            results[_name(channel)].failed.append(("the rest of its messages", error))
    return NotifyResult(list(results.values()), held=held)


def held_reason(freshness: Freshness) -> str | None:
    """Why no digest and no reminders may go out, or ``None`` when they may."""
    if not freshness.nothing_synced:
        return None
    if not freshness.sources:
        return "no source is configured, so there is no data to report"
    parts = []
    for s in freshness.sources:
        parts.append(f"{s.source} ({'last sync failed: ' + s.error if s.error else 'never synced'})")
    return "no source has ever synced successfully: " + "; ".join(parts)


def _deliver(
    engine: sa.Engine, channel: Channel, result: ChannelResult, kinds: tuple[str, ...], now: dt.datetime,
    *, holder: str, redact: Callable[[str], str] | None = None,
) -> None:
    started = time.monotonic()
    down: str | None = None
    for row in outbox.pending(engine, result.channel, kinds):
        if down is not None:
            result.skipped.append((row.dedupe_key, f"channel unavailable: {down}"))
            continue
        if not outbox.claim(engine, row.id, holder=holder, now=now):
            result.skipped.append((row.dedupe_key, "taken by another run"))
            continue
        try:
            channel.send(row.message())
        except Exception as exc:  # a channel must never stop the others
            reason = outbox.clean_error(str(exc) or type(exc).__name__, redact)
            if isinstance(exc, DeliveryUncertain):
                outbox.mark_unknown(engine, row.id, reason)
                result.uncertain.append((row.dedupe_key, reason))
            elif isinstance(exc, MessageRejected):
                outbox.mark_rejected(engine, row.id, reason)
                result.failed.append((row.dedupe_key, reason))
                result.rejected.append(row.dedupe_key)
            else:
                outbox.mark_failed(engine, row.id, reason)
                result.failed.append((row.dedupe_key, reason))
            if not isinstance(exc, DeliveryError) or exc.channel_down:
                down = reason
            continue
        outbox.mark_sent(engine, row.id, now)
        result.sent.append(row.dedupe_key)
    event = log.warning if result.failed or result.unknown or result.uncertain else log.info
    event(
        "notify.channel",
        channel=result.channel,
        kind=result.kind,
        sent=len(result.sent),
        failed=len(result.failed),
        skipped=len(result.skipped),
        unknown=len(result.unknown),
        uncertain=len(result.uncertain),
        error=(result.failed or result.uncertain)[-1][1] if result.failed or result.uncertain else None,
        duration_ms=round((time.monotonic() - started) * 1000),
    )


def _dry_run(
    engine: sa.Engine,
    channels: list[Channel],
    messages: list[Message],
    results: dict[str, ChannelResult],
    out: TextIO,
    only: Literal["digest", "reminders"] | None,
) -> NotifyResult:
    kinds: tuple[str, ...] = (only,) if only else ("digest", "reminders")
    for channel in channels:
        name = _name(channel)
        result = results[name]
        for row in outbox.pending(engine, name, kinds):
            out.write(f"[dry run] would retry {row.dedupe_key} on {name}\n")
            result.skipped.append((row.dedupe_key, "dry run"))
        for message in messages:
            if not _for_channel(channel, message):
                continue
            reason = _targets(channel, message)
            if reason is not None:
                if _takes(channel, message.kind):
                    result.skipped.append((message.key, reason))
                    out.write(f"[dry run] would skip {message.key} on {name}: {reason}\n")
                continue
            if _already_queued(engine, name, message.key):
                out.write(f"[dry run] {message.key} on {name}: already queued or sent; nothing to do\n")
                continue
            to = f" to {message.recipient}" if message.recipient else ""
            out.write(
                f"[dry run] would send {message.key} on {name} ({channel.settings.kind}){to}: "
                f"{message.subject}\n\n{message.text.rstrip()}\n\n"
            )
            result.skipped.append((message.key, "dry run"))
    return NotifyResult(list(results.values()), dry_run=True)


def _already_queued(engine: sa.Engine, channel: str, key: str) -> bool:
    box = outbox_table.c
    with engine.connect() as conn:
        return (
            conn.execute(sa.select(box.id).where(box.channel == channel, box.dedupe_key == key)).first()
            is not None
        )
