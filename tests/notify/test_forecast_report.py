"""The HTML report's forecast section: goldens in both locales, the chart against the backtest, the notes."""

from __future__ import annotations

import datetime as dt
import io
import re
import xml.etree.ElementTree as ET
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from sales_velocity.metrics.forecast import Forecast, compute_forecast
from sales_velocity.notify.forecast_report import render_forecast_section
from sales_velocity.scheduler import main
from sales_velocity.sync.store import stage_events_table, stages_table
from tests.metrics.test_forecast import AS_OF, DAY, SETTINGS, noon, steady, won_between
from tests.metrics.test_velocity_rows import deal, insert_deals
from tests.notify.test_html_report import demo_report
from tests.notify.test_render import golden
from tests.test_cli import NOW as CLI_NOW

SVG = "{http://www.w3.org/2000/svg}"
NOK = SETTINGS.model_copy(update={"currency": "NOK"})
YEARS = 3


def varying() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """One deal a day for three years, amounts rising 1,000..2,990 in a 200-day sawtooth, every other won.

    Deals wait 10 days in stage A; winners then 10 days in B and are won 20
    days after creation, losers lost then. The stages carry CRM probabilities
    (A 10 %, B 90 %), so the CRM weighted baseline exists. The won value of a
    30-day window moves with the amounts: no method is exact.
    """
    rows, events = [], []
    start = AS_OF - dt.timedelta(days=365 * YEARS)
    for n in range(365 * YEARS + 60):
        created = start + n * DAY
        won = n % 2 == 0
        closed = created + 20 * DAY
        ident = f"d{n}"
        rows.append(deal(ident, status=("won" if won else "lost") if closed <= AS_OF + 60 * DAY else "open",
                         created=noon(created), closed=noon(closed), amount=1000 + 10 * (n % 200),
                         pipeline="p"))
        events.append({"source": "crm", "external_id": ident, "pipeline_id": "p", "stage_id": "A",
                       "entered_at": noon(created), "observed": False})
        if won:
            events.append({"source": "crm", "external_id": ident, "pipeline_id": "p", "stage_id": "B",
                           "entered_at": noon(created + 10 * DAY), "observed": False})
    return rows, events


@pytest.fixture
def history(sqlite_store: sa.Engine) -> tuple[Forecast, list[dict[str, Any]]]:
    """The forecast of the varying pipeline on AS_OF, and its deal rows."""
    rows, events = varying()
    insert_deals(sqlite_store, rows)
    with sqlite_store.begin() as conn:
        conn.execute(sa.insert(stage_events_table), events)
        conn.execute(sa.insert(stages_table), [
            {"source": "crm", "pipeline_id": "p", "external_id": stage, "name": stage,
             "probability": Decimal(chance)} for stage, chance in (("A", "0.1"), ("B", "0.9"))
        ])
    return compute_forecast(sqlite_store, NOK, AS_OF), rows


def chart(html: str) -> ET.Element:
    """The section's SVG, parsed."""
    found = re.search(r"<svg .*?</svg>", html, re.S)
    assert found is not None
    return ET.fromstring(found.group(0))  # noqa: S314 - our own output, not untrusted


def coordinates(path: ET.Element) -> list[tuple[float, float]]:
    """The ``M``/``L`` points of a path."""
    return [(float(x), float(y)) for x, y in re.findall(r"[ML]([\d.]+) ([\d.]+)", path.attrib["d"])]


def money(text: str) -> Decimal:
    """``NOK 40,000`` -> 40000 (the axis labels, read back)."""
    return Decimal(re.sub(r"[^\d]", "", text))


@pytest.mark.parametrize("locale", ["en", "nb"])
def test_section_golden(history, locale: str) -> None:
    """Expected value and range per horizon, the default method beside both baselines, the chart (golden)."""
    forecast, _ = history
    golden(f"forecast_report_section_{locale}.html", render_forecast_section(forecast, locale) + "\n")


def test_chart_points_are_the_backtest_points(history) -> None:
    """One chart point per scored 30-day as-of point; the first and last map to their forecast and actual."""
    forecast, rows = history
    svg = chart(render_forecast_section(forecast, "en"))
    paths = {p.attrib["data-series"]: coordinates(p) for p in svg.iter(f"{SVG}path")}
    # By hand: as-of points every 7 days back to AS_OF - 52 weeks (three years of history allow them
    # all); a 30-day horizon has passed for T = AS_OF - 7k with 7k >= 30, so k = 5 .. 52: 48 points.
    days = [AS_OF - 7 * k * DAY for k in range(52, 4, -1)]
    assert len(days) == 48
    mine = sorted((p for p in forecast.backtest if p.method == forecast.method and p.days == 30),
                  key=lambda p: p.as_of)
    assert [p.as_of for p in mine] == days
    assert len(paths["forecast"]) == len(paths["actual"]) == 48
    # the value axis, read back from the SVG: the gridline labelled 0 and the top one with its label
    lines = [(float(g.attrib["y1"]), float(g.attrib["x1"]), float(g.attrib["x2"]))
             for g in svg.iter(f"{SVG}line")]
    labels = [t.text or "" for t in svg.iter(f"{SVG}text")][:5]
    (zero_y, left, right), (top_y, _, _) = lines[0], lines[-1]
    assert money(labels[0]) == 0
    top = money(labels[-1])

    def y(value: Decimal) -> float:
        return zero_y - (zero_y - top_y) * float(value / top)

    for index, x in ((0, left), (-1, right)):
        point = mine[index]
        actual = won_between(rows, point.as_of + DAY, point.as_of + 30 * DAY)  # plain Python, from the rows
        assert point.actual == actual
        assert paths["forecast"][index] == pytest.approx((x, y(point.forecast)), abs=0.06)
        assert paths["actual"][index] == pytest.approx((x, y(actual)), abs=0.06)
    assert max(v for p in mine for v in (p.forecast, p.actual)) <= top


def test_band_starts_once_eight_errors_are_known(history) -> None:
    """The range band covers the points with 8 earlier passed forecasts: from the 13th point on (36)."""
    forecast, _ = history
    svg = chart(render_forecast_section(forecast, "en"))
    (band,) = svg.iter(f"{SVG}polygon")
    corners = [tuple(map(float, c.split(","))) for c in band.attrib["points"].split()]
    # By hand: at the k-th point (0-based) the points j with T_j + 30 <= T_k are j <= k - 5, so k - 4 errors;
    # 8 are needed from k = 12 on: 48 - 12 = 36 points, each with a top and a bottom corner.
    assert len(corners) == 2 * 36
    xs = [x for x, _ in coordinates(next(p for p in svg.iter(f"{SVG}path")))]
    assert corners[0][0] == xs[12]
    assert corners[35][0] == xs[-1]
    upper, lower = corners[:36], list(reversed(corners[36:]))
    assert all(high <= low for (_, high), (_, low) in zip(upper, lower, strict=True))  # y grows downwards


def test_crm_baseline_listed_when_the_crm_has_probabilities(history) -> None:
    """With stage probabilities the accuracy table has the CRM weighted row beside persistence."""
    forecast, _ = history
    html = render_forecast_section(forecast, "en")
    assert "crm_weighted" in forecast.accuracy
    assert "<td>CRM weighted pipeline</td>" in html
    assert "<td>persistence (the last days again)</td>" in html
    assert "no CRM weighted baseline" not in html


def test_no_method_beats_persistence_is_said(sqlite_store: sa.Engine) -> None:
    """A steady pipeline: persistence is exact, so the section says plainly that nothing beats it."""
    insert_deals(sqlite_store, steady())
    forecast = compute_forecast(sqlite_store, NOK, AS_OF)
    assert forecast.beats_persistence is False
    html = render_forecast_section(forecast, "en")
    assert ('<p class="note"><strong>No method beats persistence on this data: simply expecting the value '
            "won in the last days again did as well as deal by deal or better.</strong></p>") in html
    assert "The CRM has no stage probabilities, so there is no CRM weighted baseline." in html
    nb = render_forecast_section(forecast, "nb")
    assert "Ingen metode slår «som sist» på disse dataene" in nb


def test_unscored_is_said_with_what_is_missing(sqlite_store: sa.Engine) -> None:
    """Five won deals: the note gives the counts, the horizons have no range, no accuracy table, no chart."""
    insert_deals(sqlite_store, [deal(f"w{n}", status="won", created=noon(AS_OF - 40 * DAY),
                                     closed=noon(AS_OF - n * DAY), amount=100) for n in range(5)])
    html = render_forecast_section(compute_forecast(sqlite_store, NOK, AS_OF), "en")
    assert ("Not scored yet: too little history (0 of 8 backtest points, 5 of 20 won deals); shown is "
            "velocity x days.") in html
    assert html.count("no range (unscored)") == 3
    assert "Error (WAPE)" not in html
    assert "<svg" not in html
    assert "No 30-day forecast has been scored yet" in html


def test_notify_forecast_false_leaves_the_section_out(tmp_path: Path) -> None:
    """`[notify] forecast = false` takes the section out of the report; by default it is there."""
    code, _, target = demo_report(tmp_path)
    assert code == 0
    html = target.read_text(encoding="utf-8")
    assert html.index('id="trend"') < html.index('<section id="forecast">') < html.index('id="pipelines"')
    config = tmp_path / "config.toml"
    text = config.read_text(encoding="utf-8")
    config.write_text(text.replace("[notify]\n", "[notify]\nforecast = false\n", 1), encoding="utf-8")
    out = tmp_path / "off.html"
    assert main(["--config", str(config), "report", "--format", "html", "--output", str(out)], env={},
                out=io.StringIO(), now=lambda: CLI_NOW) == 0
    assert 'id="forecast"' not in out.read_text(encoding="utf-8")
