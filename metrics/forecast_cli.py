"""``velocity forecast``: parse its options, compute, and render (scheduler.py only wires it in)."""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa

from sales_velocity.kernel.errors import UsageError
from sales_velocity.metrics.forecast import compute_forecast
from sales_velocity.metrics.forecast_view import render_backtest, render_forecast
from sales_velocity.metrics.movement import parse_scope
from sales_velocity.metrics.settings import MetricsSettings
from sales_velocity.metrics.targets import periods_for
from sales_velocity.sync.store import reading_only

__all__ = ["MAX_HORIZON", "forecast_text", "parse_horizons"]

MAX_HORIZON = 366


def parse_horizons(text: str) -> tuple[int, ...]:
    """``30,60,90`` -> (30, 60, 90): whole days from 1 to :data:`MAX_HORIZON`, each once.

    Raises:
        UsageError: anything else, saying which part is wrong.
    """
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part.isdigit() or not 1 <= int(part) <= MAX_HORIZON:
            raise UsageError(f"--horizons {text!r}: {part!r} is not a whole number of days from 1 to "
                             f"{MAX_HORIZON} (e.g. 30,60,90)")
        if int(part) not in out:
            out.append(int(part))
    return tuple(sorted(out))


def forecast_text(engine: sa.Engine, settings: MetricsSettings, as_of: dt.date, *, horizons: str,
                  scope: str, fmt: str, backtest: bool) -> str:
    """The forecast (table or JSON) or, with ``backtest``, every scored backtest point (JSON or CSV)."""
    days = parse_horizons(horizons)
    with reading_only():
        chosen = parse_scope(engine, scope)
    periods = periods_for(settings.targets, chosen, as_of)
    forecast = compute_forecast(engine, settings, as_of, horizons=days, scope=chosen, periods=periods)
    if backtest:
        return render_backtest(forecast, "csv" if fmt == "csv" else "json")
    if fmt == "csv":
        raise UsageError("--format csv is for --backtest; the forecast is a table or json")
    return render_forecast(forecast, fmt)
