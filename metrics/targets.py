"""Targets: ``[metrics.targets]``, a won value per month or quarter, and how far the forecast gets there.

::

    [metrics.targets]
    all = { "2026-12" = "1200000", "2026-Q4" = "3500000" }
    [metrics.targets.pipeline]
    "hubspot/default" = { "2026-12" = "500000" }
    [metrics.targets.owner]
    "hubspot/42" = { "2026-Q4" = "900000" }

A period is ``YYYY-MM`` or ``YYYY-Qn`` (local days). For the as-of date ``T``
inside a period: *won so far* is the value won on its days up to ``T``; *still
needed* is the target minus that (never below 0); the *forecast for the rest*
is the default method's forecast for the days ``T+1 ..`` the period's last day;
it *closes the gap* when it is at least what is still needed; and the
*velocity that would* is what is still needed per remaining day.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

if TYPE_CHECKING:
    from sales_velocity.metrics.movement import MovementScope

__all__ = ["Period", "TargetSettings", "TargetStatus", "parse_period", "periods_for", "target_statuses"]

CENT = Decimal("0.01")
_PERIOD = re.compile(r"^(\d{4})-(?:(0[1-9]|1[0-2])|Q([1-4]))$")


@dataclass(frozen=True, slots=True)
class Period:
    """A month or a quarter of local days, with its target."""

    label: str
    first: dt.date
    last: dt.date
    target: Decimal


def parse_period(text: str) -> tuple[dt.date, dt.date]:
    """``YYYY-MM`` or ``YYYY-Qn`` -> (first day, last day).

    Raises:
        ValueError: anything else.
    """
    match = _PERIOD.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a month (YYYY-MM) or a quarter (YYYY-Qn)")
    year = int(match.group(1))
    if match.group(2):
        first_month, months = int(match.group(2)), 1
    else:
        first_month, months = 3 * int(match.group(3)) - 2, 3
    first = dt.date(year, first_month, 1)
    end_month = first_month + months
    after = dt.date(year + (end_month - 1) // 12, (end_month - 1) % 12 + 1, 1)
    return first, after - dt.timedelta(days=1)


def _check(targets: dict[str, Decimal]) -> dict[str, Decimal]:
    for period, value in targets.items():
        parse_period(period)
        if not value.is_finite() or value < 0:
            raise ValueError(f"target for {period} must be a number of at least 0, got {value}")
    return targets


class TargetSettings(BaseModel):
    """The ``[metrics.targets]`` table: won value per period, for all and per pipeline or owner."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    all: dict[str, Decimal] = Field(default_factory=dict, description='Per period: {"2026-Q4" = "3500000"}.')
    pipeline: dict[str, dict[str, Decimal]] = Field(
        default_factory=dict, description="Per pipeline (source/id or id), per period.")
    owner: dict[str, dict[str, Decimal]] = Field(
        default_factory=dict, description="Per owner (source/id or id), per period.")

    @field_validator("all")
    @classmethod
    def _all(cls, value: dict[str, Decimal]) -> dict[str, Decimal]:
        return _check(value)

    @field_validator("pipeline", "owner")
    @classmethod
    def _scoped(cls, value: dict[str, dict[str, Decimal]]) -> dict[str, dict[str, Decimal]]:
        for targets in value.values():
            _check(targets)
        return value


def periods_for(settings: TargetSettings, scope: MovementScope, as_of: dt.date) -> list[Period]:
    """The targeted periods of ``scope`` that contain ``as_of``, months first."""
    if scope.kind == "all":
        targets = settings.all
    else:
        table = settings.pipeline if scope.kind == "pipeline" else settings.owner
        targets = table.get(f"{scope.source}/{scope.key}") or table.get(scope.key) or {}
    found = []
    for label, target in targets.items():
        first, last = parse_period(label)
        if first <= as_of <= last:
            found.append(Period(label, first, last, target))
    return sorted(found, key=lambda p: (p.last - p.first, p.label))


@dataclass(frozen=True, slots=True)
class TargetStatus:
    """Where one period stands against its target on the as-of date."""

    period: Period
    won: Decimal
    needed: Decimal
    remaining_days: int
    forecast: Decimal
    closes_gap: bool
    velocity_needed: Decimal | None
    """Still needed per remaining day; ``None`` on the period's last day."""

    def as_json(self) -> dict[str, Any]:
        """For the forecast's JSON (money as decimal strings)."""
        return {
            "period": self.period.label, "target": str(self.period.target), "won": str(self.won),
            "needed": str(self.needed), "remaining_days": self.remaining_days,
            "forecast": str(self.forecast), "closes_gap": self.closes_gap,
            "velocity_needed": None if self.velocity_needed is None else str(self.velocity_needed),
        }

    def line(self) -> str:
        """One line for people."""
        if not self.needed:
            return f"Target {self.period.label}: {self.period.target:,.2f} reached (won {self.won:,.2f})."
        gap = "the forecast closes the gap" if self.closes_gap else "the forecast does not close the gap"
        per_day = "" if self.velocity_needed is None else f", {self.velocity_needed:,.2f} per day would"
        return (f"Target {self.period.label}: {self.period.target:,.2f}; won so far {self.won:,.2f}, "
                f"still needed {self.needed:,.2f}; expected in the {self.remaining_days} days left "
                f"{self.forecast:,.2f}: {gap}{per_day}.")


def target_statuses(periods: list[Period], as_of: dt.date, won: dict[str, Decimal],
                    forecasts: dict[int, Decimal]) -> list[TargetStatus]:
    """Each period's status from the value won in it so far (by label) and the forecasts by horizon."""
    out = []
    for p in periods:
        so_far = won.get(p.label, Decimal(0)).quantize(CENT, ROUND_HALF_UP)
        needed = max(p.target - so_far, Decimal(0)).quantize(CENT, ROUND_HALF_UP)
        remaining = (p.last - as_of).days
        forecast = forecasts.get(remaining, Decimal(0)) if remaining else Decimal(0)
        per_day = (needed / remaining).quantize(CENT, ROUND_HALF_UP) if remaining else None
        out.append(TargetStatus(p, so_far, needed, remaining, forecast, forecast >= needed, per_day))
    return out
