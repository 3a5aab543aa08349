"""The timed parts: the store, ingest, re-syncs, the daily recompute and memory probes.

Every function returns plain dicts of figures (seconds, counts, MB) so
``bench.__main__`` can print them for people and as one JSON line.
"""

from __future__ import annotations

import datetime as dt
import resource
import tempfile
import time
import tracemalloc
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import quote

import sqlalchemy as sa

from bench.generator import NOW, SOURCE, Catalog, DealRow
from bench.pages import PagedConnector, read_pages
from sales_velocity.metrics.settings import MetricsSettings
from sales_velocity.sync.engine import sync_source
from sales_velocity.sync.store import make_engine, snapshots_table, upgrade

__all__ = [
    "AS_OF",
    "SETTINGS",
    "Rss",
    "drilldown",
    "driver_floor",
    "history_rebuild",
    "ingest",
    "interpreter_calibration_us",
    "open_store",
    "recompute",
    "resync",
    "timed",
    "traced_ingest",
]

SETTINGS = MetricsSettings(
    timezone="Europe/Oslo", currency="EUR",
    rates={"USD": Decimal("0.92"), "GBP": Decimal("1.17")},  # SEK has no rate on purpose
)
AS_OF = NOW.astimezone(SETTINGS.zone).date()


@contextmanager
def open_store(url: str | None, workdir: Path, label: str = "main") -> Iterator[sa.Engine]:
    """A migrated, empty store: a SQLite file in ``workdir``, or a fresh PostgreSQL schema.

    On PostgreSQL a dedicated schema ``bench_<random>`` is created and dropped
    afterwards (through ``search_path``), so the run never touches other data.
    """
    if url is None or url.startswith("sqlite"):
        path = workdir / f"{label}.db" if url is None else Path(url.split("///", 1)[1])
        if url is not None and label != "main":
            path = path.with_name(f"{path.stem}-{label}{path.suffix}")
        engine = make_engine(f"sqlite:///{path}")
        try:
            upgrade(engine)
            yield engine
        finally:
            engine.dispose()
        return
    schema = f"bench_{label}_{uuid.uuid4().hex[:8]}"
    admin = make_engine(url)
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in url else "?"
    engine = make_engine(f"{url}{sep}options={quote(f'-csearch_path={schema}')}")
    try:
        upgrade(engine)
        yield engine
    finally:
        engine.dispose()
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def quiet_logs() -> None:
    """Only errors from the code under test (its info lines would fill the benchmark's output)."""
    import logging

    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    logging.getLogger("werkzeug").setLevel(logging.ERROR)


class Rss:
    """Peak resident memory of this process, resettable per phase on Linux."""

    @staticmethod
    def reset() -> bool:
        """Reset the kernel's high-water mark to the current RSS (``/proc/self/clear_refs``)."""
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            return False
        return True

    @staticmethod
    def peak_mb() -> float:
        """Peak RSS since the last reset (``VmHWM``), else since the start (``ru_maxrss``)."""
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
        except OSError:
            pass
        return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)

    @staticmethod
    def current_mb() -> float:
        """Resident memory now (``VmRSS``; 0 where unknown)."""
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return round(int(line.split()[1]) / 1024, 1)
        except OSError:
            pass
        return 0.0

    @staticmethod
    def maxrss_mb() -> float:
        """``getrusage`` max RSS of the process."""
        return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """Run ``fn``; return (seconds, result)."""
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result


def _connector(catalog: Catalog, pages: Callable[[], Iterator[list[DealRow]]], *, complete: bool,
               replace: dict[str, DealRow] | None = None) -> PagedConnector:
    return PagedConnector(SOURCE, catalog, pages, complete=complete, replace=replace)


def ingest(engine: sa.Engine, catalog: Catalog, pages_file: Path, count: int) -> dict[str, Any]:
    """The first full pull of every deal: deals per second and peak RSS."""
    reset = Rss.reset()
    seconds, result = timed(lambda: sync_source(
        engine, _connector(catalog, lambda: read_pages(pages_file), complete=True),
        full=True, now=lambda: NOW,
    ))
    if result.status != "ok" or result.inserted != count:
        raise RuntimeError(f"ingest failed: {result}")
    return {
        "deals": count, "seconds": round(seconds, 3), "deals_per_s": round(count / seconds),
        "peak_rss_mb": Rss.peak_mb(), "peak_rss_is_per_phase": reset,
    }


def ingest_alone(url: str, pages_file: Path, count: int) -> dict[str, Any]:
    """:func:`ingest` into the store at ``url``, opened here: for a fresh process (``_in_child``)."""
    from bench.generator import build_catalog

    engine = make_engine(url)
    try:
        return ingest(engine, build_catalog(), pages_file, count)
    finally:
        engine.dispose()


def driver_floor(url: str | None, workdir: Path, pages_file: Path, limit: int) -> dict[str, Any]:
    """The least time the bulk path takes to hand the same deals to the store: the ingest's floor.

    The first ``limit`` deals are made into ready Arrow batches of 10,000 exactly as
    the engine makes them (untimed: ``deals_to_batch`` and ``finish_batch``), then
    only their load into the staging table (``COPY`` on PostgreSQL, one
    ``executemany`` on SQLite: ``sync.staging.Stager``) and the commits are timed,
    on a scratch store. No ingest through this path stores a deal faster than
    that; ``ceiling_deals_per_s`` is the bound.
    """
    from bench.pages import to_deal
    from sales_velocity.sync.batch import deals_to_batch, finish_batch
    from sales_velocity.sync.engine import DEFAULT_BATCH_SIZE
    from sales_velocity.sync.staging import Stager

    seconds = 0.0
    stored = 0
    with open_store(url, workdir, "floor") as engine, engine.connect() as conn:
        stager = Stager(conn, "floor", None)
        stager.create()
        conn.commit()
        pending: list[Any] = []

        def load(deals: list[Any]) -> float:
            table = finish_batch(deals_to_batch(deals))
            started = time.perf_counter()
            stager._clear()
            stager._load(table)
            conn.commit()
            return time.perf_counter() - started

        for page in read_pages(pages_file):
            pending.extend(to_deal(row) for row in page[: limit - stored - len(pending)])
            if len(pending) >= DEFAULT_BATCH_SIZE:
                seconds += load(pending)
                stored += len(pending)
                pending = []
            if stored + len(pending) >= limit:
                break
        if pending:
            seconds += load(pending)
            stored += len(pending)
        stager.drop()
        conn.commit()
    per_deal = seconds / max(stored, 1)
    return {"deals": stored, "seconds": round(seconds, 3), "us_per_deal": round(per_deal * 1e6, 1),
            "ceiling_deals_per_s": round(1 / per_deal) if per_deal else None}


def interpreter_calibration_us() -> float:
    """Microseconds this machine's Python takes for ``sum(range(1000))`` (best of 5), to compare machines."""
    import timeit

    loops = 2000
    best = min(timeit.repeat("sum(range(1000))", number=loops, repeat=5))
    return round(best / loops * 1e6, 2)


def traced_ingest(url: str | None, workdir: Path, catalog: Catalog, pages_file: Path,
                  limit: int) -> dict[str, Any]:
    """Peak Python allocations (tracemalloc) while ingesting the first ``limit`` deals into a scratch store.

    tracemalloc slows allocation-heavy code several times, so it runs apart
    from the timed ingest, on a store of its own.
    """
    def first_pages() -> Iterator[list[DealRow]]:
        seen = 0
        for page in read_pages(pages_file):
            if seen >= limit:
                return
            yield page[: limit - seen]
            seen += len(page)

    with open_store(url, workdir, "traced") as engine:
        tracemalloc.start()
        try:
            result = sync_source(engine, _connector(catalog, first_pages, complete=True),
                                 full=True, now=lambda: NOW)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    return {"deals": result.seen, "tracemalloc_peak_mb": round(peak / 2**20, 1)}


def resync(engine: sa.Engine, catalog: Catalog, pages_file: Path, *, changed: list[DealRow] | None,
           incremental: bool) -> dict[str, Any]:
    """A re-sync: a full re-pull (all pages, optionally with changed rows) or only the changed rows."""
    if incremental:
        rows = changed or []
        page_size = 1000

        def pages() -> Iterator[list[DealRow]]:
            for start in range(0, len(rows), page_size):
                yield rows[start:start + page_size]

        connector = _connector(catalog, pages, complete=False)
    else:
        replace = {row[1]: row for row in changed or []}
        connector = _connector(catalog, lambda: read_pages(pages_file), complete=True, replace=replace)
    Rss.reset()
    seconds, result = timed(lambda: sync_source(engine, connector, full=not incremental,
                                                now=lambda: NOW + dt.timedelta(hours=1)))
    if result.status != "ok":
        raise RuntimeError(f"re-sync failed: {result}")
    return {
        "seconds": round(seconds, 3), "seen": result.seen, "inserted": result.inserted,
        "updated": result.updated, "unchanged": result.unchanged, "deleted": result.deleted,
        "peak_rss_mb": Rss.peak_mb(),
    }


def recompute(engine: sa.Engine) -> tuple[dict[str, Any], Any]:
    """The daily recompute, as ``velocity run`` does it after the sync.

    Timed as the product runs it: ``metrics.job.run_metrics`` (velocity of every
    scope, snapshot rows), then ``notify.digest.build_digest`` (what-ifs, hygiene
    summary, where deals wait, the worst stalled deals; its independent queries
    run concurrently). ``compute_velocity`` alone is timed for the like-for-like
    comparison with the baseline; the hygiene summary and the stage waits are
    also timed alone, one after the other, to show where the time goes (not part
    of the total).

    Returns:
        The timings, and the velocity report (for the baseline comparison).
    """
    from sales_velocity.metrics.hygiene import HygieneSettings, hygiene_summary
    from sales_velocity.metrics.job import run_metrics
    from sales_velocity.metrics.stage_times import stage_wait_times
    from sales_velocity.metrics.velocity import compute_velocity
    from sales_velocity.notify.digest import build_digest

    hygiene = HygieneSettings()
    out: dict[str, Any] = {}
    out["velocity_only_s"], _ = timed(lambda: compute_velocity(engine, SETTINGS, AS_OF))
    out["velocity_and_snapshots_s"], report = timed(lambda: run_metrics(engine, SETTINGS, AS_OF, now=NOW))
    out["digest_s"], digest = timed(lambda: build_digest(engine, SETTINGS, hygiene, as_of=AS_OF, now=NOW))
    out["hygiene_alone_s"], _ = timed(lambda: hygiene_summary(
        engine, hygiene, as_of=AS_OF, now=NOW, zone=SETTINGS.zone))
    out["stage_waits_alone_s"], _ = timed(lambda: stage_wait_times(engine, SETTINGS, AS_OF))
    total = out["velocity_and_snapshots_s"] + out["digest_s"]
    out = {k: round(v, 3) for k, v in out.items()}
    out["total_s"] = round(total, 3)
    out["scopes"] = len(report.scopes)
    out["what_ifs"] = len(digest.what_ifs)
    out["open_deals"] = digest.hygiene.open_deals
    out["stalled_deals"] = digest.hygiene.stalled_deals
    out["stage_wait_rows"] = len(digest.waits)
    out["worst_deals"] = len(digest.worst)
    return out, report


def history_rebuild(engine: sa.Engine) -> dict[str, Any]:
    """The 90-day history rebuild of a first run, timed beside the recompute.

    On the first run (no snapshot before today) the daily job rebuilds one
    snapshot per day for the ``window_days`` days before today
    (``metrics.history.fill_history``): this times exactly that call,
    ``rebuild_snapshots(AS_OF - W, AS_OF - 1)``, reading the deals once and
    storing every scope of every day. Its last day is checked against a
    recompute of that day (``compute_velocity``): every scope's levers and
    velocity must be equal.
    """
    from sales_velocity.metrics.history import rebuild_reports, rebuild_snapshots
    from sales_velocity.metrics.velocity import compute_velocity

    window = SETTINGS.window_days
    first, last = AS_OF - dt.timedelta(days=window), AS_OF - dt.timedelta(days=1)
    seconds, result = timed(lambda: rebuild_snapshots(engine, SETTINGS, first, last, now=NOW))
    reports_s, reports = timed(lambda: rebuild_reports(engine, SETTINGS, first, last))
    recomputed = compute_velocity(engine, SETTINGS, last)

    def figures(report: Any) -> list[tuple[Any, ...]]:
        return [(s.scope, s.key, s.levers, s.velocity.value) for s in report.scopes]

    snaps = snapshots_table.c
    with engine.connect() as conn:
        stored = conn.execute(
            sa.select(sa.func.count()).where(snaps.rebuilt, snaps.window_days == window)).scalar()
    return {
        "seconds": round(seconds, 3), "days": len(result.rebuilt), "kept": len(result.kept),
        "reports_only_s": round(reports_s, 3), "snapshot_rows": int(stored or 0),
        "last_day_agrees_with_recompute": figures(reports[-1]) == figures(recomputed),
    }


def drilldown(engine: sa.Engine) -> dict[str, Any]:
    """``velocity deals --format csv`` of the "all" scope, every lever, written to a sink: time and memory.

    The lines stream from the database: the peak RSS over the run minus the RSS
    before it (``rss_growth_mb``) shows that they are not held (flat in N).
    """
    from sales_velocity.metrics.drilldown import deal_lines, drill_down
    from sales_velocity.metrics.drilldown_report import render_deals

    drill = drill_down(SETTINGS, AS_OF)

    def run() -> tuple[int, int]:
        chunks = size = 0
        for chunk in render_deals(drill, deal_lines(engine, SETTINGS, drill), "csv"):
            chunks += 1
            size += len(chunk)
        return chunks - 1, size

    before = Rss.current_mb()
    Rss.reset()
    seconds, (lines, size) = timed(run)
    peak = Rss.peak_mb()
    return {"seconds": round(seconds, 3), "lines": lines, "csv_mb": round(size / 1e6, 1),
            "rss_before_mb": before, "rss_growth_mb": round(max(peak - before, 0.0), 1)}


def forecast(engine: sa.Engine) -> dict[str, Any]:
    """``velocity forecast`` as the command runs it: 30/60/90 days and its 52-week backtest (53 points).

    One streamed pass over the deals (``metrics.forecast_data``), velocity x days
    at every point included. Peak RSS of the phase.
    """
    from sales_velocity.metrics.forecast import compute_forecast

    Rss.reset()
    seconds, result = timed(lambda: compute_forecast(engine, SETTINGS, AS_OF))
    return {
        "seconds": round(seconds, 3),
        "peak_rss_mb": Rss.peak_mb(),
        "as_of_points": len({p.as_of for p in result.backtest}),
        "scored_points": len(result.backtest),
        "method": result.method,
        "wape": {m: None if a.wape is None else float(round(a.wape, 4)) for m, a in result.accuracy.items()},
    }


def forecast_alone(url: str) -> dict[str, Any]:
    """:func:`forecast` on the store at ``url``, opened here: for a fresh process (``_in_child``)."""
    engine = make_engine(url)
    try:
        return forecast(engine)
    finally:
        engine.dispose()


def workdir() -> tempfile.TemporaryDirectory[str]:
    """A scratch directory for the page file and SQLite stores."""
    return tempfile.TemporaryDirectory(prefix="velocity-bench-")
