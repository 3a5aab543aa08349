"""Reading one CSV row: amounts, dates, statuses, and the row-to-``Deal`` parser.

The rules are small pure functions on one cell's text (``parse_money``,
``parse_temporal``, ``parse_status``, ``detect_delimiter``, ``unquote_formula``,
``first_filled``), so each can be tested on its own and re-expressed column by
column; ``RowParser`` applies them to a row and collects every problem of it.
The file handling is in ``csv_feed.connector``.
"""

from __future__ import annotations

import datetime as dt
import re
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from babel.numbers import list_currencies

from sales_velocity.connectors.base import Deal, DealStatus, StageVisit
from sales_velocity.connectors.validate import MAX_AMOUNT

if TYPE_CHECKING:
    from sales_velocity.connectors.csv_feed.settings import CsvFeedSettings, StatusMapping

__all__ = [
    "MAX_ID_LENGTH", "RowLayout", "RowParser", "detect_delimiter", "first_filled", "history_entries",
    "parse_amount", "parse_money", "parse_status", "parse_temporal", "quote_cell", "unquote_formula",
]

DATETIME_COLUMNS = ("created_at", "closed_at", "stage_entered_at", "next_activity_at", "last_activity_at")
ID_COLUMNS = ("id", "pipeline", "stage", "owner")
TEXT_COLUMNS = ("id", "title", "pipeline", "stage", "owner", "owner_email", "next_step")
"""Columns whose cells may carry an export's formula guard (a leading ``'``)."""
MAX_ID_LENGTH = 200  # the store keeps ids, pipelines, stages and owners in 200 characters

STATUS_SYNONYMS: dict[str, DealStatus] = {
    "open": "open", "active": "open", "in progress": "open",
    "won": "won", "closed won": "won", "closedwon": "won", "win": "won",
    "lost": "lost", "closed lost": "lost", "closedlost": "lost", "loss": "lost",
    "deleted": "deleted", "removed": "deleted",
}
"""Values a status column may hold (compared case-insensitively, ``-``/``_`` read as spaces)."""

ISO_CURRENCIES: frozenset[str] = frozenset(list_currencies())
"""ISO 4217 codes (from CLDR): a three-letter word next to an amount must be one of them."""
CURRENCY_SYMBOLS: dict[str, str | None] = {
    "$": None, "US$": "USD", "€": "EUR", "£": "GBP", "¥": None, "kr": None, "kr.": None,
}
"""Symbols accepted next to an amount, and the currency each one names (``None``: several use it)."""

_GROUP_SPACES = " \u00a0\u202f\u2009"  # space, no-break space, narrow no-break space, thin space
_AMOUNT_CHARS = re.compile(rf"[0-9.,{_GROUP_SPACES}]+")
_CURRENCY = r"US\$|[$€£¥]|[A-Za-z]{3}|[Kk][Rr]\.?"
_PREFIX = re.compile(rf"({_CURRENCY})[{_GROUP_SPACES}]*")
_SUFFIX = re.compile(rf"[{_GROUP_SPACES}]*({_CURRENCY})$")
_WHOLE_UNITS = re.compile(r"[.,][-\u2013]$")  # 12 500,- (a dash for the decimals: whole units)
_TIME_DIRECTIVES = re.compile(r"%[HIMSfpzXcTRr]")
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
ISO_FORMS = "ISO 8601 like 2026-11-26 or 2026-11-26T14:30"


# --------------------------------------------------------------------------- amounts


def _currency_token(token: str) -> str | None:
    """The ISO code a currency token names (``None`` for a symbol several currencies use).

    Raises:
        ValueError: a three-letter word that is not an ISO 4217 code.
    """
    for symbol in (token, token.lower()):
        if symbol in CURRENCY_SYMBOLS:
            return CURRENCY_SYMBOLS[symbol]
    code = token.upper()
    if code not in ISO_CURRENCIES:
        raise ValueError("is not a number")
    return code


def parse_money(text: str, decimal_separator: str | None = None) -> tuple[Decimal | None, str | None]:
    """Read an amount as a person or a CRM wrote it: ``(amount, currency code)``; ``(None, None)`` if empty.

    The number takes the forms ``parse_number`` reads. Around it may stand one
    currency marker, before or after (``$12,500.00``, ``kr 12 500,00``,
    ``12 500 kr``, ``NOK 7 000``, ``7 000 EUR``): an ISO 4217 code gives the
    currency, and so do ``€`` (EUR), ``£`` (GBP) and ``US$``; ``$``, ``¥`` and
    ``kr`` name several currencies and give none. ``,-`` (or ``.-``) at the end
    means whole units and makes that mark the decimal one (``12 500,-``). A sign
    may stand before or after the marker (``-$500``, ``$-500``).

    Raises:
        ValueError: the reason, ready to show after the column name.
    """
    body = text.strip()
    if not body:
        return None, None
    sign = ""
    if body[0] in "+-":
        sign, body = body[0].replace("+", ""), body[1:].lstrip()
    code: str | None = None
    marked = False
    if (m := _PREFIX.match(body)) and m.end() < len(body):
        code, marked, body = _currency_token(m.group(1)), True, body[m.end():]
        if not sign and body[:1] in "+-":
            sign, body = body[0].replace("+", ""), body[1:].lstrip()
    if (m := _SUFFIX.search(body)) and m.start() > 0:
        if marked:
            raise ValueError("is not a number (more than one currency)")
        code, body = _currency_token(m.group(1)), body[: m.start()]
    separator = decimal_separator
    if _WHOLE_UNITS.search(body):
        separator, body = body[-2], body[:-2]
    return parse_number(sign + body, separator), code


def parse_amount(text: str, decimal_separator: str | None = None) -> Decimal | None:
    """Read an amount (``parse_money`` without the currency); ``None`` for an empty cell.

    Raises:
        ValueError: the reason, ready to show after the column name.
    """
    return parse_money(text, decimal_separator)[0]


def parse_number(text: str, decimal_separator: str | None = None) -> Decimal | None:
    """Read a plain number as a person wrote it; ``None`` for an empty cell.

    Accepts ``50000.5``, ``50 000,50``, ``50,000.50``, ``1.234.567,89`` and
    no-break spaces as thousand separators. With one ``,`` or ``.`` followed by
    exactly three digits (``1,234``) the meaning is ambiguous; that is an error
    unless ``decimal_separator`` says which one is the decimal mark.

    Raises:
        ValueError: the reason, ready to show after the column name.
    """
    original = text.strip()
    if not original:
        return None
    sign, body = "", original
    if body[0] in "+-":
        sign, body = body[0].replace("+", ""), body[1:].lstrip()
    if not body or not _AMOUNT_CHARS.fullmatch(body) or not any(c.isdigit() for c in body):
        raise ValueError("is not a number")
    has_space = any(c in _GROUP_SPACES for c in body)
    commas, points = body.count(","), body.count(".")
    decimal: str | None
    if decimal_separator is not None:
        decimal = decimal_separator if decimal_separator in body else None
    elif commas and points:
        decimal = "," if body.rfind(",") > body.rfind(".") else "."
    elif commas or points:
        mark = "," if commas else "."
        if max(commas, points) > 1:
            decimal = None  # repeated: a thousand separator
        elif has_space:
            decimal = mark
        else:
            whole, frac = body.split(mark)
            if len(frac) == 3 and 1 <= len(whole) <= 3 and not whole.startswith("0"):
                raise ValueError("is ambiguous: a thousand separator or a decimal mark? "
                                 "(set decimal_separator)")
            decimal = mark
    else:
        decimal = None
    whole, _, frac = body.partition(decimal) if decimal else (body, "", "")
    if decimal and not frac.isdigit():
        raise ValueError("is not a number")
    separators = {c for c in whole if not c.isdigit()}
    if len(separators) > 1 or (decimal and decimal in separators):
        raise ValueError("is not a number")
    if separators:
        groups = re.split(f"[{re.escape(''.join(separators))}]", whole)
        if not (1 <= len(groups[0]) <= 3 and all(len(g) == 3 for g in groups[1:])):
            raise ValueError("is not a number (thousand separators must group 3 digits)")
        whole = "".join(groups)
    value = Decimal(f"{sign}{whole or '0'}" + (f".{frac}" if frac else ""))
    if abs(value) > MAX_AMOUNT:
        raise ValueError(f"is too large (the store holds at most {MAX_AMOUNT:,})")
    return value


def parse_status(text: str, mapping: StatusMapping | None = None) -> DealStatus:
    """Read a status column value: one listed in ``mapping``, else open/won/lost/deleted or a synonym.

    Raises:
        ValueError: the value is none of them.
    """
    if mapping is not None and (listed := mapping.lookup(text)) is not None:
        return listed
    key = " ".join(text.replace("-", " ").replace("_", " ").split()).casefold()
    try:
        return STATUS_SYNONYMS[key]
    except KeyError:
        listed_too = "; other values can be listed in [sources.status]" if mapping is not None else ""
        raise ValueError(f"is not a status (expected open, won, lost or deleted{listed_too})") from None


# --------------------------------------------------------------------------- dates


@dataclass(frozen=True, slots=True)
class DateFormats:
    """The strptime formats tried for one column, in order, before ISO 8601."""

    formats: tuple[str, ...] = ()

    @property
    def has_time(self) -> tuple[bool, ...]:
        """Whether each format reads a time of day (else its values are plain dates)."""
        return tuple(bool(_TIME_DIRECTIVES.search(f)) for f in self.formats)

    def describe(self) -> str:
        """The accepted forms, for an error message."""
        return f"{', '.join(self.formats)} or {ISO_FORMS}" if self.formats else ISO_FORMS


def parse_temporal(text: str, formats: DateFormats = DateFormats()) -> dt.datetime | dt.date:
    """Read a date or a datetime: each format in turn, then ISO 8601.

    A format without a time directive (and an ISO date) gives a ``date``; the
    others a ``datetime``, naive unless the text carries an offset.

    Raises:
        ValueError: no format reads it.
        OverflowError: a date out of range.
    """
    for fmt, has_time in zip(formats.formats, formats.has_time, strict=True):
        try:
            parsed = dt.datetime.strptime(text, fmt)  # noqa: DTZ007 - the zone is applied by the caller
        except ValueError:
            continue
        return parsed if has_time else parsed.date()
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        return dt.datetime.fromisoformat(text)  # ValueError propagates


def to_utc(value: dt.datetime | dt.date, zone: dt.tzinfo) -> tuple[dt.datetime, bool]:
    """An aware UTC datetime (naive values and dates are local to ``zone``), and whether it was a date."""
    if not isinstance(value, dt.datetime):
        return dt.datetime.combine(value, dt.time(), tzinfo=zone).astimezone(dt.UTC), True
    if value.tzinfo is None:
        value = value.replace(tzinfo=zone)
    return value.astimezone(dt.UTC), False


# --------------------------------------------------------------------------- cells and headers


def detect_delimiter(header_line: str, candidates: Sequence[str] = (",", ";", "\t", "|")) -> str:
    """The delimiter of a header line: the candidate found most often outside quotes (ties: first).

    A header with none of them (one column) is read as comma-separated.
    """
    outside, quoted = [], False
    for c in header_line:
        if c == '"':
            quoted = not quoted
        elif not quoted:
            outside.append(c)
    counts = {d: outside.count(d) for d in candidates}
    best = max(candidates, key=lambda d: counts[d])  # max keeps the first of equal counts
    return best if counts[best] else candidates[0]


def first_filled(fields: Sequence[str], indices: Sequence[int]) -> tuple[int, str]:
    """Of the cells at ``indices``, the first that is not blank: (its index, its stripped text).

    When all are blank (or missing), the first index and ``""``; ``(-1, "")`` without indices.
    """
    for i in indices:
        if i < len(fields) and (value := fields[i].strip()):
            return i, value
    return (indices[0] if indices else -1), ""


def unquote_formula(text: str) -> str:
    """Undo an export's formula guard: ``'=SUM(A1)`` -> ``=SUM(A1)`` (only before = + - @ tab CR)."""
    if len(text) > 1 and text[0] == "'" and text[1] in _FORMULA_START:
        return text[1:]
    return text


def history_entries(text: str) -> list[tuple[str, str, str]]:
    """Split a ``stage_history`` cell (``Stage@date; Stage@date``) into (entry, stage, date text).

    Empty entries are dropped; an entry without ``@`` has an empty stage.
    """
    entries = []
    for entry in (part.strip() for part in text.split(";")):
        if entry:
            stage, _, when = entry.rpartition("@")
            entries.append((entry, stage.strip(), when.strip()))
    return entries


@dataclass(frozen=True, slots=True)
class RowLayout:
    """Where each canonical column sits in the file's rows (several columns: the first filled wins)."""

    headers: tuple[str, ...]
    index: dict[str, tuple[int, ...]]

    def get(self, fields: Sequence[str], name: str) -> str:
        """Return the stripped value of canonical column ``name`` ('' when absent or blank)."""
        return first_filled(fields, self.index.get(name, ()))[1]

    def pick(self, fields: Sequence[str], name: str) -> tuple[str, str]:
        """The header the value of ``name`` comes from, and the value ('' when blank)."""
        i, value = first_filled(fields, self.index.get(name, ()))
        return (self.headers[i] if i >= 0 else name), value


# --------------------------------------------------------------------------- rows


class RowParser:
    """Turns one row's fields into a ``Deal``; raises ``ValueError`` with every problem."""

    def __init__(self, settings: CsvFeedSettings, layout: RowLayout, shift_days: int) -> None:
        self.s = settings
        self.layout = layout
        self.zone = ZoneInfo(settings.timezone)
        self.shift = dt.timedelta(days=shift_days)
        self.formats = {name: DateFormats(tuple(settings.formats_for(name)))
                        for name in (*DATETIME_COLUMNS, "expected_close_date", "stage_history")}
        self.has_currency_column = "currency" in layout.index

    def _temporal(self, text: str, column: str) -> dt.datetime | dt.date:
        """Parse with the column's formats, else ISO 8601; rebased; dates stay dates."""
        return parse_temporal(text, self.formats[column]) + self.shift

    def _bad_date(self, header: str, column: str, text: str) -> str:
        return f"{header} {quote_cell(text)} is not a date (expected {self.formats[column].describe()})"

    def _history(self, text: str) -> tuple[StageVisit, ...]:
        """Read ``Stage@date; Stage@date`` (the stages a deal entered, and when).

        Raises:
            ValueError: the first entry that is not ``stage@date``, ready to show after the column name.
        """
        visits = []
        for entry, stage, when in history_entries(text):
            if not stage or not when:
                raise ValueError(f'entry {quote_cell(entry)} is not "stage@date"')
            if len(stage) > MAX_ID_LENGTH:
                raise ValueError(
                    f"entry {quote_cell(entry)}: the stage is longer than {MAX_ID_LENGTH} characters")
            try:
                entered_at, _ = to_utc(self._temporal(when, "stage_history"), self.zone)
            except (ValueError, OverflowError):
                raise ValueError(f"entry {quote_cell(entry)}: {quote_cell(when)} is not a date "
                                 f"(expected {self.formats['stage_history'].describe()})") from None
            visits.append(StageVisit(unquote_formula(stage), entered_at))
        return tuple(visits)

    def parse(self, fields: Sequence[str]) -> Deal:
        """Build the row's ``Deal``; raise ``ValueError`` listing every problem of the row."""
        layout, problems = self.layout, []
        pick = layout.pick
        text_of = {name: unquote_formula(layout.get(fields, name)) for name in TEXT_COLUMNS}
        values: dict[str, Any] = {}
        external_id = text_of["id"]
        if not external_id:
            problems.append(f'{pick(fields, "id")[0]} is empty')
        for name in ID_COLUMNS:
            if len(text_of[name]) > MAX_ID_LENGTH:
                problems.append(f"{pick(fields, name)[0]} is longer than {MAX_ID_LENGTH} characters")
        amount_header, text = pick(fields, "amount")
        amount_currency = None
        try:
            values["amount"], amount_currency = parse_money(text, self.s.decimal_separator)
        except ValueError as exc:
            problems.append(f"{amount_header} {quote_cell(text)} {exc}")
        header, text = pick(fields, "currency")
        if text and not re.fullmatch(r"[A-Za-z]{3}", text):
            problems.append(f"{header} {quote_cell(text)} is not a 3-letter currency code")
        elif text and amount_currency and text.upper() != amount_currency:
            problems.append(f"{amount_header} is in {amount_currency} but {header} says {text.upper()}")
        values["currency"] = text.upper() or amount_currency or self.s.currency
        whole_days = False
        for name in DATETIME_COLUMNS:
            header, text = pick(fields, name)
            values[name] = None
            if text:
                try:
                    values[name], date_only = to_utc(self._temporal(text, name), self.zone)
                except (ValueError, OverflowError):
                    problems.append(self._bad_date(header, name, text))
                    continue
                whole_days |= date_only and name in ("created_at", "closed_at")
        header, text = pick(fields, "expected_close_date")
        values["expected_close_date"] = None
        if text:
            try:
                value = self._temporal(text, "expected_close_date")
                if isinstance(value, dt.datetime):
                    value = (value.astimezone(self.zone) if value.tzinfo else value).date()
                values["expected_close_date"] = value
            except (ValueError, OverflowError):
                problems.append(self._bad_date(header, "expected_close_date", text))
        history: tuple[StageVisit, ...] = ()
        header, text = pick(fields, "stage_history")
        if text:
            try:
                history = self._history(text)
            except ValueError as exc:
                problems.append(f"{header} {exc}")
        stage = text_of["stage"] or None
        status: DealStatus = "open"
        if "status" in layout.index:
            header, text = pick(fields, "status")
            try:
                status = parse_status(text, self.s.status)
            except ValueError as exc:
                problems.append(f"{header} {quote_cell(text)} {exc}")
        else:
            status = self.s.status.status_of(stage)
        if problems:
            raise ValueError("; ".join(problems))
        link = None
        if self.s.link_template:
            link = self.s.link_template.format(id=urllib.parse.quote(external_id, safe=""))
        return Deal(
            source=self.s.name,
            external_id=external_id,
            title=text_of["title"] or None,
            pipeline=text_of["pipeline"] or self.s.default_pipeline,
            stage=stage,
            status=status,
            owner=text_of["owner"] or None,
            next_step=text_of["next_step"] or None,
            link=link,
            whole_days=whole_days,
            stage_history=history,
            raw=dict(zip(layout.headers, fields, strict=False)),
            **values,
        )


def quote_cell(text: str, width: int = 40) -> str:
    """Quote a cell's value for a message, shortened when long."""
    return f'"{text if len(text) <= width else text[: width - 3] + "..."}"'
