"""The schedule: cron lines for APScheduler 3.x, the ``[schedule]`` settings, the scheduler.

``velocity schedule`` runs a ``BlockingScheduler`` with two jobs, ``sync`` and
``daily``, on standard crontab lines (``build_scheduler``); ``serve`` runs it until
SIGTERM or SIGINT.

Crontab lines are read the way cron reads them.
APScheduler's ``CronTrigger.from_crontab`` keeps numeric days of the week in its
own numbering (0 = Monday), so the classic ``0 7 * * 1-5`` ("weekdays at 7")
would fire Tuesday to Saturday. ``cron_trigger`` translates numeric days of the
week from cron's numbering (0 or 7 = Sunday, 1 = Monday) into names first.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any
from zoneinfo import ZoneInfo

import structlog
from pydantic import BaseModel, ConfigDict, Field, field_validator

from sales_velocity.kernel.config import TimeZoneName

__all__ = ["ScheduleSettings", "build_scheduler", "cron_trigger", "serve", "translate_day_of_week"]

log = structlog.get_logger("velocity")

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


class ScheduleSettings(BaseModel):
    """The ``[schedule]`` table: cron expressions for ``velocity schedule``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sync: str = Field(default="*/30 * * * *", description="when to sync every source")
    daily: str = Field(default="0 7 * * 1-5", description="when to compute metrics and notify")
    timezone: TimeZoneName | None = Field(default=None, description="defaults to the top-level timezone")
    misfire_grace_seconds: int = Field(default=3600, ge=1)
    backfill_days: int = Field(default=31, ge=0, le=366,
                               description="how many missed days `run` back-fills at most")

    @field_validator("sync", "daily")
    @classmethod
    def _cron(cls, value: str) -> str:
        try:
            cron_trigger(value, "UTC")
        except ValueError as exc:
            raise ValueError(f"not a valid cron expression ({exc})") from None
        return value


def build_scheduler(schedule: ScheduleSettings, timezone: str, *, sync: Callable[[], object],
                    daily: Callable[[], object]) -> Any:
    """A ``BlockingScheduler`` with the sync and daily jobs on their cron schedules.

    Both jobs use ``max_instances=1`` and ``coalesce=True`` (a backlog of missed
    runs fires once) and the configured misfire grace time. A job that raises is
    logged and the scheduler lives on.
    """
    from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_MISSED, JobExecutionEvent
    from apscheduler.schedulers.blocking import BlockingScheduler

    zone = ZoneInfo(schedule.timezone or timezone)
    defaults = {"max_instances": 1, "coalesce": True,
                "misfire_grace_time": schedule.misfire_grace_seconds}
    scheduler = BlockingScheduler(timezone=zone, job_defaults=defaults)
    scheduler.add_job(sync, cron_trigger(schedule.sync, zone), id="sync",
                      name="sync all sources", **defaults)
    scheduler.add_job(daily, cron_trigger(schedule.daily, zone), id="daily",
                      name="metrics and notify", **defaults)

    def on_event(event: JobExecutionEvent) -> None:
        if event.code == EVENT_JOB_MISSED:
            log.warning("schedule.missed", job=event.job_id,
                        scheduled=event.scheduled_run_time.isoformat())
        elif event.exception is not None:
            log.error("schedule.job_failed", job=event.job_id, error=repr(event.exception))

    scheduler.add_listener(on_event, EVENT_JOB_ERROR | EVENT_JOB_MISSED)
    return scheduler


def serve(scheduler: Any) -> None:
    """Run ``scheduler`` until SIGTERM/SIGINT; a job in progress finishes before it stops."""
    import signal

    def stop(signum: int, _frame: object) -> None:
        log.info("schedule.stopping", signal=signal.Signals(signum).name)
        scheduler.shutdown(wait=True)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for job in scheduler.get_jobs():
        log.info("schedule.job", job=job.id, trigger=str(job.trigger))
    scheduler.start()
    log.info("schedule.stopped")
