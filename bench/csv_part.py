"""Part 6: a canonical CSV export through the CSV feed, against ``pandas.read_csv`` of the same file.

The N generated deals are written (untimed) as the CSV feed's canonical columns,
the way ``velocity export`` writes them (ISO 8601 times with offsets, amounts as
plain decimals, ``Stage@time; Stage@time`` histories); a second file has 1 % of
the deals changed. In the same process and run:

* ``pandas.read_csv`` of the first file (the yardstick: only reading it);
* the first sync of the file into an empty store (``sync_source`` with the real
  ``CsvFeedConnector``: read, parse, validate, write, stage events, catalog);
* a re-sync after the file was replaced by the 1 %-changed one;
* the bulk path's floor: the same deals as ready Arrow batches (built untimed by
  the columnar reader), timed only while they are loaded into the staging table.

Each with its peak RSS (``VmHWM`` reset per phase).
"""

from __future__ import annotations

import csv
import datetime as dt
import shutil
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from bench.generator import NOW, DealRow
from bench.pages import read_pages

__all__ = ["COLUMNS", "csv_part", "write_csv"]

COLUMNS = ("id", "title", "amount", "currency", "pipeline", "stage", "status", "owner", "created_at",
           "closed_at", "expected_close_date", "stage_entered_at", "next_step", "next_activity_at",
           "last_activity_at", "stage_history")


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    return str(value)


def write_csv(path: Path, pages: Iterable[list[DealRow]],
              replace: Mapping[str, DealRow] | None = None) -> int:
    """Write the deals of ``pages`` as a canonical CSV export; return the number of rows."""
    replace = replace or {}
    rows = 0
    with path.open("w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out, lineterminator="\r\n")
        writer.writerow(COLUMNS)
        for page in pages:
            for row in page:
                row = replace.get(row[1], row)
                history = "; ".join(f"{stage}@{at.isoformat()}" for stage, at in row[20])
                writer.writerow((row[1], row[2], _cell(row[3]), _cell(row[4]), row[5], row[6], row[7],
                                 _cell(row[9]), _cell(row[10]), _cell(row[11]), _cell(row[12]),
                                 _cell(row[13]), _cell(row[14]).strip(), _cell(row[15]), _cell(row[16]),
                                 history))
                rows += 1
    return rows


def _connector(path: Path) -> Any:
    from sales_velocity.connectors.csv_feed import CsvFeedConnector
    from sales_velocity.connectors.csv_feed.settings import CsvFeedSettings

    return CsvFeedConnector(CsvFeedSettings(name="export", kind="csv", path=path, currency="EUR"))


def _floor(engine: sa.Engine, path: Path) -> dict[str, Any]:
    """Ready Arrow batches (built untimed) loaded into the staging table: the bulk path's floor."""
    from sales_velocity.sync.batch import finish_batch, is_batch
    from sales_velocity.sync.staging import Stager

    connector = _connector(path)
    seconds = 0.0
    rows = 0
    with engine.connect() as conn:
        stager = Stager(conn, "floor", None)
        stager.create()
        for item in connector.batches(None):
            if not is_batch(item):
                continue
            table = finish_batch(item)
            started = time.perf_counter()
            stager._clear()
            stager._load(table)
            conn.commit()
            seconds += time.perf_counter() - started
            rows += len(table)
        stager.drop()
        conn.commit()
    return {"seconds": round(seconds, 3), "rows": rows}


def write_exports(workdir: Path, pages_file: Path, changed: list[DealRow]) -> int:
    """Part 6's two files (untimed): the export, and a copy with ``changed`` rows; the rows written."""
    count = write_csv(workdir / "export.csv", read_pages(pages_file))
    write_csv(workdir / "export-1pct.csv", read_pages(pages_file), {row[1]: row for row in changed})
    return count


def csv_part(url: str | None, workdir: Path, count: int) -> dict[str, Any]:
    """Run part 6 on the files of :func:`write_exports`; return its figures (seconds, ratios, peak RSS).

    pandas is imported only for ``read_csv``, after the syncs (the sync does not need it).
    """
    from bench.measure import Rss, open_store, timed
    from sales_velocity.sync.engine import sync_source

    first = workdir / "export.csv"
    second = workdir / "export-1pct.csv"
    out: dict[str, Any] = {"rows": count, "file_mb": round(first.stat().st_size / 1e6, 1)}
    live = workdir / "live.csv"
    shutil.copyfile(first, live)
    with open_store(url, workdir, "csv") as engine:
        Rss.reset()
        seconds, result = timed(lambda: sync_source(engine, _connector(live), now=lambda: NOW))
        if result.status != "ok" or result.inserted != count:
            raise RuntimeError(f"CSV first sync failed: {result}")
        out["first_sync"] = {"seconds": round(seconds, 3), "peak_rss_mb": Rss.peak_mb(),
                             "inserted": result.inserted, "rejected": result.rejected}
        shutil.copyfile(second, live)
        Rss.reset()
        seconds, result = timed(lambda: sync_source(engine, _connector(live), now=lambda: NOW))
        if result.status != "ok":
            raise RuntimeError(f"CSV re-sync failed: {result}")
        out["resync_1pct"] = {"seconds": round(seconds, 3), "peak_rss_mb": Rss.peak_mb(),
                              "updated": result.updated, "unchanged": result.unchanged}
        Rss.reset()
        out["floor"] = {**_floor(engine, first), "peak_rss_mb": Rss.peak_mb()}
    import pandas as pd  # type: ignore[import-untyped]

    Rss.reset()  # last: pandas' heap must not count in the sync's peaks
    seconds, frame = timed(lambda: pd.read_csv(first))
    out["pandas_read_csv"] = {"seconds": round(seconds, 3), "peak_rss_mb": Rss.peak_mb(), "rows": len(frame)}
    del frame
    base = out["pandas_read_csv"]["seconds"]
    out["ratios"] = {
        "first_sync_over_read_csv": round(out["first_sync"]["seconds"] / base, 2),
        "resync_1pct_over_read_csv": round(out["resync_1pct"]["seconds"] / base, 2),
        "floor_over_read_csv": round(out["floor"]["seconds"] / base, 2),
    }
    return out
