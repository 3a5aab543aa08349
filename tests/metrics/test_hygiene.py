from __future__ import annotations

import datetime as dt
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest

from sales_velocity.metrics.hygiene import (
    HygieneSettings,
    RuleHit,
    ThresholdOverride,
    find_stalled,
    hygiene_summary,
    reference_instant,
)
from tests.notify.factory import AS_OF, NOW, add_deal, add_owner, add_pipeline, days_ago

UTC = dt.UTC
OSLO = ZoneInfo("Europe/Oslo")


def stalled(engine, settings=None, *, as_of=AS_OF, now=NOW, zone=OSLO, **kw):
    """find_stalled with the pinned clock, as a list."""
    return list(find_stalled(engine, settings or HygieneSettings(), as_of=as_of, now=now, zone=zone, **kw))


@pytest.fixture
def store_with_pipeline(store):
    """A store with one pipeline and one owner."""
    add_pipeline(store)
    add_owner(store, "o1", "Kari Nordmann", "kari@example.com")
    return store


class TestRules:
    def test_a_healthy_deal_breaks_no_rule(self, store_with_pipeline):
        """A deal with a future next step, recent activity and an amount is not stalled."""
        add_deal(store_with_pipeline, "ok")
        assert stalled(store_with_pipeline) == []

    def test_no_next_step(self, store_with_pipeline):
        """No next activity and blank next-step text is no_next_step; text alone is enough."""
        add_deal(store_with_pipeline, "a", next_step="  ", next_activity_at=None)
        add_deal(store_with_pipeline, "b", next_step="Send offer", next_activity_at=None)
        [deal] = stalled(store_with_pipeline)
        assert (deal.external_id, deal.rules) == ("a", ("no_next_step",))

    def test_next_step_overdue_uses_the_local_day(self, store_with_pipeline):
        """A next activity before local midnight of as_of is overdue; later the same day is not."""
        # 2026-11-25 23:30 UTC is 2026-11-26 00:30 in Oslo: today, not overdue.
        add_deal(store_with_pipeline, "today", next_activity_at=dt.datetime(2026, 11, 25, 23, 30, tzinfo=UTC))
        add_deal(store_with_pipeline, "late", next_activity_at=dt.datetime(2026, 11, 25, 22, 30, tzinfo=UTC))
        [deal] = stalled(store_with_pipeline)
        assert deal.external_id == "late"
        assert deal.hits == (RuleHit("next_step_overdue", since=dt.date(2026, 11, 25)),)

    def test_close_date_passed(self, store_with_pipeline):
        """An expected close date before as_of holds; as_of itself does not."""
        add_deal(store_with_pipeline, "past", expected_close_date=dt.date(2026, 11, 25))
        add_deal(store_with_pipeline, "today", expected_close_date=AS_OF)
        [deal] = stalled(store_with_pipeline)
        assert deal.hits == (RuleHit("close_date_passed", since=dt.date(2026, 11, 25)),)

    def test_stuck_in_stage_against_the_default(self, store_with_pipeline):
        """More than stuck_days in the stage holds; exactly the limit does not."""
        add_deal(store_with_pipeline, "stuck", stage_entered_at=days_ago(31))
        add_deal(store_with_pipeline, "edge", stage_entered_at=days_ago(30))
        [deal] = stalled(store_with_pipeline)
        assert deal.hits == (RuleHit("stuck_in_stage", days=31, limit=30),)

    def test_inactive_falls_back_to_creation(self, store_with_pipeline):
        """No activity for more than inactive_days holds, measured from creation when none is recorded."""
        add_deal(store_with_pipeline, "quiet", last_activity_at=days_ago(15))
        add_deal(store_with_pipeline, "never", last_activity_at=None, created_at=days_ago(20))
        add_deal(store_with_pipeline, "new", last_activity_at=None, created_at=days_ago(3))
        found = {d.external_id: d.hits for d in stalled(store_with_pipeline)}
        assert found == {"never": (RuleHit("inactive", days=20, limit=14),),
                         "quiet": (RuleHit("inactive", days=15, limit=14),)}

    def test_missing_amount(self, store_with_pipeline):
        """A deal without an amount holds missing_amount; an amount of zero does not."""
        add_deal(store_with_pipeline, "none", amount=None)
        add_deal(store_with_pipeline, "zero", amount=Decimal("0"))
        assert [d.external_id for d in stalled(store_with_pipeline)] == ["none"]

    def test_only_open_unarchived_deals(self, store_with_pipeline):
        """Won, lost, deleted and archived deals are never stalled."""
        for status in ("won", "lost", "deleted"):
            add_deal(store_with_pipeline, status, status=status, amount=None)
        add_deal(store_with_pipeline, "archived", archived=True, amount=None)
        assert stalled(store_with_pipeline) == []

    def test_deal_carries_names_link_and_owner(self, store_with_pipeline):
        """A stalled deal comes with pipeline, stage and owner names, the owner's e-mail and the link."""
        add_deal(store_with_pipeline, "x", amount=None)
        [deal] = stalled(store_with_pipeline)
        assert (deal.pipeline_name, deal.stage_name, deal.owner_name, deal.owner_email, deal.link) == (
            "New Business", "Lead", "Kari Nordmann", "kari@example.com", "https://crm.example.com/deal/x")

    def test_a_past_as_of_measures_at_the_end_of_that_day(self):
        """Day counts for a past as_of are taken at that day's local end, never after now."""
        end_of_day = dt.datetime(2026, 11, 20, 23, tzinfo=UTC)
        assert reference_instant(dt.date(2026, 11, 20), NOW, OSLO) == end_of_day
        assert reference_instant(AS_OF, NOW, OSLO) == NOW


class TestThresholds:
    def test_crm_rotting_days_beat_the_default(self, store):
        """A stage's rotting days from the CRM replace the default limit."""
        add_pipeline(store, stages=(("lead", "Lead", 10), ("won", "Won", None)))
        add_deal(store, "a", stage_entered_at=days_ago(11))
        [deal] = stalled(store)
        assert deal.hits == (RuleHit("stuck_in_stage", days=11, limit=10),)

    def test_pipeline_override_yields_to_rotting_days_and_stage_override_wins(self, store):
        """Precedence: stage override, then CRM rotting days, then pipeline override, then default."""
        add_pipeline(store, stages=(("lead", "Lead", 10), ("proposal", "Proposal", None)))
        add_deal(store, "lead", stage_id="lead", stage_entered_at=days_ago(12))
        add_deal(store, "prop", stage_id="proposal", stage_entered_at=days_ago(12))
        pipeline_only = HygieneSettings(overrides=(ThresholdOverride(pipeline="New Business", stuck_days=5),))
        limits = {d.external_id: d.hits[0].limit for d in stalled(store, pipeline_only)}
        assert limits == {"lead": 10, "prop": 5}
        with_stage = HygieneSettings(overrides=(
            ThresholdOverride(pipeline="new", stuck_days=5),
            ThresholdOverride(pipeline="new", stage="Lead", stuck_days=20),
        ))
        assert {d.external_id: d.hits[0].limit for d in stalled(store, with_stage)} == {"prop": 5}

    def test_rotting_days_can_be_ignored(self, store):
        """use_crm_rotting_days=false falls back to the configured default."""
        add_pipeline(store, stages=(("lead", "Lead", 10),))
        add_deal(store, "a", stage_entered_at=days_ago(11))
        assert stalled(store, HygieneSettings(use_crm_rotting_days=False)) == []

    def test_inactive_override_per_pipeline(self, store):
        """inactive_days can be set per pipeline (and scoped to a source)."""
        add_pipeline(store)
        add_deal(store, "a", last_activity_at=days_ago(8))
        override = ThresholdOverride(pipeline="new", source="demo", inactive_days=7)
        settings = HygieneSettings(overrides=(override,))
        assert [d.hits for d in stalled(store, settings)] == [(RuleHit("inactive", days=8, limit=7),)]
        other = HygieneSettings(overrides=(ThresholdOverride(pipeline="new", source="crm", inactive_days=7),))
        assert stalled(store, other) == []


class TestOrderAndSummary:
    def test_worst_first_and_limit(self, store_with_pipeline):
        """Deals with more rules come first, then the larger amount; limit caps the rows."""
        no_step = {"next_step": None, "next_activity_at": None}
        add_deal(store_with_pipeline, "one-small", amount=Decimal("10"), **no_step)
        add_deal(store_with_pipeline, "one-big", amount=Decimal("900"), **no_step)
        add_deal(store_with_pipeline, "two", amount=None, **no_step)
        assert [d.external_id for d in stalled(store_with_pipeline)] == ["two", "one-big", "one-small"]
        assert [d.external_id for d in stalled(store_with_pipeline, limit=1)] == ["two"]

    def test_grouped_by_owner(self, store_with_pipeline):
        """by_owner groups deals per owner, deals without an owner last."""
        add_deal(store_with_pipeline, "a", owner_id="o2", amount=None)
        add_deal(store_with_pipeline, "b", owner_id=None, amount=None)
        add_deal(store_with_pipeline, "c", owner_id="o1", amount=None)
        assert [d.owner_id for d in stalled(store_with_pipeline, by_owner=True)] == ["o1", "o2", None]

    def test_rules_filter(self, store_with_pipeline):
        """Only the requested rules are evaluated and reported."""
        add_deal(store_with_pipeline, "a", amount=None, next_step=None, next_activity_at=None)
        [deal] = stalled(store_with_pipeline, rules=("no_next_step",))
        assert deal.rules == ("no_next_step",)

    def test_summary_counts_rules_and_bottlenecks(self, store_with_pipeline):
        """The summary counts open deals, rule hits and each bottleneck once per deal."""
        add_deal(store_with_pipeline, "ok")
        add_deal(store_with_pipeline, "a", next_step=None, next_activity_at=None, amount=None)
        add_deal(store_with_pipeline, "b", next_activity_at=days_ago(3), last_activity_at=days_ago(40))
        add_deal(store_with_pipeline, "c", stage_entered_at=days_ago(40))
        add_deal(store_with_pipeline, "won", status="won", amount=None)
        summary = hygiene_summary(store_with_pipeline, HygieneSettings(), as_of=AS_OF, now=NOW, zone=OSLO)
        assert (summary.open_deals, summary.stalled_deals) == (4, 3)
        assert summary.by_rule == {"no_next_step": 1, "next_step_overdue": 1, "close_date_passed": 0,
                                   "stuck_in_stage": 1, "inactive": 1, "missing_amount": 1,
                                   "repeatedly_pushed": 0}
        assert summary.by_bottleneck == {"dead_deals": 1, "inconsistent_process": 1,
                                         "missing_next_steps": 2, "poor_data_quality": 1}
        assert summary.share("missing_next_steps") == Decimal("0.5")

    def test_summary_of_an_empty_store(self, store):
        """No open deal: zero counts and undefined shares."""
        summary = hygiene_summary(store, HygieneSettings(), as_of=AS_OF, now=NOW, zone=OSLO)
        assert (summary.open_deals, summary.share("dead_deals")) == (0, None)
