"""``python -m bench --deals N [--store URL] [--seed S]``: every benchmark, one process, same data.

Parts, in order, on one store: (0) generate N deals to a page file (untimed);
(1) ingest them through the sync engine; (2) re-sync with no change, with 1 %
changed in a full re-pull, and with 1 % changed incrementally; (3) the daily
recompute, (3b) the history rebuild of a first run (``window_days`` snapshots,
beside the recompute) and (3c) ``velocity deals`` of every lever, streamed;
(4) the pandas baseline on the same store, compared to the cent;
(5) HubSpot and Pipedrive end to end against rate-limited fakes (own stores).
Then a memory probe with tracemalloc on a scratch store. Prints a table for
people and, as the last line, one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from bench.generator import build_catalog
from bench.measure import (
    AS_OF,
    SETTINGS,
    Rss,
    drilldown,
    driver_floor,
    forecast_alone,
    history_rebuild,
    ingest_alone,
    interpreter_calibration_us,
    open_store,
    quiet_logs,
    recompute,
    resync,
    timed,
    traced_ingest,
)
from bench.pages import write_pages

T = TypeVar("T")

BUDGETS = {
    "ingest_deals_per_s_min": 50_000,
    "ingest_peak_rss_mb_max": 400,
    "recompute_s_max": 5.0,
    "history_rebuild_s_max": 60.0,
    "forecast_s_max": 30.0,
    "forecast_peak_rss_mb_max": 400,
    "crm_ratio_to_floor_max": 1.2,
    "no_change_requests_max": 3,
    "csv_first_sync_over_read_csv_max": 2.0,
    "csv_resync_1pct_over_read_csv_max": 1.0,
    "csv_peak_rss_mb_max": 400,
}


def _count(minimum: int) -> Callable[[str], int]:
    """An argparse type: a whole number of at least ``minimum``, else a clear usage error."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is less than {minimum}")
        return value

    return parse


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--deals", type=_count(1), default=100_000,
                        help="deals to generate (default 100,000)")
    parser.add_argument("--store", default=None,
                        help="sqlite:///PATH or postgresql+psycopg://... (default: a temporary SQLite file)")
    parser.add_argument("--seed", type=int, default=1, help="generator seed (default 1)")
    parser.add_argument("--page-size", type=_count(1), default=1000,
                        help="deals per fetched page (default 1000)")
    parser.add_argument("--crm-deals", type=_count(0), default=None,
                        help="deals in each fake CRM (default min(N, 20,000)); 0 skips part 5")
    parser.add_argument("--floor-deals", type=_count(0), default=None,
                        help="deals stored by the bare driver for the ingest floor "
                             "(default min(N, 200,000)); 0 skips")
    parser.add_argument("--csv-deals", type=_count(0), default=None,
                        help="deals in the CSV export of part 6 (default N); 0 skips")
    parser.add_argument("--trace-deals", type=_count(0), default=None,
                        help="deals ingested under tracemalloc (default min(N, 100,000)); 0 skips")
    return parser.parse_args(argv)


def _crm(args: argparse.Namespace, work: Path, deals: int) -> dict[str, Any]:
    from bench.fakes import run_hubspot, run_pipedrive

    out: dict[str, Any] = {}
    for name, run in (("hubspot", run_hubspot), ("pipedrive", run_pipedrive)):
        try:
            with open_store(args.store, work, f"crm_{name}") as engine:
                out[name] = run(engine, deals, args.seed)
        except ImportError as exc:
            out[name] = {"measured": False, "reason": f"connector or fake server missing: {exc}"}
    return out


def _in_child(function: Callable[..., T], *args: Any) -> T:
    """Run ``function(*args)`` in a freshly spawned Python process; return its figures.

    A part measured there starts from an empty heap, so its peak memory is its own
    (a forked child would inherit the parent's pages, and ``VmHWM`` with them).
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                             initializer=quiet_logs) as pool:
        return pool.submit(function, *args).result()


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run every part; return the figures."""
    from bench.measure import workdir

    catalog = build_catalog()
    started = time.perf_counter()
    report: dict[str, Any] = {
        "deals": args.deals, "seed": args.seed, "page_size": args.page_size,
        "store": "sqlite (temporary file)" if args.store is None else args.store.split("://", 1)[0],
        "as_of": AS_OF.isoformat(), "timezone": SETTINGS.timezone, "window_days": SETTINGS.window_days,
        "python": platform.python_version(), "cpus": os.cpu_count(),
        "interpreter_calibration_us": interpreter_calibration_us(),
    }
    with workdir() as tmp:
        work = Path(tmp)
        pages = work / "pages.pkl"
        seconds, changed = timed(lambda: write_pages(pages, args.deals, args.seed, args.page_size))
        report["generate_s"] = round(seconds, 2)
        with open_store(args.store, work) as engine:
            # each measured part whose memory counts runs in a child of its own (its peak RSS its own)
            report["ingest"] = _in_child(ingest_alone, engine.url.render_as_string(hide_password=False),
                                         pages, args.deals)
            report["resync_no_change"] = resync(engine, catalog, pages, changed=None, incremental=False)
            report["resync_1pct_full"] = resync(engine, catalog, pages, changed=changed["full"],
                                                incremental=False)
            report["resync_1pct_incremental"] = resync(engine, catalog, pages,
                                                       changed=changed["incremental"], incremental=True)
            report["recompute"], velocity = recompute(engine)
            report["history_rebuild"] = history_rebuild(engine)
            report["drilldown"] = drilldown(engine)
            # in a child of its own, like part 6: its peak RSS is its own, not the earlier parts' heap
            report["forecast"] = _in_child(forecast_alone, engine.url.render_as_string(hide_password=False))
            csv_deals = args.deals if args.csv_deals is None else min(args.csv_deals, args.deals)
            if csv_deals:
                from bench.csv_part import csv_part, write_exports

                source = pages
                if csv_deals < args.deals:
                    source = work / "csv-pages.pkl"
                    changed_csv = write_pages(source, csv_deals, args.seed, args.page_size)
                else:
                    changed_csv = changed
                # in a child of its own: its peak RSS is its own, not the earlier parts' heap
                rows = _in_child(write_exports, work, source, changed_csv["full"])  # untimed
                report["csv"] = _in_child(csv_part, args.store, work, rows)
            from bench.baseline import compare, pandas_velocity

            Rss.reset()
            seconds, baseline = timed(lambda: pandas_velocity(engine, SETTINGS, AS_OF))
            report["baseline"] = {"seconds": round(seconds, 3), "peak_rss_mb": Rss.peak_mb(),
                                  **compare(velocity, baseline)}
        floor_deals = min(args.deals, 200_000) if args.floor_deals is None else args.floor_deals
        if floor_deals:
            report["driver_floor"] = driver_floor(args.store, work, pages, floor_deals)
        crm_deals = min(args.deals, 20_000) if args.crm_deals is None else args.crm_deals
        skipped = {"measured": False, "reason": "skipped with --crm-deals 0"}
        report["crm"] = _crm(args, work, crm_deals) if crm_deals else {
            "hubspot": skipped, "pipedrive": skipped}
        trace = min(args.deals, 100_000) if args.trace_deals is None else args.trace_deals
        if trace:
            report["tracemalloc"] = traced_ingest(args.store, work, catalog, pages, trace)
    report["process_max_rss_mb"] = Rss.maxrss_mb()
    report["total_s"] = round(time.perf_counter() - started, 1)
    report["ratios"] = _ratios(report)
    report["budgets"] = _budgets(report)
    return report


def _ratios(r: dict[str, Any]) -> dict[str, Any]:
    rec, base = r["recompute"], r["baseline"]
    out: dict[str, Any] = {
        "velocity_ours_over_baseline": round(rec["velocity_only_s"] / base["seconds"], 3),
        "recompute_ours_over_baseline": round(rec["total_s"] / base["seconds"], 3),
        "history_rebuild_over_one_velocity": round(
            r["history_rebuild"]["seconds"] / max(rec["velocity_only_s"], 0.001), 2),
    }
    if "driver_floor" in r:
        ingest_us = 1e6 / r["ingest"]["deals_per_s"]
        out["ingest_over_driver_floor"] = round(ingest_us / r["driver_floor"]["us_per_deal"], 2)
    if "csv" in r:
        out.update({f"csv_{k}": v for k, v in r["csv"]["ratios"].items()})
    for name, crm in r["crm"].items():
        if isinstance(crm, dict) and "full" in crm:
            out[f"{name}_sync_over_rate_limit_floor"] = crm["full"]["ratio_to_floor"]
    return out


def _budgets(r: dict[str, Any]) -> dict[str, Any]:
    b: dict[str, Any] = {
        "ingest_deals_per_s": r["ingest"]["deals_per_s"] >= BUDGETS["ingest_deals_per_s_min"],
        "ingest_budget_under_driver_ceiling": None if "driver_floor" not in r else (
            r["driver_floor"]["ceiling_deals_per_s"] >= BUDGETS["ingest_deals_per_s_min"]),
        "ingest_peak_rss": r["ingest"]["peak_rss_mb"] < BUDGETS["ingest_peak_rss_mb_max"],
        "recompute_under_5s": r["recompute"]["total_s"] < BUDGETS["recompute_s_max"],
        "recompute_faster_than_baseline": r["recompute"]["total_s"] < r["baseline"]["seconds"],
        "history_rebuild_90_days_under_60s":
            r["history_rebuild"]["seconds"] < BUDGETS["history_rebuild_s_max"],
        "history_rebuild_agrees_with_recompute": r["history_rebuild"]["last_day_agrees_with_recompute"],
        "forecast_under_30s": r["forecast"]["seconds"] < BUDGETS["forecast_s_max"],
        "forecast_peak_rss": r["forecast"]["peak_rss_mb"] < BUDGETS["forecast_peak_rss_mb_max"],
        "baseline_agrees_to_the_cent": r["baseline"]["agree_to_the_cent"],
    }
    if "csv" in r:
        c = r["csv"]
        b["csv_first_sync_within_2x_read_csv"] = (
            c["ratios"]["first_sync_over_read_csv"] <= BUDGETS["csv_first_sync_over_read_csv_max"])
        b["csv_resync_1pct_within_1x_read_csv"] = (
            c["ratios"]["resync_1pct_over_read_csv"] <= BUDGETS["csv_resync_1pct_over_read_csv_max"])
        b["csv_peak_rss"] = max(c[k]["peak_rss_mb"] for k in ("first_sync", "resync_1pct", "floor")) < (
            BUDGETS["csv_peak_rss_mb_max"])
    for name, crm in r["crm"].items():
        if isinstance(crm, dict) and "full" in crm:
            ratio = crm["full"]["ratio_to_floor"]
            limit = BUDGETS["crm_ratio_to_floor_max"]
            b[f"{name}_within_1.2x_floor"] = None if ratio is None else ratio <= limit
            requests = crm["no_change"]["requests"]
            b[f"{name}_no_change_requests"] = requests <= BUDGETS["no_change_requests_max"]
        else:
            b[f"{name}_within_1.2x_floor"] = None
    b["note"] = "budgets are set for N=1,000,000 on SQLite; None = not measurable at this size"
    return b


def _forecast_row(f: dict[str, Any]) -> str:
    return (f"{f['seconds']:.2f} s, peak RSS {f['peak_rss_mb']} MB ({f['as_of_points']} as-of points, "
            f"{f['scored_points']} scored; method {f['method']})")


def _table(r: dict[str, Any]) -> str:
    ing, rec, base, hist = r["ingest"], r["recompute"], r["baseline"], r["history_rebuild"]
    rows = [
        ("deals / store / seed", f"{r['deals']:,} / {r['store']} / {r['seed']}"),
        ("machine", f"{r['cpus']} CPUs, Python {r['python']}, sum(range(1000)) in "
                    f"{r['interpreter_calibration_us']} us"),
        ("generate (untimed prep)", f"{r['generate_s']:.1f} s"),
        ("1. ingest", f"{ing['seconds']:.2f} s = {ing['deals_per_s']:,} deals/s, "
                      f"peak RSS {ing['peak_rss_mb']} MB"),
    ]
    if "driver_floor" in r:
        f = r["driver_floor"]
        rows.append(("   bulk floor", f"{f['us_per_deal']} us/deal = at most {f['ceiling_deals_per_s']:,} "
                                     f"deals/s (ready Arrow batches of {f['deals']:,} deals into staging); "
                                       f"ingest is {r['ratios']['ingest_over_driver_floor']}x the floor"))
    for key, label in (("resync_no_change", "2. re-sync, no change (full)"),
                       ("resync_1pct_full", "2. re-sync, 1 % changed (full)"),
                       ("resync_1pct_incremental", "2. re-sync, 1 % changed (incr.)")):
        s = r[key]
        rows.append((label, f"{s['seconds']:.2f} s (seen {s['seen']:,}, updated {s['updated']:,})"))
    rows += [
        ("3. recompute (total)", f"{rec['total_s']:.2f} s: metrics job (velocity+snapshots) "
                                 f"{rec['velocity_and_snapshots_s']}, digest {rec['digest_s']}"),
        ("   alone, for the record", f"hygiene {rec['hygiene_alone_s']} s, "
                                    f"stage waits {rec['stage_waits_alone_s']} s"),
        ("   velocity only", f"{rec['velocity_only_s']:.2f} s ({rec['scopes']} scopes)"),
        ("3b. history rebuild", f"{hist['seconds']:.2f} s for {hist['days']} days x {rec['scopes']} scopes "
                                f"({hist['snapshot_rows']:,} snapshot rows; {hist['reports_only_s']:.2f} s "
                                f"without storing) = {r['ratios']['history_rebuild_over_one_velocity']}x "
                                f"one velocity; last day agrees with a recompute: "
                                f"{hist['last_day_agrees_with_recompute']}"),
        ("3c. deals behind the levers", f"{r['drilldown']['seconds']:.2f} s for {r['drilldown']['lines']:,} "
                                        f"CSV lines ({r['drilldown']['csv_mb']} MB), RSS grew "
                                        f"{r['drilldown']['rss_growth_mb']} MB (streamed)"),
        ("3d. forecast + backtest", _forecast_row(r["forecast"])),
        ("4. pandas baseline", f"{base['seconds']:.2f} s, peak RSS {base['peak_rss_mb']} MB, "
                               f"agrees to the cent: {base['agree_to_the_cent']}"),
        ("   ours / baseline", f"velocity {r['ratios']['velocity_ours_over_baseline']}, "
                              f"recompute {r['ratios']['recompute_ours_over_baseline']}"),
    ]
    if "csv" in r:
        c = r["csv"]
        rows.append((f"6. CSV export ({c['rows']:,} rows, {c['file_mb']} MB)",
                     f"pandas.read_csv {c['pandas_read_csv']['seconds']} s; first sync "
                     f"{c['first_sync']['seconds']} s ({c['ratios']['first_sync_over_read_csv']}x), "
                     f"1 % re-sync "
                     f"{c['resync_1pct']['seconds']} s ({c['ratios']['resync_1pct_over_read_csv']}x), "
                     f"bulk floor {c['floor']['seconds']} s ({c['ratios']['floor_over_read_csv']}x); "
                     f"peak RSS "
                     f"{c['first_sync']['peak_rss_mb']} / {c['resync_1pct']['peak_rss_mb']} MB"))
    for name, crm in r["crm"].items():
        if not isinstance(crm, dict) or "full" not in crm:
            reason = crm.get("reason") if isinstance(crm, dict) else crm
            rows.append((f"5. {name}", f"not measured: {reason}"))
            continue
        full, quiet = crm["full"], crm["no_change"]
        rows.append((f"5. {name} ({crm['deals']:,} deals)",
                     f"{full['wall_s']} s for {full['requests']} requests, floor {full['floor_s']} s, "
                     f"ratio {full['ratio_to_floor']}; no-change re-sync {quiet['requests']} requests"))
    if "tracemalloc" in r:
        t = r["tracemalloc"]
        rows.append(("memory probe",
                     f"tracemalloc peak {t['tracemalloc_peak_mb']} MB over {t['deals']:,} deals"))
    rows.append(("budgets", ", ".join(f"{k}={v}" for k, v in r["budgets"].items() if k != "note")))
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"{label.ljust(width)}  {value}" for label, value in rows)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print the table, then the JSON line."""
    args = _parse(argv)
    quiet_logs()
    report = run(args)
    print(_table(report))
    sys.stdout.flush()
    print(json.dumps(report, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
