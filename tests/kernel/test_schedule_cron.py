"""Crontab day-of-week fields mean what cron means, not APScheduler's own numbering."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest

from sales_velocity.kernel.schedule import cron_trigger, translate_day_of_week


class TestDayOfWeek:
    @pytest.mark.parametrize(
        ("field", "names"),
        [("1-5", "mon,tue,wed,thu,fri"), ("0", "sun"), ("7", "sun"), ("0,6", "sun,sat"),
         ("*", "*"), ("mon-fri", "mon-fri"), ("*/2", "sun,tue,thu,sat"), ("1-5/2", "mon,wed,fri")],
    )
    def test_numeric_days_follow_cron(self, field: str, names: str) -> None:
        """Numbers are cron's (0 and 7 Sunday), names and * pass through."""
        assert translate_day_of_week(field) == names

    def test_bad_fields_are_refused(self) -> None:
        """Out-of-range days, backwards ranges and wrong field counts are errors."""
        with pytest.raises(ValueError, match="out of range"):
            translate_day_of_week("8")
        with pytest.raises(ValueError, match="backwards"):
            translate_day_of_week("5-1")
        with pytest.raises(ValueError, match="5 fields"):
            cron_trigger("0 7 * *", "UTC")

    def test_weekdays_at_seven_skip_the_weekend(self) -> None:
        """`0 7 * * 1-5` after Friday 07:00 fires next on Monday."""
        zone = ZoneInfo("Europe/Oslo")
        trigger = cron_trigger("0 7 * * 1-5", zone)
        friday = dt.datetime(2026, 11, 27, 8, 0, tzinfo=zone)
        assert trigger.get_next_fire_time(None, friday).strftime("%a %H:%M") == "Mon 07:00"
