"""The set-based, columnar ingest: batches, the staging path, and the CSV feed's columnar reader.

The columnar path must store exactly what the row path stores: every test here
syncs the same input both ways (a CSV connector without ``batches`` reads row by
row) and compares the stored rows, or checks values computed in the test.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import sqlalchemy as sa

from sales_velocity.connectors.base import (
    Checkpoint,
    ClockedConnector,
    ColumnarConnector,
    Connector,
    Deal,
    SizedConnector,
    SourceSettings,
    StageVisit,
    StreamItem,
)
from sales_velocity.connectors.csv_feed import CsvFeedConnector, CsvFeedSettings
from sales_velocity.sync.batch import deals_to_batch, finish_batch, returning_memory_pool
from sales_velocity.sync.engine import sync_source
from sales_velocity.sync.store import deals_table, stage_events_table, sync_rejects_table

CSV_DIR = Path(__file__).parents[1] / "fixtures" / "csv"
NOW = dt.datetime(2026, 11, 26, 6, 0, tzinfo=dt.UTC)
T0 = dt.datetime(2026, 1, 5, 10, 0, tzinfo=dt.UTC)


class RowPathFeed:
    """A CSV feed offering only ``deals`` (no ``batches``): the engine reads it row by row."""

    def __init__(self, inner: CsvFeedConnector) -> None:
        self.inner = inner
        self.name, self.kind, self.settings = inner.name, inner.kind, inner.settings

    def pipelines(self) -> Any:  # noqa: D102
        return self.inner.pipelines()

    def owners(self) -> Any:  # noqa: D102
        return self.inner.owners()

    def deals(self, since: str | None) -> Iterator[StreamItem]:  # noqa: D102
        return self.inner.deals(since)

    def check(self) -> str:  # noqa: D102
        return self.inner.check()

    def provided_fields(self) -> frozenset[str] | None:  # noqa: D102
        return self.inner.provided_fields()


def feed(path: Path, name: str, **options: Any) -> CsvFeedConnector:
    """A CSV feed of ``path`` named ``name``."""
    return CsvFeedConnector(CsvFeedSettings(name=name, kind="csv", path=path, **options))


def stored(store: sa.Engine, source: str) -> tuple[dict[str, Any], list[Any], list[Any]]:
    """Deals (without the source), stage events and rejects of one source."""
    d, e, r = deals_table, stage_events_table, sync_rejects_table
    with store.connect() as conn:
        skip = ("source", "content_hash")
        deals = {row.external_id: {k: v for k, v in row._mapping.items() if k not in skip}
                 for row in conn.execute(sa.select(d).where(d.c.source == source))}
        for row in deals.values():
            if row["raw"] is not None:
                row["raw"] = dict(row["raw"])
        events = sorted(conn.execute(sa.select(e.c.external_id, e.c.stage_id, e.c.entered_at, e.c.observed)
                                     .where(e.c.source == source)).all())
        rejects = conn.execute(sa.select(r.c.location, r.c.reason, r.c.external_id)
                               .where(r.c.source == source).order_by(r.c.id)).all()
    return deals, list(events), list(rejects)


def both_ways(store: sa.Engine, path: Path, **options: Any) -> tuple[Any, Any]:
    """Sync ``path`` row by row (source ``rows``) and by column (``cols``); return what each stored."""
    row = sync_source(store, RowPathFeed(feed(path, "rows", **options)), now=lambda: NOW)
    col = sync_source(store, feed(path, "cols", **options), now=lambda: NOW)
    assert (row.status, row.inserted, row.rejected) == (col.status, col.inserted, col.rejected)
    return stored(store, "rows"), stored(store, "cols")


class TestCsvColumnarPath:
    @pytest.mark.parametrize("name", ["seed_example.csv", "maven_sales_pipeline.csv", "bad_rows.csv"])
    def test_stores_what_the_row_path_stores(self, store: sa.Engine, name: str) -> None:
        """Deals, stage events and rejects (lines and reasons) are the same on both paths."""
        options: dict[str, Any] = {}
        if name.startswith("maven"):
            from tests.connectors.test_csv_feed import MAVEN_COLUMNS
            options["columns"] = MAVEN_COLUMNS
        rows, cols = both_ways(store, CSV_DIR / name, **options)
        assert rows[0], "the fixture loads deals"
        assert rows == cols

    def test_multi_line_cells_history_zones_and_rejects(self, store: sa.Engine, tmp_path: Path) -> None:
        """Quoted line breaks, histories, local times, offsets and bad cells come out alike."""
        path = tmp_path / "deals.csv"
        path.write_text(
            "id,title,amount,currency,stage,status,created_at,closed_at,expected_close_date,stage_history\r\n"
            'A-1,"two\nlines",1200.50,eur,Won,won,2026-03-29 02:30,2026-10-25 02:30,2026-11-01,'
            '"Qualified@2026-01-05T10:00; Won@2026-10-25T02:30:00+02:00"\r\n'
            "A-2,plain,-5,,Open,open,2026-01-05,,,\r\n"
            "\r\n"
            'A-3,"quote ""x""",$12.50,,Open,open,2026-01-05T10:00:00Z,,,;;Open@2026-01-06;\r\n'
            "A-4,short\r\n"
            "A-5,bad,12x,,Open,open,2026-02-30,,,\r\n"
            "A-2,dup,1,,Open,open,,,,\r\n"
            "A-6,tab\tcell,1.234,,Open,open,,,,\r\n",
            encoding="utf-8", newline="")
        rows, cols = both_ways(store, path, timezone="Europe/Oslo")
        assert rows == cols
        lines = [r[0] for r in cols[2]]
        assert lines == ["line 7", "line 8", "line 9", "line 10"]  # A-1 spans lines 2-3, line 5 is blank

    def test_blank_rows_and_rows_without_an_id_are_read_alike(self, store: sa.Engine, tmp_path: Path) -> None:
        """Blank and whitespace-only rows are skipped, a row with a blank id is rejected, on both paths."""
        path = tmp_path / "deals.csv"
        path.write_text("id,title,amount,stage,owner\n"
                        "B-1,one,10,Open,Kari\n"
                        ",,,,\n"
                        " , ,\t, , \n"
                        ",no id,5,Open,Ola\n"
                        "  ,,,,Per\n"
                        "B-2,two,20,Open,Kari\n",
                        encoding="utf-8", newline="")
        rows, cols = both_ways(store, path)
        assert rows == cols
        assert sorted(cols[0]) == ["B-1", "B-2"]
        assert [r[0] for r in cols[2]] == ["line 5", "line 6"]  # lines 3 and 4 are blank
        connector = feed(path, "scan")
        assert connector.check().startswith(f"{path.name}: 4 rows")  # the blank rows are not counted
        assert sorted(o.external_id for o in connector.owners()) == ["Kari", "Ola", "Per"]

    def test_resync_of_an_unchanged_file_writes_nothing(self, store: sa.Engine, tmp_path: Path) -> None:
        """A full re-read of the same rows finds every deal unchanged."""
        path = CSV_DIR / "seed_example.csv"
        first = sync_source(store, feed(path, "cols"), now=lambda: NOW)
        again = sync_source(store, feed(path, "cols"), full=True, now=lambda: NOW)
        assert (first.inserted, again.unchanged, again.updated, again.inserted) == (150, 150, 0, 0)


class BatchConnector:
    """Yields one Arrow batch built from deals, then a complete checkpoint."""

    name, kind = "arrow", "arrow"

    def __init__(self, deals: list[Deal]) -> None:
        self.items = deals
        self.settings = SourceSettings(name="arrow", kind="arrow")

    def pipelines(self) -> list[Any]:  # noqa: D102
        return []

    def owners(self) -> list[Any]:  # noqa: D102
        return []

    def deals(self, since: str | None) -> Iterator[StreamItem | pa.Table]:  # noqa: D102
        yield deals_to_batch(self.items)
        yield Checkpoint("c1", complete=True)

    def check(self) -> str:  # noqa: D102
        return "arrow"


def deal(key: str, **fields: Any) -> Deal:
    """A deal of the ``arrow`` source in stage s1, created at T0."""
    return Deal(source="arrow", external_id=key, stage="s1", created_at=T0, **fields)


class ColumnarOnly(BatchConnector):
    """Records from ``deals``, other deals as one Arrow table from ``batches``: which one is pulled shows."""

    def deals(self, since: str | None) -> Iterator[StreamItem | pa.Table]:  # noqa: D102
        yield deal("from-deals")
        yield Checkpoint("c1", complete=True)

    def batches(self, since: str | None) -> Iterator[StreamItem | pa.Table]:  # noqa: D102
        yield deals_to_batch(self.items)
        yield Checkpoint("c1", complete=True)


class TestCapabilities:
    def test_the_csv_feed_declares_its_optional_capabilities(self) -> None:
        """The feed is a Connector and columnar, clocked and sized; a plain connector is none of those."""
        csv = feed(CSV_DIR / "seed_example.csv", "cols")
        plain = BatchConnector([])
        capabilities = (ColumnarConnector, ClockedConnector, SizedConnector)
        assert isinstance(csv, Connector)
        assert isinstance(plain, Connector)
        assert [isinstance(csv, c) for c in capabilities] == [True, True, True]
        assert [isinstance(plain, c) for c in capabilities] == [False, False, False]

    def test_the_engine_pulls_through_batches_where_offered(self, store: sa.Engine) -> None:
        """A connector with ``batches`` is pulled through it, not through ``deals``."""
        result = sync_source(store, ColumnarOnly([deal("from-batches")]), now=lambda: NOW)
        assert (result.status, result.inserted) == ("ok", 1)
        assert list(stored(store, "arrow")[0]) == ["from-batches"]


class TestBatches:
    def test_a_connector_may_yield_arrow_batches(self, store: sa.Engine) -> None:
        """Batches are stored like records: deals, amounts, the first-sight stage event."""
        result = sync_source(store, BatchConnector([deal("1", amount=Decimal("10.5")), deal("2")]),
                             now=lambda: NOW)
        assert (result.status, result.inserted) == ("ok", 2)
        deals, events, _ = stored(store, "arrow")
        assert deals["1"]["amount"] == Decimal("10.5")
        assert events == [("1", "s1", T0, True), ("2", "s1", T0, True)]

    def test_hash_covers_fields_and_history(self) -> None:
        """Equal deals hash alike; a changed field or history visit changes the hash."""
        base = deal("1", amount=Decimal("1"))
        history = deal("1", amount=Decimal("1"), stage_history=(StageVisit("s1", T0),))
        table = finish_batch(deals_to_batch([base, base, deal("1", amount=Decimal("2")), history]))
        hashes = table["content_hash"].to_pylist()
        assert hashes[0] == hashes[1]
        assert len({hashes[0], hashes[2], hashes[3]}) == 3

    def test_amount_units_round_half_to_even_and_stage_time_from_history(self) -> None:
        """Units of 1/10,000 round half to even; the current stage's CRM time is its latest visit."""
        later = T0 + dt.timedelta(days=3)
        visits = (StageVisit("s1", T0), StageVisit("s2", T0), StageVisit("s1", later))
        table = finish_batch(deals_to_batch([
            deal("1", amount=Decimal("0.00005"), stage_history=visits),
            deal("2", amount=Decimal("0.00015")),
        ]))
        assert table["amount"].to_pylist() == [0, 2]
        assert table["stage_crm_at"].to_pylist() == [later, None]


class TestMemoryPool:
    def test_buffers_come_from_jemalloc_where_it_is_built(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """With no pool chosen in the environment, Arrow allocates from jemalloc (it returns memory)."""
        monkeypatch.delenv("ARROW_DEFAULT_MEMORY_POOL", raising=False)
        try:
            pa.jemalloc_memory_pool()
        except NotImplementedError:
            pytest.skip("this pyarrow build has no jemalloc")
        assert returning_memory_pool() == "jemalloc"

    def test_a_pool_chosen_in_the_environment_is_kept(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """ARROW_DEFAULT_MEMORY_POOL is the user's choice: the pool stays as it is."""
        before = pa.default_memory_pool()
        pa.set_memory_pool(pa.system_memory_pool())
        monkeypatch.setenv("ARROW_DEFAULT_MEMORY_POOL", "system")
        try:
            assert returning_memory_pool() == "system"
        finally:
            pa.set_memory_pool(before)
