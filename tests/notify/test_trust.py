"""Honest digests: freshness, banner, nothing sent without a good sync, held reminders, unknown fields."""

from __future__ import annotations

import datetime as dt
import io
import json
from decimal import Decimal

import pytest
import sqlalchemy as sa

from sales_velocity.metrics.coverage import coverage_of
from sales_velocity.metrics.freshness import read_freshness
from sales_velocity.metrics.hygiene import HygieneSettings, find_stalled, hygiene_summary
from sales_velocity.metrics.job import run_metrics
from sales_velocity.metrics.leftovers import left_out
from sales_velocity.metrics.settings import WhatIfSettings
from sales_velocity.metrics.velocity import Levers, compute_velocity, what_ifs
from sales_velocity.notify.digest import LINEAR_LEVER, merge_linear
from sales_velocity.notify.job import build_messages, run_notify
from sales_velocity.notify.message import Message
from sales_velocity.notify.settings import load_notify_settings
from sales_velocity.sync.fields import TRACKED_FIELDS
from sales_velocity.sync.store import outbox_table, reminder_state_table
from tests.notify.conftest import METRICS, seed
from tests.notify.factory import (
    AS_OF,
    NOW,
    add_deal,
    add_owner,
    add_pipeline,
    add_sync_run,
    days_ago,
    set_fields,
)
from tests.notify.test_render import golden

SOURCES = ["demo", "pipedrive", "hubspot"]
NO_ACTIVITY = {f: f not in ("next_step", "next_activity_at", "last_activity_at") for f in TRACKED_FIELDS}


def settings(locale: str = "en", **extra):
    """Notify and reminder settings with one stdout channel taking both kinds."""
    return load_notify_settings(
        {"locale": locale, "chart": False, "fallback_to": "lead@example.com",
         "channels": [{"kind": "stdout", "name": "out", "send": ["digest", "reminders"]}], **extra},
        {},
        {},
    )


def build(engine, locale: str = "en", sources=SOURCES):
    """Messages of the day by kind (``digest``, ``reminders``), and the plan."""
    notify, reminders = settings(locale)
    found, plan = build_messages(engine, notify, reminders, METRICS, as_of=AS_OF, now=NOW, sources=sources)
    by_kind: dict[str, list[Message]] = {}
    for m in found:
        by_kind.setdefault(m.kind, []).append(m)
    return by_kind, plan


def troubled(engine) -> None:
    """The seeded store, then: demo failed 10 minutes ago, pipedrive synced 3 days ago, hubspot never.

    demo has no next steps and no activity dates; one won deal has no amount, one is in USD
    (no rate), one lost deal has no date at all, one won deal only a last-update time.
    """
    seed(engine)
    add_sync_run(engine, "failed", finished_at=NOW - dt.timedelta(minutes=10),
                 error="demo.csv: the file does not exist")
    add_sync_run(engine, "ok", finished_at=NOW - dt.timedelta(days=3), source="pipedrive")
    set_fields(engine, NO_ACTIVITY)
    add_deal(engine, "won-no-amount", status="won", stage_id="won", amount=None,
             created_at=days_ago(30), closed_at=days_ago(3))
    add_deal(engine, "won-usd", status="won", stage_id="won", amount=Decimal("900"), currency="USD",
             created_at=days_ago(30), closed_at=days_ago(3))
    add_deal(engine, "lost-undated", status="lost", closed_at=None, updated_at=None)
    add_deal(engine, "won-by-update", status="won", stage_id="won", closed_at=None, updated_at=days_ago(4),
             created_at=days_ago(20))
    run_metrics(engine, METRICS, AS_OF, now=NOW)


@pytest.fixture
def troubled_sqlite(sqlite_store):
    """The troubled store on SQLite."""
    troubled(sqlite_store)
    return sqlite_store


@pytest.fixture
def troubled_store(store):
    """The troubled store, once per backend."""
    troubled(store)
    return store


@pytest.mark.parametrize("locale", ["en", "nb"])
def test_freshness_line_and_banner_golden(troubled_sqlite, locale):
    """The banner case matches the golden files in text, Markdown, Slack and HTML."""
    [digest] = build(troubled_sqlite, locale)[0]["digest"]
    golden(f"digest_banner_{locale}.txt", digest.text)
    golden(f"digest_banner_{locale}.md", digest.markdown)
    slack = json.dumps(digest.slack, ensure_ascii=False, indent=2) + "\n"
    golden(f"digest_banner_{locale}.slack.json", slack)
    golden(f"digest_banner_{locale}.html", digest.html)


class TestBanner:
    def test_banner_names_each_bad_source_on_top(self, troubled_store):
        """Failed, stale and never-synced sources each get a line above the headline, times in Oslo time."""
        [digest] = build(troubled_store)[0]["digest"]
        lines = digest.text.splitlines()
        headline = next(i for i, line in enumerate(lines) if "per day" in line)
        banner = [line for line in lines[:headline] if line.startswith("⚠")]
        assert banner == [
            "⚠ demo failed to sync (demo.csv: the file does not exist). "
            "Its numbers are from its last good sync, Nov 26, 2026 09:00.",
            "⚠ pipedrive last synced Nov 23, 2026 10:00, more than 26 hours ago: "
            "its numbers may be out of date.",
            "⚠ hubspot has never synced: none of its deals are in these numbers.",
        ]
        assert "Reminders for deals of demo are held back until it syncs again." in digest.text
        assert "Data: last good sync demo Nov 26, 2026 09:00; pipedrive Nov 23, 2026 10:00; hubspot never" \
            in digest.text
        assert digest.slack["blocks"][1]["text"]["text"].startswith("*⚠ demo failed to sync")
        assert digest.html.index("⚠ demo failed") < digest.html.index("<h1")
        data = digest.data
        assert data["banner"] == SOURCES
        assert [s["failed"] for s in data["sources"]] == [True, False, False]

    def test_stale_starts_after_max_age(self, sqlite_store):
        """A last good sync exactly max_data_age_hours ago is fresh; one second older is stale."""
        add_sync_run(sqlite_store, finished_at=NOW - dt.timedelta(hours=26), source="a")
        add_sync_run(sqlite_store, finished_at=NOW - dt.timedelta(hours=26, seconds=1), source="b")
        rows = read_freshness(sqlite_store, ["a", "b"], now=NOW, max_age_hours=26).sources
        assert [(r.source, r.stale, r.failed) for r in rows] == [("a", False, False), ("b", True, False)]
        assert read_freshness(sqlite_store, ["b"], now=NOW, max_age_hours=27).banner == ()

    def test_a_later_good_sync_clears_the_failure(self, sqlite_store):
        """Only the last finished attempt counts: failed then ok is fine; a running sync is ignored."""
        add_sync_run(sqlite_store, "failed", finished_at=NOW - dt.timedelta(hours=2), error="boom")
        add_sync_run(sqlite_store, "ok", finished_at=NOW - dt.timedelta(hours=1))
        [row] = read_freshness(sqlite_store, ["demo"], now=NOW).sources
        assert (row.failed, row.stale, row.error) == (False, False, None)

    def test_the_banner_goes_when_all_is_well(self, seeded_sqlite):
        """A fresh, good sync: the freshness line, no banner, and the usual praise."""
        [digest] = build(seeded_sqlite, sources=["demo"])[0]["digest"]
        assert "⚠" not in digest.text
        assert "Data: last good sync demo Nov 26, 2026 09:00" in digest.text


class TestNothingSynced:
    def test_no_digest_and_no_reminders_when_no_source_ever_synced(self, sqlite_store):
        """A store nobody synced (deals or not): nothing queued, the run says why, and no praise."""
        add_pipeline(sqlite_store)
        add_owner(sqlite_store, "o1", "Kari", "kari@example.com")
        add_deal(sqlite_store, "a", next_step=None, next_activity_at=None)
        add_sync_run(sqlite_store, "failed", error="demo.csv: the file does not exist")
        notify, reminders = settings()
        out = io.StringIO()
        result = run_notify(sqlite_store, notify, reminders, METRICS, as_of=AS_OF, now=NOW, out=out,
                            sources=["demo"])
        assert result.held == ("no source has ever synced successfully: "
                               "demo (last sync failed: demo.csv: the file does not exist)")
        assert result.sent == []
        with sqlite_store.connect() as conn:
            assert conn.execute(sa.select(sa.func.count()).select_from(outbox_table)).scalar() == 0
            assert conn.execute(sa.select(sa.func.count()).select_from(reminder_state_table)).scalar() == 0
        assert "Well done" not in out.getvalue()
        assert "nothing sent: no source has ever synced successfully" in out.getvalue()

    def test_no_source_configured_is_held_too(self, seeded_sqlite):
        """With no source configured there is nothing to vouch for the data."""
        found, plan = build(seeded_sqlite, sources=[])
        assert found == {}
        assert plan is None


class TestReminders:
    def test_reminders_are_held_for_a_failed_source_only(self, sqlite_store):
        """Source x failed its last sync: its deal gets no reminder and its state stays open; y's does."""
        for source in ("x", "y"):
            add_pipeline(sqlite_store, source=source)
            add_owner(sqlite_store, "o1", f"Owner {source}", f"{source}@example.com", source=source)
            add_deal(sqlite_store, f"{source}1", source=source, next_step=None, next_activity_at=None)
        add_sync_run(sqlite_store, source="x")
        add_sync_run(sqlite_store, source="y")
        found, _ = build(sqlite_store, sources=["x", "y"])
        assert sorted(m.recipient for m in found["reminders"]) == ["x@example.com", "y@example.com"]
        notify, reminders = settings()
        run_notify(sqlite_store, notify, reminders, METRICS, as_of=AS_OF, now=NOW, out=io.StringIO(),
                   sources=["x", "y"])
        add_sync_run(sqlite_store, "failed", finished_at=NOW, error="x: HTTP 503", source="x")
        later = NOW + dt.timedelta(days=5)
        found, plan = build_messages(sqlite_store, notify, reminders, METRICS,
                                     as_of=AS_OF + dt.timedelta(days=5), now=later, sources=["x", "y"])
        assert [m.recipient for m in found if m.kind == "reminders"] == ["y@example.com"]
        assert plan is not None
        assert plan.resolved == []  # x's pair is not "resolved" by being skipped


class TestUnknownFields:
    def test_rules_that_need_an_unknown_field_are_off_for_that_source(self, seeded_sqlite):
        """Without next steps and activity dates, their three rules hold for no deal; the others count."""
        hygiene = HygieneSettings()
        before = hygiene_summary(seeded_sqlite, hygiene, as_of=AS_OF, now=NOW, zone=METRICS.zone)
        assert before.by_rule["no_next_step"] == 1  # deal "a" (independently: the seed sets it so)
        set_fields(seeded_sqlite, NO_ACTIVITY)
        [digest] = build(seeded_sqlite, sources=["demo"])[0]["digest"]
        assert digest.data["hygiene"]["by_rule"]["no_next_step"] == 0
        assert digest.data["hygiene"]["by_rule"]["inactive"] == 0
        assert digest.data["hygiene"]["by_rule"]["missing_amount"] == 1  # deal "b" has no amount
        assert digest.data["hygiene"]["by_rule"]["stuck_in_stage"] == 1  # deal "b": 40 days > 30
        assert ("Next steps and next activity dates are not in the data of demo: the rules "
                "“no next step” and “next step overdue” are off for it.") in digest.text
        assert "Activity dates are not in the data of demo: the rule “no activity” is off for it." \
            in digest.text
        # dead deals stay known: `repeatedly_pushed` reads close dates, which the source has
        assert "Dead deals (no activity): not known" not in digest.text
        assert "Missing next steps: not known" in digest.text
        assert "Inconsistent process (stuck in a stage): 33% (1 deal)" in digest.text
        _, plan = build(seeded_sqlite, sources=["demo"])
        assert plan is not None
        rules = {pair[2] for pair in plan.sent}
        assert rules == {"missing_amount", "stuck_in_stage", "repeatedly_pushed"}  # close dates are known

    def test_other_sources_keep_the_rule(self, sqlite_store):
        """The rule is off per source: a deal of a source that provides next steps is still flagged."""
        for source in ("x", "y"):
            add_deal(sqlite_store, f"{source}1", source=source, next_step=None, next_activity_at=None)
        set_fields(sqlite_store, NO_ACTIVITY, source="x")
        off = coverage_of({"x": frozenset(f for f, p in NO_ACTIVITY.items() if not p)}).rules_off
        stalled = list(find_stalled(sqlite_store, HygieneSettings(), as_of=AS_OF, now=NOW,
                                    zone=METRICS.zone, off=off))
        assert [(s.source, s.rules) for s in stalled] == [("y", ("no_next_step",))]

    def test_next_step_text_alone_missing_turns_nothing_off(self):
        """A source with next activity dates but no next-step text keeps 'no next step' on."""
        assert coverage_of({"x": frozenset({"next_step"})}).unknown == ()


class TestLeftOut:
    def test_footer_counts_what_the_levers_left_out(self, troubled_store):
        """Each kind of left-out deal seeded once in `troubled` is counted once, in the footer too."""
        report = compute_velocity(troubled_store, METRICS, AS_OF)
        counts = left_out(troubled_store, report)
        assert (counts.no_amount, counts.no_rate) == (1, 1)
        assert (counts.no_close_date, counts.dated_by_update) == (1, 1)
        [digest] = build(troubled_store)[0]["digest"]
        footer = digest.text[digest.text.index("Left out of the levers"):]
        assert "1 won deal without an amount (out of the average deal value)" in footer
        assert "1 won deal in a currency without a rate to NOK" in footer
        assert "1 closed deal without a close date or last update (out of every window)" in footer
        assert "1 closed deal without a close date, dated by its last update" in footer


class TestWhatIf:
    LEVERS = Levers(100, 20, 80, Decimal("0.2"), Decimal(50000), Decimal(90))

    def test_equal_percentages_give_one_line(self):
        """+10 % value and +10 % opportunities give the same 12 222.22 (= 11 111.11 x 1.1): one line."""
        merged = merge_linear(what_ifs(self.LEVERS, WhatIfSettings()))
        assert [w.lever for w in merged] == ["win_rate", "cycle_days", LINEAR_LEVER]
        assert merged[-1].velocity.value == Decimal("12222.22")

    def test_different_percentages_keep_both_lines(self):
        """With +10 % value and +20 % opportunities the lines differ, so both stay."""
        ifs = what_ifs(self.LEVERS, WhatIfSettings(opportunities_pct=Decimal(20)))
        levers = [w.lever for w in merge_linear(ifs)]
        assert levers == ["win_rate", "cycle_days", "deal_value", "opportunities"]


class TestPraise:
    def test_no_praise_over_a_failed_source(self, sqlite_store):
        """Nothing stalled but a source failed: 'in the data that synced', never 'Well done!'."""
        add_deal(sqlite_store, "fine")
        add_sync_run(sqlite_store)
        add_sync_run(sqlite_store, "failed", finished_at=NOW, error="HTTP 503")
        [digest] = build(sqlite_store, sources=["demo"])[0]["digest"]
        assert "No stalled deals in the data that synced." in digest.text
        assert "Well done" not in digest.text

    def test_no_praise_over_an_empty_store(self, sqlite_store):
        """A good sync of an empty source: 'No open deals in the store.', never 'Well done!'."""
        add_sync_run(sqlite_store)
        [digest] = build(sqlite_store, sources=["demo"])[0]["digest"]
        assert "No open deals in the store." in digest.text
        assert "Well done" not in digest.text


@pytest.mark.parametrize("locale", ["en", "nb"])
def test_banner_in_slack_bot_and_teams(troubled_sqlite, locale):
    """The freshness banner heads the Slack bot's channel message and the Teams card (golden files)."""
    [digest] = build(troubled_sqlite, locale)[0]["digest"]
    summary = digest.formats["slack_bot"]["summary"]
    assert summary["blocks"][1]["text"]["text"].startswith("*⚠ ")
    assert "demo" in summary["blocks"][1]["text"]["text"]
    card = digest.formats["teams"]["attachments"][0]["content"]
    assert card["body"][0]["style"] == "attention"
    assert card["body"][0]["items"][0]["text"].startswith("⚠ ")
    assert "demo" in card["body"][0]["items"][0]["text"]
    golden(f"digest_banner_{locale}.slack_bot.json",
           json.dumps(digest.formats["slack_bot"], ensure_ascii=False, indent=2) + "\n")
    golden(f"digest_banner_{locale}.teams.json",
           json.dumps(digest.formats["teams"], ensure_ascii=False, indent=2) + "\n")
