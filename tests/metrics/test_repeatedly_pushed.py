"""Hygiene rule repeatedly_pushed: the close date moved later N times (from the sync's recorded changes)."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import sqlalchemy as sa

from sales_velocity.connectors.base import Checkpoint
from sales_velocity.metrics.hygiene import HygieneSettings, RuleHit, find_stalled, hygiene_summary
from sales_velocity.sync.engine import sync_source
from tests.sync.test_engine import T0, ScriptedConnector, clock, deal

OSLO = ZoneInfo("Europe/Oslo")
AS_OF = dt.date(2026, 11, 10)
NOW = dt.datetime(2026, 11, 10, 9, tzinfo=dt.UTC)


def sync_dates(store: sa.Engine, dates: dict[str, list[dt.date]]) -> None:
    """One sync per step; deal ``key`` has close date ``dates[key][step]`` (and a next step, activity)."""
    for step in range(max(len(v) for v in dates.values())):
        recent = NOW - dt.timedelta(days=1)
        items = [deal(key, expected_close_date=days[min(step, len(days) - 1)], next_step="Call",
                      last_activity_at=recent, stage_entered_at=recent)
                 for key, days in dates.items()]
        sync_source(store, ScriptedConnector([*items, Checkpoint(str(step))]),
                    now=clock(T0 + dt.timedelta(days=step)))


def hits(store: sa.Engine, settings: HygieneSettings) -> dict[str, tuple[RuleHit, ...]]:
    """Stalled deals by id, with their repeatedly_pushed hits only."""
    found = find_stalled(store, settings, as_of=AS_OF, now=NOW, zone=OSLO, rules=("repeatedly_pushed",))
    return {d.external_id: d.hits for d in found}


def day(n: int) -> dt.date:
    """A close date ``n`` days after AS_OF."""
    return AS_OF + dt.timedelta(days=n)


class TestRepeatedlyPushed:
    def test_three_pushes_hold_two_do_not_and_pulls_do_not_count(self, store: sa.Engine) -> None:
        """3 pushes later: holds; 2 pushes and a pull-in: no; dates set where there were none: no."""
        sync_dates(store, {
            "thrice": [day(1), day(5), day(9), day(20)],
            "twice": [day(1), day(5), day(3), day(20)],
            "unset": [None, day(5), None, day(9)],  # type: ignore[list-item]
        })
        assert hits(store, HygieneSettings()) == {"thrice": (RuleHit("repeatedly_pushed", limit=3, times=3),)}

    def test_the_threshold_is_configurable(self, store: sa.Engine) -> None:
        """pushed_times = 2 flags the deal pushed twice as well."""
        sync_dates(store, {"thrice": [day(1), day(5), day(9), day(20)],
                           "twice": [day(1), day(5), day(3), day(20)]})
        found = hits(store, HygieneSettings(pushed_times=2))
        assert found == {"thrice": (RuleHit("repeatedly_pushed", limit=2, times=3),),
                         "twice": (RuleHit("repeatedly_pushed", limit=2, times=2),)}

    def test_summary_counts_it_under_dead_deals(self, store: sa.Engine) -> None:
        """The summary counts the rule, and the dead-deals bottleneck includes it."""
        sync_dates(store, {"thrice": [day(1), day(5), day(9), day(20)], "calm": [day(1)]})
        summary = hygiene_summary(store, HygieneSettings(), as_of=AS_OF, now=NOW, zone=OSLO)
        assert summary.by_rule["repeatedly_pushed"] == 1
        assert summary.by_bottleneck["dead_deals"] == 1
