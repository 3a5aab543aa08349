"""Fixtures for notifier tests: a small store with deals, snapshots and stage history."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path

import pytest

from sales_velocity.metrics.job import run_metrics
from sales_velocity.metrics.settings import MetricsSettings
from tests.notify.factory import (
    AS_OF,
    NOW,
    add_change,
    add_deal,
    add_event,
    add_owner,
    add_pipeline,
    add_sync_run,
    days_ago,
)

METRICS = MetricsSettings(timezone="Europe/Oslo", currency="NOK")


def seed(engine) -> None:
    """Two sellers (one without an address), stalled and healthy deals, 31 days of snapshots, changes."""
    add_sync_run(engine)
    add_pipeline(engine)
    add_owner(engine, "o1", "Kari Nordmann", "kari@example.com")
    add_owner(engine, "o2", "Ola <Hansen>", None)
    add_deal(
        engine,
        "a",
        title="<!channel> *x* <script>",
        next_step=None,
        next_activity_at=None,
        amount=Decimal("120000"),
    )
    add_deal(
        engine,
        "b",
        title="Fjord & Co – renewal",
        owner_id="o2",
        amount=None,
        stage_entered_at=days_ago(40),
        created_at=days_ago(60),
    )
    add_deal(engine, "c", title="Healthy deal", amount=Decimal("80000"))
    for i, (lead, proposal) in enumerate([(10, 20), (30, 10), (5, 15)]):
        closed = days_ago(2 + 9 * i)
        start = closed - dt.timedelta(days=lead + proposal)
        add_deal(
            engine,
            f"w{i}",
            status="won",
            stage_id="won",
            amount=Decimal("50000"),
            created_at=start,
            closed_at=closed,
        )
        add_event(engine, f"w{i}", "lead", start)
        add_event(engine, f"w{i}", "proposal", closed - dt.timedelta(days=proposal))
        add_event(engine, f"w{i}", "won", closed)
    add_deal(engine, "l", status="lost", closed_at=days_ago(40))
    # what the sync recorded: a raised amount, a stage moved back, a close date pushed three times
    add_change(engine, "a", "amount", Decimal("100000"), Decimal("120000"), days_ago(2))
    add_change(engine, "b", "stage_id", "proposal", "lead", days_ago(1))
    for n, (old, new) in enumerate([(10, 14), (14, 21), (21, 30)]):
        add_change(engine, "c", "expected_close_date", AS_OF + dt.timedelta(days=old),
                   AS_OF + dt.timedelta(days=new), days_ago(4 - n / 2))
    # the first run was a week ago: the days before it were rebuilt then (computed after they ended),
    # and since then each day's snapshot was taken that morning
    for back in range(30, -1, -1):
        taken = NOW - dt.timedelta(days=back) if back <= 7 else NOW - dt.timedelta(days=7)
        run_metrics(engine, METRICS, AS_OF - dt.timedelta(days=back), now=taken)


@pytest.fixture
def seeded(store):
    """The seeded store, once per backend."""
    seed(store)
    return store


@pytest.fixture
def seeded_sqlite(sqlite_store):
    """The seeded store on SQLite only (for channel and rendering tests)."""
    seed(sqlite_store)
    return sqlite_store


@pytest.fixture
def seeded_file(tmp_path: Path, sqlite_store):
    """The seeded SQLite file and a maker of a config around it (source "demo"; extra TOML appended)."""
    seed(sqlite_store)

    def config(extra: str) -> Path:
        path: Path = tmp_path / "velocity.toml"
        path.write_text('timezone = "Europe/Oslo"\ncurrency = "NOK"\n[store]\nurl = "sqlite:///velocity.db"\n'
                        '[[sources]]\nname = "demo"\nkind = "demo"\n'
                        '[notify]\nchart = false\n' + extra, encoding="utf-8")
        return path

    return config
