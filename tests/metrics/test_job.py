"""The metrics job: snapshots per scope and day, idempotent, and read back for trends."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import sqlalchemy as sa
from structlog.testing import capture_logs

from sales_velocity.metrics.job import load_snapshots, run_metrics, snapshot_for
from sales_velocity.metrics.settings import MetricsSettings
from sales_velocity.metrics.velocity import compute_velocity
from sales_velocity.sync.store import snapshots_table
from tests.metrics.test_velocity_rows import deal, insert_deals, insert_pipeline, seed_deals, utc

D = Decimal
SETTINGS = MetricsSettings(timezone="Europe/Oslo", currency="NOK")
NOW = utc(2026, 11, 26, 6)
AS_OF = dt.date(2026, 11, 26)


def stored(engine: sa.Engine) -> list[tuple[object, ...]]:
    """Every snapshot row, as plain tuples in key order."""
    s = snapshots_table
    query = sa.select(s.c.as_of, s.c.window_days, s.c.scope, s.c.key, s.c.velocity, s.c.won).order_by(
        s.c.as_of, s.c.window_days, s.c.scope, s.c.key)
    with engine.connect() as conn:
        return [tuple(row) for row in conn.execute(query)]


class TestRunMetrics:
    def test_stores_one_row_per_scope(self, store: sa.Engine) -> None:
        """Each scope of the report becomes one row with its levers, velocity and computed_at."""
        insert_pipeline(store, "p1", "New business")
        insert_deals(store, seed_deals(utc(2026, 11, 1, 12), pipeline="p1"))
        with capture_logs() as logs:
            report = run_metrics(store, SETTINGS, AS_OF, now=NOW)
        assert [s.key for s in report.scopes] == ["", "crm/p1"]
        assert stored(store) == [
            (AS_OF, 90, "all", "", D("11111.11"), 20),
            (AS_OF, 90, "pipeline", "crm/p1", D("11111.11"), 20),
        ]
        with store.connect() as conn:
            row = conn.execute(sa.select(snapshots_table).where(snapshots_table.c.key == "")).one()
        assert (row.label, row.currency, row.opportunities, row.lost) == ("All pipelines", "NOK", 100, 80)
        assert (row.win_rate, row.avg_deal_value, row.cycle_days) == (D("0.2"), D(50000), D(90))
        assert row.computed_at == NOW
        assert row.undefined_reason is None
        event = next(e for e in logs if e["event"] == "metrics.computed")
        assert event["as_of"] == "2026-11-26"
        assert (event["scopes"], event["velocity"], event["window_days"]) == (2, "11111.11", 90)

    def test_rerun_replaces(self, store: sa.Engine) -> None:
        """Running the same day again replaces its rows: new values, vanished scopes gone, no duplicates."""
        insert_deals(store, [deal("open", pipeline="p1")])
        run_metrics(store, SETTINGS, AS_OF, now=NOW)
        assert [row[3] for row in stored(store)] == ["", "crm/p1"]
        with store.begin() as conn:
            conn.execute(sa.delete(sa.table("deals")))
        insert_deals(store, [deal("won", status="won", created=utc(2026, 11, 1), closed=utc(2026, 11, 11),
                                  amount=1000), deal("open")])
        run_metrics(store, SETTINGS, AS_OF, now=NOW)
        run_metrics(store, SETTINGS, AS_OF, now=NOW)
        assert stored(store) == [(AS_OF, 90, "all", "", D("100.00"), 1)]

    def test_undefined_is_stored_as_null_with_reason(self, store: sa.Engine) -> None:
        """An undefined velocity is NULL in the table, with its reason, never 0."""
        insert_deals(store, [deal("open")])
        run_metrics(store, SETTINGS, AS_OF, now=NOW)
        with store.connect() as conn:
            row = conn.execute(sa.select(snapshots_table)).one()
        assert row.velocity is None
        assert row.undefined_reason == "no won deal in the last 90 days"
        assert row.win_rate is None

    def test_windows_are_kept_apart(self, store: sa.Engine) -> None:
        """Snapshots of another window length on the same day are left alone."""
        run_metrics(store, SETTINGS.model_copy(update={"window_days": 30}), AS_OF, now=NOW)
        run_metrics(store, SETTINGS, AS_OF, now=NOW)
        run_metrics(store, SETTINGS, AS_OF, now=NOW)
        assert [(row[1], row[2]) for row in stored(store)] == [(30, "all"), (90, "all")]


class TestReadingSnapshots:
    def test_backfilled_series(self, store: sa.Engine) -> None:
        """Back-filled past days give a dated series; undefined days are None; bounds are inclusive."""
        insert_deals(store, [
            deal("open"),
            deal("won", status="won", created=utc(2026, 10, 1), closed=utc(2026, 11, 20, 12), amount=900),
        ])
        for day in range(18, 24):
            run_metrics(store, SETTINGS, dt.date(2026, 11, day), now=NOW)
        series = load_snapshots(store, "all", "", dt.date(2026, 11, 19), dt.date(2026, 11, 22), 90)
        assert series == [
            (dt.date(2026, 11, 19), None),
            (dt.date(2026, 11, 20), D("17.82")),  # 1 x 900 x 1 / 50.5 days
            (dt.date(2026, 11, 21), D("17.82")),
            (dt.date(2026, 11, 22), D("17.82")),
        ]
        assert load_snapshots(store, "pipeline", "crm/none", dt.date(2026, 11, 1), AS_OF, 90) == []
        assert load_snapshots(store, "all", "", dt.date(2026, 11, 19), dt.date(2026, 11, 22), 30) == []

    def test_snapshot_rebuilds_the_report(self, store: sa.Engine) -> None:
        """A stored day reads back as the computed report, at stored precision and in the same order."""
        insert_pipeline(store, "p1", "Zeta")
        insert_pipeline(store, "p2", "Alpha")
        insert_deals(store, [
            *seed_deals(utc(2026, 11, 1, 12), pipeline="p1"),
            deal("a", status="won", created=utc(2026, 11, 1), closed=utc(2026, 11, 4), amount=10,
                 pipeline="p2", owner="o1"),
            deal("b", status="lost", closed=utc(2026, 11, 4), pipeline="p2", owner="o1"),
            deal("c", status="won", closed=utc(2026, 11, 4), pipeline="p2", currency="USD", amount=5),
        ])
        computed = run_metrics(store, SETTINGS, AS_OF, now=NOW)
        rebuilt = snapshot_for(store, AS_OF, 90, timezone="Europe/Oslo")
        assert rebuilt is not None
        assert (rebuilt.as_of, rebuilt.window_days, rebuilt.currency, rebuilt.timezone) == (
            AS_OF, 90, "NOK", "Europe/Oslo")
        assert [(s.scope, s.key, s.label) for s in rebuilt.scopes] == [
            (s.scope, s.key, s.label) for s in computed.scopes]
        for old, new in zip(computed.scopes, rebuilt.scopes, strict=True):
            assert new.velocity == old.velocity
            assert (new.excluded_no_amount, new.excluded_currency) == (old.excluded_no_amount,
                                                                       old.excluded_currency)
            assert new.levers.opportunities == old.levers.opportunities
            assert (new.levers.won, new.levers.lost) == (old.levers.won, old.levers.lost)
            for name, places in (("win_rate", "1e-10"), ("avg_deal_value", "1e-4"), ("cycle_days", "1e-6")):
                a, b = getattr(old.levers, name), getattr(new.levers, name)
                assert (a is None and b is None) or abs(a - b) <= D(places), name

    def test_missing_day(self, store: sa.Engine) -> None:
        """A day without snapshots reads back as None."""
        run_metrics(store, SETTINGS, AS_OF, now=NOW)
        assert snapshot_for(store, AS_OF - dt.timedelta(days=1), 90) is None
        assert snapshot_for(store, AS_OF, 30) is None
        report = snapshot_for(store, AS_OF, 90)
        assert report is not None
        assert report.scopes == compute_velocity(store, SETTINGS, AS_OF).scopes
