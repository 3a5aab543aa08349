"""`velocity schedule`: cron wiring in the configured zone, job defaults, failures, SIGTERM."""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from zoneinfo import ZoneInfo

from structlog.testing import capture_logs

from sales_velocity.kernel.schedule import ScheduleSettings, build_scheduler

OSLO = ZoneInfo("Europe/Oslo")
ROOT = Path(__file__).resolve().parent.parent


def fire_times(trigger, start: dt.datetime, count: int) -> list[dt.datetime]:
    """The next ``count`` fire times of a trigger after ``start`` (an injected clock, no sleeping)."""
    times: list[dt.datetime] = []
    previous = None
    now = start
    for _ in range(count):
        nxt = trigger.get_next_fire_time(previous, now)
        times.append(nxt)
        previous, now = nxt, nxt + dt.timedelta(seconds=1)
    return times


class TestWiring:
    def test_daily_job_fires_at_local_seven_across_the_dst_change(self) -> None:
        """The daily job fires at 07:00 Oslo time on weekdays, before and after the October DST change."""
        scheduler = build_scheduler(ScheduleSettings(), "Europe/Oslo", sync=lambda: None,
                                    daily=lambda: None)
        jobs = {job.id: job for job in scheduler.get_jobs()}
        daily = jobs["daily"]
        start = dt.datetime(2026, 10, 22, 12, 0, tzinfo=OSLO)  # Thursday; DST ends Sunday 25 Oct
        times = fire_times(daily.trigger, start, 3)
        assert [t.astimezone(OSLO).strftime("%a %d %H:%M") for t in times] == [
            "Fri 23 07:00", "Mon 26 07:00", "Tue 27 07:00"]
        assert [t.astimezone(dt.UTC).hour for t in times] == [5, 6, 6]

    def test_sync_job_every_thirty_minutes_in_the_configured_zone(self) -> None:
        """The sync cron runs every 30 minutes; [schedule] timezone overrides the top level."""
        settings = ScheduleSettings(sync="*/30 * * * *", timezone="America/New_York")
        scheduler = build_scheduler(settings, "Europe/Oslo", sync=lambda: None, daily=lambda: None)
        sync = {job.id: job for job in scheduler.get_jobs()}["sync"]
        start = dt.datetime(2026, 3, 8, 1, 10, tzinfo=ZoneInfo("America/New_York"))
        times = fire_times(sync.trigger, start, 3)
        assert [t.astimezone(ZoneInfo("America/New_York")).strftime("%H:%M") for t in times] == [
            "01:30", "03:00", "03:30"]  # 02:00-03:00 does not exist on the spring-forward night

    def test_jobs_have_safe_defaults(self) -> None:
        """Both jobs run one at a time, coalesce missed runs and have a misfire grace time."""
        scheduler = build_scheduler(ScheduleSettings(misfire_grace_seconds=900), "UTC",
                                    sync=lambda: None, daily=lambda: None)
        for job in scheduler.get_jobs():
            assert job.max_instances == 1
            assert job.coalesce is True
            assert job.misfire_grace_time == 900

    def test_a_failing_job_is_logged_and_the_scheduler_lives_on(self) -> None:
        """A sync job that raises is logged; the daily job still runs afterwards."""
        ran = threading.Event()

        def boom() -> None:
            raise RuntimeError("sync exploded")

        scheduler = build_scheduler(ScheduleSettings(), "UTC", sync=boom, daily=ran.set)
        now = dt.datetime.now(dt.UTC)
        scheduler.get_job("sync").modify(next_run_time=now)
        scheduler.get_job("daily").modify(next_run_time=now + dt.timedelta(milliseconds=300))
        with capture_logs() as logs:
            thread = threading.Thread(target=scheduler.start, daemon=True)
            thread.start()
            assert ran.wait(timeout=10)
            scheduler.shutdown(wait=True)
            thread.join(timeout=10)
        failures = [e for e in logs if e["event"] == "schedule.job_failed"]
        assert failures
        assert failures[0]["job"] == "sync"
        assert "sync exploded" in failures[0]["error"]


SCRIPT = textwrap.dedent("""
    import datetime as dt, sys, time
    from pathlib import Path
    from sales_velocity.kernel.logs import configure_logging
    from sales_velocity.kernel.schedule import ScheduleSettings, build_scheduler, serve
    marks = Path(sys.argv[1])
    def slow_job():
        (marks / "started").write_text("x")
        time.sleep(1.5)
        (marks / "finished").write_text("x")
    configure_logging()
    s = build_scheduler(ScheduleSettings(), "UTC", sync=slow_job, daily=lambda: None)
    s.get_job("sync").modify(next_run_time=dt.datetime.now(dt.timezone.utc))
    serve(s)
""")


class TestSignals:
    def test_sigterm_stops_after_the_job_in_progress(self, tmp_path: Path) -> None:
        """SIGTERM during a job lets the job finish, then the process exits 0."""
        proc = subprocess.Popen([sys.executable, "-c", SCRIPT, str(tmp_path)], cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "PYTHONPATH": str(ROOT)})
        try:
            deadline = time.monotonic() + 20
            while not (tmp_path / "started").exists():
                if proc.poll() is not None:
                    raise AssertionError(proc.stderr.read() if proc.stderr else "exited early")
                assert time.monotonic() < deadline, "the job did not start"
                time.sleep(0.05)
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=20)
        finally:
            proc.kill()
        assert proc.returncode == 0, err
        assert (tmp_path / "finished").exists()
        assert "schedule.stopped" in err
