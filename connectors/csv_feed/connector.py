"""The generic CSV feed: deals from a CSV file exported by any CRM.

The file has one deal per row and a header line. Its columns are mapped to the
canonical names in ``CANONICAL_COLUMNS`` through ``[sources.columns]`` (a
canonical name that is not mapped is looked up under its own name; a list of
headers takes the first non-empty cell of them)::

    [[sources]]
    name = "export"
    kind = "csv"
    path = "exports/deals.csv"        # relative to the config file
    encoding = "cp1252"               # any Python codec; default UTF-8 (BOM or not)
    date_format = "%d.%m.%Y"          # or a list; besides ISO 8601
    [sources.columns]
    id = "Deal ID"
    stage = "Stage"
    closed_at = ["Won time", "Lost time"]
    [sources.status]                  # values of the status column, else of the stage column
    open = ["Åpen"]
    won = ["Won"]
    lost = ["Lost"]

Reading rules:

* The file is decoded with ``encoding`` and streamed: rows are read one at a
  time, never all at once. The delimiter is ``delimiter``, or detected from the
  header line (``mapping.detect_delimiter``).
* A row that cannot be read is yielded as a ``Rejected`` item (``where`` is
  ``"line N"``, the header being line 1) and skipped; the other rows are kept. A
  later row repeating an earlier id is rejected and the first one is kept. A cell
  the encoding cannot decode rejects its row, naming the column and the fix.
* A missing file, an empty file, an undecodable header or a missing required
  column (``id``, and ``stage`` or ``status``) raises ``CsvFeedError`` before any
  deal is yielded.
* The pull ends with ``Checkpoint(cursor, complete=True)``: the file holds every
  live deal, so deals that vanished from it become ``deleted``. A file with a
  header and no rows (an export cut short) ends with an incomplete checkpoint, so
  it deletes nothing. When more rows were rejected than read (a wrong
  ``date_format``, say), the last checkpoint is not complete, keeps the previous
  cursor (the next run reads the file again) and carries a ``failure``: the sync
  fails with the first reasons, and deletes nothing. The cursor is the file's
  SHA-256 plus a short fingerprint of the settings that shape the deals (and of
  the demo rebase shift), so when neither changed, ``deals(cursor)`` yields only
  ``Checkpoint(cursor, complete=False)`` without reading a row.

An optional ``stage_history`` column lists the stages a deal entered and when,
``Qualified@2026-01-05T10:00; Proposal@2026-02-01``, with the same date rules as
the other columns; it feeds "where deals wait". Its stages also give the
pipeline's stage order (open stages by first appearance, history first).

Amounts are read by ``mapping.parse_money``: a decimal point or comma, thousand
separators, a currency symbol or code before or after, ``,-``. An amount like
``1,234`` (a thousand separator or a decimal comma?) is rejected as ambiguous
unless ``decimal_separator`` is set.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import itertools
import json
import os
import stat
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, ClassVar
from zoneinfo import ZoneInfo

import pyarrow as pa
import structlog

from sales_velocity.connectors.base import (
    Checkpoint,
    Deal,
    Owner,
    Pipeline,
    Rejected,
    SourceSettings,
    Stage,
    StreamItem,
)
from sales_velocity.connectors.csv_feed.columnar import (
    ColumnarReader,
    RecordTooLong,
    scan_catalog,
    straddles,
    usable,
)
from sales_velocity.connectors.csv_feed.first_lines import FirstLines
from sales_velocity.connectors.csv_feed.mapping import (
    MAX_ID_LENGTH,
    RowLayout,
    RowParser,
    detect_delimiter,
    first_filled,
    history_entries,
)
from sales_velocity.connectors.csv_feed.settings import CANONICAL_COLUMNS, DELIMITERS, CsvFeedSettings
from sales_velocity.connectors.validate import validated
from sales_velocity.kernel.errors import FatalAPIError

__all__ = ["CsvFeedConnector", "CsvFeedError", "MissingColumnsError", "format_rejects"]

log = structlog.get_logger(__name__)

READ_CHUNK = 1 << 16
MAX_QUOTED_HEADER = 64
"""Headers longer than this are not column names: an error message never quotes such a first line."""
MAX_LISTED_HEADERS = 30
FIRST_REASONS = 3
"""Rejected rows quoted in the error of a mostly rejected pull."""
DEMO_DIR = Path(__file__).resolve().parents[1] / "demo"
"""The bundled demo's folder: ``rebase_dates_from`` is meant for files in it only."""


# --------------------------------------------------------------------------- errors


class CsvFeedError(FatalAPIError):
    """The feed's file cannot be read at all (missing, empty, header not decodable, wrong columns)."""

    def __init__(self, message: str, *, path: Path, source: str | None = None) -> None:
        super().__init__(message, source=source)
        self.path = path


class MissingColumnsError(CsvFeedError):
    """Required or explicitly mapped columns are not in the file's header."""

    def __init__(
        self, message: str, *, path: Path, missing: Sequence[str], headers: Sequence[str],
        source: str | None = None,
    ) -> None:
        super().__init__(message, path=path, source=source)
        self.missing = tuple(missing)
        self.headers = tuple(headers)


# --------------------------------------------------------------------------- reading

CSV_FIELD_LIMIT = 131_072
"""Python's csv module's default field size limit: the least the row reader allows."""


class _HashingReader(io.RawIOBase):
    """A raw binary stream that feeds every byte it reads into a SHA-256, up to ``limit`` bytes.

    ``too_large`` is raised when the file grows past ``limit`` while it is read.
    """

    def __init__(self, inner: BinaryIO, limit: int, too_large: Callable[[], Exception]) -> None:
        self.inner = inner
        self.sha = hashlib.sha256()
        self.read_bytes = 0
        self.limit = limit
        self.too_large = too_large

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self.inner.read(len(buffer))
        buffer[: len(data)] = data
        self.sha.update(data)
        self.read_bytes += len(data)
        if self.read_bytes > self.limit:
            raise self.too_large()
        return len(data)


def _sha256_of(f: BinaryIO, limit: int, too_large: Callable[[], Exception]) -> str:
    reader = _HashingReader(f, limit, too_large)
    while reader.read(READ_CHUNK):
        pass
    return reader.sha.hexdigest()


@dataclass(frozen=True, slots=True)
class _Catalog:
    pipelines: tuple[Pipeline, ...]
    owners: tuple[Owner, ...]
    rows: int
    columns: int


class CsvFeedConnector:
    """Reads deals from one CSV file; see the module docstring for the rules.

    Args:
        settings: the validated ``[[sources]]`` table.
        today: the current date in the feed's time zone (for ``rebase_dates_from``);
            tests pin it.
    """

    settings_model: ClassVar[type[SourceSettings]] = CsvFeedSettings
    kind = "csv"

    def __init__(self, settings: CsvFeedSettings, *, today: Callable[[], dt.date] | None = None) -> None:
        self.settings = settings
        self.name = settings.name
        self.path = settings.path
        self._today = today or (lambda: dt.datetime.now(ZoneInfo(settings.timezone)).date())
        self._catalog: tuple[tuple[int, int], _Catalog] | None = None
        self._provided: frozenset[str] | None = None

    def use_clock(self, now: Callable[[], dt.datetime]) -> None:
        """Take "today" (for ``rebase_dates_from``) from the run's clock, in the feed's time zone.

        The scheduler hands every connector that has this method the clock of its
        run, so a pinned clock (``main(now=...)``, tests) pins the demo's rebase too.
        """
        zone = ZoneInfo(self.settings.timezone)
        self._today = lambda: now().astimezone(zone).date()

    # ------------------------------------------------------------------ plumbing

    def _error(self, message: str) -> CsvFeedError:
        return CsvFeedError(f"{self.path}: {message}", path=self.path, source=self.name)

    def _open(self) -> BinaryIO:
        """Open the file for reading: a regular file of at most ``max_file_mib``, else ``CsvFeedError``.

        Opened without blocking (a FIFO would wait for a writer), then checked on
        the open descriptor, so a device (``/dev/zero``), FIFO or socket is refused
        before a byte is read.
        """
        try:
            fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        except FileNotFoundError:
            raise self._error("file not found") from None
        except IsADirectoryError:
            raise self._error("is a directory, not a CSV file") from None
        except OSError as exc:
            raise self._error(f"cannot be read ({exc.strerror})") from None
        try:
            info = os.fstat(fd)
            if stat.S_ISDIR(info.st_mode):
                raise self._error("is a directory, not a CSV file")
            if not stat.S_ISREG(info.st_mode):
                raise self._error("is not a regular file (a device, FIFO or socket); "
                                  "the CSV feed reads files only")
            if info.st_size > self.settings.max_file_bytes:
                raise self._too_large(info.st_size)
            os.set_blocking(fd, True)
            return os.fdopen(fd, "rb")
        except BaseException:
            os.close(fd)
            raise

    def _too_large(self, size: int | None = None) -> CsvFeedError:
        limit = self.settings.max_file_bytes
        now = f"{size:,} bytes" if size is not None else "growing"
        return self._error(f"is larger than max_file_mib = {self.settings.max_file_mib:g} "
                           f"({limit:,} bytes; it is {now}); raise max_file_mib to read it")

    def _rows(self, raw: BinaryIO) -> tuple[RowLayout, Iterator[tuple[int, list[str] | csv.Error]]]:
        """Read the header and map the columns; return the layout and the rows.

        Rows come as ``(line, fields)``, the line where the record starts; a record
        the CSV reader cannot split comes as ``(line, csv.Error)``. Blank lines are skipped.

        Raises:
            CsvFeedError: empty file, header not decodable, or missing columns.
        """
        text = io.TextIOWrapper(raw, encoding=self.settings.python_encoding(), errors="surrogateescape",
                                newline="")
        max_chars = self.settings.max_row_chars
        first = text.readline(max_chars + 1)
        if len(first) > max_chars:
            raise self._error(f"the first line is longer than max_row_kib = {self.settings.max_row_kib:g} "
                              f"({max_chars:,} characters): not a CSV header line")
        delimiter = self.settings.delimiter or detect_delimiter(first.rstrip("\r\n"), DELIMITERS)
        self._delimiter = delimiter
        # Python's csv module refuses fields over 128 KiB by default; a row may hold up to
        # max_row_kib (the columnar path reads such fields), so the limit is raised to this
        # source's max_row_kib where that is more. A longer field is a csv.Error, rejected as
        # a row over max_row_kib (``_read_row``). The limit is the process's: set before
        # every record is read.
        limit = max(max_chars + 1, CSV_FIELD_LIMIT)
        csv.field_size_limit(limit)
        reader = csv.reader(itertools.chain([first], text), delimiter=delimiter)
        header = next(reader, None)
        if header is None or not any(h.strip() for h in header):
            raise self._error("the file is empty (no header line)")
        headers = tuple(h.strip() for h in header)
        if len(headers) > self.settings.max_columns:
            raise self._error(f"the header has {len(headers):,} columns, more than max_columns = "
                              f"{self.settings.max_columns:,}")
        if any(_has_undecodable(h) for h in headers):
            raise self._error(
                f"the header line is not valid {self._encoding_name()}; {self._encoding_advice()}")
        layout = self._layout(headers)

        def rows() -> Iterator[tuple[int, list[str] | csv.Error]]:
            last = reader.line_num
            while True:
                csv.field_size_limit(limit)
                try:
                    fields: list[str] | csv.Error = next(reader)
                except StopIteration:
                    return
                except csv.Error as exc:  # e.g. a field over the size limit; the reader goes on
                    fields = exc
                line, last = last + 1, reader.line_num
                if isinstance(fields, csv.Error) or any(f.strip() for f in fields):
                    yield line, fields

        return layout, rows()

    def _layout(self, headers: tuple[str, ...]) -> RowLayout:
        exact = {h: i for i, h in reversed(list(enumerate(headers)))}
        folded = {h.casefold(): i for i, h in reversed(list(enumerate(headers)))}
        index: dict[str, tuple[int, ...]] = {}
        missing: list[str] = []
        for name in CANONICAL_COLUMNS:
            wanted = self.settings.columns.get(name, [name])
            found = [exact.get(w, folded.get(w.casefold())) for w in wanted]
            absent = [w for w, i in zip(wanted, found, strict=True) if i is None]
            if name in self.settings.columns and absent:
                quoted = ", ".join(json.dumps(w, ensure_ascii=False) for w in absent)
                missing.append(f"{name} (mapped to {quoted})")
            elif not absent:
                index[name] = tuple(i for i in found if i is not None)
        if "id" not in index and "id" not in self.settings.columns:
            missing.insert(0, "id")
        if "stage" not in index and "status" not in index:
            missing.append("stage or status")
        if missing:
            has = _describe_headers(headers)
            hint = ""
            if len(headers) == 1:
                for sep in (";", "\t", ",", "|"):
                    if sep in headers[0] and sep != (self.settings.delimiter or ","):
                        hint = f" (the header looks {sep!r}-separated: set delimiter = {json.dumps(sep)})"
                        break
            raise MissingColumnsError(
                f"{self.path}: missing column{'s' if len(missing) > 1 else ''} {', '.join(missing)}; "
                f"{has}{hint}",
                path=self.path, missing=missing, headers=headers, source=self.name,
            )
        return RowLayout(headers, index)

    def _shift_days(self) -> int:
        if self.settings.rebase_dates_from is None:
            return 0
        return (self._today() - self.settings.rebase_dates_from).days

    def _cursor(self, file_sha: str, shift_days: int) -> str:
        shaping = self.settings.model_dump(
            mode="json", exclude={"name", "enabled", "path", "rebase_dates_from"}
        )
        shaping["shift_days"] = shift_days
        blob = json.dumps(shaping, sort_keys=True).encode()
        return f"{file_sha}:{hashlib.sha256(blob).hexdigest()[:12]}"

    # ------------------------------------------------------------------ the protocol

    def deals(self, since: str | None) -> Iterator[StreamItem]:
        """Stream the file's deals and rejected rows, then ``Checkpoint(cursor, complete=True)``.

        The checkpoint is not complete when more rows were rejected than read.

        When ``since`` is the cursor of the current file and settings, yields only
        ``Checkpoint(since, complete=False)``.

        Raises:
            CsvFeedError: before the first deal, when the file or its header is unusable.
        """
        return self._stream(since, columnar=False)

    def batches(self, since: str | None) -> Iterator[StreamItem | pa.Table]:
        """``deals`` with the rows as Arrow batches (``sync.batch``) where the columnar reader reads them.

        The sync engine pulls through this method: the same rows, rejects (same lines and
        reasons) and checkpoints as ``deals``, but most deals come as one table per block
        of the file instead of one record each (``csv_feed.columnar``).
        """
        return self._stream(since, columnar=True)

    def _stream(self, since: str | None, *, columnar: bool) -> Iterator[StreamItem | pa.Table]:
        started = time.perf_counter()
        shift = self._shift_days()
        if (advice := self.rebase_warning()) is not None:
            log.warning("csv_feed.rebase_outside_demo", source=self.name, path=str(self.path), advice=advice)
        self._provided = None
        if since is not None:
            with self._open() as f:
                digest = _sha256_of(f, self.settings.max_file_bytes, self._too_large)
                unchanged = self._cursor(digest, shift) == since
            if unchanged:
                log.debug("csv_feed.unchanged", source=self.name, path=str(self.path))
                yield Checkpoint(cursor=since, complete=False)
                return
        deals = rejected = 0
        first_reasons: list[Rejected] = []
        with self._open() as f:
            hashing = _HashingReader(f, self.settings.max_file_bytes, self._too_large)
            layout, rows = self._rows(io.BufferedReader(hashing))
            self._provided = frozenset(layout.index)
            parser = RowParser(self.settings, layout, shift)
            first_line = FirstLines()
            width = len(layout.headers)
            items: Iterable[Deal | Rejected | pa.Table]
            hashed = [hashing]  # the reader that sees every byte (a new one if the file is read again)
            if columnar and usable(self.settings, layout.headers, shift):
                items = self._by_column(f, parser, first_line, hashed)
            else:
                items = (self._read_row(parser, first_line, line, fields, width) for line, fields in rows)
            for item in items:
                if isinstance(item, Deal):
                    deals += 1
                elif isinstance(item, Rejected):
                    rejected += 1
                    if len(first_reasons) < FIRST_REASONS:
                        first_reasons.append(item)
                else:
                    deals += len(item)
                yield item
            while hashed[0].read(READ_CHUNK):  # hash any bytes the reader left unread
                pass
            cursor = self._cursor(hashed[0].sha.hexdigest(), shift)
        # A file that is mostly unreadable (say, a wrong date_format), or one with a header and
        # no rows (an export cut short), must not delete the deals the store has: the pull only
        # counts as complete when it read deals, and more of them than it rejected.
        complete = deals > 0 and rejected <= deals
        log.info(
            "csv_feed.read", source=self.name, path=str(self.path), deals=deals, rejected=rejected,
            complete=complete, duration_s=round(time.perf_counter() - started, 3),
        )
        if deals == 0 and rejected == 0:
            log.warning(
                "csv_feed.empty", source=self.name, path=str(self.path),
                advice="the file has a header but no rows: deals are not marked deleted",
            )
        elif not complete:
            log.warning(
                "csv_feed.mostly_rejected", source=self.name, path=str(self.path), deals=deals,
                rejected=rejected, advice="more rows were rejected than read: deals missing from the "
                "file are not marked deleted this time",
            )
            # A failed sync: the cursor stays where it was, so the next run reads the file again
            # (and fails again) until the file or the options are fixed.
            failure = self._failure(deals, rejected, first_reasons)
            yield Checkpoint(cursor=since, complete=False, failure=failure)
            return
        yield Checkpoint(cursor=cursor, complete=complete)

    def _by_column(self, f: BinaryIO, parser: RowParser, first_line: FirstLines,
                   hashed: list[_HashingReader]) -> Iterator[Deal | Rejected | pa.Table]:
        """The file's items by column (``csv_feed.columnar``); row by row from a record too long for it on.

        Arrow reads the file again from its first byte (the header too), through a
        new hashing reader put in ``hashed``; so does the row reader after a
        record Arrow cannot hold, skipping the rows already read.
        """
        width = len(parser.layout.headers)

        def read_row(line: int, fields: list[str] | csv.Error) -> Deal | Rejected:
            return self._read_row(parser, first_line, line, fields, width)

        f.seek(0)
        hashed[0] = _HashingReader(f, self.settings.max_file_bytes, self._too_large)
        reader = ColumnarReader(self.settings, parser, read_row, first_line, self._delimiter)
        try:
            yield from reader.batches(io.BufferedReader(hashed[0], buffer_size=1 << 20))
            return
        except RecordTooLong as exc:
            resume = exc.line
        log.warning("csv_feed.long_record", source=self.name, path=str(self.path), line=resume,
                    advice="a record too long to read by column (a huge cell, or a quote left open): "
                           "the rest of the file is read row by row")
        f.seek(0)
        hashed[0] = _HashingReader(f, self.settings.max_file_bytes, self._too_large)
        _, rows = self._rows(io.BufferedReader(hashed[0]))
        for line, fields in rows:
            if line >= resume:
                yield read_row(line, fields)

    def _failure(self, deals: int, rejected: int, first: Sequence[Rejected]) -> str:
        """Why a mostly rejected pull failed, with its first reasons."""
        share = "every row was" if deals == 0 else f"{rejected} of {deals + rejected} rows were"
        return (f"{self.path}: {share} rejected ({deals} loaded), so this sync failed and marked "
                f"nothing deleted; check the file's columns and the source's options. First: "
                + "; ".join(f"{r.where}: {r.reason}" for r in first))

    def _encoding_name(self) -> str:
        return "UTF-8" if self.settings.python_encoding() == "utf-8-sig" else self.settings.encoding

    def _encoding_advice(self) -> str:
        if self.settings.python_encoding() == "utf-8-sig":
            return 'save the file as UTF-8, or set its encoding (Excel on Windows: encoding = "cp1252")'
        return f"check the source's encoding option (now {self.settings.encoding!r})"

    def rebase_warning(self) -> str | None:
        """Advice when ``rebase_dates_from`` is set on a file that is not the bundled demo's, else None."""
        if self.settings.rebase_dates_from is None:
            return None
        try:
            self.path.resolve().relative_to(DEMO_DIR)
        except ValueError:
            return ("rebase_dates_from shifts every date of this file (it is meant for the bundled demo, "
                    'kind = "demo"); remove it for real data')
        return None
    def provided_fields(self) -> frozenset[str] | None:
        """The canonical columns the file of the last pull has (``None`` when it was not read).

        The sync records them (``sync.fields``): a column the export lacks is
        *unknown* for this source, and the hygiene rules that need it are off.
        """
        return self._provided

    def _read_row(
        self, parser: RowParser, first_line: FirstLines, line: int, fields: list[str] | csv.Error,
        width: int,
    ) -> Deal | Rejected:
        where = f"line {line}"
        if isinstance(fields, csv.Error):
            if str(fields).startswith("field larger than field limit"):
                return Rejected(where, f"is longer than max_row_kib = {self.settings.max_row_kib:g} "
                                f"(a field of more than {self.settings.max_row_chars:,} characters)")
            return Rejected(where, f"cannot be split into fields ({fields})")
        if len(fields) > self.settings.max_columns:
            return Rejected(where, f"has {len(fields):,} fields, more than max_columns = "
                            f"{self.settings.max_columns:,}")
        chars = sum(map(len, fields))
        if chars > self.settings.max_row_chars:
            return Rejected(where, f"is longer than max_row_kib = {self.settings.max_row_kib:g} "
                            f"({chars:,} characters)")
        external_id = first_filled(fields, parser.layout.index["id"])[1][:MAX_ID_LENGTH] or None
        if external_id is not None and _has_undecodable(external_id):
            external_id = None
        if len(fields) < width or (len(fields) > width and any(f.strip() for f in fields[width:])):
            return Rejected(where, f"has {len(fields)} fields, the header has {width}", external_id)
        bad = [h for h, f in zip(parser.layout.headers, fields, strict=False) if _has_undecodable(f)]
        if bad:
            return Rejected(where, f"{', '.join(bad)} {'is' if len(bad) == 1 else 'are'} not valid "
                            f"{self._encoding_name()}; {self._encoding_advice()}", external_id)
        try:
            deal = parser.parse(fields[:width])
        except ValueError as exc:
            return Rejected(where, str(exc), external_id)
        checked = validated(deal, where)
        if isinstance(checked, Rejected):
            return checked
        first = first_line.setdefault(deal.external_id, line)
        if first != line:
            return Rejected(where, f"duplicate id {deal.external_id}, first seen on line {first}",
                            deal.external_id)
        return deal

    def _scan(self) -> _Catalog:
        """One pass collecting distinct pipelines, stages and owners (cached per file version)."""
        try:
            info = self.path.stat()
        except FileNotFoundError:
            raise self._error("file not found") from None
        key = (info.st_size, info.st_mtime_ns)
        if self._catalog is not None and self._catalog[0] == key:
            return self._catalog[1]
        stages: dict[str, dict[str, None]] = {}
        owners: dict[str, str | None] = {}
        rows = 0
        with self._open() as f:
            layout, records = self._rows(f)
            if usable(self.settings, layout.headers, 0):  # by column: the same catalog, in a fraction
                f.seek(0)
                try:
                    stages, owners, rows = scan_catalog(f, layout, self._delimiter,
                                                        self.settings.default_pipeline)
                    records = iter(())
                except pa.ArrowInvalid as exc:  # a record too long for Arrow: all of it row by row
                    if not straddles(exc):
                        raise
                    f.seek(0)
                    # through a reader of its own, the first one kept: its text wrapper would close ``f``
                    kept = records  # noqa: F841
                    layout, records = self._rows(io.BufferedReader(
                        _HashingReader(f, self.settings.max_file_bytes, self._too_large)))
            width = len(layout.headers)
            for _, fields in records:
                rows += 1
                if isinstance(fields, csv.Error) or len(fields) < width or any(map(_has_undecodable, fields)):
                    continue  # the row is rejected when the deals are read
                pipeline = layout.get(fields, "pipeline") or self.settings.default_pipeline
                seen = stages.setdefault(pipeline, {})
                for _, name, _ in history_entries(layout.get(fields, "stage_history")):
                    if name and len(name) <= MAX_ID_LENGTH:  # the process order
                        seen.setdefault(name)
                if stage := layout.get(fields, "stage"):
                    seen.setdefault(stage)
                if owner := layout.get(fields, "owner"):
                    owners[owner] = owners.get(owner) or layout.get(fields, "owner_email") or None
        catalog = _Catalog(
            pipelines=tuple(
                self._pipeline(name, n, list(names)) for n, (name, names) in enumerate(stages.items())
            ),
            owners=tuple(Owner(o, o, email) for o, email in owners.items()),
            rows=rows,
            columns=len(layout.headers),
        )
        self._catalog = (key, catalog)
        return catalog

    def _pipeline(self, name: str, order: int, stage_names: list[str]) -> Pipeline:
        """Open stages by first appearance, then won, then lost stages."""
        status_of = self.settings.status.status_of
        rank = {"open": 0, "won": 1, "lost": 2, "deleted": 3}
        ordered = sorted(stage_names, key=lambda s: rank[status_of(s)])
        return Pipeline(name, name, order, tuple(
            Stage(s, name, s, i, is_won=status_of(s) == "won", is_lost=status_of(s) == "lost")
            for i, s in enumerate(ordered)
        ))

    def expected_deals(self) -> int | None:
        """About how many deals a pull will read (the file's rows), for a progress display."""
        try:
            info = self.path.stat()
        except OSError:
            return None
        if self._catalog is not None and self._catalog[0] == (info.st_size, info.st_mtime_ns):
            return self._catalog[1].rows
        newlines = 0
        try:
            f = self._open()
        except CsvFeedError:
            return None
        with f:
            while chunk := f.read(1 << 20):
                newlines += chunk.count(b"\n")
        return max(newlines - 1, 0)  # the header; a quoted newline inside a cell makes it an estimate

    def pipelines(self) -> Iterable[Pipeline]:
        """Return the pipelines and stages seen in the file (ids are the names)."""
        return self._scan().pipelines

    def owners(self) -> Iterable[Owner]:
        """Return the owners seen in the file (id = the owner value, e-mail from owner_email)."""
        return self._scan().owners

    def check(self) -> str:
        """Open the file, check its header and count its rows, e.g. ``deals.csv: 412 rows, 16 columns``.

        Raises:
            CsvFeedError: the file is missing or its header lacks required columns.
        """
        catalog = self._scan()
        warning = self.rebase_warning()
        return (f"{self.path.name}: {catalog.rows} rows, {catalog.columns} columns"
                + (f"; warning: {warning}" if warning else ""))


def _describe_headers(headers: Sequence[str]) -> str:
    """The file's headers for an error message, only when they look like column names.

    A path may point at any file (``/etc/shadow``): its first line is quoted only
    when it splits into at least two short, printable names, as a CSV header
    does; otherwise the message says what it is without quoting a character of it.
    """
    if len(headers) >= 2 and all(len(h) <= MAX_QUOTED_HEADER and h.isprintable() for h in headers):
        listed = ", ".join(json.dumps(h, ensure_ascii=False) for h in headers[:MAX_LISTED_HEADERS])
        more = len(headers) - MAX_LISTED_HEADERS
        return f"the file's headers are: {listed}" + (f" and {more} more" if more > 0 else "")
    columns = f"{len(headers)} column{'s' if len(headers) != 1 else ''}"
    return (f"the first line does not look like a header of column names ({columns}; not quoted); "
            "check the path, delimiter and encoding")


def _has_undecodable(text: str) -> bool:
    """Whether ``text`` holds bytes that were not UTF-8 (escaped as lone surrogates)."""
    return any("\udc80" <= c <= "\udcff" for c in text)


def format_rejects(rejects: Iterable[Rejected], limit: int | None = None) -> str:
    """Render rejected rows for people, one per line: ``line 7: amount "12x" is not a number``.

    Args:
        rejects: the rejected rows, in file order.
        limit: show at most this many, then ``... and N more``.
    """
    lines: list[str] = []
    extra = 0
    for n, reject in enumerate(rejects):
        if limit is not None and n >= limit:
            extra += 1
            continue
        lines.append(f"{reject.where}: {reject.reason}")
    if extra:
        lines.append(f"... and {extra} more")
    return "\n".join(lines)

