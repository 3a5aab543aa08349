"""The digest's forecast section: one line per horizon, the targets, and what keeps it from being scored."""

from __future__ import annotations

from sales_velocity.metrics.forecast import MIN_POINTS, MIN_WON, Forecast
from sales_velocity.notify.formatting import Formatter, Texts

__all__ = ["forecast_lines"]


def forecast_lines(forecast: Forecast, t: Texts, f: Formatter) -> list[str]:
    """Localised lines: per horizon the expected value, its range and its error; then targets and caveats."""
    lines = []
    for h in forecast.horizons:
        if h.low is not None and h.high is not None:
            line = t("forecast_line", days=h.days, amount=f.money(h.expected), low=f.money(h.low),
                     high=f.money(h.high))
        else:
            line = t("forecast_line_no_range", days=h.days, amount=f.money(h.expected))
        if h.wape is not None:
            line += " " + t("forecast_off_by", wape=f.share(h.wape))
        lines.append(line)
    method = t(f"forecast_method_{forecast.method}")
    if not forecast.scored:
        lines.append(t("forecast_unscored", points=forecast.scored_points, need_points=MIN_POINTS,
                       won=forecast.won_deals, need_won=MIN_WON))
    else:
        lines.append(t("forecast_method", method=method))
        if forecast.beats_persistence is False:
            lines.append(t("forecast_no_beat"))
    for s in forecast.targets:
        if s.needed == 0:
            lines.append(t("target_met", period=s.period.label, target=f.money(s.period.target),
                           won=f.money(s.won)))
            continue
        verdict = (t("target_closes") if s.closes_gap
                   else t("target_short", per_day=f.money(s.velocity_needed)) if s.velocity_needed is not None
                   else t("target_missed"))
        lines.append(t("target_line", period=s.period.label, target=f.money(s.period.target),
                       won=f.money(s.won), needed=f.money(s.needed), days=s.remaining_days,
                       forecast=f.money(s.forecast), verdict=verdict))
    return lines
