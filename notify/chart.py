"""A small PNG of velocity over time for the HTML e-mail, and a text sparkline.

matplotlib draws headless (the Agg canvas, never ``pyplot``, so no display and
no global state). Undefined days are gaps in the line. The PNG is drawn at twice
its CSS size (``scale=2``) so it stays sharp on phone and retina screens; the
e-mail shows it at ``width_px`` wide and never wider than its box. The value axis
is formatted as money by the caller's formatter (``NOK 12,000`` / ``12 000 kr``),
and neither axis carries an offset label (no ``1e6`` or stray year in a corner).

matplotlib is the optional ``[chart]`` extra (about 40 MB with numpy and its
fonts). Without it the digest carries no PNG: e-mail and Slack show the text
sparkline the plain-text digest always has, and one warning says how to get the
chart (``pip install 'sales-velocity[chart]'``).
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import io
import warnings
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any

import structlog

__all__ = ["CHART_WIDTH_PX", "chart_available", "sparkline", "trend_figure", "trend_png"]

log = structlog.get_logger(__name__)
_warned: list[bool] = []


def chart_available() -> bool:
    """Whether matplotlib (the ``[chart]`` extra) is installed."""
    return importlib.util.find_spec("matplotlib") is not None

BARS = "▁▂▃▄▅▆▇█"
CHART_WIDTH_PX = 480
"""The chart's width in the e-mail, in CSS pixels (the PNG has twice as many)."""


def trend_png(
    series: Sequence[tuple[dt.date, Decimal | None]],
    *,
    title: str = "",
    width_px: int = CHART_WIDTH_PX,
    height_px: int = 200,
    dpi: int = 80,
    scale: int = 2,
    money: Callable[[Decimal], str] | None = None,
    date_text: Callable[[dt.date], str] | None = None,
) -> bytes | None:
    """Render the series as a PNG; ``None`` when fewer than two days have a value.

    Args:
        series: ``(day, velocity)`` pairs; ``None`` is a gap.
        title: A title over the plot (empty: none).
        width_px: Width in CSS pixels (the PNG is ``scale`` times as wide).
        height_px: Height in CSS pixels.
        dpi: Dots per inch at scale 1 (sets the font size relative to the plot).
        scale: Pixel density of the PNG (2: sharp on high-density screens).
        money: Formats a tick value as money; default: grouped whole numbers.
        date_text: Formats a date tick (``Nov 8`` / ``8. nov.``); default: ``11-08``.
    """
    figure = trend_figure(series, title=title, width_px=width_px, height_px=height_px, dpi=dpi,
                          scale=scale, money=money, date_text=date_text)
    if figure is None:
        return None
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def trend_figure(
    series: Sequence[tuple[dt.date, Decimal | None]],
    *,
    title: str = "",
    width_px: int = CHART_WIDTH_PX,
    height_px: int = 200,
    dpi: int = 80,
    scale: int = 2,
    money: Callable[[Decimal], str] | None = None,
    date_text: Callable[[dt.date], str] | None = None,
) -> Any:
    """The matplotlib ``Figure`` :func:`trend_png` saves, laid out (``None`` as there)."""
    points = [(day, value) for day, value in series if value is not None]
    if len(points) < 2:
        return None
    if not chart_available():
        if not _warned:
            _warned.append(True)
            log.warning("chart.unavailable", reason="matplotlib is not installed",
                        advice="pip install 'sales-velocity[chart]'; the digest shows a text sparkline")
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.dates import AutoDateLocator, num2date
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    figure = Figure(figsize=(width_px / dpi, height_px / dpi), dpi=dpi * scale)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    days = [day for day, _ in series]
    values = [float(v) if v is not None else float("nan") for _, v in series]
    axes.plot(days, values, color="#2563eb", linewidth=1.6)  # type: ignore[arg-type]
    axes.fill_between(days, values, alpha=0.12, color="#2563eb")  # type: ignore[arg-type]
    on_day = date_text or (lambda d: f"{d:%m-%d}")
    axes.xaxis.set_major_locator(AutoDateLocator(minticks=3, maxticks=5))  # type: ignore[no-untyped-call]
    axes.xaxis.set_major_formatter(
        FuncFormatter(lambda v, _pos: on_day(num2date(v).date()))  # type: ignore[no-untyped-call]
    )
    as_money = money or (lambda v: f"{v:,.0f}")
    axes.yaxis.set_major_locator(MaxNLocator(nbins=4, steps=[1, 2, 2.5, 5, 10]))
    axes.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: as_money(Decimal(str(round(v))))))
    axes.set_ylim(bottom=0)
    axes.grid(axis="y", alpha=0.3)
    for side in ("top", "right"):
        axes.spines[side].set_visible(False)
    axes.tick_params(labelsize=10)
    if title:
        axes.set_title(title, fontsize=11, loc="left")
    with warnings.catch_warnings():  # a few days of history make the date locator complain
        warnings.simplefilter("ignore", UserWarning)
        figure.tight_layout()
    return figure


def sparkline(series: Sequence[tuple[dt.date, Decimal | None]], width: int = 30) -> str:
    """A one-line text chart (``▁▂▅█``) of the series, resampled to at most ``width`` marks."""
    values = [v for _, v in series]
    if sum(v is not None for v in values) < 2:
        return ""
    if len(values) > width:
        step = len(values) / width
        values = [values[min(len(values) - 1, int((i + 1) * step) - 1)] for i in range(width)]
    defined = [v for v in values if v is not None]
    low, high = min(defined), max(defined)
    span = high - low
    marks = []
    for v in values:
        if v is None:
            marks.append(" ")
        elif not span:
            marks.append(BARS[len(BARS) // 2])
        else:
            marks.append(BARS[int((v - low) / span * (len(BARS) - 1))])
    return "".join(marks)
