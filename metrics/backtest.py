"""Scoring forecasts on the store's own history: WAPE, bias, and ranges calibrated from past errors.

A backtest point is a forecast made at an as-of point ``T`` for ``h`` days and
the value actually won in ``T+1 .. T+h``; only points whose horizon has fully
passed by the as-of date are scored (the caller never builds the others).

* WAPE = sum of absolute errors / sum of actuals; bias = sum of
  (forecast - actual) / sum of actuals (positive: the forecast was too high).
* The range of a forecast ``f`` is ``f * (1 + q10)`` .. ``f * (1 + q90)``, where
  ``q10`` and ``q90`` are the empirical 10th and 90th percentiles of the
  relative errors ``actual / forecast - 1`` of the same method and horizon, so
  an 80 % range holds about 80 % of the time. In the backtest a point's range
  uses only the errors known at its ``T`` (points whose horizon ended by ``T``),
  so coverage is measured out of sample; with fewer than
  :data:`MIN_CALIBRATION` such errors a point has no range and does not count
  towards coverage.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal

__all__ = ["MIN_CALIBRATION", "Accuracy", "BacktestPoint", "calibrated_range", "quantile", "score"]

MIN_CALIBRATION = 8
LOW_Q, HIGH_Q = Decimal("0.1"), Decimal("0.9")
CENT = Decimal("0.01")


@dataclass(frozen=True, slots=True)
class BacktestPoint:
    """One scored forecast: made at ``as_of`` for ``days`` days by ``method``, and what was won."""

    as_of: dt.date
    days: int
    method: str
    forecast: Decimal
    actual: Decimal


@dataclass(frozen=True, slots=True)
class Accuracy:
    """How one method did over the backtest."""

    method: str
    points: int
    wape: Decimal | None
    """``None`` when nothing was won over the scored points."""
    bias: Decimal | None
    coverage: Decimal | None
    """Share of points with a range whose actual fell inside it; ``None`` when no point had a range."""


def quantile(values: Sequence[Decimal], q: Decimal) -> Decimal:
    """The ``q`` quantile of ``values`` (sorted or not), interpolated linearly between neighbours."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("no values")
    position = q * (len(ordered) - 1)
    below = int(position)
    above = min(below + 1, len(ordered) - 1)
    return ordered[below] + (ordered[above] - ordered[below]) * (position - below)


def calibrated_range(forecast: Decimal, errors: Sequence[Decimal]) -> tuple[Decimal, Decimal] | None:
    """``(low, high)`` around ``forecast`` from past relative errors; ``None`` with too few of them."""
    if len(errors) < MIN_CALIBRATION:
        return None
    low = max(forecast * (1 + quantile(errors, LOW_Q)), Decimal(0))
    high = max(forecast * (1 + quantile(errors, HIGH_Q)), low)
    return low.quantize(CENT, ROUND_HALF_UP), high.quantize(CENT, ROUND_HALF_UP)


def relative_error(point: BacktestPoint) -> Decimal | None:
    """``actual / forecast - 1``; ``None`` for a zero forecast."""
    if point.forecast <= 0:
        return None
    return point.actual / point.forecast - 1


def errors_known_at(points: Sequence[BacktestPoint], as_of: dt.date) -> list[Decimal]:
    """The relative errors of ``points`` whose horizon ended by ``as_of``."""
    out = []
    for p in points:
        if p.as_of + dt.timedelta(days=p.days) <= as_of and (e := relative_error(p)) is not None:
            out.append(e)
    return out


def score(points: Sequence[BacktestPoint], method: str) -> Accuracy:
    """WAPE, bias and out-of-sample coverage of one method's points."""
    mine = sorted((p for p in points if p.method == method), key=lambda p: p.as_of)
    actual = sum((p.actual for p in mine), Decimal(0))
    absolute = sum((abs(p.forecast - p.actual) for p in mine), Decimal(0))
    signed = sum((p.forecast - p.actual for p in mine), Decimal(0))
    by_days: dict[int, list[BacktestPoint]] = defaultdict(list)
    for p in mine:
        by_days[p.days].append(p)
    ranged = inside = 0
    for same in by_days.values():
        for p in same:
            bounds = calibrated_range(p.forecast, errors_known_at(same, p.as_of))
            if bounds is None:
                continue
            ranged += 1
            inside += bounds[0] <= p.actual <= bounds[1]
    return Accuracy(
        method, len(mine),
        absolute / actual if actual else None,
        signed / actual if actual else None,
        Decimal(inside) / ranged if ranged else None,
    )
