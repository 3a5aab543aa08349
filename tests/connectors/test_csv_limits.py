"""The CSV feed's limits (issue 14, item 11): row and header size, columns, file size, file kind, quoting.

A path may point at anything: a device that never ends, a FIFO nobody writes, a
file of secrets. Each is refused with a clear error before it costs memory or
time, and no error message quotes the file's content unless it is a header.
"""

from __future__ import annotations

import datetime as dt
import os
import threading
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from structlog.testing import capture_logs

from sales_velocity.connectors.base import Checkpoint, Deal, Rejected
from sales_velocity.connectors.csv_feed import CsvFeedConnector, CsvFeedError, format_rejects
from sales_velocity.sync.engine import sync_source
from sales_velocity.sync.store import deals_table
from tests.connectors.test_csv_feed import assert_golden, feed

HEADER = "id,title,amount,stage,owner\n"
T0 = dt.datetime(2026, 11, 26, 9, 0, tzinfo=dt.UTC)
SECRET = "root:$6$Zq1s3cr3tSalt$N0tAR3alHashButSecretAnyway:19700:0:99999:7:::"


def good_rows(n: int = 5) -> str:
    """``n`` readable rows."""
    return "".join(f"{i},Deal {i},{i}00,Qualified,Kari\n" for i in range(1, n + 1))


def pull(connector: CsvFeedConnector) -> tuple[list[Deal], list[Rejected]]:
    """Read the whole stream: the deals and the rejects."""
    items = list(connector.deals(None))
    return ([i for i in items if isinstance(i, Deal)], [i for i in items if isinstance(i, Rejected)])


def first_error(connector: CsvFeedConnector, call: str = "deals") -> str:
    """The message of the ``CsvFeedError`` the first read raises."""
    action = (lambda: next(connector.deals(None))) if call == "deals" else getattr(connector, call)
    with pytest.raises(CsvFeedError) as caught:
        action()
    return str(caught.value)


class TestRowLimits:
    def test_a_million_column_row_is_rejected_not_kept(self, tmp_path: Path) -> None:
        """A row of 1,000,000 fields is rejected with its line and reason; the header's rows load."""
        path = tmp_path / "wide.csv"
        path.write_text(HEADER + good_rows(3) + "4,Wide,400,Qualified,Kari" + ",x" * 1_000_000 + "\n"
                        + "5,Deal 5,500,Qualified,Kari\n", encoding="utf-8")
        deals, rejects = pull(feed(path))
        assert [d.external_id for d in deals] == ["1", "2", "3", "5"]
        assert [(r.where, r.reason) for r in rejects] == [
            ("line 5", "has 1,000,005 fields, more than max_columns = 1,000")]
        assert all(len(d.raw or {}) == 5 for d in deals)

    def test_a_row_past_the_length_cap_is_rejected(self, tmp_path: Path) -> None:
        """Cells under the CSV field limit that add up to more than max_row_kib reject their row."""
        cell = "y" * 100_000  # the row's other cells: "9", "100", "Qualified" (13 characters)
        path = tmp_path / "long.csv"
        path.write_text(HEADER + f"9,{cell},100,Qualified,{cell}\n" + good_rows(2), encoding="utf-8")
        deals, rejects = pull(feed(path, max_row_kib=150))
        assert [d.external_id for d in deals] == ["1", "2"]
        assert [(r.where, r.reason) for r in rejects] == [
            ("line 2", f"is longer than max_row_kib = 150 ({13 + 2 * len(cell):,} characters)")]

    def test_a_header_of_a_million_columns_is_refused(self, tmp_path: Path) -> None:
        """Every row's raw would hold a million keys: the file is refused at its header."""
        path = tmp_path / "wide_header.csv"
        path.write_text("id,stage" + "".join(f",c{n}" for n in range(1_000_000)) + "\n1,Demo\n",
                        encoding="utf-8")
        assert first_error(feed(path, max_row_kib=16 * 1024)) == (
            f"{path}: the header has 1,000,002 columns, more than max_columns = 1,000")

    def test_a_first_line_without_end_is_not_read_whole(self, tmp_path: Path) -> None:
        """A 3 MiB first line with no newline: refused after max_row_kib, never read into one string."""
        path = tmp_path / "blob.csv"
        path.write_bytes(b"a" * (3 * 1024 * 1024))
        assert first_error(feed(path)) == (
            f"{path}: the first line is longer than max_row_kib = 1024 (1,048,576 characters): "
            "not a CSV header line")


class TestFiles:
    def test_dev_zero_is_refused_at_once(self) -> None:
        """``path = "/dev/zero"``: not a regular file, for the pull, the catalog and the row estimate."""
        connector = feed("/dev/zero")
        message = "/dev/zero: is not a regular file (a device, FIFO or socket); the CSV feed reads files only"
        assert first_error(connector) == message
        assert first_error(connector, "pipelines") == message
        assert connector.expected_deals() is None
        with pytest.raises(CsvFeedError, match="not a regular file"):
            next(connector.deals("some-cursor"))

    def test_a_fifo_is_refused_without_waiting_for_a_writer(self, tmp_path: Path) -> None:
        """A FIFO would block open() until someone writes; it is refused at once."""
        fifo = tmp_path / "deals.csv"
        os.mkfifo(fifo)
        outcome: list[str] = []
        reader = threading.Thread(target=lambda: outcome.append(first_error(feed(fifo))), daemon=True)
        reader.start()
        reader.join(timeout=5)
        if reader.is_alive():  # unblock the reader so the test ends, then fail
            with fifo.open("wb"):
                pass
            pytest.fail("opening the FIFO blocked")
        assert outcome == [f"{fifo}: is not a regular file (a device, FIFO or socket); "
                           "the CSV feed reads files only"]

    def test_a_file_over_max_file_mib_is_refused(self, tmp_path: Path) -> None:
        """The file size is checked before reading; the message says how to raise the cap."""
        path = tmp_path / "big.csv"
        path.write_text(HEADER + good_rows(400), encoding="utf-8")
        size = path.stat().st_size
        assert first_error(feed(path, max_file_mib=0.01)) == (
            f"{path}: is larger than max_file_mib = 0.01 (10,485 bytes; it is {size:,} bytes); "
            "raise max_file_mib to read it")
        deals, _ = pull(feed(path, max_file_mib=1))
        assert len(deals) == 400


class TestQuoting:
    @pytest.mark.parametrize("content", [
        SECRET + "\n" + SECRET + "\n",  # /etc/shadow-like: no delimiter, one long column
        "DB_PASSWORD=hunter2-very-secret\nAPI_KEY=abc\n",  # a .env file: one short column
        "x" * 70 + ",second\n1,2\n",  # two columns, one too long to be a column name
    ], ids=["shadow", "env", "long-name"])
    def test_errors_never_quote_a_first_line_that_is_not_a_header(
            self, tmp_path: Path, content: str) -> None:
        """A path pointing at a non-CSV file: the error says so without a character of its content."""
        path = tmp_path / "not-a-csv"
        path.write_text(content, encoding="utf-8")
        message = first_error(feed(path)).replace(str(path), "<path>")
        for secret in ("root", "s3cr3t", "hunter2", "DB_PASSWORD", "xxxxxxxx", "second"):
            assert secret not in message
        assert message.startswith("<path>: missing column")
        assert "the first line does not look like a header of column names" in message

    def test_a_real_header_is_still_listed(self, tmp_path: Path) -> None:
        """A CSV header (short names, two or more) is quoted to help map columns."""
        path = tmp_path / "deals.csv"
        path.write_text("Deal ID,Deal Name,Value\n1,A,100\n", encoding="utf-8")
        assert first_error(feed(path)).endswith(
            'missing columns id, stage or status; the file\'s headers are: "Deal ID", "Deal Name", "Value"')


def test_limit_messages_golden(tmp_path: Path) -> None:
    """The rejects and errors people read for the limits, as one golden file."""
    path = tmp_path / "mixed.csv"
    path.write_text(HEADER + good_rows(2) + "3,Wide,1,Qualified,Kari" + ",x" * 2000 + "\n"
                    + f"4,{'z' * 3000},1,Qualified,Kari\n", encoding="utf-8")
    _, rejects = pull(feed(path, max_row_kib=2))
    shadow = tmp_path / "shadow"
    shadow.write_text(SECRET + "\n", encoding="utf-8")
    lines = [format_rejects(rejects),
             first_error(feed("/dev/zero")),
             first_error(feed(shadow)).replace(str(tmp_path), "<tmp>"),
             first_error(feed(path, max_file_mib=0.0001)).replace(str(tmp_path), "<tmp>")]
    assert_golden("csv_limits.txt", "\n".join(lines) + "\n")


def test_a_wide_row_does_not_stop_the_sync(store: sa.Engine, tmp_path: Path) -> None:
    """Through the engine, on both stores: the wide row is a reject, the others are stored with small raws."""
    path = tmp_path / "deals.csv"
    path.write_text(HEADER + good_rows(3) + "9,Wide,1,Qualified,Kari" + ",x" * 200_000 + "\n",
                    encoding="utf-8")
    result = sync_source(store, feed(path), now=lambda: T0)
    assert result.status == "ok"
    assert result.rejected == 1
    with store.connect() as conn:
        raws: list[Any] = [r.raw for r in conn.execute(sa.select(deals_table.c.raw))]
    assert len(raws) == 3
    assert all(len(raw) == 5 for raw in raws)




def by_column(connector: CsvFeedConnector) -> tuple[list[str], list[tuple[str, str]], Checkpoint]:
    """The columnar stream (``batches``) as ids read, rejects (where, reason) and its checkpoint."""
    ids: list[str] = []
    rejects: list[tuple[str, str]] = []
    checkpoint: Checkpoint | None = None
    for item in connector.batches(None):
        if isinstance(item, Checkpoint):
            checkpoint = item
        elif isinstance(item, Rejected):
            rejects.append((item.where, item.reason))
        elif isinstance(item, Deal):
            ids.append(item.external_id)
        else:
            ids.extend(item.column("external_id").to_pylist())
    assert checkpoint is not None
    return ids, rejects, checkpoint


def by_row(connector: CsvFeedConnector) -> tuple[list[str], list[tuple[str, str]], Checkpoint]:
    """The row path's stream (``deals``), shaped like :func:`by_column`."""
    items = list(connector.deals(None))
    assert isinstance(items[-1], Checkpoint)
    return ([i.external_id for i in items if isinstance(i, Deal)],
            [(i.where, i.reason) for i in items if isinstance(i, Rejected)], items[-1])


def quoted_rows(first: int, n: int) -> str:
    """``n`` rows from id ``first`` whose titles hold a quoted line break (each row spans two lines)."""
    return "".join(f'{i},"Deal {i}\nsecond line",{i}00,Qualified,Kari\n' for i in range(first, first + n))


class TestRecordsTooLongForColumns:
    """Arrow holds a record in at most two of its 1 MiB blocks; past that the rest is read row by row."""

    def test_a_huge_cell_early_is_read_on_row_by_row(self, tmp_path: Path) -> None:
        """A 3 MB cell on line 3: the row is rejected with the row path's reason, the rows around it kept."""
        path = tmp_path / "huge.csv"
        path.write_text(HEADER + good_rows(1) + f"2,{'x' * 3_000_000},200,Qualified,Kari\n"
                        + "3,Deal 3,300,Qualified,Kari\n", encoding="utf-8")
        ids, rejects, checkpoint = by_column(feed(path))
        assert ids == ["1", "3"]
        assert rejects == [("line 3", "is longer than max_row_kib = 1024 "
                                      "(a field of more than 1,048,576 characters)")]
        assert (ids, rejects, checkpoint) == by_row(feed(path))

    def test_a_quote_left_open_after_blocks_of_rows(self, tmp_path: Path) -> None:
        """An unclosed quote after 2.5 MB of two-line rows: every line and reason as on the row path."""
        after = "".join(f"{i},Deal {i},1,Qualified,Kari\n" for i in range(70_000, 170_000))
        body = quoted_rows(1, 60_000) + '60001,"never closed,100,Qualified,Kari\n' + after
        path = tmp_path / "open_quote.csv"
        path.write_text(HEADER + body, encoding="utf-8")
        assert path.stat().st_size > 5 << 20
        with capture_logs() as logs:
            ids, rejects, checkpoint = by_column(feed(path))
        assert ids[:60_000] == [str(i) for i in range(1, 60_001)]
        assert rejects[0] == ("line 120002", "is longer than max_row_kib = 1024 "
                                             "(a field of more than 1,048,576 characters)")
        assert (ids, rejects, checkpoint) == by_row(feed(path))
        assert [e["line"] for e in logs if e["event"] == "csv_feed.long_record"] != []

    def test_the_catalog_scan_reads_such_a_file_row_by_row(self, tmp_path: Path) -> None:
        """The catalog of a file with a record Arrow cannot hold is the row path's."""
        path = tmp_path / "catalog.csv"
        path.write_text(HEADER + good_rows(2) + f"3,{'x' * 3_000_000},300,Won,Ola\n"
                        + "4,Deal 4,400,Lost,Per\n", encoding="utf-8")
        pipelines = feed(path).pipelines()
        assert [[s.name for s in p.stages] for p in pipelines] == [["Qualified", "Lost"]]
        assert sorted(o.external_id for o in feed(path).owners()) == ["Kari", "Per"]

    def test_a_sync_of_such_a_file_keeps_the_good_rows(self, store: sa.Engine, tmp_path: Path) -> None:
        """Through the engine: the good rows stored, the long one rejected, the run ok."""
        path = tmp_path / "sync.csv"
        path.write_text(HEADER + quoted_rows(1, 15_000) + f"15001,{'x' * 3_000_000},1,Qualified,Kari\n"
                        + good_rows(2).replace("1,Deal 1", "15002,Deal").replace("2,Deal 2", "15003,Deal"),
                        encoding="utf-8")
        result = sync_source(store, feed(path), now=lambda: T0)
        assert (result.status, result.inserted, result.rejected) == ("ok", 15_002, 1)
        with store.connect() as conn:
            assert conn.execute(sa.select(sa.func.count()).select_from(deals_table)).scalar() == 15_002
