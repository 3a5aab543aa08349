from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from sales_velocity.notify.chart import sparkline, trend_png
from sales_velocity.notify.job import build_messages
from sales_velocity.notify.render import escape_for, slack_blocks
from sales_velocity.notify.settings import load_notify_settings
from tests.notify.conftest import METRICS
from tests.notify.factory import AS_OF, NOW

GOLDEN = Path(__file__).parents[1] / "fixtures" / "golden"
TITLE = "<!channel> *x* <script>"


def golden(name: str, actual: str) -> None:
    """Compare with tests/fixtures/golden/<name>; UPDATE_GOLDEN=1 rewrites it."""
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(actual, encoding="utf-8")
    assert actual == path.read_text(encoding="utf-8")


def messages(engine, locale: str, chart: bool = False):
    """Digest and reminder messages for the seeded store, by key prefix."""
    notify, reminders = load_notify_settings(
        {
            "locale": locale,
            "chart": chart,
            "fallback_to": "lead@example.com",
            "channels": [{"kind": "stdout", "name": "out", "send": ["digest", "reminders"]}],
        },
        {},
        {},
    )
    found, _ = build_messages(engine, notify, reminders, METRICS, as_of=AS_OF, now=NOW)
    return {m.key.split(":")[0] + (":fallback" if ":fallback:" in m.key else ""): m for m in found}


@pytest.mark.parametrize("locale", ["en", "nb"])
class TestGolden:
    def test_digest(self, seeded_sqlite, locale):
        """The digest's text, Markdown and Slack renderings match the golden files."""
        digest = messages(seeded_sqlite, locale)["digest"]
        golden(f"digest_{locale}.txt", digest.text)
        golden(f"digest_{locale}.md", digest.markdown)
        golden(f"digest_{locale}.slack.json", json.dumps(digest.slack, ensure_ascii=False, indent=2) + "\n")

    def test_reminders(self, seeded_sqlite, locale):
        """An owner's reminder and the fallback reminder match the golden files."""
        found = messages(seeded_sqlite, locale)
        for name, message in (("owner", found["reminders"]), ("fallback", found["reminders:fallback"])):
            golden(f"reminders_{name}_{locale}.txt", message.text)
            golden(f"reminders_{name}_{locale}.md", message.markdown)
            golden(
                f"reminders_{name}_{locale}.slack.json",
                json.dumps(message.slack, ensure_ascii=False, indent=2) + "\n",
            )


class TestLocales:
    def test_money_in_each_locale(self, seeded_sqlite):
        """Amounts read `NOK 50,000` in English and `50 000 kr` in Norwegian."""
        assert "NOK 50,000" in messages(seeded_sqlite, "en")["digest"].text
        nb = messages(seeded_sqlite, "nb")["digest"]
        assert "50 000 kr" in nb.text
        assert nb.subject.startswith("Salgshastighet 26. nov. 2026: ")
        assert "per dag" in nb.subject


class TestEscaping:
    def test_hostile_title_in_every_format(self, seeded_sqlite):
        """A title with a Slack mention, mrkdwn and a script tag arrives as text in every format."""
        m = messages(seeded_sqlite, "en")["reminders"]
        assert TITLE in m.text
        assert "\\<!channel\\> \\*x\\* \\<script\\>" in m.markdown
        assert "&lt;!channel&gt; *x* &lt;script&gt;" in m.html
        assert "<script>" not in m.html
        slack = json.dumps(m.slack, ensure_ascii=False)
        assert "<!channel>" not in slack
        assert "*x*" not in slack
        assert "&lt;!channel&gt; ∗x∗ &lt;script&gt;" in slack

    def test_escape_rules(self):
        """Each format escapes exactly its own special characters and flattens newlines."""
        assert escape_for("markdown", "a_b [c](d) #1 | e") == "a\\_b \\[c\\](d) \\#1 \\| e"
        assert escape_for("slack", "a & b_c ~d~ `e`") == "a &amp; bˍc ∼d∼ ˋeˋ"
        assert escape_for("text", "two\nlines") == "two lines"

    def test_slack_blocks_shape(self):
        """Block Kit: a plain-text header, then one mrkdwn section per part; long parts are cut."""
        payload = slack_blocks("Subject", "*one*\n%%\n" + "x" * 4000)
        assert [b["type"] for b in payload["blocks"]] == ["header", "section", "section"]
        assert len(payload["blocks"][2]["text"]["text"]) == 3000
        assert payload["text"] == "Subject"


class TestChart:
    def test_png_of_the_trend(self, seeded_sqlite):
        """The digest carries a small PNG chart for the HTML e-mail, referenced by its CID."""
        digest = messages(seeded_sqlite, "en", chart=True)["digest"]
        [image] = digest.images
        assert image.png.startswith(b"\x89PNG")
        assert len(image.png) < 60_000
        assert f'src="cid:{image.cid}"' in digest.html

    def test_no_chart_without_history(self):
        """Fewer than two defined days: no chart, no sparkline."""
        assert trend_png([(AS_OF, None), (AS_OF, None)]) is None
        assert sparkline([(AS_OF, None)]) == ""
