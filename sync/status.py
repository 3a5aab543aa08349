"""``velocity status``: the last run of each source and channel, and what runs next.

Reads ``sync_runs`` and ``outbox``; renders a table for people and, optionally,
Prometheus text-format metrics for a node-exporter textfile collector.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from zoneinfo import ZoneInfo

import sqlalchemy as sa

from sales_velocity.kernel.schedule import cron_trigger
from sales_velocity.sync.interrupted import INTERRUPTED, RunningRow, gone_reason, running_rows
from sales_velocity.sync.store import outbox_table, sync_runs_table

__all__ = ["ChannelStatus", "DigestSent", "SourceStatus", "Status", "collect_status", "last_digest",
           "record_progress", "render_status"]


@dataclass(frozen=True, slots=True)
class SourceStatus:
    """The last sync of one source (``None`` fields when it never ran)."""

    source: str
    started_at: dt.datetime | None = None
    status: str | None = None
    seen: int = 0
    inserted: int = 0
    updated: int = 0
    deleted: int = 0
    rejected: int = 0
    duration_s: float | None = None
    error: str | None = None
    last_ok_at: dt.datetime | None = None
    running_since: dt.datetime | None = None
    """Start of a sync still in progress (its ``sync_runs`` row says ``running``)."""
    running_seen: int = 0
    """Deals that sync has read so far (updated after each committed batch)."""
    interrupted_runs: int = 0
    """Syncs of the source that never finished (their process died): closed or found so."""


@dataclass(frozen=True, slots=True)
class ChannelStatus:
    """Delivery state of one channel: last sent message and what is waiting."""

    channel: str
    last_sent_at: dt.datetime | None = None
    pending: int = 0
    failed_attempts: int = 0
    last_error: str | None = None
    unknown: int = 0
    """Messages whose delivery is uncertain (the process died mid-send): check by hand."""


@dataclass(frozen=True, slots=True)
class DigestSent:
    """The last digest delivered: which one, when, and on which channels."""

    key: str
    sent_at: dt.datetime
    channels: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Status:
    """Everything ``velocity status`` shows."""

    now: dt.datetime
    timezone: str
    sources: tuple[SourceStatus, ...]
    channels: tuple[ChannelStatus, ...]
    next_runs: tuple[tuple[str, dt.datetime | None], ...]
    digest: DigestSent | None = None


def record_progress(engine: sa.Engine, run_id: str, source: str, seen: int) -> None:
    """Store how many deals a running sync has read, so ``status`` can show it."""
    runs = sync_runs_table
    with engine.begin() as conn:
        conn.execute(sa.update(runs).where(runs.c.run_id == run_id, runs.c.source == source,
                                           runs.c.status == "running").values(seen=seen))


def last_digest(engine: sa.Engine, channels: Sequence[str] | None = None,
                key: str | None = None) -> DigestSent | None:
    """The last digest delivered (or the one with dedupe ``key``), with every channel that got it."""
    box = outbox_table.c
    query = sa.select(box.dedupe_key, box.channel, box.sent_at).where(
        box.kind == "digest", box.status == "sent", box.sent_at.is_not(None))
    if channels is not None:
        query = query.where(box.channel.in_(list(channels)))
    if key is not None:
        query = query.where(box.dedupe_key == key)
    with engine.connect() as conn:
        last = conn.execute(query.order_by(box.sent_at.desc(), box.id.desc()).limit(1)).first()
        if last is None:
            return None
        rows = conn.execute(query.where(box.dedupe_key == last.dedupe_key).order_by(box.channel)).all()
    return DigestSent(last.dedupe_key, _aware(max(r.sent_at for r in rows)) or last.sent_at,
                      tuple(r.channel for r in rows))


def collect_status(
    engine: sa.Engine,
    *,
    sources: Sequence[str],
    channels: Sequence[str],
    schedule: Mapping[str, str],
    timezone: str,
    now: dt.datetime,
) -> Status:
    """Read the last run per source and the outbox state per channel; compute next fire times."""
    out: list[SourceStatus] = []
    with engine.connect() as conn:
        for name in sources:
            out.append(_source_status(conn, name))
        box = outbox_table
        channel_states = []
        for channel in channels:
            row = conn.execute(
                sa.select(
                    sa.func.max(box.c.sent_at),
                    sa.func.sum(sa.case((box.c.status.in_(("pending", "sending")), 1), else_=0)),
                    sa.func.sum(sa.case((box.c.status == "unknown", 1), else_=0)),
                ).where(box.c.channel == channel)
            ).one()
            err = conn.execute(
                sa.select(box.c.last_error, box.c.attempts)
                .where(box.c.channel == channel, box.c.status != "sent",
                       box.c.last_error.is_not(None))
                .order_by(box.c.id.desc()).limit(1)
            ).first()
            channel_states.append(ChannelStatus(
                channel, _aware(row[0]), int(row[1] or 0),
                int(err.attempts) if err else 0, err.last_error if err else None,
                unknown=int(row[2] or 0)))
    zone = ZoneInfo(timezone)
    next_runs = []
    for job, expr in schedule.items():
        trigger = cron_trigger(expr, zone)
        next_runs.append((job, trigger.get_next_fire_time(None, now.astimezone(zone))))
    return Status(now, timezone, tuple(out), tuple(channel_states), tuple(next_runs),
                  last_digest(engine, channels))


def _source_status(conn: sa.Connection, name: str) -> SourceStatus:
    """The last run of one source; a ``running`` row whose holder is gone counts as ``interrupted``."""
    runs = sync_runs_table
    live: list[RunningRow] = []
    dead: list[tuple[RunningRow, str]] = []
    for row in running_rows(conn, name):
        reason = gone_reason(conn, row)
        if reason is None:
            live.append(row)
        else:
            dead.append((row, reason))
    last = conn.execute(
        sa.select(runs).where(runs.c.source == name, runs.c.status != "running")
        .order_by(runs.c.started_at.desc(), runs.c.id.desc()).limit(1)
    ).first()
    last_ok = _aware(conn.execute(
        sa.select(sa.func.max(runs.c.finished_at)).where(runs.c.source == name, runs.c.status == "ok")
    ).scalar())
    closed = int(conn.execute(
        sa.select(sa.func.count()).where(runs.c.source == name, runs.c.status == INTERRUPTED)
    ).scalar() or 0)
    since = _aware(live[0].started_at) if live else None
    so_far = live[0].seen if live else 0
    count = closed + len(dead)
    if dead:
        row, reason = dead[0]
        started = _aware(row.started_at)
        newest = _aware(last.started_at) if last is not None else None
        if started is not None and (newest is None or started >= newest):
            return SourceStatus(name, started, INTERRUPTED, row.seen, error=reason, last_ok_at=last_ok,
                                running_since=since, running_seen=so_far, interrupted_runs=count)
    if last is None:
        return SourceStatus(name, running_since=since, running_seen=so_far, interrupted_runs=count)
    duration = None
    if last.finished_at is not None:
        duration = (last.finished_at - last.started_at).total_seconds()
    return SourceStatus(
        name, last.started_at, last.status, last.seen, last.inserted, last.updated,
        last.deleted, last.rejected, duration, last.error, last_ok,
        running_since=since, running_seen=so_far, interrupted_runs=count)


def _aware(value: dt.datetime | str | None) -> dt.datetime | None:
    """Aggregates over UTCDateTime come back raw on SQLite; make them aware UTC."""
    if value is None:
        return None
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def _when(value: dt.datetime | None, zone: ZoneInfo) -> str:
    return value.astimezone(zone).strftime("%Y-%m-%d %H:%M") if value else "never"


def render_status(status: Status) -> str:
    """The status as aligned text for people."""
    zone = ZoneInfo(status.timezone)
    lines = [f"Status at {_when(status.now, zone)} ({status.timezone})", "", "Sources:"]
    width = max((len(s.source) for s in status.sources), default=6)
    for s in status.sources:
        if s.running_since is not None:
            lines.append(f"  {s.source:<{width}}  running since {_when(s.running_since, zone)}, "
                         f"{s.running_seen:,} deals so far")
        if s.status is None:
            if s.running_since is None:
                lines.append(f"  {s.source:<{width}}  never synced")
            continue
        took = f" in {s.duration_s:.1f}s" if s.duration_s is not None else ""
        if s.status == INTERRUPTED:
            lines.append(f"  {s.source:<{width}}  {s.status} {_when(s.started_at, zone)}: "
                         f"{s.seen} seen before it stopped; the next sync re-reads from the last "
                         "committed checkpoint")
        else:
            lines.append(
                f"  {s.source:<{width}}  {s.status:<7} {_when(s.started_at, zone)}{took}: "
                f"{s.seen} seen, {s.inserted} new, {s.updated} changed, {s.deleted} deleted, "
                f"{s.rejected} rejected"
            )
        if s.error:
            lines.append(f"  {'':<{width}}  error: {s.error}")
        if s.status != "ok":
            lines.append(f"  {'':<{width}}  last success: {_when(s.last_ok_at, zone)}")
    lines += ["", "Channels:"]
    if not status.channels:
        lines.append("  none configured")
    cwidth = max((len(c.channel) for c in status.channels), default=6)
    for c in status.channels:
        waiting = f", {c.pending} waiting" if c.pending else ""
        if c.unknown:
            waiting += f", {c.unknown} of uncertain delivery (check by hand)"
        lines.append(f"  {c.channel:<{cwidth}}  last sent {_when(c.last_sent_at, zone)}{waiting}")
        if c.last_error:
            lines.append(f"  {'':<{cwidth}}  last error (attempt {c.failed_attempts}): {c.last_error}")
    lines += ["", "Digest:"]
    if status.digest is None:
        lines.append("  never sent")
    else:
        d = status.digest
        lines.append(f"  {d.key} sent {_when(d.sent_at, zone)} to {', '.join(d.channels)}")
    lines += ["", "Next runs (velocity schedule):"]
    lines += [f"  {job:<6} {_when(when, zone)}" for job, when in status.next_runs]
    return "\n".join(lines) + "\n"
