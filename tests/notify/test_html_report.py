"""``velocity report --format html``: the demo's page (golden), self-contained, right numbers, the hook."""

from __future__ import annotations

import datetime as dt
import io
import re
import shutil
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from sales_velocity.notify.html_report import ReportSection, build_html_report, lever_history
from sales_velocity.notify.settings import load_notify_settings
from sales_velocity.scheduler import main
from tests.notify.conftest import METRICS, seed
from tests.notify.factory import AS_OF, NOW
from tests.notify.test_render import golden
from tests.test_cli import NOW as CLI_NOW

ROOT = Path(__file__).resolve().parents[2]
HYGIENE = load_notify_settings({}, {}, {})[1]


def demo_report(tmp_path: Path, *extra: str) -> tuple[int, str, Path]:
    """Run the demo (config.example.toml, pinned clock), then `report --format html --output`."""
    shutil.copy(ROOT / "config.example.toml", tmp_path / "config.toml")
    shutil.copytree(ROOT / "connectors" / "demo", tmp_path / "connectors" / "demo")
    out = io.StringIO()
    assert main(["--config", str(tmp_path / "config.toml"), "run"], env={}, out=out, now=lambda: CLI_NOW) == 0
    out = io.StringIO()
    target = tmp_path / "report.html"
    code = main(["--config", str(tmp_path / "config.toml"), "report", "--format", "html",
                 "--output", str(target), *extra], env={}, out=out, now=lambda: CLI_NOW)
    return code, out.getvalue(), target


@pytest.fixture
def seeded_sqlite(sqlite_store):
    """The notifier tests' seeded store (two sellers, stalled deals, 31 days of snapshots, changes)."""
    seed(sqlite_store)
    return sqlite_store


def seeded_report(engine, **kwargs) -> str:
    """The report of the notifier's seeded store."""
    return build_html_report(engine, METRICS, HYGIENE, as_of=AS_OF, now=NOW, **kwargs)


def test_demo_report_golden(tmp_path):
    """The demo's HTML report, written with --output, matches the golden file; stdout says where it went."""
    code, out, target = demo_report(tmp_path)
    assert code == 0
    assert out == f"report written to {target}\n"
    golden("report_demo.html", target.read_text(encoding="utf-8"))


def test_self_contained(tmp_path):
    """No script, style, font or image comes from elsewhere: the page opens from disk or an attachment."""
    _, _, target = demo_report(tmp_path)
    html = target.read_text(encoding="utf-8")
    assert not re.search(r"<script[^>]+src=", html)
    assert not re.search(r"<link\b", html)
    assert not re.search(r"<img\b", html)
    assert "@import" not in html
    assert not re.search(r"url\(", html)
    assert not re.search(r"@font-face", html)
    assert "<svg" in html


def test_numbers_as_the_definition_gives_them(seeded_sqlite):
    """Velocity N*V*p/L from the seed's own deals, the lever cards, and the per-owner table's exact keys."""
    html = seeded_report(seeded_sqlite)
    # seed: open a, b, c (N=3); won w0..w2 at 50,000 with cycles 30, 40, 20 days; one lost
    n, v, p = 3, Decimal(50_000), Decimal(3) / Decimal(4)
    cycle = Decimal(30 + 40 + 20) / 3
    velocity = n * v * p / cycle
    assert f"NOK {velocity:,.0f} per day" in html
    assert '<div class="lever">Win rate<b>75.0%</b></div>' in html
    owners = html.split('<section id="owners">')[1].split("</section>")[0]
    kari = re.search(r"<tr><td data-key=\"kari nordmann\">.*?</tr>", owners)
    assert kari is not None
    keys = re.findall(r'data-key="([^"]*)"', kari.group(0))
    # Kari owns two of the three open deals (a, c) and every won deal
    assert Decimal(keys[1]) == 2 * v * p / cycle
    assert keys[2] == "2"


def test_velocity_trend_has_a_point_per_stored_day(seeded_sqlite):
    """The trend draws one point per stored day with a velocity: the days whose window holds a won deal."""
    html = seeded_report(seeded_sqlite)
    chart = html.split('<section id="trend">')[1].split("</svg>")[0]
    path = re.search(r'<path d="([^"]+)"', chart)
    assert path is not None
    # 31 stored days; the oldest won deal of the seed closed 20 days before NOW (local day in Oslo)
    first_won_day = (NOW - dt.timedelta(days=20)).astimezone(ZoneInfo("Europe/Oslo")).date()
    defined = [back for back in range(31) if AS_OF - dt.timedelta(days=back) >= first_won_day]
    assert len(re.findall(r"[ML]", path.group(1))) == len(defined) == 21
    assert path.group(1).count("M") == 1  # the undefined days are before the first point, not gaps
    assert len(re.findall(r'<svg ', html.split('<section id="trend">')[1].split("</section>")[0])) == 5


def test_bridge_adds_up(seeded_sqlite):
    """The bridge runs 50,000 + 180,000 + 20,000 − 50,000 = 200,000, and its bars join end to end."""
    html = seeded_report(seeded_sqlite)
    bridge = html.split('<section id="movement">')[1].split("</svg>")[0]
    texts = re.findall(r'<text [^>]*fill="#111827"[^>]*>([^<]+)</text>', bridge)
    labels, values = texts[0::2], texts[1::2]
    assert labels == ["Open at the start", "Added", "Amounts raised", "Won", "Open at the end"]
    assert values == ["NOK 50,000", "+NOK 180,000", "+NOK 20,000", "−NOK 50,000", "NOK 200,000"]
    found = re.findall(r'<rect x="([^"]+)" y="[^"]+" width="([^"]+)"', bridge)
    rects = [(float(x), float(w)) for x, w in found]
    start, added, raised, won, end = rects
    assert added[0] == pytest.approx(start[0] + start[1], abs=0.2)  # a rise starts where the total ends
    assert raised[0] == pytest.approx(added[0] + added[1], abs=0.2)
    assert won[0] + won[1] == pytest.approx(raised[0] + raised[1], abs=0.2)  # a fall ends there
    assert end[0] + end[1] == pytest.approx(won[0], abs=0.2)


def test_extra_section_hook(seeded_sqlite):
    """A forecast section passed in lands after the trend, before the tables; its title is escaped."""
    section = ReportSection("forecast", "Forecast <30/60/90>", "<p>expected: NOK 1</p>", after="trend")
    html = seeded_report(seeded_sqlite, extra_sections=[section])
    assert '<section id="forecast">\n<h2>Forecast &lt;30/60/90&gt;</h2>\n<p>expected: NOK 1</p>' in html
    assert html.index('<section id="trend">') < html.index('id="forecast"') < html.index('id="pipelines"')
    with pytest.raises(ValueError, match="after='nowhere'"):
        seeded_report(seeded_sqlite, extra_sections=[ReportSection("x", "X", "", after="nowhere")])  # type: ignore[arg-type]


def test_norwegian(seeded_sqlite):
    """With locale nb the page is in Norwegian, amounts as 3 750 kr."""
    html = seeded_report(seeded_sqlite, locale="nb")
    assert '<html lang="nb">' in html
    assert "Rapport om salgshastighet · 26. nov. 2026" in html
    assert "3 750 kr per dag" in html


def test_banner_and_freshness_on_top(seeded_sqlite):
    """A source that never synced puts the banner above everything, and the freshness line under it."""
    html = seeded_report(seeded_sqlite, sources=["demo", "hubspot"])
    assert html.index('class="banner"') < html.index("<h1>")
    assert "hubspot has never synced" in html.split('class="banner"')[1].split("</div>")[0]
    assert "Data: last good sync demo" in html


def test_unwritable_output_is_one_line_exit_2(tmp_path, capsys):
    """--output into a missing folder: exit 2 and one line naming the path, nothing half-written."""
    code, _, _ = demo_report(tmp_path, "--output", str(tmp_path / "missing" / "r.html"))
    assert code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("{")]  # not logs
    assert len(err) == 1
    assert err[0].startswith(f"velocity: --output {tmp_path / 'missing' / 'r.html'}: cannot write the report")
    assert not (tmp_path / "missing").exists()


def test_lever_history_on_each_backend(store):
    """The levers of "all" come back one row per stored day, as stored, on SQLite and PostgreSQL."""
    seed(store)
    rows = lever_history(store, AS_OF - dt.timedelta(days=89), AS_OF, METRICS.window_days)
    assert [r.day for r in rows] == [AS_OF - dt.timedelta(days=back) for back in range(30, -1, -1)]
    today = rows[-1]
    assert today.opportunities == 3
    assert today.win_rate == Decimal("0.75")
    assert today.avg_deal_value == Decimal(50_000)
    assert today.cycle_days == Decimal(30)
    assert today.velocity == Decimal(3750)
