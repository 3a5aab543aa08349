"""`velocity status`: the text people read is pinned by a golden file; Prometheus output parses."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

from sales_velocity.sync.prometheus import write_status
from sales_velocity.sync.status import ChannelStatus, SourceStatus, Status, render_status

GOLDEN = Path(__file__).parent.parent / "fixtures" / "golden" / "status.txt"
UTC = dt.UTC


def sample() -> Status:
    """Two sources (one failing), two channels (one with a waiting message), next runs."""
    at = dt.datetime(2026, 11, 26, 6, 0, tzinfo=UTC)
    return Status(
        now=dt.datetime(2026, 11, 26, 8, 15, tzinfo=UTC),
        timezone="Europe/Oslo",
        sources=(
            SourceStatus("hubspot", at, "ok", 1200, 40, 15, 2, 0, 12.5, None, at),
            SourceStatus("pipedrive", at, "failed", 500, 500, 0, 0, 3, 4.0,
                         "Pipedrive GET /api/v2/deals: server error (HTTP 502)",
                         at - dt.timedelta(days=1)),
            SourceStatus("export"),
        ),
        channels=(
            ChannelStatus("team", at + dt.timedelta(hours=1)),
            ChannelStatus("mail", None, pending=2, failed_attempts=3,
                          last_error="SMTP 421: service not available", unknown=1),
        ),
        next_runs=(("sync", dt.datetime(2026, 11, 26, 8, 30, tzinfo=UTC)),
                   ("daily", dt.datetime(2026, 11, 27, 6, 0, tzinfo=UTC))),
    )


def test_status_text_matches_the_golden_file() -> None:
    """The status table (local times, failures with last success, waiting mail) reads as pinned."""
    text = render_status(sample())
    if os.environ.get("UPDATE_GOLDEN") == "1":
        GOLDEN.write_text(text, encoding="utf-8")
    assert text == GOLDEN.read_text(encoding="utf-8")


def test_prometheus_textfile_has_one_series_per_source(tmp_path: Path) -> None:
    """The textfile holds the health and counts of every source and the outbox per channel."""
    path = tmp_path / "velocity.prom"
    write_status(sample(), path)
    text = path.read_text()
    assert 'velocity_sync_last_run_ok{source="hubspot"} 1.0' in text
    assert 'velocity_sync_last_run_ok{source="pipedrive"} 0.0' in text
    assert 'velocity_outbox_pending_messages{channel="mail"} 2.0' in text
    assert 'velocity_outbox_unknown_messages{channel="mail"} 1.0' in text
