"""The Prometheus textfile: what a node-exporter textfile collector scrapes after each run.

``run``, ``schedule`` and ``status`` write it when ``[metrics] textfile`` or
``--metrics-file`` names a file. It holds, per source, the last sync (start,
success, counts, rejected rows), whether one is in progress, and syncs that
never finished (``velocity_sync_last_run_interrupted``, ``velocity_sync_interrupted_runs``:
a ``running`` row whose process is gone; ``last_run_ok`` is 0 then); per channel,
what waits in the outbox; when the digest was last sent; the latest velocity
snapshot per scope with its four levers; and the build. The file is written
atomically (a temporary file renamed), so a scrape never reads half of it.
An undefined velocity (no won deal in the window) has no ``velocity_per_day``
sample and ``velocity_defined`` 0: never a fake 0.
"""

from __future__ import annotations

import datetime as dt
import platform
from collections.abc import Callable, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import sqlalchemy as sa
from prometheus_client import CollectorRegistry, Gauge, Info, write_to_textfile

from sales_velocity.sync.status import Status, collect_status
from sales_velocity.sync.store import snapshots_table

__all__ = ["build_registry", "package_version", "write_status", "write_textfile"]


def package_version() -> str:
    """The installed version of sales-velocity (``unknown`` when run from a bare checkout)."""
    try:
        return version("sales-velocity")
    except PackageNotFoundError:
        return "unknown"


def build_registry(engine: sa.Engine, status: Status, window_days: int) -> CollectorRegistry:
    """Every metric of the textfile, in a registry of its own."""
    registry = CollectorRegistry()

    def gauge(name: str, doc: str, labels: Sequence[str] = ()) -> Gauge:
        return Gauge(name, doc, list(labels), registry=registry)

    _status_gauges(status, gauge)
    _velocity(engine, window_days, gauge)
    Info("velocity_build", "The running sales-velocity", registry=registry).info(
        {"version": package_version(), "python": platform.python_version()})
    return registry


def _status_gauges(status: Status, gauge: Callable[..., Gauge]) -> None:
    """The sync, outbox and digest metrics of ``status``."""
    last_run = gauge("velocity_sync_last_run_timestamp_seconds", "Start of the last sync", ["source"])
    last_ok = gauge("velocity_sync_last_success_timestamp_seconds", "End of the last good sync", ["source"])
    healthy = gauge("velocity_sync_last_run_ok", "1 when the last sync succeeded", ["source"])
    deals = gauge("velocity_sync_deals", "Deals counted by the last sync", ["source", "kind"])
    rejected = gauge("velocity_sync_rejected_rows", "Records the last sync rejected (see sync_rejects)",
                     ["source"])
    running = gauge("velocity_sync_in_progress", "1 while a sync of the source is running", ["source"])
    running_seen = gauge("velocity_sync_in_progress_deals", "Deals the running sync has read so far",
                         ["source"])
    interrupted = gauge("velocity_sync_last_run_interrupted",
                        "1 when the last sync never finished (its process died mid-sync)", ["source"])
    interrupted_runs = gauge("velocity_sync_interrupted_runs",
                             "Syncs of the source that never finished (their process died)", ["source"])
    for s in status.sources:
        if s.started_at is not None:
            last_run.labels(s.source).set(s.started_at.timestamp())
        if s.last_ok_at is not None:
            last_ok.labels(s.source).set(s.last_ok_at.timestamp())
        healthy.labels(s.source).set(1 if s.status == "ok" else 0)
        for kind in ("seen", "inserted", "updated", "deleted", "rejected"):
            deals.labels(s.source, kind).set(getattr(s, kind))
        rejected.labels(s.source).set(s.rejected)
        running.labels(s.source).set(1 if s.running_since is not None else 0)
        running_seen.labels(s.source).set(s.running_seen)
        interrupted.labels(s.source).set(1 if s.status == "interrupted" else 0)
        interrupted_runs.labels(s.source).set(s.interrupted_runs)
    pending = gauge("velocity_outbox_pending_messages", "Messages not yet delivered", ["channel"])
    unknown = gauge("velocity_outbox_unknown_messages", "Messages of uncertain delivery", ["channel"])
    for c in status.channels:
        pending.labels(c.channel).set(c.pending)
        unknown.labels(c.channel).set(c.unknown)
    if status.digest is not None:
        gauge("velocity_digest_last_sent_timestamp_seconds",
              "When the last digest was delivered").set(status.digest.sent_at.timestamp())


def _velocity(engine: sa.Engine, window_days: int, make: Callable[..., Gauge]) -> None:
    """The latest snapshot's velocity and levers per scope."""
    snap = snapshots_table.c
    with engine.connect() as conn:
        latest = conn.execute(sa.select(sa.func.max(snap.as_of))
                              .where(snap.window_days == window_days)).scalar()
        if latest is None:
            return
        rows = conn.execute(sa.select(snapshots_table).where(
            snap.as_of == latest, snap.window_days == window_days).order_by(snap.scope, snap.key)).all()
    labels = ["scope", "key"]
    as_of = make("velocity_snapshot_as_of_timestamp_seconds", "Local midnight UTC of the snapshot's day")
    as_of.set(dt.datetime.combine(latest, dt.time(), dt.UTC).timestamp())
    per_day = make("velocity_per_day", "Sales velocity: value per day in the base currency", labels)
    defined = make("velocity_defined", "1 when velocity is defined (a won deal in the window)", labels)
    opportunities = make("velocity_opportunities", "Open deals at the as-of date (N)", labels)
    win_rate = make("velocity_win_rate", "Won / (won + lost) in the window (p)", labels)
    value = make("velocity_average_deal_value", "Mean value of deals won in the window (V)", labels)
    cycle = make("velocity_cycle_days", "Mean days from creation to win (L)", labels)
    for r in rows:
        key = (r.scope, r.key)
        defined.labels(*key).set(0 if r.velocity is None else 1)
        opportunities.labels(*key).set(r.opportunities)
        for metric, field in ((per_day, r.velocity), (win_rate, r.win_rate), (value, r.avg_deal_value),
                              (cycle, r.cycle_days)):
            if field is not None:
                metric.labels(*key).set(float(field))


def write_textfile(engine: sa.Engine, path: Path, *, sources: Sequence[str], channels: Sequence[str],
                   window_days: int, now: dt.datetime) -> None:
    """Collect the status and write every metric to ``path`` atomically."""
    status = collect_status(engine, sources=sources, channels=channels, schedule={}, timezone="UTC",
                            now=now)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_to_textfile(str(path), build_registry(engine, status, window_days))


def write_status(status: Status, path: Path) -> None:
    """Write only the sync, outbox and digest metrics of ``status`` to ``path`` atomically."""
    registry = CollectorRegistry()

    def gauge(name: str, doc: str, labels: Sequence[str] = ()) -> Gauge:
        return Gauge(name, doc, list(labels), registry=registry)

    _status_gauges(status, gauge)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_to_textfile(str(path), registry)
