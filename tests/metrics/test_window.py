"""The window holds exactly the W local days ending with T: deals on every boundary, date-only and timed.

Expected figures are worked out by hand from the definition in ``shared/DESIGN.md``
(closed in the window = ``start(T-W+1) <= close < start(T+1)``; open at T = created
before ``start(T+1)`` and not closed nor deleted before it), or, for the public
data set, by a few lines of plain Python over the CSV file.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import shutil
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa

from sales_velocity.metrics.hygiene import HygieneSettings, hygiene_summary
from sales_velocity.metrics.settings import MetricsSettings
from sales_velocity.metrics.stage_times import stage_wait_times
from sales_velocity.metrics.velocity import compute_velocity, window_bounds
from sales_velocity.sync.store import stage_events_table
from tests.metrics.test_velocity_rows import deal, insert_deals
from tests.test_cli import FIXTURES, store_env, velocity

OSLO = ZoneInfo("Europe/Oslo")
W = 10
PUBLIC_DATA = Path("/work/shared/data/crm-sales-opportunities/sales_pipeline.csv")


def local(day: dt.date, hour: int = 0, minute: int = 0, second: int = 0) -> dt.datetime:
    """A wall-clock time in Oslo as aware UTC."""
    return dt.datetime(day.year, day.month, day.day, hour, minute, second, tzinfo=OSLO).astimezone(dt.UTC)


def boundary_deals(as_of: dt.date) -> list[dict[str, Any]]:
    """Deals on each edge of the window ending with ``as_of`` (W = 10 days), date-only and timed."""
    day = dt.timedelta(days=1)
    first, after, before = as_of - (W - 1) * day, as_of + day, as_of - W * day
    week = 7 * day
    return [
        # date-only values: stored at local midnight, whole days
        deal("won-first-day", status="won", created=local(first - week), closed=local(first), amount=100,
             whole_days=True),
        deal("won-on-T", status="won", created=local(as_of - week), closed=local(as_of), amount=300,
             whole_days=True),
        deal("won-on-T+1", status="won", created=local(as_of - week), closed=local(after), amount=999,
             whole_days=True),  # out of the window; open at T
        deal("lost-day-before-window", status="lost", closed=local(before), whole_days=True),
        deal("lost-on-T", status="lost", closed=local(as_of), whole_days=True),
        deal("open-created-on-T", created=local(as_of), whole_days=True),
        deal("open-created-on-T+1", created=local(after), whole_days=True),  # not open at T
        # timestamps: local midnight and 23:59:59 on each side
        deal("lost-23:59:59-on-T", status="lost", closed=local(as_of, 23, 59, 59)),
        deal("lost-midnight-T+1", status="lost", closed=local(after)),  # out; open at T
        deal("lost-midnight-first-day", status="lost", closed=local(first)),
        deal("lost-23:59:59-before-window", status="lost", closed=local(before, 23, 59, 59)),
        deal("open-created-23:59:59-on-T", created=local(as_of, 23, 59, 59)),
        deal("open-created-midnight-T+1", created=local(after)),  # not open at T
        deal("deleted-midnight-T+1", status="deleted", deleted_at=local(after)),  # open at T
        deal("deleted-23:59:59-on-T", status="deleted", deleted_at=local(as_of, 23, 59, 59)),
        deal("open"),
    ]


# By hand: won = won-first-day, won-on-T; lost = lost-on-T, lost-23:59:59-on-T,
# lost-midnight-first-day; open at T = won-on-T+1, open-created-on-T, lost-midnight-T+1,
# open-created-23:59:59-on-T, deleted-midnight-T+1, open.
WON, LOST, OPEN = 2, 3, 6
V, L = Decimal(200), Decimal(7)  # (100 + 300) / 2; both exactly 7 local days, DST or not

DST_DAYS = [
    pytest.param(dt.date(2026, 3, 29), id="spring-forward-on-T"),  # a 23-hour T
    pytest.param(dt.date(2026, 10, 25), id="fall-back-on-T"),  # a 25-hour T
    pytest.param(dt.date(2026, 4, 3), id="spring-forward-inside"),  # window 03-25..04-03
]


class TestBoundaries:
    @pytest.mark.parametrize("as_of", DST_DAYS)
    def test_levers_hold_exactly_the_window(self, store: sa.Engine, as_of: dt.date) -> None:
        """Every deal on an edge falls on the side the definition says, across a DST change."""
        insert_deals(store, boundary_deals(as_of))
        settings = MetricsSettings(timezone="Europe/Oslo", currency="NOK", window_days=W)
        start, end = window_bounds(as_of, W, OSLO)
        assert (start, end) == (local(as_of - dt.timedelta(days=W - 1)), local(as_of + dt.timedelta(days=1)))
        all_ = compute_velocity(store, settings, as_of).scopes[0]
        assert (all_.levers.won, all_.levers.lost, all_.levers.opportunities) == (WON, LOST, OPEN)
        assert all_.levers.avg_deal_value == V
        assert all_.levers.cycle_days == L
        expected = (Decimal(OPEN) * V * Decimal(WON) / Decimal(WON + LOST) / L).quantize(
            Decimal("0.01"), rounding=ROUND_HALF_UP)
        assert all_.velocity.value == expected == Decimal("68.57")

    @pytest.mark.parametrize("as_of", DST_DAYS)
    def test_hygiene_counts_the_deals_open_at_T(self, store: sa.Engine, as_of: dt.date) -> None:
        """Hygiene's open deals are the same set as N: created before start(T+1), not closed before it."""
        insert_deals(store, boundary_deals(as_of))
        summary = hygiene_summary(store, HygieneSettings(), as_of=as_of,
                                  now=local(as_of + dt.timedelta(days=30)), zone=OSLO)
        assert summary.open_deals == OPEN

    @pytest.mark.parametrize("as_of", DST_DAYS)
    def test_stage_times_count_deals_won_in_the_window(self, store: sa.Engine, as_of: dt.date) -> None:
        """Where deals wait counts the deals won on T-W+1 and on T, not the one won on T+1."""
        deals = boundary_deals(as_of)
        insert_deals(store, deals)
        events = [
            {"source": "crm", "external_id": d["external_id"], "pipeline_id": None, "stage_id": "lead",
             "entered_at": d["created_at"], "observed": False}
            for d in deals if d["status"] == "won"
        ]
        with store.begin() as conn:
            conn.execute(stage_events_table.insert(), events)
        settings = MetricsSettings(timezone="Europe/Oslo", currency="NOK", window_days=W)
        waits = stage_wait_times(store, settings, as_of)
        assert [(w.stage_id, w.deals, w.median_days) for w in waits] == [("lead", 2, Decimal("7.0"))]

    def test_the_day_after_moves_the_window(self, store: sa.Engine) -> None:
        """As of T+1 the deals of T+1 come in and the window's old first day drops out."""
        as_of = dt.date(2026, 3, 29)
        insert_deals(store, boundary_deals(as_of))
        settings = MetricsSettings(timezone="Europe/Oslo", currency="NOK", window_days=W)
        all_ = compute_velocity(store, settings, as_of + dt.timedelta(days=1)).scopes[0]
        # won: on T and on T+1 (first day is out now); lost: the three on T and T+1 midnight
        assert (all_.levers.won, all_.levers.lost) == (2, 3)
        # open at T+1: open-created-on-T, open-created-23:59:59-on-T, both created on T+1, open
        assert all_.levers.opportunities == 5
        assert all_.levers.avg_deal_value == Decimal(1299) / 2


def public_figure(path: Path, as_of: dt.date, window: int) -> dict[str, Any]:
    """Velocity of the Maven data set by the definition, in plain Python over the CSV rows."""
    first = as_of - dt.timedelta(days=window - 1)

    def day(text: str) -> dt.date:
        return dt.date.fromisoformat(text)

    with path.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    won = [r for r in rows if r["deal_stage"] == "Won" and first <= day(r["close_date"]) <= as_of]
    lost = [r for r in rows if r["deal_stage"] == "Lost" and first <= day(r["close_date"]) <= as_of]
    open_ = [
        r for r in rows
        if (not r["engage_date"] or day(r["engage_date"]) <= as_of)
        and (r["deal_stage"] not in ("Won", "Lost") or day(r["close_date"]) > as_of)
    ]
    value = sum((Decimal(r["close_value"]) for r in won), Decimal(0)) / len(won)
    cycle = Decimal(sum((day(r["close_date"]) - day(r["engage_date"])).days for r in won)) / len(won)
    rate = Decimal(len(won)) / (len(won) + len(lost))
    return {
        "first_day_closed": sum(1 for r in won + lost if day(r["close_date"]) == first),
        "open": len(open_), "won": len(won), "lost": len(lost),
        "velocity": (len(open_) * value * rate / cycle).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP),
    }


class TestPublicDataSet:
    def test_fixture_is_the_public_data_set(self) -> None:
        """tests/fixtures/csv/maven_sales_pipeline.csv is byte for byte the shared sales_pipeline.csv."""
        if not PUBLIC_DATA.exists():
            pytest.skip("the shared data set is not on this machine")
        assert (FIXTURES / "maven_sales_pipeline.csv").read_bytes() == PUBLIC_DATA.read_bytes()

    def test_velocity_as_of_2017_12_31_over_90_days(self, tmp_path: Path, db_url: str) -> None:
        """The report on the public data set (T = 2017-12-31, W = 90) equals the figure from the CSV."""
        shutil.copy(FIXTURES / "maven_sales_pipeline.csv", tmp_path / "maven.csv")
        config = tmp_path / "velocity.toml"
        config.write_text(MAVEN_CONFIG, encoding="utf-8")
        env = store_env(db_url)
        assert velocity(["--config", str(config), "sync"], env=env)[0] == 0
        code, out = velocity(["--config", str(config), "report", "--as-of", "2017-12-31", "--format", "json"],
                             env=env)
        assert code == 0
        everything = json.loads(out)["scopes"][0]
        expected = public_figure(tmp_path / "maven.csv", dt.date(2017, 12, 31), 90)
        assert expected["first_day_closed"] == 8 + 15  # the 8 wins and 15 losses of 2017-10-03 are in
        assert (everything["opportunities"], everything["won"], everything["lost"]) == (
            expected["open"], expected["won"], expected["lost"])
        assert Decimal(everything["velocity_per_day"]) == expected["velocity"]


MAVEN_CONFIG = (
    'currency = "USD"\n[[sources]]\nname = "maven"\nkind = "csv"\npath = "maven.csv"\n'
    '[sources.columns]\nid = "opportunity_id"\nowner = "sales_agent"\ntitle = "account"\n'
    'stage = "deal_stage"\ncreated_at = "engage_date"\nclosed_at = "close_date"\n'
    'amount = "close_value"\n[sources.status]\nwon = ["Won"]\nlost = ["Lost"]\n'
)
"""The public data set as a CSV source (UTC, USD); engage_date is the creation date."""
