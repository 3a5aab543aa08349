"""Standard crontab expressions for APScheduler 3.x, read the way cron reads them.

APScheduler's ``CronTrigger.from_crontab`` keeps numeric days of the week in its
own numbering (0 = Monday), so the classic ``0 7 * * 1-5`` ("weekdays at 7")
would fire Tuesday to Saturday. ``cron_trigger`` translates numeric days of the
week from cron's numbering (0 or 7 = Sunday, 1 = Monday) into names first.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

__all__ = ["cron_trigger", "translate_day_of_week"]

CRON_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat", "sun")


def _day(token: str) -> int:
    value = int(token)
    if not 0 <= value <= 7:
        raise ValueError(f"day of week {value} is out of range 0-7")
    return value


def translate_day_of_week(field: str) -> str:
    """Turn a crontab day-of-week field into APScheduler day names (``1-5`` -> ``mon,...,fri``)."""
    if not any(ch.isdigit() for ch in field):
        return field
    names: list[str] = []
    for part in field.split(","):
        body, _, step_text = part.partition("/")
        step = int(step_text) if step_text else 1
        if body == "*":
            first, last = 0, 6
        elif "-" in body:
            low, high = body.split("-", 1)
            first, last = _day(low), _day(high)
        else:
            first = _day(body)
            last = 6 if step_text else first
        if last < first:
            raise ValueError(f"day-of-week range {body} runs backwards")
        for day in range(first, last + 1, step):
            name = CRON_DAYS[day]
            if name not in names:
                names.append(name)
    return ",".join(names)


def cron_trigger(expression: str, timezone: dt.tzinfo | str) -> Any:
    """A ``CronTrigger`` for a 5-field crontab expression, days of week as cron means them.

    Raises:
        ValueError: the expression is not a valid 5-field crontab line.
    """
    from apscheduler.triggers.cron import CronTrigger

    fields = expression.split()
    if len(fields) != 5:
        raise ValueError(f"expected 5 fields (minute hour day month weekday), got {len(fields)}")
    minute, hour, day, month, weekday = fields
    return CronTrigger(minute=minute, hour=hour, day=day, month=month,
                       day_of_week=translate_day_of_week(weekday), timezone=timezone)
