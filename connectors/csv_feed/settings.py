"""The settings of a ``[[sources]]`` table of kind ``csv``, and the feed's canonical columns."""

from __future__ import annotations

import codecs
import datetime as dt
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from sales_velocity.connectors.base import DealStatus, SourceSettings
from sales_velocity.kernel.config import TimeZoneName

__all__ = ["CANONICAL_COLUMNS", "DATE_COLUMNS", "DELIMITERS", "CsvFeedSettings", "StatusMapping"]

CANONICAL_COLUMNS: tuple[str, ...] = (
    "id", "title", "amount", "currency", "pipeline", "stage", "status", "owner", "owner_email",
    "created_at", "closed_at", "expected_close_date", "stage_entered_at", "next_step",
    "next_activity_at", "last_activity_at", "stage_history",
)
"""Every column the feed understands, under its canonical name."""

DATE_COLUMNS: tuple[str, ...] = (
    "created_at", "closed_at", "expected_close_date", "stage_entered_at", "next_activity_at",
    "last_activity_at", "stage_history",
)
"""The columns holding dates (``stage_history``: the dates of its entries); ``date_formats`` keys."""

DELIMITERS: tuple[str, ...] = (",", ";", "\t", "|")
"""The delimiters detected from the header line when ``delimiter`` is not set (ties: this order)."""


class StatusMapping(BaseModel):
    """Values meaning a deal is open, won or lost (compared case-insensitively).

    They are matched against the status column when the file has one (before the
    built-in synonyms like ``Closed won``), else against the stage column (where
    anything not listed as won or lost is open).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    _folded: dict[str, DealStatus] = PrivateAttr(default_factory=dict)

    open: list[str] = Field(default_factory=list)
    won: list[str] = Field(default_factory=lambda: ["Won", "Closed Won"])
    lost: list[str] = Field(default_factory=lambda: ["Lost", "Closed Lost"])

    @model_validator(mode="after")
    def _disjoint(self) -> StatusMapping:
        lists = {"open": self.open, "won": self.won, "lost": self.lost}
        problems = []
        for a, b in (("open", "won"), ("open", "lost"), ("won", "lost")):
            both = {v.casefold() for v in lists[a]} & {v.casefold() for v in lists[b]}
            if both:
                problems.append(f"values both {a} and {b}: {', '.join(sorted(both))}")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def model_post_init(self, context: Any, /) -> None:
        """Fold the values once; rows are looked up by the folded value."""
        folded: dict[str, DealStatus] = {s.strip().casefold(): "open" for s in self.open}
        folded.update({s.strip().casefold(): "won" for s in self.won})
        folded.update({s.strip().casefold(): "lost" for s in self.lost})
        self._folded = folded

    def lookup(self, value: str | None) -> DealStatus | None:
        """The status ``value`` is listed under (open, won or lost), else ``None``."""
        return self._folded.get((value or "").strip().casefold())

    def status_of(self, stage: str | None) -> DealStatus:
        """Return the status a stage value implies: won, lost, else open."""
        return self.lookup(stage) or "open"


class CsvFeedSettings(SourceSettings):
    """A ``[[sources]]`` table of kind ``csv``."""

    kind: Literal["csv"] = "csv"
    path: Path = Field(description="The CSV file; relative paths are relative to the config file.")
    columns: dict[str, list[str]] = Field(
        default_factory=dict,
        description="Canonical column name -> the file's header, or a list of headers "
        "(the first non-empty cell of them is used).",
    )
    status: StatusMapping = Field(
        default_factory=StatusMapping,
        description="Values meaning open/won/lost: of the status column when the file has one, "
        "else of the stage column.",
    )
    date_format: list[str] = Field(
        default_factory=list,
        description="strptime format, or a list tried in order; ISO 8601 is always accepted too.",
    )
    date_formats: dict[str, list[str]] = Field(
        default_factory=dict,
        description="Per date column, formats used instead of date_format for that column.",
    )
    delimiter: str | None = Field(
        None, description="The field separator, one character; detected from the header when unset."
    )
    encoding: str = Field(
        "utf-8", description='Any Python codec, e.g. "cp1252" for Excel on Windows; UTF-8 may have a BOM.'
    )
    decimal_separator: Literal[",", "."] | None = Field(
        None, description="Resolves amounts like 1,234; by default they are rejected as ambiguous."
    )
    timezone: TimeZoneName = Field("UTC", description="The zone of naive datetimes and plain dates.")
    currency: str | None = Field(None, description="Currency of rows without a currency value.")
    default_pipeline: str = Field("default", description="Pipeline of rows without a pipeline value.")
    link_template: str | None = Field(None, description='Link to a deal, e.g. "https://crm/deals/{id}".')
    rebase_dates_from: dt.date | None = Field(
        None, description="Demo data only: shift every date by (today - this date)."
    )
    max_file_mib: float = Field(
        1024, gt=0, le=1024 * 1024, description="A larger file is refused (MiB; default 1 GiB).",
    )
    max_columns: int = Field(
        1000, ge=1, le=100_000, description="A header or row with more columns is refused.",
    )
    max_row_kib: float = Field(
        1024, gt=0, le=1024 * 1024,
        description="A row (or the header line) longer than this is refused (KiB of text; default 1 MiB).",
    )

    @property
    def max_file_bytes(self) -> int:
        """``max_file_mib`` in bytes."""
        return int(self.max_file_mib * 1024 * 1024)

    @property
    def max_row_chars(self) -> int:
        """``max_row_kib`` in characters."""
        return int(self.max_row_kib * 1024)

    @field_validator("path")
    @classmethod
    def _resolve_path(cls, value: Path, info: ValidationInfo) -> Path:
        value = value.expanduser()
        config_dir = (info.context or {}).get("config_dir")
        if not value.is_absolute() and config_dir is not None:
            value = Path(config_dir) / value
        return value

    @field_validator("columns", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: [v] if isinstance(v, str) else v for k, v in value.items()}
        return value

    @field_validator("columns")
    @classmethod
    def _known_columns(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        unknown = sorted(set(value) - set(CANONICAL_COLUMNS))
        if unknown:
            raise ValueError(
                f"unknown column name{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
                f"valid names: {', '.join(CANONICAL_COLUMNS)}"
            )
        empty = sorted(k for k, v in value.items() if not v or not all(h.strip() for h in v))
        if empty:
            raise ValueError(f"empty header for {', '.join(empty)}")
        return {k: [h.strip() for h in v] for k, v in value.items()}

    @field_validator("delimiter")
    @classmethod
    def _one_char(cls, value: str | None) -> str | None:
        if value is not None and (len(value) != 1 or value in "\"\r\n"):
            raise ValueError(f"must be one character other than a quote or a newline, got {value!r}")
        return value

    @field_validator("currency")
    @classmethod
    def _iso_currency(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Za-z]{3}", value):
            raise ValueError(f"must be a 3-letter ISO 4217 code like NOK, got {value!r}")
        return value.upper() if value is not None else None

    @field_validator("date_format", mode="before")
    @classmethod
    def _format_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else [] if value is None else value

    @field_validator("date_formats", mode="before")
    @classmethod
    def _format_lists(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: [v] if isinstance(v, str) else v for k, v in value.items()}
        return value

    @field_validator("date_format")
    @classmethod
    def _round_trip(cls, value: list[str]) -> list[str]:
        for fmt in value:
            _check_format(fmt)
        return value

    @field_validator("date_formats")
    @classmethod
    def _date_columns(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        unknown = sorted(set(value) - set(DATE_COLUMNS))
        if unknown:
            raise ValueError(
                f"not a date column: {', '.join(unknown)}; date columns: {', '.join(DATE_COLUMNS)}")
        for name, formats in value.items():
            if not formats:
                raise ValueError(f"{name}: give at least one format")
            for fmt in formats:
                try:
                    _check_format(fmt)
                except ValueError as exc:
                    raise ValueError(f"{name}: {exc}") from None
        return value

    @field_validator("encoding")
    @classmethod
    def _codec(cls, value: str) -> str:
        try:
            info = codecs.lookup(value)
        except LookupError:
            raise ValueError(f"unknown encoding {value!r} (e.g. utf-8, cp1252, latin-1, utf-16)") from None
        try:
            codecs.getincrementaldecoder(info.name)
        except LookupError:  # pragma: no cover - codecs without incremental decoders (rare)
            raise ValueError(f"{value!r} cannot decode text") from None
        if not isinstance(b"".decode(info.name), str):  # pragma: no cover
            raise ValueError(f"{value!r} is not a text encoding")
        return value

    def formats_for(self, column: str) -> list[str]:
        """The strptime formats tried for a date column (before ISO 8601)."""
        return self.date_formats.get(column, self.date_format)

    def python_encoding(self) -> str:
        """The codec the file is read with: UTF-8 accepts a byte-order mark."""
        name = codecs.lookup(self.encoding).name
        return "utf-8-sig" if name == "utf-8" else name

    @field_validator("link_template")
    @classmethod
    def _only_id(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                value.format(id="x")
            except (KeyError, IndexError, ValueError):
                raise ValueError("may only use the placeholder {id}") from None
        return value


def _check_format(fmt: str) -> None:
    """Raise ``ValueError`` unless ``fmt`` is a strptime format that reads back what it writes."""
    sample = dt.datetime(2026, 11, 26, 14, 30, 15, tzinfo=dt.UTC)
    try:
        dt.datetime.strptime(sample.strftime(fmt), fmt)  # noqa: DTZ007 - zone is applied later
    except ValueError as exc:
        raise ValueError(f"not a usable strptime format {fmt!r}: {exc}") from None
