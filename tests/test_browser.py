"""The HTML report and the HTML e-mail in a real headless Chromium, at a phone's and a desktop's width.

The browser is Debian's ``chromium`` (``/usr/bin/chromium``), driven by the
``playwright`` package (its own browser downloads are never used). Without it
the tests skip, unless ``VELOCITY_REQUIRE_BROWSER=1`` (set by ``.ci/run``), when
they fail. Screenshots go to ``tests/output/`` for a person to look at.
"""

from __future__ import annotations

import base64
import datetime as dt
import io
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from sales_velocity.scheduler import main
from tests.notify.conftest import seed
from tests.notify.test_render import messages

CHROMIUM = Path("/usr/bin/chromium")
ROOT = Path(__file__).resolve().parent.parent
OUTPUT = Path(__file__).parent / "output"
NOW = dt.datetime(2026, 11, 26, 9, 0, tzinfo=dt.UTC)
WIDTHS = (390, 1440)


def _browser_missing() -> str | None:
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is not installed (apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (pip install -e '.[test]')"
    return None


@pytest.fixture(scope="module")
def browser() -> Any:
    """A headless system Chromium; skipped when absent, a failure when CI requires it."""
    missing = _browser_missing()
    if missing:
        if os.environ.get("VELOCITY_REQUIRE_BROWSER") == "1":
            pytest.fail(f"VELOCITY_REQUIRE_BROWSER=1 but {missing}")
        pytest.skip(missing)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        yield chromium
        chromium.close()


def look(browser: Any, page_file: Path, width: int, shot: str) -> dict[str, Any]:
    """Open ``page_file`` at ``width``: console errors, requests leaving the file, widths; a screenshot."""
    page = browser.new_page(viewport={"width": width, "height": 900})
    errors: list[str] = []
    outside: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("request", lambda r: None if r.url.startswith(("file:", "data:")) else outside.append(r.url))
    page.goto(page_file.as_uri(), wait_until="load")
    scroll_width, inner_width = page.evaluate("[document.scrollingElement.scrollWidth, window.innerWidth]")
    OUTPUT.mkdir(exist_ok=True)
    page.screenshot(path=str(OUTPUT / f"{shot}_{width}.png"), full_page=True)
    return {"errors": errors, "outside": outside, "scroll_width": scroll_width, "inner_width": inner_width,
              "page": page}


def demo_report(tmp: Path, locale: str = "en") -> Path:
    """Run the demo (config.example.toml in ``locale``, pinned clock) and write its HTML report."""
    config = (ROOT / "config.example.toml").read_text(encoding="utf-8")
    config = config.replace('locale = "en"', f'locale = "{locale}"', 1)
    (tmp / "config.toml").write_text(config, encoding="utf-8")
    shutil.copytree(ROOT / "connectors" / "demo", tmp / "connectors" / "demo")
    for args in (["run"], ["report", "--format", "html", "--output", str(tmp / "report.html")]):
        out = io.StringIO()
        assert main(["--config", str(tmp / "config.toml"), *args], env={}, out=out, now=lambda: NOW) == 0
    return tmp / "report.html"


@pytest.fixture(scope="module")
def report_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo's HTML report (config.example.toml, pinned clock) written with --output."""
    return demo_report(tmp_path_factory.mktemp("demo"))


@pytest.fixture(scope="module")
def report_file_nb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same report in Norwegian (longer words: the forecast section's tables must still fit)."""
    path = demo_report(tmp_path_factory.mktemp("demo_nb"), "nb")
    assert '<html lang="nb">' in path.read_text(encoding="utf-8")
    return path


@pytest.fixture
def email_file(sqlite_store: Any, tmp_path: Path) -> Path:
    """The digest's HTML e-mail with its chart inlined as a mail client shows it (``cid:`` to data)."""
    seed(sqlite_store)
    digest = messages(sqlite_store, "en", chart=True)["digest"]
    html = digest.html
    for image in digest.images:
        data = base64.b64encode(image.png).decode()
        html = html.replace(f"cid:{image.cid}", f"data:image/png;base64,{data}")
    path = tmp_path / "digest.html"
    path.write_text(html, encoding="utf-8")
    return path


@pytest.mark.parametrize("width", WIDTHS)
def test_report_renders_clean(browser: Any, report_file: Path, width: int) -> None:
    """The report shows without console errors, network requests or sideways scrolling, charts inside."""
    seen = look(browser, report_file, width, "report")
    page = seen.pop("page")
    try:
        assert seen["errors"] == []
        assert seen["outside"] == []
        assert seen["scroll_width"] <= seen["inner_width"]
        # every chart fits its box: no SVG is wider than the viewport
        widest = page.evaluate("Math.max(...[...document.querySelectorAll('svg')]"
                               ".map(s => s.getBoundingClientRect().right))")
        assert widest <= width
        assert page.locator("svg").count() >= 9  # velocity, 4 levers, the forecast, 2 waits, the bridge
    finally:
        page.close()


@pytest.mark.parametrize("locale", ["en", "nb"])
@pytest.mark.parametrize("width", WIDTHS)
def test_forecast_section_fits(browser: Any, report_file: Path, report_file_nb: Path, width: int,
                               locale: str) -> None:
    """The forecast section (tables, chart, legend) fits a phone and a desktop in both locales, unscrolled."""
    seen = look(browser, report_file if locale == "en" else report_file_nb, width,
                "report" if locale == "en" else "report_nb")
    page = seen.pop("page")
    try:
        assert seen["errors"] == []
        assert seen["scroll_width"] <= seen["inner_width"]
        section = page.locator("#forecast")
        assert section.count() == 1
        box = section.bounding_box()
        assert box is not None
        assert box["x"] >= 0
        assert box["x"] + box["width"] <= width
        # nothing inside sticks out of the section, and the table wrappers never need to scroll sideways
        right = page.evaluate("Math.max(...[...document.querySelectorAll('#forecast *')]"
                              ".map(e => e.getBoundingClientRect().right))")
        assert right <= box["x"] + box["width"]
        scrolls = page.evaluate("[...document.querySelectorAll('#forecast .scroll')]"
                                ".map(e => [e.scrollWidth, e.clientWidth])")
        assert len(scrolls) == 2  # the horizons and the accuracy table
        assert all(scroll <= client for scroll, client in scrolls)
        chart = page.locator("#forecast svg")
        assert chart.count() == 1
        assert chart.locator("path[data-series=forecast]").count() == 1
        assert chart.locator("path[data-series=actual]").count() == 1
        section.screenshot(path=str(OUTPUT / f"forecast_{locale}_{width}.png"))
    finally:
        page.close()


def test_report_tables_sort(browser: Any, report_file: Path) -> None:
    """Clicking "Open" orders the seller table by open deals, high to low, then low to high."""
    page = browser.new_page(viewport={"width": 1440, "height": 900})
    try:
        page.goto(report_file.as_uri())
        table = page.locator("#owners table")
        heading = table.locator("th", has_text="Open")

        def column() -> list[int]:
            return [int(x) for x in table.locator("tbody tr td:nth-child(3)").all_inner_texts()]

        heading.click()
        values = column()
        assert values == sorted(values, reverse=True)
        assert len(values) > 2
        heading.click()
        assert column() == sorted(values)
    finally:
        page.close()


@pytest.mark.parametrize("width", WIDTHS)
def test_email_renders_clean(browser: Any, email_file: Path, width: int) -> None:
    """The HTML e-mail fits a phone and a desktop: no console error, no sideways scroll, image in its box."""
    seen = look(browser, email_file, width, "email")
    page = seen.pop("page")
    try:
        assert seen["errors"] == []
        assert seen["outside"] == []
        assert seen["scroll_width"] <= seen["inner_width"]
        box = page.locator("img").bounding_box()
        assert box is not None
        assert box["x"] + box["width"] <= width
        natural = page.evaluate("document.querySelector('img').naturalWidth")
        assert natural == 2 * 480  # drawn at twice its CSS width
        if width == 390:  # the worst deals stack: each cell is as wide as the table
            cells = page.locator("table.stack tbody tr").first.locator("td")
            widths = {round(cells.nth(i).bounding_box()["width"]) for i in range(cells.count())}
            assert len(widths) == 1
    finally:
        page.close()
