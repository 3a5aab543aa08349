"""The forecast on small hand-made histories: exact where Little's law is, beaten where deals are stuck."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa

from sales_velocity.metrics.backtest import BacktestPoint, calibrated_range, quantile, score
from sales_velocity.metrics.forecast import compute_forecast
from sales_velocity.metrics.movement import MovementScope
from sales_velocity.metrics.settings import MetricsSettings
from sales_velocity.metrics.targets import Period, TargetSettings, parse_period, periods_for
from sales_velocity.sync.store import stage_events_table, stages_table
from tests.metrics.test_velocity_rows import deal, insert_deals

AS_OF = dt.date(2026, 11, 26)
SETTINGS = MetricsSettings(currency="EUR", window_days=90)
DAY = dt.timedelta(days=1)
YEARS = 3


def noon(day: dt.date) -> dt.datetime:
    """Noon UTC on ``day``."""
    return dt.datetime(day.year, day.month, day.day, 12, tzinfo=dt.UTC)


def steady(days: int = 365 * YEARS, amount: int = 1000) -> list[dict[str, Any]]:
    """Each day two deals of ``amount`` are created; ten days later one is won and one lost.

    By hand: 20 deals are open at the end of every day, p = 1/2, V = amount,
    L = 10 days, so velocity is ``amount`` per day and exactly ``amount`` is won
    every day: velocity x days is exact for every horizon.
    """
    rows = []
    for n in range(days + 120):  # deals created after AS_OF are in the store too (not known at T)
        created = AS_OF - dt.timedelta(days=days) + n * DAY
        closed = noon(created + 10 * DAY)
        rows.append(deal(f"w{n}", status="won" if closed.date() <= AS_OF + 200 * DAY else "open",
                         created=noon(created), closed=closed, amount=amount, pipeline="p"))
        rows.append(deal(f"l{n}", status="lost", created=noon(created), closed=closed, amount=amount,
                         pipeline="p"))
    return rows


def won_between(rows: list[dict[str, Any]], first: dt.date, last: dt.date) -> Decimal:
    """Plain Python: the value of won deals closed on days ``first .. last`` (UTC)."""
    return sum((r["amount"] for r in rows if r["status"] == "won" and first <= r["closed_at"].date() <= last),
               Decimal(0))


class TestSteadyPipeline:
    def test_velocity_x_days_is_exact_at_every_backtest_point(self, store: sa.Engine) -> None:
        """In a steady pipeline velocity x days equals the value won in T+1..T+h at every scored point."""
        rows = steady()
        insert_deals(store, rows)
        forecast = compute_forecast(store, SETTINGS, AS_OF)
        points = [p for p in forecast.backtest if p.method == "velocity_x_days"]
        # 53 weekly points; the last five (T-28 .. T) have no horizon of 30 days passed yet
        assert len({p.as_of for p in points}) == 53 - 5
        for p in points:
            expected = won_between(rows, p.as_of + DAY, p.as_of + p.days * DAY)
            assert expected == 1000 * p.days
            assert (p.forecast, p.actual) == (expected, expected)
        assert forecast.accuracy["velocity_x_days"].wape == 0
        assert forecast.scored
        assert [h.expected for h in forecast.horizons] == [Decimal(30000), Decimal(60000), Decimal(90000)]

    def test_only_passed_horizons_are_scored(self, store: sa.Engine) -> None:
        """No backtest point has a horizon ending after the as-of date; the last such point is there."""
        insert_deals(store, steady())
        forecast = compute_forecast(store, SETTINGS, AS_OF, horizons=(30,))
        ends = sorted(p.as_of + p.days * DAY for p in forecast.backtest)
        assert ends[-1] <= AS_OF
        assert max(p.as_of for p in forecast.backtest) == AS_OF - 35 * DAY  # weekly from AS_OF: 28 < 30 <= 35

    def test_deal_by_deal_is_exact_too(self, store: sa.Engine) -> None:
        """Open deals win half their value within 10 days and new deals add the rest: 1000 x h."""
        insert_deals(store, steady())
        forecast = compute_forecast(store, SETTINGS, AS_OF)
        for p in forecast.backtest:
            if p.method == "deal_by_deal":
                assert p.forecast == p.actual == 1000 * p.days


class TestStuckDeals:
    def test_deal_by_deal_beats_velocity_x_days(self, store: sa.Engine) -> None:
        """200 deals stuck open for years inflate N: velocity x days is 11x too high, deal by deal exact."""
        rows = steady(365 * 4)  # steady over the whole two years deal by deal learns from
        old = noon(AS_OF - 4000 * DAY)
        stuck = [deal(f"s{n}", created=old, amount=1000, pipeline="p") for n in range(200)]
        insert_deals(store, rows + stuck)
        forecast = compute_forecast(store, SETTINGS, AS_OF)
        for p in forecast.backtest:
            actual = won_between(rows, p.as_of + DAY, p.as_of + p.days * DAY)
            assert p.actual == actual
            if p.method == "velocity_x_days":
                # by hand: N = 220, V = 1000, p = 1/2, L = 10 -> 11,000 per day
                assert p.forecast == 11000 * p.days
            if p.method == "deal_by_deal":
                assert p.forecast == actual
        assert forecast.method == "deal_by_deal"
        assert forecast.accuracy["deal_by_deal"].wape == 0
        assert forecast.accuracy["velocity_x_days"].wape == 10
        assert forecast.beats_persistence is False  # persistence is exact here too: it is not beaten
        assert any("No method beats persistence" in n for n in forecast.notes)


class TestStages:
    def test_stage_at_t_comes_from_stage_events(self, store: sa.Engine) -> None:
        """Deals that reached stage B by T win, those still in A lose: deal by deal counts B's value only."""
        rows, events = [], []
        start = AS_OF - dt.timedelta(days=365 * YEARS)
        for n in range(365 * YEARS + 60):
            created = start + n * DAY
            won = n % 2 == 0
            closed = created + 20 * DAY
            ident = f"d{n}"
            outcome = "won" if won else "lost"
            rows.append(deal(ident, status=outcome if closed <= AS_OF + 60 * DAY else "open",
                             created=noon(created), closed=noon(closed), amount=1000, pipeline="p"))
            events.append({"source": "crm", "external_id": ident, "pipeline_id": "p", "stage_id": "A",
                           "entered_at": noon(created), "observed": False})
            if won:  # winners move to B after 10 days
                events.append({"source": "crm", "external_id": ident, "pipeline_id": "p", "stage_id": "B",
                               "entered_at": noon(created + 10 * DAY), "observed": False})
        insert_deals(store, rows)
        with store.begin() as conn:
            conn.execute(sa.insert(stage_events_table), events)
            conn.execute(sa.insert(stages_table), [
                {"source": "crm", "pipeline_id": "p", "external_id": stage, "name": stage,
                 "probability": Decimal(chance)} for stage, chance in (("A", "0.1"), ("B", "0.9"))
            ])
        forecast = compute_forecast(store, SETTINGS, AS_OF, horizons=(10,))
        # By hand at the as-of date: open are the deals created on T-19..T (20 deals, one a day);
        # in B: the winners created on T-19..T-10 (5 deals), all won within 10 days -> 5,000;
        # in A and less than 10 days old: 10 deals, of which the winners (5) move on and win later than
        # 10 days; the losers never win. New deals cannot close within 10 days. So 5,000.
        by_method = forecast.horizons[0].by_method
        assert by_method["deal_by_deal"] == Decimal(5000)
        # CRM weighted: B 5 x 1000 x 0.9 + A 15 x 1000 x 0.1
        assert by_method["crm_weighted"] == Decimal(6000)
        assert "crm_weighted" in forecast.accuracy


class TestTooLittleHistory:
    def test_few_won_deals_are_said_plainly(self, store: sa.Engine) -> None:
        """Five won deals: unscored, velocity x days, and the note says how many are missing."""
        rows = [deal(f"w{n}", status="won", created=noon(AS_OF - 40 * DAY), closed=noon(AS_OF - n * DAY),
                     amount=100) for n in range(5)]
        rows += [deal(f"o{n}", created=noon(AS_OF - 20 * DAY), amount=100) for n in range(3)]
        insert_deals(store, rows)
        forecast = compute_forecast(store, SETTINGS, AS_OF)
        assert not forecast.scored
        assert forecast.method == "velocity_x_days"
        (note,) = [n for n in forecast.notes if "Too little history" in n]
        assert "5 won deals of 20 needed" in note
        assert "0 backtest points of 8 needed" in note
        assert all(h.low is None and h.high is None for h in forecast.horizons)
        # by hand: N = 3, V = 100, p = 1, L = 40 - n days, mean 38 -> 3 * 100 / 38 per day
        per_day = (Decimal(300) / Decimal(38)).quantize(Decimal("0.01"))
        assert forecast.horizons[0].expected == per_day * 30


class TestCalibration:
    def test_quantile_interpolates(self) -> None:
        """The 10th percentile of 0..10 is 1, the 90th 9, between neighbours linearly."""
        values = [Decimal(n) for n in range(11)]
        assert quantile(values, Decimal("0.1")) == 1
        assert quantile(values, Decimal("0.9")) == 9
        assert quantile([Decimal(0), Decimal(1)], Decimal("0.25")) == Decimal("0.25")

    def test_range_from_past_errors_holds_about_80_percent(self) -> None:
        """Errors spread evenly from -50 % to +49 %: the range of later points holds 80 % of them."""
        points = []
        start = dt.date(2025, 1, 1)
        for n in range(200):
            error = Decimal((n * 37) % 100 - 50) / 100  # a fixed shuffle of -0.50 .. 0.49
            actual = Decimal(1000) * (1 + error)
            points.append(BacktestPoint(start + n * 7 * DAY, 7, "m", Decimal(1000), actual))
        accuracy = score(points, "m")
        assert accuracy.coverage is not None
        assert abs(accuracy.coverage - Decimal("0.8")) <= Decimal("0.05")
        assert calibrated_range(Decimal(100), [Decimal(0)] * 3) is None  # too few errors: no range


class TestTargets:
    def test_target_status_by_hand(self, store: sa.Engine) -> None:
        """Q4 target 2,000,000 on 2026-11-26, 1,000 won a day: won so far, needed, gap, velocity."""
        insert_deals(store, steady())
        targets = TargetSettings(all={"2026-Q4": Decimal(2000000), "2026-11": Decimal(20000)})
        periods = periods_for(targets, MovementScope(), AS_OF)
        assert [p.label for p in periods] == ["2026-11", "2026-Q4"]
        forecast = compute_forecast(store, SETTINGS, AS_OF, periods=periods)
        month, quarter = forecast.targets
        # by hand: 1,000 won each day; Q4 so far = Oct 1 .. Nov 26 = 57 days; 35 days left
        assert (quarter.won, quarter.needed, quarter.remaining_days) == (Decimal(57000), Decimal(1943000), 35)
        assert quarter.forecast == Decimal(35000)
        assert not quarter.closes_gap
        assert quarter.velocity_needed == (Decimal(1943000) / 35).quantize(Decimal("0.01"))
        assert (month.won, month.needed, month.remaining_days, month.forecast) == (
            Decimal(26000), Decimal(0), 4, Decimal(4000))
        assert month.closes_gap

    def test_periods_parse(self) -> None:
        """A quarter runs to its last day; a bad key is refused with the key named."""
        assert Period("2026-Q1", dt.date(2026, 1, 1), dt.date(2026, 3, 31), Decimal(1)).last.day == 31
        assert parse_period("2026-Q4") == (dt.date(2026, 10, 1), dt.date(2026, 12, 31))
        assert parse_period("2026-02") == (dt.date(2026, 2, 1), dt.date(2026, 2, 28))
        with pytest.raises(ValueError, match="2026-13"):
            TargetSettings(all={"2026-13": Decimal(1)})
