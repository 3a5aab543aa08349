"""The forecast section of the HTML report: the expected won value per horizon, its accuracy, a chart.

``velocity report --format html`` adds it after the trend (``[notify] forecast``
switches it off, as it does the digest's forecast lines). It shows, in the
report's locale:

* per horizon the expected won value with its low-high range (the default
  method's, calibrated from its past errors; none while unscored);
* the default method with its WAPE, bias and range coverage over the backtest,
  beside the persistence baseline and, when the CRM has stage probabilities,
  the CRM weighted pipeline;
* what keeps it from being scored, and "no method beats persistence", plainly;
* a chart of forecast vs actual over the backtest for the default method at
  30 days (the shortest horizon when 30 is not asked for): one point per scored
  as-of date, the forecast made that day, the value then won in the next days,
  and the range as it was known that day (out of sample, as coverage counts it).
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Sequence
from decimal import Decimal

import jinja2
import sqlalchemy as sa
from markupsafe import Markup, escape

from sales_velocity.metrics.backtest import calibrated_range, errors_known_at
from sales_velocity.metrics.forecast import MIN_POINTS, MIN_WON, Forecast, compute_forecast
from sales_velocity.metrics.settings import MetricsSettings
from sales_velocity.notify import svg
from sales_velocity.notify.formatting import Formatter, Texts
from sales_velocity.notify.html_report import ReportSection
from sales_velocity.notify.render import texts

__all__ = ["CHART_DAYS", "chart_horizon", "chart_points", "forecast_section", "render_forecast_section"]

CHART_DAYS = 30
"""The horizon the chart shows (the shortest asked for when 30 is not)."""
BASELINE_ORDER = ("persistence", "crm_weighted")


@functools.cache
def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("sales_velocity.notify", "templates"),
        autoescape=True, trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
    )


def chart_horizon(forecast: Forecast) -> int | None:
    """30 days when forecast for, else the shortest horizon; ``None`` without horizons."""
    days = [h.days for h in forecast.horizons]
    return CHART_DAYS if CHART_DAYS in days else min(days, default=None)


def chart_points(forecast: Forecast, days: int) -> list[svg.BandPoint]:
    """The default method's backtest points at ``days``, oldest first, each with its range as known then.

    The range of a point is the one :func:`metrics.backtest.score` checks for
    coverage: from the errors of the points whose horizon had ended by its
    as-of date (none with fewer than ``MIN_CALIBRATION`` of them).
    """
    same = sorted((p for p in forecast.backtest if p.method == forecast.method and p.days == days),
                  key=lambda p: p.as_of)
    out = []
    for p in same:
        bounds = calibrated_range(p.forecast, errors_known_at(same, p.as_of))
        low, high = bounds if bounds is not None else (None, None)
        out.append(svg.BandPoint(p.as_of, p.forecast, p.actual, low, high))
    return out


def _method(t: Texts, method: str) -> str:
    return t(f"report_forecast_method_{method}")


def _signed_share(f: Formatter, value: Decimal | None) -> str:
    if value is None:
        return "–"
    text = f.share(value)
    return "+" + text if value.quantize(Decimal("0.01")) > 0 else text


def _accuracy_rows(forecast: Forecast, t: Texts, f: Formatter) -> list[list[str]]:
    rows = []
    for method in (forecast.method, *BASELINE_ORDER):
        a = forecast.accuracy.get(method)
        if a is None:
            continue
        name = _method(t, method)
        if method == forecast.method:
            name = t("report_forecast_default", method=name)
        rows.append([name, f.number(a.points), f.share(a.wape), _signed_share(f, a.bias),
                     f.share(a.coverage)])
    return rows


def render_forecast_section(forecast: Forecast, locale: str) -> str:
    """The section's body: escaped HTML for :class:`notify.html_report.ReportSection`."""
    t, f = texts(locale), Formatter(locale, forecast.currency)
    method = _method(t, forecast.method)

    def nowrap(value: Decimal | None, before: str = "") -> str:  # "<wbr>": a phone may break after the dash
        return f'{before}<span class="nowrap">{escape(f.money(value))}</span>'

    horizons = [(t("report_forecast_next", days=h.days), f.money(h.expected),
                 Markup(t("report_forecast_range", low=nowrap(h.low),  # noqa: S704 - each part escaped
                          high=nowrap(h.high, "<wbr>")))
                 if h.low is not None and h.high is not None else t("report_forecast_no_range"))
                for h in forecast.horizons]
    notes = []
    if not forecast.scored:
        notes.append(t("forecast_unscored", points=forecast.scored_points, need_points=MIN_POINTS,
                       won=forecast.won_deals, need_won=MIN_WON))
    elif forecast.beats_persistence is False:
        notes.append(t("report_forecast_no_beat", method=method))
    accuracy = forecast.default_accuracy
    days = chart_horizon(forecast)
    points = chart_points(forecast, days) if days is not None else []
    chart = None
    if len(points) >= 2 and days is not None:
        title = t("report_forecast_chart", days=days, method=method)
        chart = Markup(svg.band(points, label=title, value_text=f.money,  # noqa: S704 - svg escapes labels
                                day_text=f.short_date))
    view = {
        "t": t,
        "intro": t("report_forecast_intro", date=f.date(forecast.as_of), currency=forecast.currency),
        "horizon_headers": [t("report_forecast_col_horizon"), t("report_forecast_col_expected"),
                            t("report_forecast_col_range")],
        "horizons": horizons,
        "method_line": (t("report_forecast_method", method=method, points=f.number(accuracy.points))
                        if accuracy is not None else None),
        "accuracy_headers": [t("report_forecast_col_method"), t("report_forecast_col_points"),
                             t("report_forecast_col_wape"), t("report_forecast_col_bias"),
                             t("report_forecast_col_coverage")],
        "accuracy_rows": _accuracy_rows(forecast, t, f) if forecast.scored else [],
        "accuracy_note": t("report_forecast_accuracy_note"),
        "no_crm": forecast.scored and "crm_weighted" not in forecast.accuracy,
        "notes": notes,
        "chart": chart,
        "chart_title": t("report_forecast_chart", days=days or CHART_DAYS, method=method),
        "chart_note": t("report_forecast_chart_note", days=days or CHART_DAYS, points=f.number(len(points))),
        "no_chart": t("report_forecast_no_chart", days=days or CHART_DAYS),
    }
    return _environment().get_template("report_forecast.html.j2").render(**view).rstrip("\n")


def forecast_section(engine: sa.Engine, metrics: MetricsSettings, as_of: dt.date, *, locale: str,
                     horizons: Sequence[int] = (30, 60, 90)) -> ReportSection:
    """The forecast of all deals on ``as_of`` as a report section placed after the trend (reads only)."""
    forecast = compute_forecast(engine, metrics, as_of, horizons=horizons)
    body = render_forecast_section(forecast, locale)
    return ReportSection("forecast", texts(locale)("forecast_heading"), body, after="trend")
