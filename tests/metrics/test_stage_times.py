from __future__ import annotations

import datetime as dt
from decimal import Decimal

from sales_velocity.metrics.settings import MetricsSettings
from sales_velocity.metrics.stage_times import StageWait, stage_wait_times
from tests.notify.factory import AS_OF, NOW, add_deal, add_event, add_pipeline, days_ago

SETTINGS = MetricsSettings(timezone="Europe/Oslo", currency="NOK")


def won_deal(engine, external_id, lead_days, proposal_days, *, closed=None):
    """A deal won ``closed`` (default 1 day ago) after the given days in Lead and Proposal."""
    closed = closed or days_ago(1)
    entered_lead = closed - dt.timedelta(days=lead_days + proposal_days)
    entered_proposal = closed - dt.timedelta(days=proposal_days)
    add_deal(engine, external_id, status="won", stage_id="won", closed_at=closed, created_at=entered_lead)
    add_event(engine, external_id, "lead", entered_lead)
    add_event(engine, external_id, "proposal", entered_proposal)
    add_event(engine, external_id, "won", closed)


class TestStageWaitTimes:
    def test_median_per_stage_odd_and_even(self, store):
        """The median is the middle value (odd count) or the mean of the middle two (even count)."""
        add_pipeline(store)
        won_deal(store, "a", 1, 10)
        won_deal(store, "b", 2, 20)
        won_deal(store, "c", 9, 30)
        won_deal(store, "d", 4, 40)
        waits = stage_wait_times(store, SETTINGS, AS_OF)
        assert waits == [
            StageWait("demo", "new", "New Business", "lead", "Lead", Decimal("3.0"), 4),
            StageWait("demo", "new", "New Business", "proposal", "Proposal", Decimal("25.0"), 4),
        ]

    def test_last_stage_runs_to_the_close(self, store):
        """Without a won-stage event the last stage lasts until the deal closed."""
        add_pipeline(store)
        add_deal(store, "a", status="won", closed_at=days_ago(1), created_at=days_ago(8))
        add_event(store, "a", "lead", days_ago(8))
        add_event(store, "a", "proposal", days_ago(6.5))
        waits = stage_wait_times(store, SETTINGS, AS_OF)
        assert [(w.stage_id, w.median_days) for w in waits] == [("lead", Decimal("1.5")),
                                                                ("proposal", Decimal("5.5"))]

    def test_only_deals_won_in_the_window(self, store):
        """Open, lost and long-ago won deals do not count."""
        add_pipeline(store)
        won_deal(store, "old", 5, 5, closed=NOW - dt.timedelta(days=120))
        add_deal(store, "open")
        add_event(store, "open", "lead", days_ago(50))
        add_deal(store, "lost", status="lost", closed_at=days_ago(2))
        add_event(store, "lost", "lead", days_ago(50))
        assert stage_wait_times(store, SETTINGS, AS_OF) == []
        assert [w.deals for w in stage_wait_times(store, SETTINGS, AS_OF, window_days=200)] == [1, 1]

    def test_empty_store(self, store):
        """No stage history: no rows, no error."""
        assert stage_wait_times(store, SETTINGS, AS_OF) == []
