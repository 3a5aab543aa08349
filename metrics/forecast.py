"""``velocity forecast``: the won value expected in the next 30/60/90 days, and how often that was right.

For the as-of date ``T`` and each horizon ``h`` the forecast is the value (base
currency) expected to be won on local days ``T+1 .. T+h``, by each method of
``metrics.forecast_methods``, all computed only from what was known at ``T``.

The backtest (``metrics.backtest``) makes the same forecasts at as-of points
every 7 days over the last 12 months (:data:`BACKTEST_POINTS`, as far back as
the history allows: a point counts once a deal was created a full velocity
window before it), with the same "as known at T" rules as the rebuilt velocity
snapshots, and scores those whose horizon has fully passed. The default method
is the one with the lowest WAPE; the forecast's range is calibrated from that
method's past errors.

With too little history (fewer than :data:`MIN_POINTS` scored as-of points at
the shortest horizon, or fewer than :data:`MIN_WON` won deals) the forecast is
velocity x days, marked unscored, and the note says what is missing.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal

import sqlalchemy as sa

from sales_velocity.metrics.backtest import (
    Accuracy,
    BacktestPoint,
    calibrated_range,
    errors_known_at,
    score,
)
from sales_velocity.metrics.forecast_data import ForecastData, read_forecast_data
from sales_velocity.metrics.forecast_methods import (
    BASELINES,
    METHODS,
    TRAINING_POINTS,
    DealModel,
    crm_weighted,
    persistence,
    velocity_x_days,
)
from sales_velocity.metrics.history import rebuild_reports
from sales_velocity.metrics.movement import MovementScope
from sales_velocity.metrics.settings import MetricsSettings
from sales_velocity.metrics.targets import Period, TargetStatus, target_statuses
from sales_velocity.sync.store import reading_only

__all__ = ["BACKTEST_POINTS", "MIN_POINTS", "MIN_WON", "Forecast", "HorizonForecast", "compute_forecast"]

BACKTEST_POINTS = 53
"""As-of points: the as-of date and every 7 days back over 52 weeks."""
MIN_POINTS = 8
MIN_WON = 20
CENT = Decimal("0.01")
METHOD_NAMES = {
    "velocity_x_days": "velocity x days",
    "deal_by_deal": "deal by deal",
    "persistence": "persistence",
    "crm_weighted": "CRM weighted pipeline",
}


@dataclass(frozen=True)
class HorizonForecast:
    """The forecast for one horizon: the default method's figure and range, and every method's figure."""

    days: int
    expected: Decimal
    low: Decimal | None
    high: Decimal | None
    by_method: dict[str, Decimal | None]
    wape: Decimal | None = None
    """The default method's WAPE at this horizon over the backtest (``None`` when unscored)."""


@dataclass(frozen=True)
class Forecast:
    """The forecast of one scope on one as-of date, with its backtest."""

    as_of: dt.date
    currency: str
    scope: MovementScope
    method: str
    scored: bool
    horizons: tuple[HorizonForecast, ...]
    accuracy: dict[str, Accuracy]
    """Per method and baseline (``crm_weighted`` only when the CRM has stage probabilities)."""
    backtest: tuple[BacktestPoint, ...]
    notes: tuple[str, ...]
    beats_persistence: bool | None
    won_deals: int
    velocity_per_day: Decimal | None
    scored_points: int = 0
    """As-of points scored at the shortest horizon."""
    targets: tuple[TargetStatus, ...] = field(default=())
    """Where each targeted period containing the as-of date stands (``metrics.targets``)."""

    @property
    def default_accuracy(self) -> Accuracy | None:
        """The accuracy of the default method (``None`` when unscored)."""
        return self.accuracy.get(self.method) if self.scored else None


def _velocities(engine: sa.Engine, settings: MetricsSettings, days: Sequence[dt.date],
                scope: MovementScope) -> dict[dt.date, Decimal | None]:
    """Velocity per day of ``scope`` on each of ``days``, from one history rebuild."""
    if not days:
        return {}
    key = "" if scope.kind == "all" else f"{scope.source}/{scope.key}"
    wanted = set(days)
    out: dict[dt.date, Decimal | None] = {}
    for report in rebuild_reports(engine, settings, min(days), max(days), only=wanted):
        found = next((s for s in report.scopes if s.scope == scope.kind and s.key == key), None)
        out[report.as_of] = found.velocity.value if found is not None else Decimal(0)
    return out


def _forecasts(data: ForecastData, model: DealModel, point: int, days: int,
               velocity: Decimal | None) -> dict[str, Decimal | None]:
    return {
        "velocity_x_days": velocity_x_days(velocity, days),
        "deal_by_deal": model.expected(point, days),
        "persistence": persistence(data, point, days),
        "crm_weighted": crm_weighted(data, point),
    }


def _backtest_points(data: ForecastData, settings: MetricsSettings) -> list[int]:
    """The as-of points of the backtest, oldest first: the last 52 weeks, where history allows."""
    last = data.points - 1
    first_allowed = None if data.first_created is None else data.first_created + settings.window_days - 1
    return [q for q in range(max(last - BACKTEST_POINTS + 1, 0), last + 1)
            if first_allowed is not None and data.day_of(q) >= first_allowed]


def compute_forecast(engine: sa.Engine, settings: MetricsSettings, as_of: dt.date, *,
                     horizons: Sequence[int] = (30, 60, 90), scope: MovementScope | None = None,
                     periods: Sequence[Period] = ()) -> Forecast:
    """The forecast for ``horizons`` days after ``as_of``, every method, and its 52-week backtest.

    Reads only: the deals once (``metrics.forecast_data``), velocity x days
    at every point included.
    For each of ``periods`` (targets containing ``as_of``) the rest of the
    period is forecast at ``as_of`` only, by the default method.
    """
    scope = scope or MovementScope()
    hs = tuple(sorted(set(horizons)))
    extra_horizons = sorted({(p.last - as_of).days for p in periods} - {0})
    all_hs = tuple(sorted(set(hs) | set(extra_horizons)))
    longest_period = max(((as_of - p.first).days + 1 for p in periods), default=0)
    history_days = max(7 * (BACKTEST_POINTS - 1 + TRAINING_POINTS) + max(all_hs) + 7, longest_period)
    # Velocity at every candidate point is summed in the same pass over the deals
    # (``metrics.forecast_velocity``); a point whose window starts before the grid
    # (a window longer than the grid's extra history) is rebuilt (``metrics.history``).
    candidates = [as_of - dt.timedelta(days=7 * k) for k in range(BACKTEST_POINTS)]
    with reading_only():
        data = read_forecast_data(engine, settings, as_of, history_days=history_days, horizons=all_hs,
                                  scope=scope, velocity_days=candidates)
        velocities = dict(data.velocities)
        rest = [day for day in candidates if day not in velocities]
        velocities.update(_velocities(engine, settings, rest, scope))
    points = _backtest_points(data, settings)
    model = DealModel(data)
    last = data.points - 1
    last_day = data.days - 1
    backtest: list[BacktestPoint] = []
    for q in points:
        day = data.day_of(q)
        for h in hs:
            if day + h > last_day:
                continue
            actual = data.won_between(day + 1, day + h).quantize(CENT, ROUND_HALF_UP)
            for method, value in _forecasts(data, model, q, h, velocities.get(data.date_of(q))).items():
                if value is not None:
                    backtest.append(BacktestPoint(data.date_of(q), h, method,
                                                  value.quantize(CENT, ROUND_HALF_UP), actual))
    accuracy = {m: score(backtest, m) for m in (*METHODS, *BASELINES)
                if any(p.method == m for p in backtest)}
    notes: list[str] = []
    scored_points = len({p.as_of for p in backtest if p.days == hs[0] and p.method == "persistence"})
    missing = []
    if scored_points < MIN_POINTS:
        missing.append(f"{scored_points} backtest points of {MIN_POINTS} needed")
    if data.won_deals < MIN_WON:
        missing.append(f"{data.won_deals} won deals of {MIN_WON} needed")
    scored = not missing
    method = "velocity_x_days"
    beats: bool | None = None
    if missing:
        notes.append("Too little history to score the forecast (" + "; ".join(missing)
                     + "): velocity x days is shown, unscored.")
    else:
        ranked = [(a.wape, m) for m, a in accuracy.items() if m in METHODS and a.wape is not None]
        if ranked:
            method = min(ranked)[1]
            base = accuracy.get("persistence")
            beats = base is None or base.wape is None or min(ranked)[0] < base.wape
            if not beats:
                notes.append("No method beats persistence (the value won in the last h days) on this store.")
    if data.left_out:
        notes.append(f"{data.left_out} deals without an amount or an exchange rate to "
                     f"{settings.currency} are left out.")
    if not data.probabilities:
        notes.append("The CRM has no stage probabilities: no CRM weighted baseline.")
    velocity = velocities.get(as_of)
    result_horizons = []
    for h in hs:
        by_method = {m: (v.quantize(CENT, ROUND_HALF_UP) if v is not None else None)
                     for m, v in _forecasts(data, model, last, h, velocity).items()}
        expected = by_method.get(method) or Decimal("0.00")
        bounds, wape = None, None
        if scored:
            same = [p for p in backtest if p.method == method and p.days == h]
            bounds = calibrated_range(expected, errors_known_at(same, as_of))
            wape = score(same, method).wape
        result_horizons.append(HorizonForecast(h, expected, bounds[0] if bounds else None,
                                               bounds[1] if bounds else None, by_method, wape))
    extra = {}
    for h in extra_horizons:
        value = (model.expected(last, h) if method == "deal_by_deal" else velocity_x_days(velocity, h))
        extra[h] = (value or Decimal(0)).quantize(CENT, ROUND_HALF_UP)
    won = {p.label: data.won_between(data.days - 1 - (as_of - p.first).days, data.days - 1) for p in periods}
    statuses = target_statuses(list(periods), as_of, won, extra)
    return Forecast(as_of, settings.currency, scope, method, scored, tuple(result_horizons), accuracy,
                    tuple(backtest), tuple(notes), beats, data.won_deals, velocity, scored_points,
                    tuple(statuses))
