"""The velocity math, the what-ifs and the metrics settings (no database)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from pydantic import ValidationError

from sales_velocity.metrics.settings import MetricsSettings, WhatIfSettings
from sales_velocity.metrics.velocity import Levers, Velocity, velocity_of, what_ifs, window_bounds

D = Decimal


def seed_levers(**changes: object) -> Levers:
    """The seed article's example: N=100, V=50 000, p=0.20, L=90."""
    values: dict[str, object] = {
        "opportunities": 100, "won": 20, "lost": 80,
        "win_rate": D("0.20"), "avg_deal_value": D("50000"), "cycle_days": D("90"),
    }
    values.update(changes)
    return Levers(**values)  # type: ignore[arg-type]


class TestVelocityOf:
    def test_seed_example_is_exact(self) -> None:
        """N=100, V=50 000, p=0.20, L=90 gives exactly 11 111.11 per day."""
        assert velocity_of(seed_levers()) == Velocity(D("11111.11"), None)

    def test_result_is_quantized_half_up(self) -> None:
        """The value is rounded to cents with ROUND_HALF_UP (0.005 goes up)."""
        levers = seed_levers(opportunities=1, win_rate=D("1"), avg_deal_value=D("0.125"), cycle_days=D("1"))
        assert velocity_of(levers).value == D("0.13")
        assert velocity_of(levers).value.as_tuple().exponent == -2  # type: ignore[union-attr]

    def test_no_float_drift(self) -> None:
        """Thirds stay exact to the cent: 3 x 100 x 1/3 / 1 is 100.00."""
        levers = seed_levers(opportunities=3, win_rate=D(1) / D(3), avg_deal_value=D(100), cycle_days=D(1))
        assert velocity_of(levers).value == D("100.00")

    def test_no_open_deals_is_zero(self) -> None:
        """N = 0 is data: velocity 0.00, not undefined."""
        assert velocity_of(seed_levers(opportunities=0)) == Velocity(D("0.00"), None)

    @pytest.mark.parametrize(
        ("changes", "reason"),
        [
            ({"won": 0, "lost": 0, "win_rate": None, "avg_deal_value": None, "cycle_days": None},
             "no won deal in the last 90 days"),
            ({"won": 0, "lost": 5, "win_rate": D(0), "avg_deal_value": None, "cycle_days": None},
             "no won deal in the last 90 days"),
            ({"avg_deal_value": None}, "won deals have no amount"),
            ({"cycle_days": None}, "won deals have no creation date"),
            ({"cycle_days": D(0)}, "cycle length is 0 days"),
        ],
    )
    def test_undefined_has_a_reason(self, changes: dict[str, object], reason: str) -> None:
        """Missing levers or a zero cycle give an undefined velocity with its reason, never 0."""
        result = velocity_of(seed_levers(**changes), window_days=90)
        assert result == Velocity(None, reason)
        assert not result.defined

    def test_reason_without_window(self) -> None:
        """Without a window length the reason still reads well."""
        levers = seed_levers(won=0, lost=0, win_rate=None, avg_deal_value=None, cycle_days=None)
        assert velocity_of(levers).undefined_reason == "no won deal in the window"


class TestWhatIfs:
    def test_default_levers(self) -> None:
        """Each default what-if moves one lever and reports the new velocity and the change."""
        result = {w.lever: w for w in what_ifs(seed_levers(), WhatIfSettings())}
        assert [w.label for w in result.values()] == [
            "win rate +5 points", "cycle -15 days", "deal value +10 %", "opportunities +10 %",
        ]
        assert result["win_rate"].levers.win_rate == D("0.25")
        assert result["win_rate"].velocity.value == D("13888.89")
        assert result["win_rate"].change == D("2777.78")
        assert result["cycle_days"].levers.cycle_days == D(75)
        assert result["cycle_days"].velocity.value == D("13333.33")
        assert result["deal_value"].levers.avg_deal_value == D("55000")
        assert result["deal_value"].velocity.value == D("12222.22")
        assert result["opportunities"].velocity.value == D("12222.22")
        assert result["opportunities"].change == D("1111.11")

    def test_opportunities_stay_unrounded(self) -> None:
        """N x 1.1 is kept as a Decimal (7 -> 7.7), not rounded to a whole deal."""
        changed = what_ifs(seed_levers(opportunities=7), WhatIfSettings())[3]
        assert changed.levers.opportunities == D("7.7")
        assert changed.velocity.value == D("855.56")

    def test_win_rate_capped_at_one(self) -> None:
        """The win rate never goes above 100 %."""
        changed = what_ifs(seed_levers(win_rate=D("0.98")), WhatIfSettings())[0]
        assert changed.levers.win_rate == D(1)

    def test_cycle_floored_at_one_day(self) -> None:
        """The cycle never drops below 1 day, and a cycle under 1 day is not lengthened."""
        assert what_ifs(seed_levers(cycle_days=D(10)), WhatIfSettings())[1].levers.cycle_days == D(1)
        assert what_ifs(seed_levers(cycle_days=D("0.5")), WhatIfSettings())[1].levers.cycle_days == D("0.5")

    def test_configured_amounts_in_labels(self) -> None:
        """Configured moves are used and named without trailing zeros."""
        settings = WhatIfSettings(win_rate_points=D("2.50"), cycle_days=D(7), deal_value_pct=D(20),
                                  opportunities_pct=D("5"))
        labels = [w.label for w in what_ifs(seed_levers(), settings)]
        assert labels == ["win rate +2.5 points", "cycle -7 days", "deal value +20 %", "opportunities +5 %"]

    def test_undefined_stays_undefined(self) -> None:
        """When velocity is undefined every what-if is too, with no change."""
        levers = seed_levers(won=0, lost=0, win_rate=None, avg_deal_value=None, cycle_days=None)
        for w in what_ifs(levers, WhatIfSettings(), window_days=30):
            assert w.velocity == Velocity(None, "no won deal in the last 30 days")
            assert w.change is None


class TestWindowBounds:
    def test_oslo_across_dst(self) -> None:
        """Both bounds are local midnights, even with a DST change inside the window."""
        start, end = window_bounds(dt.date(2026, 3, 29), 90, ZoneInfo("Europe/Oslo"))
        assert end == dt.datetime(2026, 3, 29, 22, tzinfo=dt.UTC)  # CEST, +2
        assert start == dt.datetime(2025, 12, 29, 23, tzinfo=dt.UTC)  # CET, +1

    def test_new_york(self) -> None:
        """New York's day ends at 05:00 UTC in winter, the window starts at 04:00 UTC in summer."""
        start, end = window_bounds(dt.date(2026, 11, 26), 90, ZoneInfo("America/New_York"))
        assert end == dt.datetime(2026, 11, 27, 5, tzinfo=dt.UTC)
        assert start == dt.datetime(2026, 8, 29, 4, tzinfo=dt.UTC)


class TestSettings:
    def test_defaults(self) -> None:
        """Defaults: UTC, EUR, 90 days, no rates, the standard what-ifs."""
        settings = MetricsSettings()
        assert (settings.timezone, settings.currency, settings.window_days) == ("UTC", "EUR", 90)
        assert settings.zone == ZoneInfo("UTC")
        assert settings.what_if == WhatIfSettings()

    def test_normalises_codes_and_rates(self) -> None:
        """Currency codes are upper-cased; TOML floats become exact Decimals."""
        settings = MetricsSettings.model_validate({"currency": "nok", "rates": {"usd": 10.5}})
        assert settings.currency == "NOK"
        assert settings.rates == {"USD": D("10.5")}

    @pytest.mark.parametrize(
        ("data", "where"),
        [
            ({"timezone": "Mars/Olympus"}, "timezone"),
            ({"currency": "kroner"}, "currency"),
            ({"window_days": 0}, "window_days"),
            ({"rates": {"USD": "-1"}}, "rates"),
            ({"what_if": {"win_rate": 5}}, "what_if.win_rate"),
            ({"windows": 90}, "windows"),
        ],
    )
    def test_rejects_bad_values(self, data: dict[str, object], where: str) -> None:
        """Bad values fail validation at their key path."""
        with pytest.raises(ValidationError) as info:
            MetricsSettings.model_validate(data)
        assert where in {".".join(str(p) for p in e["loc"]) for e in info.value.errors()}
