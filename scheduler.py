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
import sys
import tomllib
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
from sales_velocity.connectors.base import Connector
from sales_velocity.kernel.config import TimeZoneName, expand_env, secret_values, validation_problems
from sales_velocity.kernel.errors import ConfigError, ConfigProblem, StoreError, VelocityError
from sales_velocity.kernel.logs import LoggingSettings, SecretRedactor, configure_logging
from sales_velocity.kernel.schedule import ScheduleSettings, build_scheduler, serve
from sales_velocity.metrics.freshness import read_freshness
from sales_velocity.metrics.job import missed_days, run_metrics
from sales_velocity.metrics.leftovers import left_out
from sales_velocity.metrics.report import ReportFormat, render_report
from sales_velocity.metrics.settings import MetricsSettings
from sales_velocity.metrics.velocity import compute_velocity
from sales_velocity.notify.job import held_reason, run_notify
from sales_velocity.notify.settings import NotifySettings, RemindersSettings, load_notify_settings
from sales_velocity.sync.engine import SyncResult, sync_source
from sales_velocity.sync.export import export_rows, write_export
from sales_velocity.sync.lock import daily_lock, source_lock
from sales_velocity.sync.settings import StoreSettings, SyncSettings
from sales_velocity.sync.store import check_schema, ensure_schema, make_engine, upgrade

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2
ENV_CONFIG = "VELOCITY_CONFIG"
ENV_DATABASE_URL = "VELOCITY_DATABASE_URL"

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
    secrets: list[str] = field(default_factory=list, repr=False)

    @property
    def zone(self) -> ZoneInfo:
        """The configured time zone."""
        return ZoneInfo(self.timezone)

    def today(self, now: dt.datetime | None = None) -> dt.date:
        """Today's date in the configured time zone."""
        return (now or dt.datetime.now(dt.UTC)).astimezone(self.zone).date()


def load_config(path: Path | None, env: Mapping[str, str] | None = None) -> AppConfig:
    """Read, expand and validate the configuration; raise one ``ConfigError`` with every problem."""
    env = os.environ if env is None else env
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            with path.open("rb") as fh:
                raw = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError.single("", f"config file {path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError.single("", f"{path} is not valid TOML: {exc}") from None
    problems: list[ConfigProblem] = []
    secrets: list[str] = []
    raw = expand_env(raw, env, "", problems, secrets)
    if env.get(ENV_DATABASE_URL):
        raw.setdefault("store", {})["url"] = env[ENV_DATABASE_URL]
    context = {"config_dir": path.parent.resolve() if path else Path.cwd()}
    try:
        top = TopLevel.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError([*problems, *validation_problems(exc)]) from None

    def part(model: type[BaseModel], data: Mapping[str, Any], key: str) -> Any:
        try:
            return model.model_validate(dict(data), context=context)
        except ValidationError as exc:
            problems.extend(validation_problems(exc, key))
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
        raise ConfigError(problems)
    config = AppConfig(path, top.timezone, top.currency, store, sync, sources, metrics, notify,
                       reminders, schedule, logging_settings)
    store_password = sa.engine.make_url(store.url).password if store else None
    config.secrets = sorted({s for s in [*secrets, *secret_values(config.sources),
                                         *secret_values(notify), str(store_password or "")]
                             if len(s) >= 4})
    return config


def _metrics_settings(top: TopLevel, context: Mapping[str, Any],
                      problems: list[ConfigProblem]) -> MetricsSettings | None:
    data = {"timezone": top.timezone, "currency": top.currency, **top.metrics}
    try:
        return MetricsSettings.model_validate(data, context=dict(context))
    except ValidationError as exc:
        problems.extend(validation_problems(exc, "metrics"))
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
        """The store's engine (created on first use)."""
        if self._engine is None:
            self._engine = make_engine(self.config.store.url)
        return self._engine

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
    ctx.print(f"store ready: {_safe_url(ctx.engine)}")
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
    """Sync the selected sources one after another; a failing one does not stop the rest."""
    engine = ctx.ready_engine()
    results = []
    for connector in _select_sources(ctx, names):
        with source_lock(engine, connector.name, holder=ctx.run_id) as lease:
            if not lease:
                log.info("sync.skipped", source=connector.name, reason="another run holds its lock")
                results.append(SyncResult(source=connector.name, status="skipped",
                                          error="another run holds this source's lock"))
                continue
            results.append(sync_source(engine, connector, full=full, run_id=ctx.run_id,
                                       now=ctx.now, batch_size=ctx.config.sync.batch_size,
                                       catalog_max_age=ctx.config.sync.catalog_max_age,
                                       progress=_progress(connector.name, lease.renew),
                                       redact=ctx.redactor.redact))
    return results


def _progress(source: str, renew: Callable[[], None]) -> Callable[[int], None]:
    """Renew the source's lease as the sync goes; show a progress line on a terminal."""
    tty = sys.stderr.isatty()

    def show(seen: int) -> None:
        renew()
        if tty:
            sys.stderr.write(f"\r{source}: {seen:,} deals ")
            sys.stderr.flush()

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
    """Compute and store today's (or --as-of's) velocity snapshots."""
    as_of = _as_of(ctx, args.as_of)
    report = run_metrics(ctx.ready_engine(), ctx.config.metrics, as_of, now=ctx.now())
    ctx.print(f"velocity snapshots stored for {as_of}: {len(report.scopes)} scopes")
    return EXIT_OK


def _report_text(ctx: Context, as_of: dt.date, window_days: int | None, fmt: ReportFormat) -> str:
    """The velocity report with each source's last good sync and what the levers left out."""
    engine = ctx.ready_engine()
    report = compute_velocity(engine, ctx.config.metrics, as_of, window_days)
    freshness = read_freshness(engine, [s.name for s in ctx.config.sources], now=ctx.now(),
                               max_age_hours=ctx.config.notify.max_data_age_hours)
    return render_report(report, fmt, freshness=freshness, left_out=left_out(engine, report))


def cmd_report(ctx: Context, args: argparse.Namespace) -> int:
    """Print the velocity table (or JSON/CSV) computed from the store."""
    ctx.out.write(_report_text(ctx, _as_of(ctx, args.as_of), args.window_days, args.format))
    return EXIT_OK


def cmd_export(ctx: Context, args: argparse.Namespace) -> int:
    """Write the stored deals as CSV or JSON lines to stdout."""
    write_export(export_rows(ctx.ready_engine(), args.source), args.format, ctx.out)
    return EXIT_OK


def run_daily(ctx: Context, as_of: dt.date, *, notify: bool = True, dry_run: bool = False,
              only: Literal["digest", "reminders"] | None = None) -> int:
    """Metrics (back-filling missed days) then the notifier; returns an exit code."""
    engine = ctx.ready_engine()
    window = ctx.config.metrics.window_days
    for day in missed_days(engine, window, as_of, ctx.config.schedule.backfill_days):
        run_metrics(engine, ctx.config.metrics, day, now=ctx.now())
        log.info("metrics.backfilled", as_of=day.isoformat())
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
    result = run_notify(
        ctx.ready_engine(), ctx.config.notify, ctx.config.reminders, ctx.config.metrics,
        as_of=as_of, now=ctx.now(), dry_run=dry_run, only=only, out=ctx.out,
        sources=[s.name for s in ctx.config.sources],
    )
    return EXIT_FAILED if result.failed or result.held else EXIT_OK


def cmd_notify(ctx: Context, args: argparse.Namespace) -> int:
    """Send the digest and the reminders for today (or --as-of)."""
    if not ctx.config.notify.channels:
        raise ConfigError.single("notify.channels", "no channel is configured")
    return _notify(ctx, _as_of(ctx, args.as_of), dry_run=args.dry_run, only=args.only)


def cmd_run(ctx: Context, args: argparse.Namespace) -> int:
    """The one-shot job for cron and containers: sync, metrics, notify."""
    sync_code = _print_sync_results(ctx, run_sync(ctx, args.sources, full=args.full))
    as_of = _as_of(ctx, args.as_of)
    with daily_lock(ctx.ready_engine(), as_of, holder=ctx.run_id) as acquired:
        if not acquired:
            ctx.print("daily step skipped: another run holds the daily lock")
            return sync_code
        daily_code = run_daily(ctx, as_of, notify=not args.no_notify)
    return max(sync_code, daily_code)


def cmd_check(ctx: Context, _args: argparse.Namespace) -> int:
    """Validate the config (already done), reach the store, and try each source and channel."""
    code = EXIT_OK
    ctx.print("config: OK")
    try:
        check_schema(ctx.engine)
        ctx.print(f"store: OK ({_safe_url(ctx.engine)})")
    except StoreError as exc:
        ctx.print(f"store: FAILED: {exc}")
        code = EXIT_FAILED
    for connector in ctx.config.sources:
        try:
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
    from sales_velocity.sync.status import collect_status, render_status, write_prometheus

    config = ctx.config
    channels = [c.settings.name for c in config.notify.channels]
    status = collect_status(
        ctx.ready_engine(), sources=[s.name for s in config.sources], channels=channels,
        schedule={"sync": config.schedule.sync, "daily": config.schedule.daily},
        timezone=config.schedule.timezone or config.timezone, now=ctx.now(),
    )
    ctx.out.write(render_status(status))
    if args.metrics_file:
        write_prometheus(status, Path(args.metrics_file))
    return EXIT_OK


def cmd_schedule(ctx: Context, args: argparse.Namespace) -> int:
    """Run as a long-lived scheduler until SIGTERM/SIGINT, which stop it after the running job."""

    def job(body: Callable[[], int]) -> Callable[[], int]:
        def run() -> int:  # each run of a job gets a run id of its own
            ctx.run_id = uuid.uuid4().hex[:12]
            with structlog.contextvars.bound_contextvars(run_id=ctx.run_id):
                return body()
        return run

    scheduler = build_scheduler(
        ctx.config.schedule, ctx.config.timezone,
        sync=job(lambda: _print_sync_results(ctx, run_sync(ctx))),
        daily=job(lambda: cmd_run_daily_locked(ctx)),
    )
    ctx.ready_engine()  # fail now, not at the first job, when the store is not initialised
    if args.run_now:
        scheduler.get_job("sync").modify(next_run_time=dt.datetime.now(ctx.config.zone))
    serve(scheduler)
    return EXIT_OK


def cmd_run_daily_locked(ctx: Context) -> int:
    """The scheduler's daily job: metrics and notify under the daily lock."""
    as_of = ctx.config.today(ctx.now())
    with daily_lock(ctx.ready_engine(), as_of, holder=ctx.run_id) as acquired:
        if not acquired:
            log.info("daily.skipped", reason="another run holds the daily lock")
            return EXIT_OK
        return run_daily(ctx, as_of)


# --------------------------------------------------------------------------- CLI


def _date(value: str) -> dt.date:
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a date (YYYY-MM-DD)") from None


def build_parser() -> argparse.ArgumentParser:
    """The ``velocity`` command line."""
    parser = argparse.ArgumentParser(
        prog="velocity",
        description="Sync CRM deals, compute sales velocity, notify the team.",
    )
    parser.add_argument("--config", "-c", type=Path, default=None,
                        help=f"config file (default: ${ENV_CONFIG}, else ./velocity.toml)")
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    parser.add_argument("--log-format", choices=["auto", "json", "console"])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sub.add_parser("init", help="create or upgrade the store").set_defaults(func=cmd_init)
    p = sub.add_parser("sync", help="pull deals from the sources into the store")
    p.add_argument("sources", nargs="*", metavar="SOURCE")
    p.add_argument("--full", action="store_true", help="ignore the cursor; detect deletes")
    p.set_defaults(func=cmd_sync)
    p = sub.add_parser("metrics", help="compute and store velocity snapshots")
    p.add_argument("--as-of", type=_date)
    p.set_defaults(func=cmd_metrics)
    p = sub.add_parser("report", help="print the velocity report")
    p.add_argument("--as-of", type=_date)
    p.add_argument("--window-days", type=int, default=None)
    p.add_argument("--format", choices=["table", "json", "csv"], default="table")
    p.set_defaults(func=cmd_report)
    p = sub.add_parser("export", help="print the stored deals")
    p.add_argument("--source")
    p.add_argument("--format", choices=["csv", "json"], default="csv")
    p.set_defaults(func=cmd_export)
    p = sub.add_parser("notify", help="send the digest and stalled-deal reminders")
    p.add_argument("--as-of", type=_date)
    p.add_argument("--dry-run", action="store_true", help="print what would be sent; record nothing")
    p.add_argument("--only", choices=["digest", "reminders"])
    p.set_defaults(func=cmd_notify)
    p = sub.add_parser("run", help="sync, metrics and notify once (for cron and containers)")
    p.add_argument("sources", nargs="*", metavar="SOURCE")
    p.add_argument("--full", action="store_true")
    p.add_argument("--as-of", type=_date)
    p.add_argument("--no-notify", action="store_true", help="stop after metrics")
    p.set_defaults(func=cmd_run)
    sub.add_parser("check", help="check config, store, sources and channels").set_defaults(
        func=cmd_check)
    p = sub.add_parser("status", help="last run per source and channel")
    p.add_argument("--metrics-file", help="also write Prometheus text metrics to this file")
    p.set_defaults(func=cmd_status)
    p = sub.add_parser("schedule", help="run as a long-lived scheduler")
    p.add_argument("--run-now", action="store_true", help="also sync once right away")
    p.set_defaults(func=cmd_schedule)
    return parser


def _config_path(arg: Path | None, env: Mapping[str, str]) -> Path | None:
    if arg is not None:
        return arg
    if env.get(ENV_CONFIG):
        return Path(env[ENV_CONFIG])
    default = Path("velocity.toml")
    return default if default.exists() else None


def main(argv: Sequence[str] | None = None, *, env: Mapping[str, str] | None = None,
         out: TextIO | None = None, now: Callable[[], dt.datetime] | None = None) -> int:
    """Entry point of the ``velocity`` console script; returns the exit code."""
    env = os.environ if env is None else env
    out = out or sys.stdout
    args = build_parser().parse_args(argv)
    try:
        config = load_config(_config_path(args.config, env), env)
    except ConfigError as exc:
        configure_logging()
        sys.stderr.write(f"velocity: {exc}\n")
        return EXIT_CONFIG
    log_settings = config.logging.model_copy(update={
        k: v for k, v in (("level", args.log_level), ("format", args.log_format)) if v
    })
    redactor = configure_logging(log_settings, config.secrets)
    ctx = Context(config=config, out=out, now=now or (lambda: dt.datetime.now(dt.UTC)),
                  redactor=redactor)
    with structlog.contextvars.bound_contextvars(run_id=ctx.run_id, command=args.command):
        try:
            return int(args.func(ctx, args))
        except BrokenPipeError:  # `velocity export | head`: the reader left, not an error
            sys.stderr.close()
            return EXIT_OK
        except ConfigError as exc:
            sys.stderr.write(redactor.redact(f"velocity: {exc}\n"))
            return EXIT_CONFIG
        except StoreError as exc:
            sys.stderr.write(redactor.redact(f"velocity: {exc}\n"))
            return EXIT_FAILED
        except VelocityError as exc:
            log.error("command.failed", error=str(exc))
            return EXIT_FAILED
        finally:
            if ctx._engine is not None:
                ctx._engine.dispose()


if __name__ == "__main__":
    raise SystemExit(main())
