"""The settings of a ``[[sources]]`` table of kind ``csv``, and the feed's canonical columns."""

from __future__ import annotations

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

__all__ = ["CANONICAL_COLUMNS", "CsvFeedSettings", "StatusMapping"]

CANONICAL_COLUMNS: tuple[str, ...] = (
    "id", "title", "amount", "currency", "pipeline", "stage", "status", "owner", "owner_email",
    "created_at", "closed_at", "expected_close_date", "stage_entered_at", "next_step",
    "next_activity_at", "last_activity_at", "stage_history",
)
"""Every column the feed understands, under its canonical name."""


class StatusMapping(BaseModel):
    """Stage values that mean a deal is won or lost (compared case-insensitively)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    _folded: dict[str, DealStatus] = PrivateAttr(default_factory=dict)

    won: list[str] = Field(default_factory=lambda: ["Won", "Closed Won"])
    lost: list[str] = Field(default_factory=lambda: ["Lost", "Closed Lost"])

    @model_validator(mode="after")
    def _disjoint(self) -> StatusMapping:
        both = {s.casefold() for s in self.won} & {s.casefold() for s in self.lost}
        if both:
            raise ValueError(f"stages both won and lost: {', '.join(sorted(both))}")
        return self

    def model_post_init(self, context: Any, /) -> None:
        """Fold the stage names once; rows are looked up by the folded name."""
        folded: dict[str, DealStatus] = {s.casefold(): "won" for s in self.won}
        folded.update({s.casefold(): "lost" for s in self.lost})
        self._folded = folded

    def status_of(self, stage: str | None) -> DealStatus:
        """Return the status a stage value implies: won, lost, else open."""
        return self._folded.get((stage or "").casefold(), "open")


class CsvFeedSettings(SourceSettings):
    """A ``[[sources]]`` table of kind ``csv``."""

    kind: Literal["csv"] = "csv"
    path: Path = Field(description="The CSV file; relative paths are relative to the config file.")
    columns: dict[str, str] = Field(
        default_factory=dict, description="Canonical column name -> the file's header."
    )
    status: StatusMapping = Field(
        default_factory=StatusMapping,
        description="Stage values meaning won/lost; used when the file has no status column.",
    )
    date_format: str | None = Field(None, description="strptime format, accepted besides ISO 8601.")
    delimiter: str = Field(",", description="The field separator, one character.")
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

    @field_validator("path")
    @classmethod
    def _resolve_path(cls, value: Path, info: ValidationInfo) -> Path:
        value = value.expanduser()
        config_dir = (info.context or {}).get("config_dir")
        if not value.is_absolute() and config_dir is not None:
            value = Path(config_dir) / value
        return value

    @field_validator("columns")
    @classmethod
    def _known_columns(cls, value: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(value) - set(CANONICAL_COLUMNS))
        if unknown:
            raise ValueError(
                f"unknown column name{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
                f"valid names: {', '.join(CANONICAL_COLUMNS)}"
            )
        empty = sorted(k for k, v in value.items() if not v.strip())
        if empty:
            raise ValueError(f"empty header for {', '.join(empty)}")
        return {k: v.strip() for k, v in value.items()}

    @field_validator("delimiter")
    @classmethod
    def _one_char(cls, value: str) -> str:
        if len(value) != 1 or value in "\"\r\n":
            raise ValueError(f"must be one character other than a quote or a newline, got {value!r}")
        return value

    @field_validator("currency")
    @classmethod
    def _iso_currency(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Za-z]{3}", value):
            raise ValueError(f"must be a 3-letter ISO 4217 code like NOK, got {value!r}")
        return value.upper() if value is not None else None

    @field_validator("date_format")
    @classmethod
    def _round_trip(cls, value: str | None) -> str | None:
        if value is None:
            return None
        sample = dt.datetime(2026, 11, 26, 14, 30, 15, tzinfo=dt.UTC)
        try:
            dt.datetime.strptime(sample.strftime(value), value)  # noqa: DTZ007 - zone is applied later
        except ValueError as exc:
            raise ValueError(f"not a usable strptime format: {exc}") from None
        return value

    @field_validator("link_template")
    @classmethod
    def _only_id(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                value.format(id="x")
            except (KeyError, IndexError, ValueError):
                raise ValueError("may only use the placeholder {id}") from None
        return value
