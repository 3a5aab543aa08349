"""The forecast methods and baselines at one as-of point, from the grid sums of ``metrics.forecast_data``.

For an as-of point ``T`` and a horizon of ``h`` local days (``T+1 .. T+h``):

* **velocity x days** (``velocity_x_days``): Little's law, the seed's reading of
  velocity: ``N * V * p / L`` per day at ``T`` (``metrics.velocity``, rebuilt
  for ``T`` by ``metrics.history``) times ``h``.
* **deal by deal** (``deal_by_deal``): each deal open at ``T`` times the share
  of value that deals in its cell (source, pipeline, stage at ``T``, age in
  stage: under 30, 30-89, 90+ days) won within ``h`` days, learned from the
  weekly points ``S`` with ``S + h <= T`` (at most :data:`TRAINING_POINTS`,
  two years, none before the first deal was created); a cell seen fewer than
  :data:`MIN_DEAL_POINTS` times backs off to
  its stage, then its pipeline, then all deals. Plus the deals not created yet:
  the value created per day over the :data:`INFLOW_DAYS` days up to ``T``,
  times ``h``, times the share of value created in ``S+1 .. S+h`` that was won
  by ``S+h``.
* **persistence**: the value won in the last ``h`` days (``T-h+1 .. T``).
* **CRM weighted** (``crm_weighted``): the open value at ``T`` times the CRM's
  stage probabilities (stages without one add nothing); the same figure for
  every horizon, as the CRMs show it. ``None`` when no stage has a probability.

All are Decimal; nothing here reads the store.
"""

from __future__ import annotations

import decimal
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from sales_velocity.metrics.forecast_data import Cell, ForecastData

__all__ = [
    "BASELINES",
    "INFLOW_DAYS",
    "METHODS",
    "MIN_DEAL_POINTS",
    "TRAINING_POINTS",
    "DealModel",
    "crm_weighted",
    "persistence",
    "velocity_x_days",
]

METHODS = ("velocity_x_days", "deal_by_deal")
BASELINES = ("persistence", "crm_weighted")
TRAINING_POINTS = 104
"""Weekly points (two years) a deal-by-deal rate is learned from, at most."""
MIN_DEAL_POINTS = 30
"""A cell needs this many (deal, point) pairs in training before its own rate is used."""
INFLOW_DAYS = 90
"""The recent inflow of new deals: the value created per day over this many days up to ``T``."""
_PREC = 40


def velocity_x_days(velocity_per_day: Decimal | None, days: int) -> Decimal | None:
    """Velocity per day times the horizon (``None`` when velocity is undefined)."""
    return None if velocity_per_day is None else velocity_per_day * days


def persistence(data: ForecastData, point: int, days: int) -> Decimal:
    """The value won in the ``days`` days up to and including point ``point``."""
    day = data.day_of(point)
    return data.won_between(day - days + 1, day)


def crm_weighted(data: ForecastData, point: int) -> Decimal | None:
    """The open value at ``point`` weighted by the CRM's stage probabilities, or ``None`` without any."""
    if not data.probabilities:
        return None
    total = Decimal(0)
    for (source, pipeline, stage, _), values in data.open_value.items():
        if pipeline is None or stage is None:
            continue
        probability = data.probabilities.get((source, pipeline, stage))
        if probability is not None and values[point]:
            total += values[point] * probability
    return total


class _Prefix:
    """Prefix sums of one series over the points: ``between(lo, hi)`` sums points ``lo .. hi-1``."""

    __slots__ = ("sums",)

    def __init__(self, values: list[Any]) -> None:
        sums: list[Any] = [0]
        for value in values:
            sums.append(sums[-1] + value)
        self.sums = sums

    def between(self, lo: int, hi: int) -> Any:
        lo, hi = max(lo, 0), min(hi, len(self.sums) - 1)
        return self.sums[hi] - self.sums[lo] if hi > lo else 0


_LEVELS: tuple[Callable[[Cell], tuple[Any, ...]], ...] = (
    lambda c: c, lambda c: c[:3], lambda c: c[:2], lambda c: (),
)


class DealModel:
    """Deal-by-deal rates by cell, learned from the grid's earlier points (see the module docstring)."""

    def __init__(self, data: ForecastData) -> None:
        self.data = data
        self._levels: list[dict[tuple[Any, ...], tuple[_Prefix, _Prefix, dict[int, _Prefix]]]] = []
        points = data.points
        for key in _LEVELS:
            grouped: dict[tuple[Any, ...], tuple[list[Any], list[Any], dict[int, list[Any]]]] = {}
            for cell, values in data.open_value.items():
                value_sum, count_sum, won_sum = grouped.setdefault(
                    key(cell), ([Decimal(0)] * points, [0] * points, {h: [Decimal(0)] * points
                                                                        for h in data.horizons}))
                counts = data.open_count[cell]
                for q in range(points):
                    value_sum[q] += values[q]
                    count_sum[q] += counts[q]
                for h in data.horizons:
                    won = data.won_within[h].get(cell)
                    if won is not None:
                        target = won_sum[h]
                        for q in range(points):
                            target[q] += won[q]
            self._levels.append({
                group: (_Prefix(v), _Prefix(c), {h: _Prefix(w) for h, w in won.items()})
                for group, (v, c, won) in grouped.items()
            })
        self._new = {h: (_Prefix(data.new_created[h]), _Prefix(data.new_won[h])) for h in data.horizons}

    def training(self, point: int, days: int) -> tuple[int, int]:
        """The training points ``[lo, hi)`` for a forecast at ``point``: those whose horizon ended by it.

        Points before the first deal's creation are left out (a history that is
        still filling up would look like a pipeline that converts less).
        """
        hi = point - (days + 6) // 7 + 1
        first = self.data.first_created
        earliest = 0 if first is None else max(-((self.data.offset - first) // 7), 0)
        return max(hi - TRAINING_POINTS, earliest), hi

    def rate(self, cell: Cell, point: int, days: int) -> Decimal:
        """The share of open value in ``cell`` won within ``days`` days, as known at ``point``."""
        lo, hi = self.training(point, days)
        for key, level in zip(_LEVELS, self._levels, strict=True):
            found = level.get(key(cell))
            if found is None:
                continue
            value, count, won = found
            if count.between(lo, hi) >= MIN_DEAL_POINTS or key is _LEVELS[-1]:
                total = Decimal(value.between(lo, hi))
                if total:
                    with decimal.localcontext(prec=_PREC):
                        return Decimal(won[days].between(lo, hi)) / total
        return Decimal(0)

    def new_deals(self, point: int, days: int) -> Decimal:
        """The expected won value of deals created in ``T+1 .. T+days``."""
        lo, hi = self.training(point, days)
        created, won = self._new[days]
        created_value = Decimal(created.between(lo, hi))
        if not created_value:
            return Decimal(0)
        day = self.data.day_of(point)
        inflow = self.data.created_between(day - INFLOW_DAYS + 1, day)
        with decimal.localcontext(prec=_PREC):
            return inflow / INFLOW_DAYS * days * Decimal(won.between(lo, hi)) / created_value

    def expected(self, point: int, days: int) -> Decimal | None:
        """The deal-by-deal forecast at ``point``; ``None`` before any training point exists."""
        lo, hi = self.training(point, days)
        if hi <= lo:
            return None
        total = Decimal(0)
        with decimal.localcontext(prec=_PREC):
            for cell, values in self.data.open_value.items():
                value = values[point]
                if value:
                    total += value * self.rate(cell, point, days)
            return total + self.new_deals(point, days)
