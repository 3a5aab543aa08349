"""The composition root: configuration, logging, the ``velocity`` CLI and the scheduler.

Nothing imports this module. It reads the TOML config, validates every part with
the settings model of the package that owns it (all problems reported at once,
each with its key path, before anything runs), wires connectors, the store, the
metrics job and the notifier together, and maps outcomes to exit codes:

* 0: everything went well (also when a locked source was skipped);
* 1: some source or channel failed (the others still ran);
* 2: configuration or usage error (nothing ran).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import signal
import sys
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TextIO
from zoneinfo import ZoneInfo

import sqlalchemy as sa
import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sales_velocity.connectors import build_connector
from sales_velocity.connectors.base import ClockedConnector, Connector, SizedConnector
from sales_velocity.kernel.config import TimeZoneName, expand_env, secret_values, validation_problems
from sales_velocity.kernel.configfile import ENV_CONFIG, choose_store_url, find_config, read_toml
from sales_velocity.kernel.console import SyncProgress
from sales_velocity.kernel.errors import (
    ConfigError,
    ConfigProblem,
    StoreError,
    StoreNotInitialisedError,
    UsageError,
    VelocityError,
)
from sales_velocity.kernel.logs import LoggingSettings, SecretRedactor, configure_logging
from sales_velocity.kernel.probe import probe_endpoint
from sales_velocity.kernel.schedule import ScheduleSettings, build_scheduler, serve
from sales_velocity.metrics.drilldown import LEVERS, deal_lines, drill_down, resolve_scope
from sales_velocity.metrics.drilldown_report import render_deals
from sales_velocity.metrics.forecast_cli import forecast_text
from sales_velocity.metrics.freshness import read_freshness
from sales_velocity.metrics.history import fill_history, rebuild_snapshots
from sales_velocity.metrics.job import run_metrics
from sales_velocity.metrics.leftovers import left_out
from sales_velocity.metrics.movement import compute_movement, parse_scope, period_bounds
from sales_velocity.metrics.movement_report import render_movement
from sales_velocity.metrics.report import ReportFormat, render_report
from sales_velocity.metrics.settings import MetricsSettings
from sales_velocity.metrics.velocity import compute_velocity
from sales_velocity.notify.job import held_reason, preview_digest, run_notify
from sales_velocity.notify.outbox import holder_id
from sales_velocity.notify.settings import NotifySettings, RemindersSettings, load_notify_settings
from sales_velocity.sync.engine import SyncResult, sync_source
from sales_velocity.sync.export import export_rows, write_export
from sales_velocity.sync.interrupted import close_interrupted
from sales_velocity.sync.lock import Lease, daily_lock, hold_all, source_lock
from sales_velocity.sync.settings import StoreSettings, SyncSettings
from sales_velocity.sync.status import last_digest, record_progress
from sales_velocity.sync.store import (
    STORE_ERRORS,
    check_schema,
    ensure_schema,
    make_engine,
    reading_only,
    store_error,
    upgrade,
)

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2

log = structlog.get_logger("velocity")


# --------------------------------------------------------------------------- configuration


class TopLevel(BaseModel):
    """The top of the config file; each table is validated by its owner afterwards."""

    model_config = ConfigDict(extra="forbid")

    timezone: TimeZoneName = "UTC"
    currency: str = Field(default="EUR", pattern="^[A-Z]{3}$")
    store: dict[str, Any] = {}
    sync: dict[str, Any] = {}
    sources: list[dict[str, Any]] = []
    metrics: dict[str, Any] = {}
    notify: dict[str, Any] = {}
    reminders: dict[str, Any] = {}
    schedule: dict[str, Any] = {}
    logging: dict[str, Any] = {}


@dataclass
class AppConfig:
    """The validated application configuration."""

    path: Path | None
    timezone: str
    currency: str
    store: StoreSettings
    sync: SyncSettings
    sources: list[Connector]
    metrics: MetricsSettings
    notify: NotifySettings
    reminders: RemindersSettings
    schedule: ScheduleSettings
    logging: LoggingSettings
    store_reason: str = "the default"
    """Why ``store.url`` is the one in use (logged at start, shown by ``check``)."""
    secrets: list[str] = field(default_factory=list, repr=False)

    @property
    def zone(self) -> ZoneInfo:
        """The configured time zone."""
        return ZoneInfo(self.timezone)

    def today(self, now: dt.datetime | None = None) -> dt.date:
        """Today's date in the configured time zone."""
        return (now or dt.datetime.now(dt.UTC)).astimezone(self.zone).date()


def load_config(path: Path | None, env: Mapping[str, str] | None = None) -> AppConfig:
    """Read, expand and validate the configuration; raise one ``ConfigError`` with every problem.

    Every section is validated even when the top level is wrong, so one run of
    ``velocity check`` lists everything to fix.
    """
    env = os.environ if env is None else env
    raw: dict[str, Any] = read_toml(path) if path is not None else {}
    problems: list[ConfigProblem] = []
    secrets: list[str] = []
    raw = expand_env(raw, env, "", problems, secrets)
    choice = choose_store_url(raw.get("store"), env, path)
    if choice.url is not None and isinstance(raw.get("store", {}), dict):
        raw.setdefault("store", {})["url"] = choice.url
    context = {"config_dir": path.parent.resolve() if path else Path.cwd()}
    try:
        top = TopLevel.model_validate(raw)
    except ValidationError as exc:
        problems.extend(validation_problems(exc, model=TopLevel))
        bad = {str(item["loc"][0]) for item in exc.errors() if item["loc"]}
        top = TopLevel.model_validate({k: v for k, v in raw.items() if k not in bad})

    def part(model: type[BaseModel], data: Mapping[str, Any], key: str) -> Any:
        try:
            return model.model_validate(dict(data), context=context)
        except ValidationError as exc:
            problems.extend(validation_problems(exc, key, model))
            return None

    store = part(StoreSettings, top.store, "store")
    sync = part(SyncSettings, top.sync, "sync")
    schedule = part(ScheduleSettings, top.schedule, "schedule")
    logging_settings = part(LoggingSettings, top.logging, "logging")
    metrics = _metrics_settings(top, context, problems)
    notify, reminders = _notify_settings(top, context, problems)
    sources: list[Connector] = []
    names: dict[str, int] = {}
    for i, table in enumerate(top.sources):
        key = f"sources[{i}]"
        name = table.get("name")
        if isinstance(name, str):
            if name in names:
                problems.append(ConfigProblem(f"{key}.name", f"duplicate source name {name!r} "
                                              f"(also sources[{names[name]}])"))
            names.setdefault(name, i)
        try:
            connector = build_connector(table, key, {**context, "timezone": top.timezone})
        except ConfigError as exc:
            problems.extend(exc.problems)
            continue
        if connector.settings.enabled:
            sources.append(connector)
    if problems or metrics is None or notify is None or reminders is None:
        raise ConfigError(_once(problems))
    config = AppConfig(path, top.timezone, top.currency, store, sync, sources, metrics, notify,
                       reminders, schedule, logging_settings, store_reason=choice.reason)
    store_password = sa.engine.make_url(store.url).password if store else None
    config.secrets = sorted({s for s in [*secrets, *secret_values(config.sources),
                                         *secret_values(notify), str(store_password or "")]
                             if len(s) >= 4})
    return config


def _once(problems: Sequence[ConfigProblem]) -> list[ConfigProblem]:
    """Each problem once; a key whose ${VAR} is unset gets no second complaint about its value."""
    unset = {p.path for p in problems if p.message.startswith(("environment variable", "secret file"))}
    out: list[ConfigProblem] = []
    for p in problems:
        if p in out or (p.path in unset and not p.message.startswith(("environment variable",
                                                                       "secret file"))):
            continue
        out.append(p)
    return out


def _metrics_settings(top: TopLevel, context: Mapping[str, Any],
                      problems: list[ConfigProblem]) -> MetricsSettings | None:
    data = {"timezone": top.timezone, "currency": top.currency, **top.metrics}
    try:
        return MetricsSettings.model_validate(data, context=dict(context))
    except ValidationError as exc:
        problems.extend(validation_problems(exc, "metrics", MetricsSettings))
        return None


def _notify_settings(
    top: TopLevel, context: Mapping[str, Any], problems: list[ConfigProblem]
) -> tuple[NotifySettings | None, RemindersSettings | None]:
    try:
        return load_notify_settings(top.notify, top.reminders, dict(context))
    except ConfigError as exc:
        problems.extend(exc.problems)
        return None, None


# --------------------------------------------------------------------------- commands


@dataclass
class Context:
    """What every command gets: the config, the store and the clock."""

    config: AppConfig
    out: TextIO
    now: Callable[[], dt.datetime]
    redactor: SecretRedactor
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    _engine: sa.Engine | None = None
    _ready: bool = False

    @property
    def engine(self) -> sa.Engine:
        """The store's engine (created on first use; the URL and why it was chosen are logged)."""
        if self._engine is None:
            self._engine = make_engine(self.config.store.url)
            log.info("store.url", url=_safe_url(self._engine), reason=self.config.store_reason)
        return self._engine

    def existing_engine(self) -> sa.Engine:
        """The engine of a store that already has the current schema; never creates, migrates or writes it.

        Called first in a command, it opens the store read-only (a SQLite file with
        ``mode=ro``), so a read-only file, directory or mount can be read.

        Raises:
            StoreNotInitialisedError: nothing there yet (``velocity init`` creates it).
        """
        if self._engine is None:
            self._engine = make_engine(self.config.store.url, read_only=True)
            log.info("store.url", url=_safe_url(self._engine), reason=self.config.store_reason,
                     read_only=True)
        if not self._ready:
            check_schema(self.engine)
            self._ready = True
        return self.engine

    def ready_engine(self) -> sa.Engine:
        """The engine, with the schema created or upgraded to the latest revision first."""
        if not self._ready:
            migrated = ensure_schema(self.engine)
            if migrated is not None:
                log.info("store.migrated", from_revision=migrated[0], to_revision=migrated[1])
            self._ready = True
        return self.engine

    def print(self, text: str = "") -> None:
        """Write a line for people to stdout, with secrets masked."""
        self.out.write(self.redactor.redact(text) + "\n")


def cmd_init(ctx: Context, _args: argparse.Namespace) -> int:
    """Create or upgrade the store's schema."""
    upgrade(ctx.engine)
    ctx.print(f"store ready: {_safe_url(ctx.engine)} (from {ctx.config.store_reason})")
    return EXIT_OK


def _safe_url(engine: sa.Engine) -> str:
    return engine.url.render_as_string(hide_password=True)


def _select_sources(ctx: Context, names: Sequence[str]) -> list[Connector]:
    sources = ctx.config.sources
    if not names:
        return sources
    known = {s.name: s for s in sources}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ConfigError.single("sources", f"no source named {', '.join(map(repr, unknown))} "
                                 f"(configured: {', '.join(known) or 'none'})")
    return [known[n] for n in names]


def run_sync(ctx: Context, names: Sequence[str] = (), *, full: bool = False) -> list[SyncResult]:
    """Sync the selected sources one after another; a failing one (even a store error) stops no other."""
    engine = ctx.ready_engine()
    results = []
    for connector in _select_sources(ctx, names):
        try:
            results.append(_sync_one(ctx, engine, connector, full=full))
        except STORE_ERRORS as exc:  # the store went away before the run's row was written
            error = ctx.redactor.redact(str(store_error(exc)))
            log.error("sync.store_failed", source=connector.name, error=error)
            results.append(SyncResult(source=connector.name, status="failed", error=error))
    return results


def _sync_one(ctx: Context, engine: sa.Engine, connector: Connector, *, full: bool) -> SyncResult:
    """One source under its lock; ``running`` rows of earlier runs that died are closed first."""
    with source_lock(engine, connector.name, holder=ctx.run_id) as lease:
        if not lease:
            return _refused(connector.name, lease)
        close_interrupted(engine, connector.name, by=ctx.run_id)
        if isinstance(connector, ClockedConnector):
            connector.use_clock(ctx.now)  # "today" for date-shifting sources is the run's own clock
        with SyncProgress(connector.name) as bar:
            if bar.enabled and isinstance(connector, SizedConnector):
                bar.total(connector.expected_deals())
            return sync_source(engine, connector, full=full, run_id=ctx.run_id,
                               now=ctx.now, batch_size=ctx.config.sync.batch_size,
                               catalog_max_age=ctx.config.sync.catalog_max_age,
                               deadline_s=ctx.config.sync.deadline_seconds,
                               progress=_progress(engine, ctx.run_id, connector.name,
                                                  lease.renew, bar),
                               redact=ctx.redactor.redact)


def _refused(source: str, lease: Lease) -> SyncResult:
    """A source skipped because another run holds it; failed when that holder stopped renewing."""
    if lease.holder_stale and lease.other is not None:
        error = (f"held by {lease.other.describe()}, which has not renewed its lease since "
                 f"{lease.other.renewed_at or lease.other.expires_at:%Y-%m-%d %H:%M:%S} UTC; "
                 "it is taken over once the lease expires")
        log.warning("sync.held_by_stale", source=source, error=error)
        return SyncResult(source=source, status="failed", error=error)
    log.info("sync.skipped", source=source, reason="another run holds its lock")
    return SyncResult(source=source, status="skipped", error="another run holds this source's lock")


def _progress(engine: sa.Engine, run_id: str, source: str, renew: Callable[[], None],
              bar: SyncProgress) -> Callable[[int], None]:
    """Renew the source's lease as the sync goes, record the count for `status`, update the bar."""

    def show(seen: int) -> None:
        renew()
        record_progress(engine, run_id, source, seen)
        bar.update(seen)

    return show


def _print_sync_results(ctx: Context, results: Sequence[SyncResult]) -> int:
    code = EXIT_OK
    for r in results:
        if r.status == "skipped":
            ctx.print(f"{r.source}: skipped ({r.error})")
            continue
        line = (f"{r.source}: {r.status}: {r.seen} seen, {r.inserted} new, {r.updated} changed, "
                f"{r.unchanged} unchanged, {r.deleted} deleted, {r.rejected} rejected "
                f"in {r.duration_s:.1f}s")
        ctx.print(line + (f"\n  error: {r.error}" if r.error else ""))
        for reject in r.rejects:
            ctx.print(f"  {reject.where}: {reject.reason}")
        if r.rejected > len(r.rejects):
            ctx.print(f"  ... and {r.rejected - len(r.rejects)} more rejected "
                      "(all are in the sync_rejects table)")
        if r.status == "failed":
            code = EXIT_FAILED
    return code


def cmd_sync(ctx: Context, args: argparse.Namespace) -> int:
    """Pull the named sources (default: all) into the store."""
    return _print_sync_results(ctx, run_sync(ctx, args.sources, full=args.full))


def _as_of(ctx: Context, value: dt.date | None) -> dt.date:
    return value or ctx.config.today(ctx.now())


def cmd_metrics(ctx: Context, args: argparse.Namespace) -> int:
    """Compute and store today's (or --as-of's) velocity snapshots; --since rebuilds the days before."""
    as_of = _as_of(ctx, args.as_of)
    today = ctx.config.today(ctx.now())
    if as_of > today:
        raise UsageError(f"--as-of {as_of} is in the future (today is {today} in {ctx.config.timezone}): "
                         "a snapshot of a day that has not happened would be stored as fact")
    engine = ctx.ready_engine()
    if args.since is not None:
        if args.since >= as_of:
            raise ConfigError.single("--since", f"{args.since} is not before the as-of date {as_of}")
        try:
            result = rebuild_snapshots(engine, ctx.config.metrics, args.since, as_of - dt.timedelta(days=1),
                                       now=ctx.now(), overwrite=args.overwrite)
        except ValueError as exc:
            raise ConfigError.single("--since", str(exc)) from None
        kept = f"; {len(result.kept)} kept as taken on the day" if result.kept else ""
        ctx.print(f"velocity snapshots rebuilt from deal dates for {len(result.rebuilt)} days "
                  f"({args.since} to {as_of - dt.timedelta(days=1)}){kept} in {result.duration_s:.1f}s")
    report = run_metrics(engine, ctx.config.metrics, as_of, now=ctx.now())
    ctx.print(f"velocity snapshots stored for {as_of}: {len(report.scopes)} scopes")
    return EXIT_OK


def _report_text(ctx: Context, as_of: dt.date, window_days: int | None, fmt: ReportFormat) -> str:
    """The velocity report with each source's last good sync and what the levers left out."""
    engine = ctx.existing_engine()  # never creates or migrates a store (`report` is read-only)
    with reading_only():  # a reader: never waits for a writer, works on a read-only store
        report = compute_velocity(engine, ctx.config.metrics, as_of, window_days)
        freshness = read_freshness(engine, [s.name for s in ctx.config.sources], now=ctx.now(),
                                   max_age_hours=ctx.config.notify.max_data_age_hours)
        leftovers = left_out(engine, report)
    return render_report(report, fmt, freshness=freshness, left_out=leftovers)


def cmd_report(ctx: Context, args: argparse.Namespace) -> int:
    """Print the velocity table (or JSON/CSV, or the HTML page) computed from the store; or --output FILE."""
    as_of = _as_of(ctx, args.as_of)
    if args.format == "html":
        from sales_velocity.notify.forecast_report import forecast_section
        from sales_velocity.notify.html_report import build_html_report

        c = ctx.config
        window = args.window_days
        metrics = c.metrics.model_copy(update={"window_days": window}) if window else c.metrics
        engine = ctx.existing_engine()
        with reading_only():  # [notify] forecast switches the section, as it does the digest's lines
            extra = [forecast_section(engine, metrics, as_of, locale=c.notify.locale)] if c.notify.forecast \
                else []
            text = build_html_report(
                engine, metrics, c.reminders, as_of=as_of, now=ctx.now(),
                locale=c.notify.locale,
                sources=[s.name for s in c.sources], max_data_age_hours=c.notify.max_data_age_hours,
                movement_days=c.notify.movement_days, top_deals=c.notify.top_deals, extra_sections=extra)
    else:
        text = _report_text(ctx, as_of, args.window_days, args.format)
    if args.output:
        from sales_velocity.notify.html_report import write_output

        ctx.print(f"report written to {write_output(args.output, text)}")
    else:
        ctx.out.write(text)
    return EXIT_OK


def cmd_deals(ctx: Context, args: argparse.Namespace) -> int:
    """Print the deals behind each lever of a scope (read-only; see ``metrics.drilldown``)."""
    engine = ctx.existing_engine()
    with reading_only():
        drill = drill_down(ctx.config.metrics, _as_of(ctx, args.as_of), args.window_days,
                           resolve_scope(engine, args.scope), [args.lever] if args.lever else LEVERS)
        for chunk in render_deals(drill, deal_lines(engine, ctx.config.metrics, drill), args.format):
            ctx.out.write(chunk)
    return EXIT_OK


def cmd_movement(ctx: Context, args: argparse.Namespace) -> int:
    """Print what moved in the pipeline in a period (default: the last 7 local days)."""
    engine = ctx.ready_engine()
    metrics = ctx.config.metrics
    today = ctx.config.today(ctx.now())
    since, until = period_bounds(args.since, args.until, today=today, zone=metrics.zone)
    scope = parse_scope(engine, args.scope)
    movement = compute_movement(engine, metrics, since=since, until=until, scope=scope)
    ctx.out.write(render_movement(movement, args.format))
    return EXIT_OK


def cmd_forecast(ctx: Context, args: argparse.Namespace) -> int:
    """Print the won value expected in the next days, with its backtest accuracy (read-only)."""
    engine = ctx.existing_engine()
    ctx.out.write(forecast_text(engine, ctx.config.metrics, _as_of(ctx, args.as_of), horizons=args.horizons,
                                scope=args.scope, fmt=args.format, backtest=args.backtest))
    return EXIT_OK


def cmd_export(ctx: Context, args: argparse.Namespace) -> int:
    """Write the stored deals as CSV or JSON lines to stdout."""
    engine = ctx.existing_engine()
    with reading_only():
        write_export(export_rows(engine, args.source), args.format, ctx.out)
    return EXIT_OK


def run_daily(ctx: Context, as_of: dt.date, *, notify: bool = True, dry_run: bool = False,
              only: Literal["digest", "reminders"] | None = None) -> int:
    """Metrics (back-filling missed days) then the notifier; returns an exit code."""
    engine = ctx.ready_engine()
    # first run: the window's days before today; later: the days missed since the last run
    fill_history(engine, ctx.config.metrics, as_of, backfill_days=ctx.config.schedule.backfill_days,
                 now=ctx.now())
    run_metrics(engine, ctx.config.metrics, as_of, now=ctx.now())
    if not notify:
        return EXIT_OK
    if not ctx.config.notify.channels:  # nowhere to send: print the report instead
        freshness = read_freshness(engine, [s.name for s in ctx.config.sources], now=ctx.now(),
                                   max_age_hours=ctx.config.notify.max_data_age_hours)
        held = held_reason(freshness)
        if held is not None:
            ctx.print(f"nothing to report: {held}")
            return EXIT_FAILED
        ctx.out.write(_report_text(ctx, as_of, None, "table"))
        return EXIT_OK
    return _notify(ctx, as_of, dry_run=dry_run, only=only)


def _notify(ctx: Context, as_of: dt.date, *, dry_run: bool,
            only: Literal["digest", "reminders"] | None) -> int:
    from sales_velocity.notify.summary import already_sent_line, notify_lines

    engine = ctx.ready_engine()
    channels = [c.settings.name for c in ctx.config.notify.channels if "digest" in c.settings.send]
    before = last_digest(engine, channels, key=f"digest:{as_of.isoformat()}") if only != "reminders" else None
    result = run_notify(
        engine, ctx.config.notify, ctx.config.reminders, ctx.config.metrics,
        as_of=as_of, now=ctx.now(), dry_run=dry_run, only=only, out=ctx.out,
        sources=[s.name for s in ctx.config.sources], holder=holder_id(ctx.run_id),
        redact=ctx.redactor.redact,
    )
    if before is not None and not dry_run:
        ctx.print(already_sent_line(before.key, before.sent_at, before.channels, ctx.config.zone))
    for line in notify_lines(result):
        ctx.print(line)
    return EXIT_FAILED if result.failed or result.uncertain or result.held else EXIT_OK


def cmd_notify(ctx: Context, args: argparse.Namespace) -> int:
    """Send the digest and the reminders for today (or --as-of); ``--preview`` only prints the digest."""
    as_of = _as_of(ctx, args.as_of)
    if args.preview:
        message = preview_digest(ctx.existing_engine(), ctx.config.notify, ctx.config.reminders,
                                 ctx.config.metrics, as_of=as_of, now=ctx.now())
        ctx.print(f"{message.subject}\n\n{message.text.rstrip()}")
        return EXIT_OK
    if not ctx.config.notify.channels:
        raise ConfigError.single("notify.channels", "no channel is configured")
    return _notify(ctx, as_of, dry_run=args.dry_run, only=args.only)


def cmd_run(ctx: Context, args: argparse.Namespace) -> int:
    """The one-shot job for cron and containers: sync, metrics, notify."""
    try:
        sync_code = _print_sync_results(ctx, run_sync(ctx, args.sources, full=args.full))
        try:
            daily_code = daily_step(ctx, _as_of(ctx, args.as_of), notify=not args.no_notify)
        except STORE_ERRORS as exc:  # the sync summary is out; say what the daily step could not do
            error = store_error(exc)
            log.error("daily.store_failed", error=str(error))
            ctx.print(f"daily step failed: {error}; the next run computes and sends today's messages")
            daily_code = EXIT_FAILED
        return max(sync_code, daily_code)
    finally:
        if ctx._ready:
            _write_metrics(ctx, args.metrics_file)


def daily_step(ctx: Context, as_of: dt.date, *, notify: bool = True) -> int:
    """The daily step under the daily lock, never beside a sync: it holds every source's lock.

    Sources another run is syncing are waited for (``sync.daily_wait_seconds``);
    if one is still syncing after that, nothing is computed or sent and the
    step says which source it waits for (exit 1).
    """
    engine = ctx.ready_engine()
    with daily_lock(engine, as_of, holder=ctx.run_id) as acquired:
        if not acquired:
            if acquired.holder_stale and acquired.other is not None:
                ctx.print(f"daily step not run: the daily lock is held by {acquired.other.describe()}, "
                          "which has stopped renewing it")
                return EXIT_FAILED
            ctx.print("daily step skipped: another run holds the daily lock")
            return EXIT_OK
        names = [s.name for s in ctx.config.sources]
        with hold_all(engine, names, holder=ctx.run_id,
                      wait_s=ctx.config.sync.daily_wait_seconds) as busy:
            if busy:
                still = ", ".join(sorted(busy))
                ctx.print(f"daily step held: {still} still syncing after "
                          f"{ctx.config.sync.daily_wait_seconds:g}s; no metrics or messages today "
                          "from this run (the next run builds them)")
                log.warning("daily.held", sources=sorted(busy))
                return EXIT_FAILED
            return run_daily(ctx, as_of, notify=notify)


def cmd_check(ctx: Context, args: argparse.Namespace) -> int:
    """Validate the config (already done), reach the store, and try each source and channel once.

    Creates nothing: a store without a schema is a warning before the first run.
    Each source's host is probed first with a short timeout, so an unreachable
    one fails in seconds, naming host and port.
    """
    code = EXIT_OK
    ctx.print(f"config: OK ({ctx.config.path})")
    where = f"{_safe_url(ctx.engine)}, from {ctx.config.store_reason}"
    try:
        check_schema(ctx.engine)
        ctx.print(f"store: OK ({where})")
    except StoreNotInitialisedError as exc:
        ctx.print(f"store: WARNING: {exc} ({where}); the first `velocity run` creates it too")
    except StoreError as exc:
        ctx.print(f"store: FAILED: {exc}")
        code = EXIT_FAILED
    for connector in ctx.config.sources:
        try:
            probe_endpoint(connector.settings, timeout=args.timeout)
            ctx.print(f"source {connector.name}: OK ({connector.check()})")
        except Exception as exc:
            ctx.print(f"source {connector.name}: FAILED: {exc}")
            code = EXIT_FAILED
    for channel in ctx.config.notify.channels:
        name = channel.settings.name
        try:
            ctx.print(f"channel {name}: OK ({channel.check()})")
        except Exception as exc:
            ctx.print(f"channel {name}: FAILED: {exc}")
            code = EXIT_FAILED
    return code


def cmd_status(ctx: Context, args: argparse.Namespace) -> int:
    """Print the last run of each source and channel, and the next scheduled times."""
    from sales_velocity.sync.status import collect_status, render_status

    config = ctx.config
    channels = [c.settings.name for c in config.notify.channels]
    engine = ctx.existing_engine()
    with reading_only():
        status = collect_status(
            engine, sources=[s.name for s in config.sources], channels=channels,
            schedule={"sync": config.schedule.sync, "daily": config.schedule.daily},
            timezone=config.schedule.timezone or config.timezone, now=ctx.now(),
        )
    ctx.out.write(ctx.redactor.redact(render_status(status)))
    _write_metrics(ctx, args.metrics_file)
    return EXIT_OK


def _write_metrics(ctx: Context, option: str | None) -> None:
    """Write the Prometheus textfile when ``--metrics-file`` or ``[metrics] textfile`` names one."""
    target = option or ctx.config.metrics.textfile
    if not target:
        return
    from sales_velocity.sync.prometheus import write_textfile

    config = ctx.config
    try:
        write_textfile(
            ctx.engine, Path(target), sources=[s.name for s in config.sources],
            channels=[c.settings.name for c in config.notify.channels],
            window_days=config.metrics.window_days, now=ctx.now(),
        )
    except STORE_ERRORS as exc:  # the file keeps its last content; scrapers see it age
        log.error("metrics.textfile_failed", path=str(target), error=str(store_error(exc)))
        return
    log.info("metrics.textfile", path=str(target))


def cmd_schedule(ctx: Context, args: argparse.Namespace) -> int:
    """Run as a long-lived scheduler until SIGTERM/SIGINT, which stop it after the running job."""
    one_at_a_time = threading.Lock()  # the daily job never runs beside a sync job

    def job(body: Callable[[], int]) -> Callable[[], int]:
        def run() -> int:  # each run of a job gets a run id of its own
            with one_at_a_time:
                ctx.run_id = uuid.uuid4().hex[:12]
                with structlog.contextvars.bound_contextvars(run_id=ctx.run_id):
                    return body()
        return run

    def with_metrics(body: Callable[[], int]) -> Callable[[], int]:
        def run() -> int:
            try:
                return body()
            finally:
                _write_metrics(ctx, args.metrics_file)
        return run

    scheduler = build_scheduler(
        ctx.config.schedule, ctx.config.timezone,
        sync=job(with_metrics(lambda: _print_sync_results(ctx, run_sync(ctx)))),
        daily=job(with_metrics(lambda: cmd_run_daily_locked(ctx))),
    )
    ctx.ready_engine()  # fail now, not at the first job, when the store is not initialised
    if args.run_now:
        scheduler.get_job("sync").modify(next_run_time=dt.datetime.now(ctx.config.zone))
    serve(scheduler)
    return EXIT_OK


def cmd_run_daily_locked(ctx: Context) -> int:
    """The scheduler's daily job: this moment's sync first, then metrics and notify (``daily_step``)."""
    sync_code = _print_sync_results(ctx, run_sync(ctx))
    return max(sync_code, daily_step(ctx, ctx.config.today(ctx.now())))


# --------------------------------------------------------------------------- CLI

OUTPUT_ONLY = frozenset({"report", "export", "deals", "movement"})
"""Commands whose only effect is their output: a reader that leaves early (``| head``) is no failure."""


def _date(value: str) -> dt.date:
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a date (YYYY-MM-DD)") from None


def _date_or_time(value: str) -> dt.date | dt.datetime:
    """``YYYY-MM-DD`` (a local day) or an ISO datetime (local time unless it has an offset)."""
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        pass
    try:
        return dt.datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a date (YYYY-MM-DD) or a datetime (YYYY-MM-DDTHH:MM[+HH:MM])") from None


def _positive(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1 (a window of days)")
    return number


def _seconds(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of seconds") from None
    if not 0 < number <= 120:
        raise argparse.ArgumentTypeError(f"{value} must be more than 0 and at most 120 seconds")
    return number


def build_parser() -> argparse.ArgumentParser:
    """The ``velocity`` command line (every option has help text; a test checks)."""
    from sales_velocity.sync.prometheus import package_version

    parser = argparse.ArgumentParser(
        prog="velocity",
        description="Sync CRM deals, compute sales velocity, notify the team.",
        epilog="Exit codes: 0 ok, 1 a source or channel failed, 2 configuration or usage error.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    parser.add_argument("--config", "-c", type=Path, default=None, metavar="FILE",
                        help=f"config file (default: ${ENV_CONFIG}, else ./velocity.toml)")
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"],
                        help="log events from this level up (default: warning on a terminal, info "
                        "otherwise)")
    parser.add_argument("--log-format", choices=["auto", "json", "console"],
                        help="auto (default): readable on a terminal, JSON lines otherwise")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    as_of_help = "the day to compute for, YYYY-MM-DD (default: today in the configured time zone)"
    metrics_help = "also write Prometheus textfile metrics here (default: [metrics] textfile)"

    sub.add_parser("init", help="create or upgrade the store").set_defaults(func=cmd_init)
    p = sub.add_parser("sync", help="pull deals from the sources into the store")
    p.add_argument("sources", nargs="*", metavar="SOURCE", help="source names (default: all)")
    p.add_argument("--full", action="store_true", help="ignore the cursor; detect deletes")
    p.set_defaults(func=cmd_sync)
    p = sub.add_parser("metrics", help="compute and store velocity snapshots")
    p.add_argument("--as-of", type=_date, help=as_of_help + "; not in the future")
    p.add_argument("--since", type=_date, metavar="DATE",
                   help="also rebuild one snapshot per day from DATE to the day before, from deal dates")
    p.add_argument("--overwrite", action="store_true",
                   help="with --since: replace snapshots taken on the day too")
    p.set_defaults(func=cmd_metrics)
    p = sub.add_parser("report", help="print the velocity report (read-only)")
    p.add_argument("--as-of", type=_date, help=as_of_help)
    p.add_argument("--window-days", type=_positive, default=None,
                   help="look-back window in days, at least 1 (default: [metrics] window_days)")
    p.add_argument("--format", choices=["table", "json", "csv", "html"], default="table",
                   help="table for people (default), json or csv for machines, html: one self-contained page")
    p.add_argument("--output", metavar="FILE", help="write the report to FILE instead of stdout")
    p.set_defaults(func=cmd_report)
    p = sub.add_parser("deals", help="list the deals behind each lever of a scope (read-only)")
    p.add_argument("--as-of", type=_date, help=as_of_help)
    p.add_argument("--window-days", type=_positive, default=None,
                   help="look-back window in days, at least 1 (default: [metrics] window_days)")
    p.add_argument("--scope", default="all", help="all, pipeline:KEY or owner:KEY (KEY: source/id, id, name)")
    p.add_argument("--lever", choices=list(LEVERS), help="only this lever (default: every lever)")
    p.add_argument("--format", choices=["table", "csv", "json"], default="table",
                   help="table for people (default), csv or json for machines")
    p.set_defaults(func=cmd_deals)
    p = sub.add_parser("movement", help="what moved in the pipeline: added, won, pushed, ... and a bridge")
    p.add_argument("--since", type=_date_or_time, help="start: a local date or datetime (default: 7 days)")
    p.add_argument("--until", type=_date_or_time, help="end (excluded); a date includes its day")
    p.add_argument("--scope", default="all", help="all, pipeline:KEY or owner:KEY (KEY: source/id, id, name)")
    p.add_argument("--format", choices=["table", "json", "csv"], default="table",
                   help="table for people (default), json or csv for machines")
    p.set_defaults(func=cmd_movement)
    p = sub.add_parser("forecast", help="won value expected in the next 30/60/90 days, and its accuracy")
    p.add_argument("--as-of", type=_date, help=as_of_help)
    p.add_argument("--horizons", default="30,60,90", help="days ahead, comma-separated (default: 30,60,90)")
    p.add_argument("--scope", default="all", help="all, pipeline:KEY or owner:KEY (KEY: source/id, id, name)")
    p.add_argument("--backtest", action="store_true", help="list every scored backtest point instead")
    p.add_argument("--format", choices=["table", "json", "csv"], default="table",
                   help="table (default) or json; with --backtest json (default) or csv")
    p.set_defaults(func=cmd_forecast)
    p = sub.add_parser("export", help="print the stored deals (read-only)")
    p.add_argument("--source", help="only this source's deals")
    p.add_argument("--format", choices=["csv", "json"], default="csv",
                   help="csv (default) or json lines")
    p.set_defaults(func=cmd_export)
    p = sub.add_parser("notify", help="send the digest and stalled-deal reminders")
    p.add_argument("--as-of", type=_date, help=as_of_help)
    p.add_argument("--dry-run", action="store_true", help="print what would be sent; record nothing")
    p.add_argument("--preview", action="store_true",
                   help="print today's digest as it would read now, even when already sent; "
                   "send and record nothing")
    p.add_argument("--only", choices=["digest", "reminders"], help="send only this kind")
    p.set_defaults(func=cmd_notify)
    p = sub.add_parser("run", help="sync, metrics and notify once (for cron and containers)")
    p.add_argument("sources", nargs="*", metavar="SOURCE", help="source names (default: all)")
    p.add_argument("--full", action="store_true", help="ignore the cursors; detect deletes")
    p.add_argument("--as-of", type=_date, help=as_of_help)
    p.add_argument("--no-notify", action="store_true", help="stop after metrics")
    p.add_argument("--metrics-file", help=metrics_help)
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("check", help="check config, store, sources and channels (creates nothing)")
    p.add_argument("--timeout", type=_seconds, default=5.0,
                   help="seconds to wait for each source's host (default: 5)")
    p.set_defaults(func=cmd_check)
    p = sub.add_parser("status", help="last run per source and channel (read-only)")
    p.add_argument("--metrics-file", help=metrics_help)
    p.set_defaults(func=cmd_status)
    p = sub.add_parser("schedule", help="run as a long-lived scheduler")
    p.add_argument("--run-now", action="store_true", help="also sync once right away")
    p.add_argument("--metrics-file", help=metrics_help)
    p.set_defaults(func=cmd_schedule)
    return parser


def main(argv: Sequence[str] | None = None, *, env: Mapping[str, str] | None = None,
         out: TextIO | None = None, now: Callable[[], dt.datetime] | None = None) -> int:
    """Entry point of the ``velocity`` console script; returns the exit code.

    An ordinary mistake (no config, a bad value, a store never initialised) is one
    line on standard error and exit 2, never a traceback.
    """
    env = os.environ if env is None else env
    out = out or sys.stdout
    args = build_parser().parse_args(argv)
    try:
        config = load_config(find_config(args.config, env), env)
    except (ConfigError, UsageError) as exc:
        configure_logging()
        sys.stderr.write(f"velocity: {_one_line(exc)}\n")
        return EXIT_CONFIG
    log_settings = config.logging.model_copy(update={
        k: v for k, v in (("level", args.log_level), ("format", args.log_format)) if v
    })
    redactor = configure_logging(log_settings, config.secrets)
    ctx = Context(config=config, out=out, now=now or (lambda: dt.datetime.now(dt.UTC)),
                  redactor=redactor)
    previous = _terminate_like_interrupt()
    with structlog.contextvars.bound_contextvars(run_id=ctx.run_id, command=args.command):
        try:
            code = int(args.func(ctx, args))
            out.flush()  # a reader that left shows here, not after the exit code is decided
            return code
        except KeyboardInterrupt:  # SIGINT or SIGTERM: locks were released on the way out
            sys.stderr.write("velocity: interrupted; runs in progress are marked failed\n")
            log.warning("command.interrupted")
            return EXIT_FAILED
        except BrokenPipeError:
            _silence_stdout(out)
            if args.command in OUTPUT_ONLY:  # `velocity export | head`: the reader left, not an error
                return EXIT_OK
            sys.stderr.write(f"velocity: {args.command} stopped: its output was closed (broken pipe)\n")
            return EXIT_FAILED
        except (ConfigError, UsageError, StoreNotInitialisedError) as exc:
            sys.stderr.write(redactor.redact(f"velocity: {_one_line(exc)}\n"))
            return EXIT_CONFIG
        except STORE_ERRORS as exc:  # StoreError, or the store went away mid-command
            sys.stderr.write(redactor.redact(f"velocity: {store_error(exc)}\n"))
            return EXIT_FAILED
        except VelocityError as exc:
            log.error("command.failed", error=str(exc))
            sys.stderr.write(redactor.redact(f"velocity: {args.command} failed: {exc}\n"))
            return EXIT_FAILED
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
            if ctx._engine is not None:
                ctx._engine.dispose()


def _terminate_like_interrupt() -> Any:
    """Make SIGTERM (Docker, Kubernetes, systemd) raise ``KeyboardInterrupt`` like SIGINT.

    Returns the previous handler (``None`` off the main thread, where signals cannot be set).
    """
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, signal.default_int_handler)


def _one_line(exc: Exception) -> str:
    """A config error with one problem reads as one line; several are listed, one per line."""
    if isinstance(exc, ConfigError) and len(exc.problems) == 1:
        return str(exc.problems[0])
    return str(exc)


def _silence_stdout(out: TextIO) -> None:
    """After a broken pipe, point stdout at /dev/null so the interpreter's last flush is quiet."""
    if out is sys.stdout:
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):
            pass


if __name__ == "__main__":
    raise SystemExit(main())
