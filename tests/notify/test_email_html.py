"""The HTML e-mail a phone can read: golden files, the 2x chart and its axes, signs, the RFC 3834 header."""

from __future__ import annotations

import dataclasses
import re
import struct
from decimal import Decimal

import pytest

from sales_velocity.notify.channels import EmailChannel, build_channel
from sales_velocity.notify.chart import CHART_WIDTH_PX, trend_figure, trend_png
from sales_velocity.notify.digest import build_digest
from sales_velocity.notify.formatting import Formatter
from sales_velocity.notify.settings import load_notify_settings
from sales_velocity.notify.views import render_digest
from tests.notify.conftest import METRICS
from tests.notify.factory import AS_OF, NOW
from tests.notify.smtp import smtp_server
from tests.notify.test_render import golden, messages

SERIES = [(AS_OF.replace(day=d), Decimal(1_000_000 + 25_000 * d)) for d in range(1, 27)]


def png_size(png: bytes) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])
    return width, height


@pytest.mark.parametrize("locale", ["en", "nb"])
def test_html_digest_golden(seeded_sqlite, locale):
    """The HTML e-mail (with its chart referenced by CID) matches the golden file in each locale."""
    digest = messages(seeded_sqlite, locale, chart=True)["digest"]
    golden(f"digest_{locale}.html", digest.html)


def test_phone_friendly_markup(seeded_sqlite):
    """Viewport set, image never wider than its box, scope tables scroll in a box, worst deals a table."""
    html = messages(seeded_sqlite, "en", chart=True)["digest"].html
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in html
    img = re.search(r"<img [^>]*>", html)
    assert img is not None
    assert "max-width: 100%" in html.split("<style>")[1].split("</style>")[0]  # img { max-width: 100% }
    assert f'width="{CHART_WIDTH_PX}"' in img.group(0)
    assert "width: 100%" in img.group(0)
    assert 'height="' not in img.group(0)  # the height follows the width
    assert html.count('<div class="scroll"') == 2
    worst = html.split('<table class="stack"')[1].split("</table>")[0]
    assert re.findall(r"<th[^>]*>([^<]*)</th>", worst) == [
        "Deal", "Owner", "Amount", "Stage", "Why", "Link"]
    rows = re.findall(r"<tr style=\"vertical-align: top;\">(.*?)</tr>", worst, re.S)
    assert len(rows) == 3  # the three stalled deals of the seed
    assert all(r.count("<td ") == 6 for r in rows)
    assert '<a href="https://crm.example.com/deal/b">Open in CRM</a>' in worst


@pytest.mark.parametrize(("change", "mark", "colour"), [
    (Decimal("1528.4"), "▲ +NOK 1,528", "#047857"),
    (Decimal("-912.6"), "▼ -NOK 913", "#b91c1c"),
])
def test_rises_and_falls_coloured_and_signed(seeded_sqlite, change, mark, colour):
    """A rise is green with ▲ and +, a fall red with ▼ and −: colour is never the only sign."""
    d = build_digest(seeded_sqlite, METRICS, load_notify_settings({}, {}, {})[1], as_of=AS_OF, now=NOW)
    week = dataclasses.replace(d.trends[0], available=True, change=change, change_pct=None,
                               previous=Decimal(1000), rebuilt=False)
    html = render_digest(dataclasses.replace(d, trends=(week, *d.trends[1:])), "en", METRICS.what_if).html
    line = next(li for li in html.splitlines() if "Change over 7 days" in li)
    assert f'color: {colour}' in line
    assert mark in line


def test_chart_is_twice_its_css_size():
    """The PNG has twice the pixels of the width the e-mail shows it at (sharp on phones)."""
    png = trend_png(SERIES)
    assert png is not None
    assert png_size(png) == (2 * CHART_WIDTH_PX, 2 * 200)


@pytest.mark.parametrize(("locale", "pattern"), [
    ("en", r"NOK \d{1,3}(,\d{3})*"), ("nb", r"\d{1,3}( \d{3})* kr"),
])
def test_chart_axis_is_money_without_offset(locale, pattern):
    """Value ticks read as money in the locale; no offset label (``1e6``, a year) on either axis."""
    f = Formatter(locale, "NOK")
    figure = trend_figure(SERIES, money=f.money, date_text=f.short_date)
    figure.canvas.draw()
    axes = figure.axes[0]
    labels = [t.get_text() for t in axes.get_yticklabels() if t.get_text()]
    assert len(labels) >= 3
    assert all(re.fullmatch(pattern, label) for label in labels), labels
    # the top value of the series, 1,650,000, is under the highest tick, as plain Python reads it
    highest = max(int(re.sub(r"\D", "", label)) for label in labels)
    assert highest >= 1_000_000 + 25_000 * 26 - 250_000  # a tick at most one step below the peak
    assert axes.yaxis.get_offset_text().get_text() == ""
    assert axes.xaxis.get_offset_text().get_text() == ""
    days = [t.get_text() for t in axes.get_xticklabels() if t.get_text()]
    months = {"en": "Nov", "nb": "nov."}
    assert days
    assert all(months[locale] in day for day in days), days


def test_every_email_says_auto_generated(seeded_sqlite):
    """Digest and reminders arrive with ``Auto-Submitted: auto-generated`` (RFC 3834), so no auto-replies."""
    found = messages(seeded_sqlite, "en", chart=True)
    channel_settings = build_channel({
        "kind": "email", "name": "mail", "smtp_host": "127.0.0.1", "smtp_port": 1, "starttls": False,
        "from": "velocity@example.com", "to": ["team@example.com"], "send": ["digest", "reminders"],
    }, "notify.channels[0]", {}).settings
    with smtp_server() as (inbox, port):
        channel = EmailChannel(channel_settings.model_copy(update={"smtp_port": port}))  # type: ignore[arg-type]
        channel.send(found["digest"])
        channel.send(dataclasses.replace(found["reminders"], recipient="kari@example.com"))
    assert len(inbox.received) == 2
    for got in inbox.received:
        assert got.message["Auto-Submitted"] == "auto-generated"
        assert got.message["X-Auto-Response-Suppress"] == "All"
    digest = inbox.received[0].message
    [image] = [p for p in digest.walk() if p.get_content_type() == "image/png"]
    payload = image.get_payload(decode=True)
    assert isinstance(payload, bytes)
    assert png_size(payload)[0] == 2 * CHART_WIDTH_PX
