"""Reading one CSV row: amounts, dates, statuses, and the row-to-``Deal`` parser.

Pure functions and a small parser class, separate from the file handling in
``csv_feed.connector`` so each can be tested on its own.
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

from sales_velocity.connectors.base import Deal, DealStatus, StageVisit

if TYPE_CHECKING:
    from sales_velocity.connectors.csv_feed.settings import CsvFeedSettings

__all__ = [
    "MAX_ID_LENGTH", "RowLayout", "RowParser", "history_entries", "parse_amount", "parse_status",
    "quote_cell",
]

DATETIME_COLUMNS = ("created_at", "closed_at", "stage_entered_at", "next_activity_at", "last_activity_at")
ID_COLUMNS = ("id", "pipeline", "stage", "owner")
MAX_ID_LENGTH = 200  # the store keeps ids, pipelines, stages and owners in 200 characters
MAX_AMOUNT = Decimal(10) ** 16  # the store keeps NUMERIC(20, 4)

STATUS_SYNONYMS: dict[str, DealStatus] = {
    "open": "open", "active": "open", "in progress": "open",
    "won": "won", "closed won": "won", "closedwon": "won", "win": "won",
    "lost": "lost", "closed lost": "lost", "closedlost": "lost", "loss": "lost",
    "deleted": "deleted", "removed": "deleted",
}
"""Values a status column may hold (compared case-insensitively, ``-``/``_`` read as spaces)."""

_GROUP_SPACES = " \u00a0\u202f\u2009"  # space, no-break space, narrow no-break space, thin space
_AMOUNT_CHARS = re.compile(rf"[0-9.,{_GROUP_SPACES}]+")
_TIME_DIRECTIVES = re.compile(r"%[HIMSfpzXcTRr]")


# --------------------------------------------------------------------------- parsing


def parse_amount(text: str, decimal_separator: str | None = None) -> Decimal | None:
    """Read an amount as a person wrote it; ``None`` for an empty cell.

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
    if abs(value) >= MAX_AMOUNT:
        raise ValueError("is too large")
    return value


def parse_status(text: str) -> DealStatus:
    """Read a status column value: open/won/lost/deleted or a common synonym.

    Raises:
        ValueError: the value is none of them.
    """
    key = " ".join(text.replace("-", " ").replace("_", " ").split()).casefold()
    try:
        return STATUS_SYNONYMS[key]
    except KeyError:
        raise ValueError("is not a status (expected open, won, lost or deleted)") from None


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
    """Where each canonical column sits in the file's rows."""

    headers: tuple[str, ...]
    index: dict[str, int]

    def get(self, fields: Sequence[str], name: str) -> str:
        """Return the stripped value of canonical column ``name`` ('' when absent)."""
        i = self.index.get(name)
        return fields[i].strip() if i is not None else ""


class RowParser:
    """Turns one row's fields into a ``Deal``; raises ``ValueError`` with every problem."""

    def __init__(self, settings: CsvFeedSettings, layout: RowLayout, shift_days: int) -> None:
        self.s = settings
        self.layout = layout
        self.zone = ZoneInfo(settings.timezone)
        self.shift = dt.timedelta(days=shift_days)
        self.date_format_has_time = bool(
            settings.date_format and _TIME_DIRECTIVES.search(settings.date_format)
        )

    def header_of(self, name: str) -> str:
        """The file's own header for canonical column ``name``."""
        return self.layout.headers[self.layout.index[name]]

    def _temporal(self, text: str) -> dt.datetime | dt.date:
        """Parse the configured format, else ISO 8601; rebased; dates stay dates."""
        value: dt.datetime | dt.date | None = None
        if self.s.date_format:
            try:
                parsed = dt.datetime.strptime(text, self.s.date_format)  # noqa: DTZ007 - zone below
                value = parsed if self.date_format_has_time else parsed.date()
            except ValueError:
                value = None
        if value is None:
            try:
                value = dt.date.fromisoformat(text)
            except ValueError:
                value = dt.datetime.fromisoformat(text)  # ValueError propagates
        return value + self.shift

    def _datetime(self, text: str) -> tuple[dt.datetime, bool]:
        """An aware UTC datetime, and whether the cell held a date only."""
        value = self._temporal(text)
        if not isinstance(value, dt.datetime):
            local = dt.datetime.combine(value, dt.time(), tzinfo=self.zone)
            return local.astimezone(dt.UTC), True
        if value.tzinfo is None:
            value = value.replace(tzinfo=self.zone)
        return value.astimezone(dt.UTC), False

    def _date(self, text: str) -> dt.date:
        value = self._temporal(text)
        if isinstance(value, dt.datetime):
            return (value.astimezone(self.zone) if value.tzinfo else value).date()
        return value

    def _expected_dates(self) -> str:
        iso = "ISO 8601 like 2026-11-26 or 2026-11-26T14:30"
        return f"{self.s.date_format} or {iso}" if self.s.date_format else iso

    def _bad_date(self, name: str, text: str) -> str:
        return f"{self.header_of(name)} {quote_cell(text)} is not a date (expected {self._expected_dates()})"

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
                entered_at, _ = self._datetime(when)
            except (ValueError, OverflowError):
                raise ValueError(f"entry {quote_cell(entry)}: {quote_cell(when)} is not a date "
                                 f"(expected {self._expected_dates()})") from None
            visits.append(StageVisit(stage, entered_at))
        return tuple(visits)

    def parse(self, fields: Sequence[str]) -> Deal:
        """Build the row's ``Deal``; raise ``ValueError`` listing every problem of the row."""
        layout, problems = self.layout, []
        get = layout.get
        values: dict[str, Any] = {}
        external_id = get(fields, "id")
        if not external_id:
            problems.append(f'{self.header_of("id")} is empty')
        for name in ID_COLUMNS:
            if len(get(fields, name)) > MAX_ID_LENGTH:
                problems.append(f"{self.header_of(name)} is longer than {MAX_ID_LENGTH} characters")
        text = get(fields, "amount")
        try:
            values["amount"] = parse_amount(text, self.s.decimal_separator)
        except ValueError as exc:
            problems.append(f'{self.header_of("amount")} {quote_cell(text)} {exc}')
        text = get(fields, "currency")
        if text and not re.fullmatch(r"[A-Za-z]{3}", text):
            problems.append(
                f"{self.header_of('currency')} {quote_cell(text)} is not a 3-letter currency code")
        values["currency"] = text.upper() or self.s.currency
        whole_days = False
        for name in DATETIME_COLUMNS:
            text = get(fields, name)
            values[name] = None
            if text:
                try:
                    values[name], date_only = self._datetime(text)
                except (ValueError, OverflowError):
                    problems.append(self._bad_date(name, text))
                    continue
                whole_days |= date_only and name in ("created_at", "closed_at")
        text = get(fields, "expected_close_date")
        values["expected_close_date"] = None
        if text:
            try:
                values["expected_close_date"] = self._date(text)
            except (ValueError, OverflowError):
                problems.append(self._bad_date("expected_close_date", text))
        history: tuple[StageVisit, ...] = ()
        text = get(fields, "stage_history")
        if text:
            try:
                history = self._history(text)
            except ValueError as exc:
                problems.append(f'{self.header_of("stage_history")} {exc}')
        stage = get(fields, "stage") or None
        status: DealStatus = "open"
        if "status" in layout.index:
            text = get(fields, "status")
            try:
                status = parse_status(text)
            except ValueError as exc:
                problems.append(f'{self.header_of("status")} {quote_cell(text)} {exc}')
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
            title=get(fields, "title") or None,
            pipeline=get(fields, "pipeline") or self.s.default_pipeline,
            stage=stage,
            status=status,
            owner=get(fields, "owner") or None,
            next_step=get(fields, "next_step") or None,
            link=link,
            whole_days=whole_days,
            stage_history=history,
            raw=dict(zip(layout.headers, fields, strict=False)),
            **values,
        )



def quote_cell(text: str, width: int = 40) -> str:
    """Quote a cell's value for a message, shortened when long."""
    return f'"{text if len(text) <= width else text[: width - 3] + "..."}"'
