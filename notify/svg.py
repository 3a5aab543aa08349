"""Small inline SVG charts for the HTML report: a line over days, horizontal bars, a bridge.

Each function returns one ``<svg>`` element as a string, already escaped (every
label goes through :func:`xml.sax.saxutils.escape`), so a template prints it as
is. The charts scale with their box (``viewBox`` and ``width: 100%``), need no
script, font or image from anywhere, and carry a ``<title>`` and
``aria-label`` for screen readers. Values are ``Decimal``; coordinates are
rounded to 0.1 px so the output is stable for golden files.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from xml.sax.saxutils import escape, quoteattr

__all__ = ["BandPoint", "Bar", "Step", "band", "bars", "bridge", "line"]

INK = "#111827"
MUTED = "#6b7280"
GRID = "#e5e7eb"
LINE = "#2563eb"
RISE = "#047857"
FALL = "#b91c1c"
TOTAL = "#475569"
BAND = "#bfdbfe"
FONT = "font-family=\"-apple-system, 'Segoe UI', Helvetica, Arial, sans-serif\""


def _n(value: float) -> str:
    """A coordinate with at most one decimal (``12``, ``12.5``)."""
    text = f"{value:.1f}"
    return text[:-2] if text.endswith(".0") else text


def _nice_top(high: Decimal) -> Decimal:
    """A round number at or above ``high`` whose quarters are round too (1, 2, 4, 6, 8 times 10^n)."""
    if high <= 0:
        return Decimal(1)
    exp = high.adjusted()
    for step in (Decimal(1), Decimal(2), Decimal(4), Decimal(6), Decimal(8), Decimal(10)):
        top = step.scaleb(exp)
        if top >= high:
            return top
    return Decimal(10).scaleb(exp)  # pragma: no cover - the loop always returns


def _open(width: int, height: int, label: str, max_width: int) -> list[str]:
    return [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" role="img" '
        f"aria-label={quoteattr(label)} style=\"display: block; width: 100%; max-width: {max_width}px; "
        f'height: auto;" {FONT} font-size="12">',
        f"<title>{escape(label)}</title>",
    ]


def _axes(
    high: Decimal,
    days: Sequence[dt.date],
    *,
    label: str,
    value_text: Callable[[Decimal], str],
    day_text: Callable[[dt.date], str],
    width: int,
    height: int,
    max_width: int,
) -> tuple[list[str], Callable[[dt.date], float], Callable[[Decimal], float]]:
    """The opening of a chart over days with a value axis 0..``high``: its parts and the x and y scales.

    Five gridlines with their values on the left, the first, middle and last
    day below; the first day sits on the left edge of the plot, the last on
    the right.
    """
    ticks = [(high * i / 4, value_text(high * i / 4)) for i in range(5)]
    left = max(36, 10 + 7 * max(len(text) for _, text in ticks))  # room for the longest axis label
    right, top, bottom = 12, 10, 24
    first, last = (min(days), max(days)) if days else (None, None)
    span = max(1, (last - first).days) if first and last else 1
    plot_w, plot_h = width - left - right, height - top - bottom

    def x(day: dt.date) -> float:
        assert first is not None  # noqa: S101 - only called with points
        return left + plot_w * (day - first).days / span

    def y(value: Decimal) -> float:
        return top + plot_h * (1 - float(value / high))

    out = _open(width, height, label, max_width)
    for tick, text in ticks:
        ty = y(tick)
        out.append(f'<line x1="{left}" x2="{width - right}" y1="{_n(ty)}" y2="{_n(ty)}" stroke="{GRID}"/>')
        out.append(f'<text x="{left - 6}" y="{_n(ty + 4)}" text-anchor="end" fill="{MUTED}">'
                   f"{escape(text)}</text>")
    if first is not None and last is not None:
        middle = first + dt.timedelta(days=span // 2)
        for day, anchor in ((first, "start"), (middle, "middle"), (last, "end")):
            if anchor == "middle" and span < 4:
                continue
            out.append(f'<text x="{_n(x(day))}" y="{height - 6}" text-anchor="{anchor}" fill="{MUTED}">'
                       f"{escape(day_text(day))}</text>")
    return out, x, y


def line(
    points: Sequence[tuple[dt.date, Decimal | None]],
    *,
    label: str,
    value_text: Callable[[Decimal], str],
    day_text: Callable[[dt.date], str],
    width: int = 400,
    height: int = 190,
    max_width: int = 640,
) -> str:
    """A line over days from zero to a round top; ``None`` breaks the line.

    Args:
        points: ``(day, value)`` by day.
        label: What the chart shows (its title and accessible name).
        value_text: Formats an axis value (money, a rate, days).
        day_text: Formats a day on the time axis (first, middle, last day).
        width: The view box width (the chart scales to its box).
        height: The view box height.
        max_width: The widest the chart is drawn, in CSS pixels.
    """
    defined = [v for _, v in points if v is not None]
    high = _nice_top(max(defined, default=Decimal(0)))
    out, x, y = _axes(high, [d for d, _ in points], label=label, value_text=value_text, day_text=day_text,
                      width=width, height=height, max_width=max_width)
    path: list[str] = []
    pen_up = True
    for day, value in points:
        if value is None:
            pen_up = True
            continue
        path.append(f"{'M' if pen_up else 'L'}{_n(x(day))} {_n(y(value))}")
        pen_up = False
    if path:
        out.append(f'<path d="{" ".join(path)}" fill="none" stroke="{LINE}" stroke-width="2" '
                   'stroke-linejoin="round" stroke-linecap="round"/>')
        day, value = next((d, v) for d, v in reversed(points) if v is not None)
        out.append(f'<circle cx="{_n(x(day))}" cy="{_n(y(value))}" r="3" fill="{LINE}"/>')
    out.append("</svg>")
    return "".join(out)


@dataclass(frozen=True, slots=True)
class Bar:
    """One bar: its label, its value and the value's text."""

    label: str
    value: Decimal
    text: str


def _label(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def bars(items: Sequence[Bar], *, label: str, width: int = 360, max_width: int = 560) -> str:
    """Horizontal bars from zero, one row per item, its text after the bar."""
    left, right, row = 118, 66, 26
    height = row * len(items) + 8
    high = max((b.value for b in items), default=Decimal(0)) or Decimal(1)
    plot_w = width - left - right
    out = _open(width, height, label, max_width)
    for i, b in enumerate(items):
        y0 = 4 + i * row
        w = plot_w * float(b.value / high)
        out.append(f"<g><title>{escape(b.label)}: {escape(b.text)}</title>")
        out.append(f'<text x="{left - 8}" y="{y0 + 17}" text-anchor="end" fill="{INK}">'
                   f"{escape(_label(b.label, 17))}</text>")
        out.append(f'<rect x="{left}" y="{y0 + 4}" width="{_n(max(w, 1))}" height="{row - 8}" rx="2" '
                   f'fill="{LINE}"/>')
        out.append(f'<text x="{_n(left + max(w, 1) + 6)}" y="{y0 + 17}" fill="{INK}">{escape(b.text)}</text>')
        out.append("</g>")
    out.append("</svg>")
    return "".join(out)


@dataclass(frozen=True, slots=True)
class Step:
    """One step of a bridge: a total (``total``) or a change (signed ``value``)."""

    label: str
    value: Decimal
    text: str
    total: bool = False


def bridge(steps: Sequence[Step], *, label: str, width: int = 360, max_width: int = 560) -> str:
    """A horizontal waterfall: totals from zero, each change floating from the running total.

    Rises are green and start with ``+`` in their text, falls red with ``−``; the
    colour is never the only mark.
    """
    left, right, row = 118, 100, 26
    height = row * len(steps) + 8
    running = Decimal(0)
    spans: list[tuple[Decimal, Decimal, str]] = []
    for s in steps:
        if s.total:
            running = s.value
            spans.append((Decimal(0), s.value, TOTAL))
        else:
            start, running = running, running + s.value
            spans.append((min(start, running), max(start, running), RISE if s.value >= 0 else FALL))
    high = max((hi for _, hi, _ in spans), default=Decimal(0)) or Decimal(1)
    plot_w = width - left - right
    out = _open(width, height, label, max_width)
    for i, (s, (lo, hi, colour)) in enumerate(zip(steps, spans, strict=True)):
        y0 = 4 + i * row
        x0 = left + plot_w * float(lo / high)
        w = max(1.0, plot_w * float((hi - lo) / high))
        weight = ' font-weight="bold"' if s.total else ""
        out.append(f"<g><title>{escape(s.label)}: {escape(s.text)}</title>")
        out.append(f'<text x="{left - 8}" y="{y0 + 17}" text-anchor="end" fill="{INK}"{weight}>'
                   f"{escape(_label(s.label, 17))}</text>")
        out.append(f'<rect x="{_n(x0)}" y="{y0 + 4}" width="{_n(w)}" height="{row - 8}" rx="2" '
                   f'fill="{colour}"/>')
        out.append(f'<text x="{width - right + 6}" y="{y0 + 17}" fill="{INK}"{weight}>'
                   f"{escape(s.text)}</text>")
        out.append("</g>")
    out.append("</svg>")
    return "".join(out)


@dataclass(frozen=True, slots=True)
class BandPoint:
    """One day of a forecast-vs-actual chart: the forecast, its range (``None``: none yet), the actual."""

    day: dt.date
    forecast: Decimal
    actual: Decimal
    low: Decimal | None = None
    high: Decimal | None = None


def band(
    points: Sequence[BandPoint],
    *,
    label: str,
    value_text: Callable[[Decimal], str],
    day_text: Callable[[dt.date], str],
    width: int = 440,
    height: int = 210,
    max_width: int = 560,
) -> str:
    """Forecast (dashed) and actual (solid) lines over days, the forecast's range as a band behind them.

    The value axis runs from zero to a round top above every value and range;
    the first point sits on the left edge of the plot, the last on the right.
    The band is drawn only over runs of days that have a range. Each element
    carries ``data-series`` (``forecast``, ``actual``, ``range``) so a reader
    (or a test) can tell them apart without the colour.
    """
    values = [v for p in points for v in (p.forecast, p.actual, p.high) if v is not None]
    high = _nice_top(max(values, default=Decimal(0)))
    out, x, y = _axes(high, [p.day for p in points], label=label, value_text=value_text, day_text=day_text,
                      width=width, height=height, max_width=max_width)
    runs: list[list[BandPoint]] = [[]]
    for p in points:
        if p.low is None or p.high is None:
            if runs[-1]:
                runs.append([])
            continue
        runs[-1].append(p)
    for run in (r for r in runs if r):
        upper = [f"{_n(x(p.day))},{_n(y(p.high))}" for p in run if p.high is not None]
        lower = [f"{_n(x(p.day))},{_n(y(p.low))}" for p in reversed(run) if p.low is not None]
        out.append(f'<polygon data-series="range" points="{" ".join(upper + lower)}" fill="{BAND}" '
                   'fill-opacity="0.7" stroke="none"/>')
    for series, dash, colour in (("forecast", ' stroke-dasharray="6 4"', LINE), ("actual", "", INK)):
        steps = []
        for i, p in enumerate(points):
            value = p.forecast if series == "forecast" else p.actual
            steps.append(f"{'M' if i == 0 else 'L'}{_n(x(p.day))} {_n(y(value))}")
        if steps:
            out.append(f'<path data-series="{series}" d="{" ".join(steps)}" fill="none" stroke="{colour}" '
                       f'stroke-width="2"{dash} stroke-linejoin="round" stroke-linecap="round"/>')
    out.append("</svg>")
    return "".join(out)
