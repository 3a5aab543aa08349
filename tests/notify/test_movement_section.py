"""The digest's movement section: in the first digest of each week (configurable), and what it says."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
import sqlalchemy as sa

from sales_velocity.notify.job import build_messages
from sales_velocity.notify.movement_section import movement_due
from sales_velocity.notify.settings import load_notify_settings
from sales_velocity.sync.store import outbox_table
from tests.metrics.movement_helpers import assert_bridge
from tests.notify.conftest import METRICS
from tests.notify.factory import AS_OF, NOW

THURSDAY = AS_OF  # 2026-11-26
MONDAY = dt.date(2026, 11, 23)


def queue_digest(engine: sa.Engine, day: dt.date) -> None:
    """An outbox row for the digest of ``day``, as an earlier run left it."""
    with engine.begin() as conn:
        conn.execute(sa.insert(outbox_table).values(
            channel="out", kind="digest", dedupe_key=f"digest:{day.isoformat()}", payload={}, status="sent",
            attempts=1, created_at=NOW))


def digest(engine: sa.Engine, as_of: dt.date = THURSDAY, **notify: object):
    """The digest message built for ``as_of`` with extra [notify] settings."""
    settings, reminders = load_notify_settings(
        {"channels": [{"kind": "stdout", "name": "out", "send": ["digest"]}], **notify}, {}, {})
    found, _ = build_messages(engine, settings, reminders, METRICS, as_of=as_of, now=NOW)
    return found[0]


class TestWhen:
    def test_weekly_is_the_first_digest_of_the_week(self, seeded_sqlite: sa.Engine) -> None:
        """No digest earlier this week: due; one on Monday: not due on Thursday; a same-day rerun: due."""
        assert movement_due(seeded_sqlite, "weekly", "monday", THURSDAY)
        queue_digest(seeded_sqlite, THURSDAY)
        assert movement_due(seeded_sqlite, "weekly", "monday", THURSDAY)  # the same digest, rendered again
        queue_digest(seeded_sqlite, MONDAY)
        assert not movement_due(seeded_sqlite, "weekly", "monday", THURSDAY)
        assert movement_due(seeded_sqlite, "weekly", "monday", MONDAY + dt.timedelta(days=7))
        assert movement_due(seeded_sqlite, "weekly", "tuesday", THURSDAY)  # Monday was last week then

    def test_daily_and_never(self, seeded_sqlite: sa.Engine) -> None:
        """daily: always; never: not even on the first run."""
        queue_digest(seeded_sqlite, MONDAY)
        assert movement_due(seeded_sqlite, "daily", "monday", THURSDAY)
        assert not movement_due(seeded_sqlite, "never", "monday", MONDAY)

    def test_the_section_appears_once_a_week(self, seeded_sqlite: sa.Engine) -> None:
        """Thursday's first digest has the section; after it was queued, Friday's has none."""
        first = digest(seeded_sqlite)
        assert "Pipeline movement, last 7 days" in first.text
        assert first.data["movement"] is not None
        queue_digest(seeded_sqlite, THURSDAY)
        friday = digest(seeded_sqlite, THURSDAY + dt.timedelta(days=1))
        assert "Pipeline movement" not in friday.text
        assert friday.data["movement"] is None
        assert "Pipeline movement" not in digest(seeded_sqlite, movement="never").text

    def test_invalid_settings_name_their_key(self) -> None:
        """A wrong mode or weekday is a config error with its key path."""
        from sales_velocity.kernel.errors import ConfigError

        with pytest.raises(ConfigError, match=r"notify\.movement_week_starts"):
            load_notify_settings({"movement_week_starts": "someday"}, {}, {})


class TestWhat:
    def test_the_sections_figures_add_up(self, seeded_sqlite: sa.Engine) -> None:
        """The seeded week: two deals added, one amount raised, one win; the bridge holds exactly."""
        first = digest(seeded_sqlite)
        data = first.data["movement"]
        assert data["added"] == {"count": 2, "value": "180000.0000"}
        assert data["amount_up"] == {"count": 1, "delta": "20000.0000"}
        assert data["won"] == {"count": 1, "value": "50000.0000"}
        assert (data["open_start"]["value"], data["open_end"]["value"]) == ("50000.0000", "200000.0000")
        start, end = Decimal(data["open_start"]["value"]), Decimal(data["open_end"]["value"])
        assert start + 180000 + 20000 - 50000 == end

    def test_seeded_store_bridge(self, seeded_sqlite: sa.Engine) -> None:
        """The digest's movement object passes the bridge identity."""
        from sales_velocity.metrics.movement import compute_movement, period_bounds

        since, until = period_bounds(None, None, today=THURSDAY, zone=METRICS.zone)
        assert_bridge(compute_movement(seeded_sqlite, METRICS, since=since, until=until))
