"""The CSV feed's columnar path: Arrow's streaming CSV reader, the cell rules column by column.

``ColumnarReader`` reads the file in blocks with ``pyarrow.csv.open_csv`` and
applies the feed's rules (``csv_feed.mapping``) to whole columns with Arrow's
compute kernels, for the forms an export normally has: plain amounts
(``12500.50``), ISO dates and times (with an offset, or local to the feed's
zone), statuses and stages by lookup of their distinct values, the stage
history split and parsed as columns. A row with anything else (a currency
marker, a thousand separator, a bad date, a missing id, ...) is handed to the
row parser (``RowParser``), so it is read, or rejected with the same line and
reason, exactly as on the row path; the same goes for a row Arrow cannot split
(wrong number of fields) and for a block with bytes that are not UTF-8.

Line numbers are the row path's: the header is line 1 and a quoted cell's line
breaks count, so a rejected row is named by the line it starts on.

The path is used when the file is UTF-8 and the source uses no ``date_format``,
no demo rebasing and no repeated header (``usable``); otherwise the feed reads
row by row as before.
"""

from __future__ import annotations

import csv
import io
import json
import queue
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv

from sales_velocity.connectors.base import Deal, Rejected
from sales_velocity.connectors.csv_feed.first_lines import FirstLines
from sales_velocity.connectors.csv_feed.mapping import (
    DATETIME_COLUMNS,
    ID_COLUMNS,
    MAX_ID_LENGTH,
    TEXT_COLUMNS,
    RowParser,
    parse_status,
)
from sales_velocity.connectors.csv_feed.settings import DATE_COLUMNS, CsvFeedSettings
from sales_velocity.sync.batch import BATCH_SCHEMA, HISTORY_TYPE, TIMESTAMP, encode_json

__all__ = ["BLOCK_SIZE", "ColumnarReader", "RecordTooLong", "scan_catalog", "straddles", "usable"]

BLOCK_SIZE = 1 << 20
"""Bytes Arrow parses at a time (about 4,500 rows of a canonical export).

Arrow's streaming reader reads up to 32 blocks ahead of its consumer, so this is
also what bounds the file's bytes held in memory (32 MiB). A record may span two
blocks, not more: a longer one (a cell of megabytes, or an unclosed quote that
runs on) raises :class:`RecordTooLong`, and the rest of the file is read row by row.
"""


class RecordTooLong(Exception):
    """Arrow met a record longer than its blocks allow; ``line``: where the rows not yet read start."""

    def __init__(self, line: int) -> None:
        super().__init__(f"a record at or after line {line} is longer than the columnar reader's blocks")
        self.line = line


def straddles(exc: BaseException) -> bool:
    """Whether ``exc`` is Arrow's error for a record longer than two blocks."""
    return isinstance(exc, pa.ArrowInvalid) and "straddl" in str(exc)

_NAIVE = pa.timestamp("us")
_DATE_RE = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$"
_TIME_RE = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]{1,6})?)?"
_OFFSET_RE = r"(Z|[+-](0[0-9]|1[0-9]|2[0-3]):[0-5][0-9])$"
_FORMULA_RE = r"^'[=+\-@\t\r]"
_SPECIAL_RE = r'["\\\x00-\x1f]'
"""A quote, a backslash or a control character: what JSON escapes and line counting look for."""


def usable(settings: CsvFeedSettings, headers: tuple[str, ...], shift_days: int) -> bool:
    """Whether the columnar path reads this source exactly as the row path would."""
    return (settings.python_encoding() in ("utf-8-sig", "utf-8")
            and shift_days == 0
            and not any(settings.formats_for(c) for c in DATE_COLUMNS)
            and len(set(headers)) == len(headers))


def _blank_to_null(values: pa.Array) -> pa.Array:
    return pc.if_else(pc.equal(values, ""), pa.scalar(None, pa.string()), values)


def _json_text(values: pa.Array) -> pa.Array:
    for old, new in (("\\", "\\\\"), ('"', '\\"'), ("\n", "\\n"), ("\r", "\\r"), ("\t", "\\t")):
        values = pc.replace_substring(values, old, new)
    return values


class ColumnarReader:
    """Reads one file's rows as Arrow batches; rows needing the row rules go through ``read_row``.

    Args:
        settings: the source's settings.
        parser: the row parser (for the rows the columns cannot read).
        read_row: the feed's row reader: ``(line, fields) -> Deal | Rejected`` (it also
            rejects repeated ids, with ``first_line``).
        first_line: the line each id was first seen on, shared with ``read_row``.
        delimiter: the file's delimiter.
    """

    def __init__(
        self, settings: CsvFeedSettings, parser: RowParser,
        read_row: Callable[[int, list[str]], Deal | Rejected], first_line: FirstLines,
        delimiter: str,
    ) -> None:
        self.s = settings
        self.parser = parser
        self.layout = parser.layout
        self.read_row = read_row
        self.first_line = first_line
        self.delimiter = delimiter
        self.width = len(self.layout.headers)
        self._invalid: list[tuple[int, str]] = []
        self._incoming: list[tuple[int, str]] = []
        self._ordinal = 1  # the next row's ordinal (Arrow counts the header as row 1)
        self._extra_lines = 0  # line breaks inside quoted cells so far
        self._header_seen = False
        names = self.layout.headers
        self._raw_keys = [json.dumps(h, ensure_ascii=False) for h in names]

    def _on_invalid(self, row: Any) -> str:
        # called on the thread that parses (``_read_ahead``); handed over with the block it is in
        self._incoming.append((int(row.number), str(row.text)))
        return "skip"

    def _take_incoming(self) -> list[tuple[int, str]]:
        incoming, self._incoming = self._incoming, []
        return incoming

    def batches(self, stream: BinaryIO) -> Iterator[Deal | Rejected | pa.Table]:
        """Yield the file's items in line order: rejected rows, row-path deals, then each block's table.

        Raises:
            RecordTooLong: after the items before it, at a record Arrow cannot
                hold in two blocks; the caller reads on from its ``line``.
        """
        try:
            reader = pa_csv.open_csv(
                stream,
                read_options=pa_csv.ReadOptions(use_threads=False, block_size=BLOCK_SIZE,
                                                autogenerate_column_names=True),
                parse_options=pa_csv.ParseOptions(delimiter=self.delimiter, newlines_in_values=True,
                                                  ignore_empty_lines=False,
                                                  invalid_row_handler=self._on_invalid),
                convert_options=pa_csv.ConvertOptions(
                    column_types={f"f{i}": pa.binary() for i in range(self.width)}),
            )
            for batch, invalid in _read_ahead(reader, self._take_incoming):
                self._invalid.extend(invalid)
                yield from self._block(batch)
        except pa.ArrowInvalid as exc:
            if not straddles(exc):
                raise
            # every row before the next one was yielded; invalid rows held back are read again
            raise RecordTooLong(self._ordinal + self._extra_lines if self._header_seen else 1) from exc
        self._invalid.extend(self._take_incoming())
        yield from self._block(None)

    # ------------------------------------------------------------------ lines

    def _ordinals(self, count: int) -> list[int] | None:
        """The ordinals of the next ``count`` valid rows (``None``: consecutive, none invalid among them)."""
        invalid = {n for n, _ in self._invalid}
        start = self._ordinal
        if not any(start <= n < start + count + len(invalid) for n in invalid):
            self._ordinal += count
            return None
        out: list[int] = []
        n = start
        while len(out) < count:
            if n not in invalid:
                out.append(n)
            n += 1
        self._ordinal = n
        return out

    def _block(self, batch: pa.RecordBatch | None) -> Iterator[Deal | Rejected | pa.Table]:
        if batch is None:  # the end: invalid rows after the last block
            rows = 0
            columns: list[pa.Array] = []
        else:
            columns = list(batch.columns)
            rows = batch.num_rows
            if not self._header_seen:
                self._header_seen = True
                header_text = [c[0].as_py() for c in columns]
                self._extra_lines += sum(_breaks(v.decode("utf-8", "surrogateescape")) for v in header_text)
                columns = [c.slice(1) for c in columns]
                rows -= 1
                self._ordinal = 2
        ordinals = self._ordinals(rows) if batch is not None else []
        last = (ordinals[-1] if ordinals else self._ordinal - 1) if batch is not None else 1 << 62
        # invalid rows up to this block's last row, in order, between the valid ones
        invalid = sorted(r for r in self._invalid if r[0] <= last)
        self._invalid = [r for r in self._invalid if r[0] > last]
        texts = [self._decoded(c) for c in columns]
        if any(t is None for t in texts):  # bytes that are not UTF-8: this block goes row by row
            fields = [[v.decode("utf-8", "surrogateescape") for v in c.to_pylist()] for c in columns]
            strings = None
        else:
            strings = [t for t in texts if t is not None]
            fields = None
        # the columns with a quote, a backslash or a control character (line breaks, NUL) anywhere:
        # only they need the line-break count, the NUL check and JSON escapes
        special = [bool(pc.any(pc.match_substring_regex(c, _SPECIAL_RE)).as_py()) for c in strings or ()]
        breaks = self._breaks([c for c, odd in zip(strings, special, strict=True) if odd]
                              if strings is not None else None, fields, rows)
        # the line of every valid row, and of every invalid one
        lines: list[int] = []
        row_ordinals = ordinals if ordinals is not None else range(self._ordinal - rows, self._ordinal)
        inv = iter(invalid)
        pending = next(inv, None)
        extra = self._extra_lines
        out: list[Deal | Rejected] = []
        for i, ordinal in enumerate(row_ordinals):
            while pending is not None and pending[0] < ordinal:
                out.extend(self._invalid_row(pending, extra))
                extra += _breaks(pending[1])
                pending = next(inv, None)
            lines.append(ordinal + extra)
            extra += breaks[i] if breaks is not None else 0
        while pending is not None:
            out.extend(self._invalid_row(pending, extra))
            extra += _breaks(pending[1])
            pending = next(inv, None)
        self._extra_lines = extra
        if rows == 0:
            out.sort(key=_line_key)
            yield from out
            return
        if fields is not None:
            for i in range(rows):
                row = [f[i] for f in fields]
                if any(v.strip() for v in row):
                    out.append(self.read_row(lines[i], row))
            out.sort(key=_line_key)
            yield from out
            return
        if strings is None:
            return
        table, needs, blank = self._columns(strings, special)
        keep = []
        ids = table["external_id"].to_pylist()
        first_line = self.first_line
        # the ids seen before this block, looked up at once; the block's own ids one by one, in order
        digests, prior = first_line.prior(ids)
        try:
            for i, (key, slow, empty) in enumerate(zip(ids, needs.to_pylist(), blank.to_pylist(),
                                                       strict=True)):
                if empty:
                    continue
                line = lines[i]
                if slow:
                    out.append(self.read_row(line, [s[i].as_py() for s in strings]))
                    continue
                first = prior[i]
                if first is None:
                    first = first_line.add(digests[i], line, searched=True)
                if first != line:
                    out.append(Rejected(f"line {line}", f"duplicate id {key}, first seen on line {first}",
                                        key))
                    continue
                keep.append(i)
        finally:
            first_line.release()
        out.sort(key=_line_key)
        yield from out
        if keep:
            yield table.take(pa.array(keep, pa.int64()))

    def _invalid_row(self, row: tuple[int, str], extra: int) -> list[Deal | Rejected]:
        text = row[1]
        fields = next(csv.reader(io.StringIO(text), delimiter=self.delimiter), [])
        if not any(f.strip() for f in fields):
            return []
        return [self.read_row(row[0] + extra, fields)]

    @staticmethod
    def _decoded(column: pa.Array) -> pa.Array | None:
        try:
            return column.cast(pa.string())
        except pa.ArrowInvalid:
            return None

    @staticmethod
    def _breaks(strings: list[pa.Array] | None, fields: list[list[str]] | None,
                rows: int) -> list[int] | None:
        """Line breaks inside each row's cells (``None`` when there are none)."""
        if strings is not None:
            total = None
            for column in strings:
                n = pc.add(pc.count_substring(column, "\n"), pc.count_substring(column, "\r"))
                n = pc.subtract(n, pc.count_substring(column, "\r\n"))
                total = n if total is None else pc.add(total, n)
            if total is None or pc.max(total).as_py() in (None, 0):
                return None
            return [int(v) for v in total.to_pylist()]
        if fields is None:
            return None
        return [sum(_breaks(f[i]) for f in fields) for i in range(rows)]

    # ------------------------------------------------------------------ the rules, by column

    def _pick(self, stripped: _Stripped, name: str, rows: int) -> tuple[pa.Array, bool]:
        """The first non-blank stripped cell of canonical column ``name`` ('' when none); whether mapped."""
        indices = self.layout.index.get(name, ())
        if not indices:
            return pa.array([""] * rows, pa.string()), False
        value = stripped[indices[0]]
        for i in indices[1:]:
            value = pc.if_else(pc.equal(value, ""), stripped[i], value)
        return value, True

    def _columns(self, strings: list[pa.Array], special: list[bool]) -> tuple[pa.Table, pa.Array, pa.Array]:
        """The block as a deal batch, with the rows the row parser must read, and the blank rows.

        ``special[i]``: whether column ``i`` holds a quote, backslash or control character.
        """
        s = self.s
        rows = len(strings[0])
        stripped = _Stripped(strings)
        blank = blank_rows(strings, self.layout.index["id"][0])
        needs = pa.array([False] * rows)

        def flag(mask: pa.Array) -> None:
            nonlocal needs
            needs = pc.or_(needs, pc.fill_null(mask, True))

        # what connectors.validate and the row reader's caps refuse goes to the row reader, which
        # rejects it with its reason: a NUL anywhere, a row longer than max_row_kib
        chars = None
        for column, odd in zip(strings, special, strict=True):
            if odd:
                flag(pc.match_substring(column, "\x00"))
            length = pc.utf8_length(column)
            chars = length if chars is None else pc.add(chars, length)
        if chars is not None:
            flag(pc.greater(chars, s.max_row_chars))

        text: dict[str, pa.Array] = {}
        for name in TEXT_COLUMNS:
            value, _ = self._pick(stripped, name, rows)
            guarded = pc.match_substring_regex(value, _FORMULA_RE)
            text[name] = pc.if_else(guarded, pc.utf8_slice_codeunits(value, 1), value)
        flag(pc.equal(text["id"], ""))
        for name in ID_COLUMNS:
            flag(pc.greater(pc.utf8_length(text[name]), MAX_ID_LENGTH))
        # amounts: plain decimal numbers only (anything else is the row parser's)
        amount, _ = self._pick(stripped, "amount", rows)
        # at most 14 integer digits and 4 decimals: within connectors.validate.MAX_AMOUNT, no rounding
        integer = r"^[+-]?[0-9]{1,14}$"
        plain = r"^[+-]?[0-9]{1,14}(\.[0-9]{1,4})?$" if s.decimal_separator in (None, ".") else integer
        ok = pc.match_substring_regex(amount, plain)
        if s.decimal_separator is None:
            ok = pc.and_(ok, pc.invert(pc.match_substring_regex(amount, r"^[+-]?[1-9][0-9]{0,2}\.[0-9]{3}$")))
        present = pc.not_equal(amount, "")
        flag(pc.and_(present, pc.invert(ok)))
        amount_units = self._units(pc.if_else(pc.and_(present, ok), amount, pa.scalar(None, pa.string())))
        currency, _ = self._pick(stripped, "currency", rows)
        code = pc.match_substring_regex(currency, r"^[A-Za-z]{3}$")
        flag(pc.and_(pc.not_equal(currency, ""), pc.invert(code)))
        currency = pc.if_else(pc.equal(currency, ""), pa.scalar(s.currency, pa.string()),
                              pc.utf8_upper(currency))
        times: dict[str, pa.Array] = {}
        whole_days = pa.array([False] * rows)
        for name in DATETIME_COLUMNS:
            value, _ = self._pick(stripped, name, rows)
            parsed, date_only, bad = self._timestamps(value)
            flag(bad)
            times[name] = parsed
            if name in ("created_at", "closed_at"):
                whole_days = pc.or_(whole_days, pc.fill_null(date_only, False))
        value, _ = self._pick(stripped, "expected_close_date", rows)
        is_date = pc.match_substring_regex(value, _DATE_RE)
        flag(pc.and_(pc.not_equal(value, ""), pc.invert(is_date)))
        expected = self._dates(pc.if_else(is_date, value, pa.scalar(None, pa.string())))
        flag(pc.and_(is_date, pc.is_null(expected)))
        history_text, _ = self._pick(stripped, "stage_history", rows)
        history, bad_history = self._history(history_text)
        flag(bad_history)
        stage = _blank_to_null(text["stage"])
        if "status" in self.layout.index:
            status_text, _ = self._pick(stripped, "status", rows)
            status, bad = self._lookup(status_text, lambda v: parse_status(v, s.status))
            flag(bad)
        else:
            status, _ = self._lookup(pc.fill_null(stage, ""), lambda v: s.status.status_of(v or None))
        link = pa.nulls(rows, pa.string())
        if s.link_template:
            template, quote = s.link_template, urllib.parse.quote
            link = pa.array([template.format(id=quote(v, safe="")) for v in text["id"].to_pylist()],
                            pa.string())
        raw = self._raw(strings, special)
        pipeline = pc.if_else(pc.equal(text["pipeline"], ""), pa.scalar(s.default_pipeline, pa.string()),
                              text["pipeline"])
        columns = {
            "source": pa.array([s.name] * rows, pa.string()),
            "external_id": text["id"],
            "title": _blank_to_null(text["title"]),
            "amount": amount_units,
            "currency": currency,
            "pipeline_id": pipeline,
            "stage_id": stage,
            "status": status,
            "archived": pa.array([False] * rows),
            "owner_id": _blank_to_null(text["owner"]),
            "created_at": times["created_at"],
            "closed_at": times["closed_at"],
            "expected_close_date": expected,
            "stage_entered_at": times["stage_entered_at"],
            "next_step": _blank_to_null(text["next_step"]),
            "next_activity_at": times["next_activity_at"],
            "last_activity_at": times["last_activity_at"],
            "updated_at": pa.nulls(rows, TIMESTAMP),
            "link": link,
            "whole_days": whole_days,
            "raw": raw,
            "stage_history": history,
        }
        table = pa.Table.from_arrays([columns[f.name] for f in BATCH_SCHEMA], schema=BATCH_SCHEMA)
        return table, needs, blank

    @staticmethod
    def _units(amount: pa.Array) -> pa.Array:
        """Plain decimal text to 1/10,000 units, rounded half to even (as ``sync.batch.units``)."""
        scaled = pc.cast(amount, pa.decimal128(38, 8))
        rounded = pc.round(scaled, ndigits=4, round_mode="half_to_even")
        text = pc.cast(pc.cast(rounded, pa.decimal128(38, 4)), pa.string())
        return pc.cast(pc.replace_substring(text, ".", ""), pa.int64())

    def _timestamps(self, value: pa.Array) -> tuple[pa.Array, pa.Array, pa.Array]:
        """ISO dates and times to aware UTC; (values, date-only, rows the row parser must read)."""
        none = pa.scalar(None, pa.string())
        present = pc.not_equal(value, "")
        date_only = pc.match_substring_regex(value, _DATE_RE)
        timed = pc.match_substring_regex(value, _TIME_RE + "(" + _OFFSET_RE[:-1] + ")?$")
        offset = pc.and_(timed, pc.match_substring_regex(value, _OFFSET_RE))
        odd = pc.or_(pc.starts_with(value, "0000"), pc.starts_with(value, "9999"))
        bad = pc.and_(present, pc.or_(pc.invert(pc.or_(date_only, timed)), odd))
        zone = self.s.timezone
        # with an offset: the instant it names
        aware = self._cast(pc.if_else(pc.and_(offset, pc.invert(bad)), value, none), TIMESTAMP)
        # local times and dates: in the feed's zone; a time the zone skips or repeats goes row by row
        local_text = pc.if_else(pc.and_(pc.and_(timed, pc.invert(offset)), pc.invert(bad)), value, none)
        local = self._cast(local_text, _NAIVE)
        dates = self._cast(pc.if_else(pc.and_(date_only, pc.invert(bad)), value, none), pa.date32())
        naive = pc.coalesce(local, pc.cast(dates, _NAIVE))
        placed = pc.assume_timezone(naive, zone, ambiguous="earliest", nonexistent="earliest")
        moved = pc.not_equal(pc.local_timestamp(placed), naive)
        if zone != "UTC":
            # a repeated hour: the row path takes the first (fold=0), as "earliest" does;
            # a skipped one differs, so it goes row by row
            bad = pc.or_(bad, pc.fill_null(moved, False))
        parsed = pc.coalesce(aware, placed.cast(TIMESTAMP))
        failed = pc.and_(pc.and_(present, pc.invert(bad)), pc.is_null(parsed))
        return parsed, date_only, pc.or_(bad, failed)

    @staticmethod
    def _cast(values: pa.Array, to: pa.DataType) -> pa.Array:
        """Cast, leaving a value Arrow cannot read (``2026-02-30``) null instead of failing the block."""
        try:
            return pc.cast(values, to)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            out = []
            for v in values.to_pylist():
                try:
                    out.append(None if v is None else pc.cast(pa.array([v]), to)[0].as_py())
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                    out.append(None)
            return pa.array(out, to)

    def _dates(self, value: pa.Array) -> pa.Array:
        return self._cast(value, pa.date32())

    def _history(self, value: pa.Array) -> tuple[pa.Array, pa.Array]:
        """``Stage@date; Stage@date`` cells as lists of visits; and the rows the row parser must read."""
        rows = len(value)
        present = pc.not_equal(value, "")
        if not pc.any(present).as_py():
            return pa.nulls(rows, HISTORY_TYPE), pa.array([False] * rows)
        cleaned = pc.replace_substring_regex(value, r"\s*;[\s;]*", ";")
        cleaned = pc.utf8_trim(cleaned, ";")
        cleaned = pc.if_else(pc.equal(cleaned, ""), pa.scalar(None, pa.string()), cleaned)
        lists = pc.split_pattern(cleaned, ";")
        flat = pc.list_flatten(lists)
        parents = pc.list_parent_indices(lists)
        entry = pc.utf8_trim_whitespace(flat)
        parts = pc.extract_regex(entry, r"^(?P<stage>.*)@(?P<when>.*)$")
        stage = pc.utf8_trim_whitespace(pc.struct_field(parts, "stage"))
        when = pc.utf8_trim_whitespace(pc.struct_field(parts, "when"))
        at, _, bad_at = self._timestamps(pc.fill_null(when, ""))
        bad = pc.or_(pc.is_null(parts), pc.or_(pc.equal(pc.fill_null(stage, ""), ""),
                                                pc.equal(pc.fill_null(when, ""), "")))
        too_long = pc.fill_null(pc.greater(pc.utf8_length(stage), MAX_ID_LENGTH), False)
        bad = pc.or_(bad, pc.or_(too_long, bad_at))
        guarded = pc.match_substring_regex(stage, _FORMULA_RE)
        stage = pc.if_else(guarded, pc.utf8_slice_codeunits(stage, 1), stage)
        visits = pa.StructArray.from_arrays([stage, at.cast(TIMESTAMP)], names=["stage", "entered_at"])
        offsets = lists.offsets
        history = pa.ListArray.from_arrays(offsets, visits, type=HISTORY_TYPE, mask=pc.is_null(lists))
        bad_rows = pa.array([False] * rows)
        if pc.any(bad).as_py():
            flagged = set(pc.filter(parents, bad).to_pylist())
            bad_rows = pa.array([i in flagged for i in range(rows)])
        return history, bad_rows

    @staticmethod
    def _lookup(value: pa.Array, read: Callable[[str], str]) -> tuple[pa.Array, pa.Array]:
        """Map each distinct value through ``read``; values it rejects are the row parser's."""
        distinct = pc.unique(value)
        mapped: list[str | None] = []
        for v in distinct.to_pylist():
            try:
                mapped.append(read(v))
            except ValueError:
                mapped.append(None)
        result = pc.take(pa.array(mapped, pa.string()), pc.index_in(value, value_set=distinct))
        return result, pc.is_null(result)

    def _raw(self, strings: list[pa.Array], special: list[bool]) -> pa.Array:
        """The raw payload (header -> cell) as JSON text, as ``sync.batch`` encodes a row's dict."""
        pieces: list[Any] = []
        controls = None
        for n, (key, column, escape) in enumerate(zip(self._raw_keys, strings, special, strict=True)):
            pieces.append(("{" if n == 0 else ',') + key + ':"')
            pieces.append(_json_text(column) if escape else column)
            pieces.append('"')
            if escape:
                odd = pc.match_substring_regex(column, r"[\x00-\x08\x0b\x0c\x0e-\x1f]")
                controls = odd if controls is None else pc.or_(controls, odd)
        pieces.append("}")
        raw = pc.binary_join_element_wise(*[pa.scalar(p) if isinstance(p, str) else p for p in pieces], "")
        if controls is not None and pc.any(controls).as_py():
            values = raw.to_pylist()
            headers = self.layout.headers
            for i in pc.indices_nonzero(controls).to_pylist():
                values[i] = encode_json(dict(zip(headers, (c[i].as_py() for c in strings), strict=False)))
            raw = pa.array(values, pa.string())
        return raw


_DONE = object()


def _read_ahead(
    reader: pa_csv.CSVStreamingReader, take_invalid: Callable[[], list[tuple[int, str]]],
) -> Iterator[tuple[pa.RecordBatch, list[tuple[int, str]]]]:
    """Arrow's blocks, each parsed on a thread while the one before is mapped (Arrow frees the GIL).

    Each block comes with the invalid rows reported while it was parsed. Arrow's own
    ``use_threads`` is not used: it reports invalid rows out of order, which breaks
    their line numbers. At most one block waits; an error of the reader is raised
    here; when the consumer stops early, the thread stops after its current block.
    """
    handoff: queue.Queue[Any] = queue.Queue(maxsize=1)
    stop = threading.Event()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                handoff.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def parse() -> None:
        try:
            while not stop.is_set():
                try:
                    batch = reader.read_next_batch()
                except StopIteration:
                    break
                if not put((batch, take_invalid())):
                    return
        except BaseException as exc:  # handed to the consumer, raised there
            put(exc)
            return
        put(_DONE)

    thread = threading.Thread(target=parse, name="csv-read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            item = handoff.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join()


class _Stripped:
    """A block's columns with surrounding whitespace trimmed, each trimmed when first asked for."""

    def __init__(self, strings: list[pa.Array]) -> None:
        self._strings = strings
        self._done: dict[int, pa.Array] = {}

    def __getitem__(self, index: int) -> pa.Array:
        if (column := self._done.get(index)) is None:
            column = self._done[index] = pc.utf8_trim_whitespace(self._strings[index])
        return column


def blank_rows(strings: list[pa.Array], probe: int) -> pa.Array:
    """Which rows have only blank (whitespace) cells; ``probe`` is a column that is rarely blank.

    Only the rows whose ``probe`` cell is blank are looked at in every column, so a
    block whose probe column (the id) is filled costs one column's check.
    """
    empty = pc.equal(pc.utf8_trim_whitespace(strings[probe]), "")
    if not pc.any(empty).as_py():
        return empty
    candidates = pc.indices_nonzero(empty)
    blank = pa.array([True] * len(candidates))
    for column in strings:
        blank = pc.and_(blank, pc.equal(pc.utf8_trim_whitespace(pc.take(column, candidates)), ""))
    mask = [False] * len(strings[probe])
    for row, is_blank in zip(candidates.to_pylist(), blank.to_pylist(), strict=True):
        mask[row] = bool(is_blank)
    return pa.array(mask, pa.bool_())


def _breaks(text: str) -> int:
    return text.count("\n") + text.count("\r") - text.count("\r\n")


def _line_key(item: Deal | Rejected) -> int:
    """Rejects in line order (deals from the row parser first: their order does not matter)."""
    return 0 if isinstance(item, Deal) else int(item.where.split()[-1])


def scan_catalog(
    stream: BinaryIO, layout: Any, delimiter: str, default_pipeline: str,
) -> tuple[dict[str, dict[str, None]], dict[str, str | None], int]:
    """The row path's catalog scan (``CsvFeedConnector._scan``) by column.

    Returns the stages of each pipeline in order of first appearance (a row's
    history before its stage), the owners with their first e-mail, and the number
    of rows (blank lines left out).
    """
    width = len(layout.headers)
    stages: dict[str, dict[str, None]] = {}
    owners: dict[str, str | None] = {}
    invalid: list[str] = []

    def on_invalid(row: Any) -> str:
        invalid.append(str(row.text))
        return "skip"

    wanted = {name: layout.index.get(name, ()) for name in
              ("pipeline", "stage", "stage_history", "owner", "owner_email")}
    reader = pa_csv.open_csv(
        stream,
        read_options=pa_csv.ReadOptions(use_threads=False, block_size=BLOCK_SIZE,
                                        autogenerate_column_names=True),
        parse_options=pa_csv.ParseOptions(delimiter=delimiter, newlines_in_values=True,
                                          ignore_empty_lines=False, invalid_row_handler=on_invalid),
        convert_options=pa_csv.ConvertOptions(column_types={f"f{i}": pa.binary() for i in range(width)}),
    )
    rows = 0
    first = True
    for batch in reader:
        columns = list(batch.columns)
        if first:
            columns = [c.slice(1) for c in columns]
            first = False
        try:
            strings = [c.cast(pa.string()) for c in columns]
        except pa.ArrowInvalid:  # not UTF-8 somewhere: the row path skips such rows, so do we
            decoded = [[v.decode("utf-8", "surrogateescape") for v in c.to_pylist()] for c in columns]
            for i in range(len(decoded[0]) if decoded else 0):
                fields = [d[i] for d in decoded]
                if any(f.strip() for f in fields):
                    rows += 1
                    if not any("\udc80" <= ch <= "\udcff" for f in fields for ch in f):
                        _scan_row(fields, layout, default_pipeline, stages, owners)
            continue
        if not strings:
            continue
        stripped = _Stripped(strings)
        keep = pc.invert(blank_rows(strings, layout.index["id"][0]))
        rows += pc.sum(pc.cast(keep, pa.int64())).as_py() or 0

        def pick(name: str, stripped: _Stripped = stripped, keep: pa.Array = keep) -> pa.Array:
            indices = wanted[name]
            if not indices:
                return pc.filter(pa.array([""] * len(keep), pa.string()), keep)
            value = stripped[indices[0]]
            for i in indices[1:]:
                value = pc.if_else(pc.equal(value, ""), stripped[i], value)
            return pc.filter(value, keep)

        pipeline = pick("pipeline")
        pipeline = pc.if_else(pc.equal(pipeline, ""), pa.scalar(default_pipeline, pa.string()), pipeline)
        stage = pick("stage")
        n = len(pipeline)
        # (row, position, pipeline, stage name): each row's history entries, then its stage
        history = pick("stage_history")
        cleaned = pc.replace_substring_regex(history, r"\s*;[\s;]*", ";")
        cleaned = pc.utf8_trim(cleaned, ";")
        cleaned = pc.if_else(pc.equal(cleaned, ""), pa.scalar(None, pa.string()), cleaned)
        lists = pc.split_pattern(cleaned, ";")
        flat = pc.utf8_trim_whitespace(pc.list_flatten(lists))
        parents = pc.list_parent_indices(lists)
        names = pc.struct_field(pc.extract_regex(pc.if_else(pc.match_substring(flat, "@"), flat,
                                                            pa.scalar("@", pa.string())),
                                                 r"^(?P<stage>.*)@(?P<when>.*)$"), "stage")
        names = pc.utf8_trim_whitespace(names)
        good = pc.and_(pc.not_equal(names, ""), pc.less_equal(pc.utf8_length(names), MAX_ID_LENGTH))
        parts = pa.table({
            "row": pa.concat_arrays([pc.filter(parents, good).cast(pa.int64()),
                                     pa.array(range(n), pa.int64())]),
            "pos": pa.concat_arrays([pc.filter(pa.array(range(len(flat)), pa.int64()), good),
                                     pa.array([1 << 40] * n, pa.int64())]),
            "name": pa.concat_arrays([pc.filter(names, good), stage]),
        })
        parts = parts.filter(pc.not_equal(parts["name"], "")).sort_by([("row", "ascending"),
                                                                         ("pos", "ascending")])
        keys = pc.binary_join_element_wise(pc.take(pipeline, parts["row"]), parts["name"], "\x1f")
        for p in pc.unique(pipeline).to_pylist():
            stages.setdefault(p, {})
        for key in pc.unique(keys).to_pylist():
            p, _, name = key.partition("\x1f")
            stages.setdefault(p, {}).setdefault(name)
        owner = pick("owner")
        email = pick("owner_email")
        has_owner = pc.not_equal(owner, "")
        for o in pc.unique(pc.filter(owner, has_owner)).to_pylist():
            owners.setdefault(o, None)
        with_email = pa.table({"owner": owner, "email": email}).filter(
            pc.and_(has_owner, pc.not_equal(email, "")))
        if len(with_email):
            firsts = with_email.group_by("owner", use_threads=False).aggregate([("email", "first")])
            for o, e in zip(firsts["owner"].to_pylist(), firsts["email_first"].to_pylist(), strict=True):
                owners[o] = owners.get(o) or e or None
    for text in invalid:
        fields = next(csv.reader(io.StringIO(text), delimiter=delimiter), [])
        if any(f.strip() for f in fields):
            rows += 1
            if len(fields) >= width:
                _scan_row(fields, layout, default_pipeline, stages, owners)
    return stages, owners, rows


def _scan_row(fields: list[str], layout: Any, default_pipeline: str, stages: dict[str, dict[str, None]],
              owners: dict[str, str | None]) -> None:
    """One row of the catalog scan, as the row path reads it."""
    from sales_velocity.connectors.csv_feed.mapping import history_entries

    pipeline = layout.get(fields, "pipeline") or default_pipeline
    seen = stages.setdefault(pipeline, {})
    for _, name, _ in history_entries(layout.get(fields, "stage_history")):
        if name and len(name) <= MAX_ID_LENGTH:
            seen.setdefault(name)
    if stage := layout.get(fields, "stage"):
        seen.setdefault(stage)
    if owner := layout.get(fields, "owner"):
        owners[owner] = owners.get(owner) or layout.get(fields, "owner_email") or None
