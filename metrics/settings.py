"""Settings the ``metrics`` package owns: the ``[metrics]`` table.

``scheduler.py`` copies the top-level ``timezone`` and ``currency`` into this
model, so the metrics see one time zone (for days) and one base currency (for
amounts). ``rates`` converts other currencies into the base currency; a won
deal in a currency without a rate is left out of the average deal value and
reported as such.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from sales_velocity.kernel.config import TimeZoneName
from sales_velocity.metrics.targets import TargetSettings

__all__ = ["MetricsSettings", "WhatIfSettings"]


def _currency_code(value: str) -> str:
    code = value.strip().upper()
    if len(code) != 3 or not code.isascii() or not code.isalpha():
        raise ValueError(f"{value!r} is not a three-letter ISO 4217 currency code")
    return code


class WhatIfSettings(BaseModel):
    """How far each what-if lever moves (the ``[metrics.what_if]`` table)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    win_rate_points: Decimal = Field(
        default=Decimal("5"), ge=0, le=100,
        description="Win rate + this many percentage points (capped at 100 %).",
    )
    cycle_days: Decimal = Field(
        default=Decimal("15"), ge=0,
        description="Cycle length - this many days (never below 1 day).",
    )
    deal_value_pct: Decimal = Field(
        default=Decimal("10"), ge=0, description="Average deal value + this many percent.",
    )
    opportunities_pct: Decimal = Field(
        default=Decimal("10"), ge=0, description="Open opportunities + this many percent.",
    )


class MetricsSettings(BaseModel):
    """The ``[metrics]`` table, with the top-level time zone and base currency copied in."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    timezone: TimeZoneName = Field(
        default="UTC",
        description="IANA time zone in which days are counted (an as-of date ends at local midnight).",
    )
    currency: str = Field(default="EUR", description="Base currency (ISO 4217) of every amount shown.")
    window_days: int = Field(
        default=90, ge=1, le=3660, description="Look-back window for win rate, deal value and cycle.",
    )
    rates: dict[str, Decimal] = Field(
        default_factory=dict,
        description='Exchange rates: 1 unit of KEY is VALUE base currency, e.g. {USD = "10.5"}.',
    )
    exclude_pipelines: tuple[str, ...] = Field(
        default=(),
        description='Pipelines (names or ids) left out of "all" (e.g. ["Renewals"]); their own scope stays.',
    )
    what_if: WhatIfSettings = Field(default_factory=WhatIfSettings, description="What-if lever moves.")
    targets: TargetSettings = Field(
        default_factory=TargetSettings, description="Won value targets per month or quarter.",
    )
    textfile: str | None = Field(
        default=None,
        description="Prometheus textfile (node-exporter collector) written after every run, sync and "
        "status; relative to the config file. --metrics-file overrides it.",
    )

    @field_validator("textfile")
    @classmethod
    def _textfile(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        if not value.endswith(".prom"):
            raise ValueError("must end in .prom (the textfile collector reads only those)")
        base = (info.context or {}).get("config_dir")
        path = Path(value)
        return str(Path(base) / path) if base and not path.is_absolute() else value

    @field_validator("currency")
    @classmethod
    def _base_currency(cls, value: str) -> str:
        return _currency_code(value)

    @field_validator("rates")
    @classmethod
    def _rates(cls, value: dict[str, Decimal]) -> dict[str, Decimal]:
        rates: dict[str, Decimal] = {}
        for key, rate in value.items():
            code = _currency_code(key)
            if not rate.is_finite() or rate <= 0:
                raise ValueError(f"rate for {code} must be a positive number, got {rate}")
            rates[code] = rate
        return rates

    @property
    def zone(self) -> ZoneInfo:
        """The configured time zone."""
        return ZoneInfo(self.timezone)
