"""Golden files and escaping of the Slack bot payloads and the Teams Adaptive Cards."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest
import sqlalchemy as sa

from sales_velocity.kernel.testing.fake_teams import card_problems
from sales_velocity.notify.teams_card import escape_card
from sales_velocity.sync.store import snapshots_table
from tests.notify.factory import AS_OF
from tests.notify.test_render import TITLE, golden, messages


def dump(value) -> str:
    """Pretty JSON as the golden files hold it."""
    return json.dumps(value, ensure_ascii=False, indent=2) + "\n"


@pytest.mark.parametrize("locale", ["en", "nb"])
class TestGolden:
    def test_slack_bot_digest(self, seeded_sqlite, locale):
        """The short channel message and its thread reply match the golden files."""
        digest = messages(seeded_sqlite, locale)["digest"]
        golden(f"digest_{locale}.slack_bot.json", dump(digest.formats["slack_bot"]))

    def test_slack_bot_reminders(self, seeded_sqlite, locale):
        """The owner's DM and the forwarded copy for the fallback match the golden files."""
        found = messages(seeded_sqlite, locale)
        golden(f"reminders_owner_{locale}.slack_bot.json", dump(found["reminders"].formats["slack_bot"]))

    def test_teams_cards(self, seeded_sqlite, locale):
        """The digest card and both reminder cards match the golden files and are valid 1.4 envelopes."""
        found = messages(seeded_sqlite, locale)
        for name, message in (("digest", found["digest"]), ("reminders_owner", found["reminders"]),
                              ("reminders_fallback", found["reminders:fallback"])):
            card = message.formats["teams"]
            assert card_problems(card) == []
            assert card["attachments"][0]["content"]["version"] == "1.4"
            golden(f"{name}_{locale}.teams.json", dump(card))


class TestDigestShape:
    def test_summary_is_short_and_the_thread_has_everything(self, seeded_sqlite):
        """The channel message carries headline, changes and at most three deals; the reply the rest."""
        bot = messages(seeded_sqlite, "en")["digest"].formats["slack_bot"]
        summary = json.dumps(bot["summary"], ensure_ascii=False)
        details = json.dumps(bot["details"], ensure_ascii=False)
        assert "Change over 7 days" in summary
        assert "Per pipeline" not in summary
        assert "Per pipeline" in details
        assert summary.count("• ") <= 3
        assert "thread" in summary

    def test_levers_are_a_factset_and_tables_columnsets(self, seeded_sqlite):
        """The levers are facts with their values; the per-owner table is one ColumnSet per row."""
        card = messages(seeded_sqlite, "en")["digest"].formats["teams"]["attachments"][0]["content"]
        facts = next(b for b in card["body"] if b["type"] == "FactSet")["facts"]
        assert len(facts) == 4
        assert facts[0]["title"] == "Open opportunities"
        assert sum(1 for b in card["body"] if b["type"] == "ColumnSet") >= 3
        links = [b["selectAction"]["url"] for b in card["body"] if "selectAction" in b]
        assert links
        assert all(u.startswith("https://crm.example.com/deal/") for u in links)
        assert not any(b["type"] == "Image" for b in card["body"])  # the PNG has no URL


class TestEscaping:
    def test_crm_text_is_literal_in_the_card(self, seeded_sqlite):
        """A title with markdown and a mention is escaped for the card's markdown subset."""
        card = messages(seeded_sqlite, "en")["reminders"].formats["teams"]["attachments"][0]["content"]
        rows = [b for b in card["body"] if b["type"] == "ColumnSet"]
        texts = [col["items"][0]["text"] for b in rows for col in b["columns"]]
        assert escape_card(TITLE) == "<!channel> \\*x\\* <script>"
        assert escape_card(TITLE) in texts
        assert TITLE not in texts

    @pytest.mark.parametrize(("raw", "escaped"), [
        ("**bold** _it_", "\\*\\*bold\\*\\* \\_it\\_"),
        ("[click](https://evil.example)", "\\[click\\](https://evil.example)"),
        ("1. first", "1\\. first"),
        ("- item", "\\- item"),
        ("two\nlines", "two lines"),
    ])
    def test_escape_card(self, raw, escaped):
        """Markdown characters, list starts and newlines in CRM text become literal."""
        assert escape_card(raw) == escaped

    def test_slack_summary_escapes_mentions(self, seeded_sqlite):
        """The short digest carries no live mention from a deal title."""
        bot = messages(seeded_sqlite, "en")["digest"].formats["slack_bot"]
        assert "<!channel>" not in json.dumps(bot, ensure_ascii=False)


class TestMover:
    def test_biggest_mover_is_the_largest_stored_change(self, seeded_sqlite):
        """The mover line names the pipeline or owner whose stored velocity moved most over 7 days."""
        s = snapshots_table.c
        with seeded_sqlite.connect() as conn:
            rows = conn.execute(sa.select(s.scope, s.key, s.label, s.as_of, s.velocity)
                                .where(s.scope.in_(("pipeline", "owner")),
                                       s.as_of.in_((AS_OF, AS_OF - dt.timedelta(days=7))))).all()
        by_scope: dict[tuple[str, str, str], dict[dt.date, Any]] = {}
        for row in rows:
            by_scope.setdefault((row.scope, row.key, row.label), {})[row.as_of] = row.velocity
        changes = {label: days[AS_OF] - days[AS_OF - dt.timedelta(days=7)]
                   for (_, _, label), days in by_scope.items()
                   if len(days) == 2 and None not in days.values()}
        label, change = max(changes.items(), key=lambda kv: abs(kv[1]))
        summary = json.dumps(messages(seeded_sqlite, "en")["digest"].formats["slack_bot"]["summary"])
        assert f"Biggest mover: {label} +NOK {round(change):,}" in summary
