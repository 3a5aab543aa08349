"""``velocity forecast`` output: a table for people, the JSON contract, and the backtest as JSON or CSV.

The JSON contract (a script reads it)::

    {"as_of", "currency", "method", "horizons": [{"days", "expected", "low", "high"}],
     "accuracy": {"points", "wape", "bias", "coverage",
                  "baselines": {"persistence": wape, "crm_weighted": wape | null}}}

Money is a decimal string; ``wape``, ``bias`` and ``coverage`` are ratios
(decimal strings with four places, ``null`` when undefined or unscored). Extra
keys (``scope``, ``scored``, ``notes``, ``methods``, ``targets``) may be read
or ignored. ``--backtest`` lists every scored point:
``{"as_of", "days", "method", "forecast", "actual"}``.
"""

from __future__ import annotations

import csv
import io
import json
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from sales_velocity.metrics.backtest import Accuracy
from sales_velocity.metrics.forecast import METHOD_NAMES, Forecast

__all__ = ["render_backtest", "render_forecast"]

_RATIO = Decimal("0.0001")


def _ratio(value: Decimal | None) -> str | None:
    return None if value is None else str(value.quantize(_RATIO, ROUND_HALF_UP))


def _money(value: Decimal | None) -> str | None:
    return None if value is None else str(value)


def _accuracy(a: Accuracy | None) -> dict[str, Any]:
    if a is None:
        return {"points": 0, "wape": None, "bias": None, "coverage": None}
    return {"points": a.points, "wape": _ratio(a.wape), "bias": _ratio(a.bias),
            "coverage": _ratio(a.coverage)}


def _wape(forecast: Forecast, method: str) -> str | None:
    found = forecast.accuracy.get(method)
    return None if found is None else _ratio(found.wape)


def forecast_json(forecast: Forecast) -> dict[str, Any]:
    """The JSON object of the contract, with the extra keys."""
    accuracy = _accuracy(forecast.default_accuracy)
    accuracy["baselines"] = {"persistence": _wape(forecast, "persistence"),
                             "crm_weighted": _wape(forecast, "crm_weighted")}
    return {
        "as_of": forecast.as_of.isoformat(),
        "currency": forecast.currency,
        "method": forecast.method,
        "horizons": [{"days": h.days, "expected": _money(h.expected), "low": _money(h.low),
                      "high": _money(h.high)} for h in forecast.horizons],
        "accuracy": accuracy,
        "scope": forecast.scope.text,
        "scored": forecast.scored,
        "beats_persistence": forecast.beats_persistence,
        "notes": list(forecast.notes),
        "methods": {m: {**_accuracy(a), "forecasts": {str(h.days): _money(h.by_method.get(m))
                                                      for h in forecast.horizons}}
                    for m, a in forecast.accuracy.items()},
        "targets": [t.as_json() for t in forecast.targets],
    }


def _pct(value: Decimal | None) -> str:
    return "n/a" if value is None else f"{(value * 100).quantize(Decimal('0.1'), ROUND_HALF_UP)} %"


def _amount(value: Decimal | None) -> str:
    return "n/a" if value is None else f"{value.quantize(Decimal('0.01'), ROUND_HALF_UP):,.2f}"


def forecast_table(forecast: Forecast) -> str:
    """The forecast for people: one line per horizon, the accuracy of every method, the notes."""
    status = "" if forecast.scored else ", unscored"
    lines = [f"Forecast for {forecast.scope.label}, as of {forecast.as_of} ({forecast.currency}); "
             f"method: {METHOD_NAMES[forecast.method]}{status}", ""]
    lines.append(f"{'horizon':<10}{'expected':>18}{'low':>18}{'high':>18}")
    for h in forecast.horizons:
        row = f"{_amount(h.expected):>18}{_amount(h.low):>18}{_amount(h.high):>18}"
        lines.append(f"{f'{h.days} days':<10}{row}")
    lines.append("")
    if forecast.accuracy:
        lines.append("Backtest (every 7 days over the last 12 months, horizons that have passed):")
        lines.append(f"{'method':<24}{'points':>8}{'WAPE':>10}{'bias':>10}{'80 % range held':>18}")
        for method, a in forecast.accuracy.items():
            mark = " *" if method == forecast.method and forecast.scored else ""
            lines.append(f"{METHOD_NAMES[method] + mark:<24}{a.points:>8}{_pct(a.wape):>10}{_pct(a.bias):>10}"
                         f"{_pct(a.coverage):>18}")
        lines.append("")
    for t in forecast.targets:
        lines.append(t.line())
    lines.extend(forecast.notes)
    return "\n".join(lines).rstrip() + "\n"


def render_forecast(forecast: Forecast, fmt: str) -> str:
    """``table`` or ``json``."""
    if fmt == "json":
        return json.dumps(forecast_json(forecast), indent=2) + "\n"
    return forecast_table(forecast)


def render_backtest(forecast: Forecast, fmt: str) -> str:
    """Every scored backtest point, as JSON (a list) or CSV."""
    rows = [{"as_of": p.as_of.isoformat(), "days": p.days, "method": p.method, "forecast": str(p.forecast),
             "actual": str(p.actual)} for p in forecast.backtest]
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=["as_of", "days", "method", "forecast", "actual"],
                                lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return out.getvalue()
    return json.dumps(rows, indent=2) + "\n"
