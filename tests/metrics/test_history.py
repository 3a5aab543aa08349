"""History from the first run: the one-pass rebuild gives each day's report exactly, stored as rebuilt."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import pytest
import sqlalchemy as sa

from sales_velocity.metrics.history import MAX_DAYS, _segments, rebuild_reports, rebuild_snapshots
from sales_velocity.metrics.job import run_metrics
from sales_velocity.metrics.settings import MetricsSettings
from sales_velocity.metrics.velocity import compute_velocity
from sales_velocity.metrics.window import day_start
from sales_velocity.sync.store import make_engine, snapshots_table
from tests.metrics.test_velocity_rows import deal, insert_deals, insert_owner, insert_pipeline, utc
from tests.metrics.test_window import MAVEN_CONFIG, OSLO, boundary_deals
from tests.test_cli import FIXTURES, ROOT, store_env, velocity

NOW = dt.datetime(2026, 11, 26, 9, 0, tzinfo=dt.UTC)


def sync_demo(tmp_path: Path, db_url: str) -> None:
    """The bundled demo (400 deals, Europe/Oslo, dates ending 2026-11-26) synced into ``db_url``."""
    shutil.copy(ROOT / "config.example.toml", tmp_path / "config.toml")
    shutil.copytree(ROOT / "connectors" / "demo", tmp_path / "connectors" / "demo")
    code, out = velocity(["--config", str(tmp_path / "config.toml"), "sync"], env=store_env(db_url))
    assert code == 0, out


def sync_maven(tmp_path: Path, db_url: str) -> None:
    """The public data set (8,800 deals, UTC, USD) synced into ``db_url``."""
    shutil.copy(FIXTURES / "maven_sales_pipeline.csv", tmp_path / "maven.csv")
    (tmp_path / "velocity.toml").write_text(MAVEN_CONFIG, encoding="utf-8")
    code, out = velocity(["--config", str(tmp_path / "velocity.toml"), "sync"], env=store_env(db_url))
    assert code == 0, out


class TestRebuildEqualsRecompute:
    def test_every_day_of_the_demo(self, tmp_path: Path, db_url: str) -> None:
        """Each of 90 rebuilt days (across the October DST change) is the report a recompute gives."""
        sync_demo(tmp_path, db_url)
        settings = MetricsSettings(timezone="Europe/Oslo", currency="NOK")
        last = dt.date(2026, 11, 26)
        engine = make_engine(db_url)
        try:
            rebuilt = rebuild_reports(engine, settings, last - dt.timedelta(days=89), last)
            assert len(rebuilt) == 90
            for report in rebuilt:
                assert report == compute_velocity(engine, settings, report.as_of), report.as_of
            assert len(rebuilt[-1].scopes) > 3  # pipelines and owners too
        finally:
            engine.dispose()

    def test_every_day_of_the_public_data_set(self, tmp_path: Path, db_url: str) -> None:
        """The 90 days to 2017-12-31 on the public data set, rebuilt in one pass, equal 90 recomputes."""
        sync_maven(tmp_path, db_url)
        settings = MetricsSettings(timezone="UTC", currency="USD")
        last = dt.date(2017, 12, 31)
        engine = make_engine(db_url)
        try:
            for report in rebuild_reports(engine, settings, last - dt.timedelta(days=89), last):
                assert report == compute_velocity(engine, settings, report.as_of), report.as_of
        finally:
            engine.dispose()

    @pytest.mark.parametrize("as_of", [dt.date(2026, 3, 29), dt.date(2026, 10, 25)])
    def test_boundary_deals_on_each_day_around_a_dst_change(self, store: sa.Engine, as_of: dt.date) -> None:
        """Deals on every edge (local midnight, 23:59:59, date-only) fall on the same side as a recompute."""
        insert_deals(store, boundary_deals(as_of))
        insert_deals(store, [
            deal("archived-won", status="won", archived=True, created=utc(2026, 1, 1),
                 closed=day_start(as_of, OSLO), amount=50, owner="u1"),
            deal("foreign", status="won", created=utc(2026, 1, 1), closed=day_start(as_of, OSLO),
                 amount=10, currency="EUR", pipeline="p1"),
            deal("closed-before-created", status="won", created=day_start(as_of, OSLO),
                 closed=day_start(as_of, OSLO) - dt.timedelta(days=2), amount=1, pipeline="p1"),
            deal("deleted-unknown", status="deleted", owner="u1"),
            deal("won-no-dates", status="won", closed=None, updated=None, amount=5),
        ])
        insert_pipeline(store, "p1", "Sales")
        insert_owner(store, "u1", "Kari", None)
        settings = MetricsSettings(timezone="Europe/Oslo", currency="NOK", window_days=10,
                                   rates={"EUR": "11.5"})
        first, last = as_of - dt.timedelta(days=12), as_of + dt.timedelta(days=12)
        for report in rebuild_reports(store, settings, first, last):
            assert report == compute_velocity(store, settings, report.as_of), report.as_of

    def test_limits(self, store: sa.Engine) -> None:
        """A backwards or over-long range is refused with the reason."""
        settings = MetricsSettings(timezone="UTC", currency="NOK")
        with pytest.raises(ValueError, match="after the last day"):
            rebuild_reports(store, settings, dt.date(2026, 1, 2), dt.date(2026, 1, 1))
        with pytest.raises(ValueError, match="more than"):
            rebuild_reports(store, settings, dt.date(2000, 1, 1),
                            dt.date(2000, 1, 1) + dt.timedelta(days=MAX_DAYS))


class TestSegments:
    def test_dst_changes_are_found_to_the_second(self) -> None:
        """The offset stretches of Oslo over 2026 change at 01:00 UTC on 29 March and 25 October."""
        segments = _segments(dt.date(2026, 1, 1), 365, OSLO)
        assert [(dt.datetime.fromtimestamp(s, dt.UTC), off) for s, off in segments] == [
            (utc(2025, 12, 31, 23), 3600), (utc(2026, 3, 29, 1), 7200), (utc(2026, 10, 25, 1), 3600),
        ]


def stored(engine: sa.Engine) -> dict[dt.date, bool]:
    """Whether the "all" snapshot of each day is rebuilt."""
    s = snapshots_table
    with engine.connect() as conn:
        rows = conn.execute(sa.select(s.c.as_of, s.c.rebuilt).where(s.c.scope == "all").order_by(s.c.as_of))
        return {row.as_of: bool(row.rebuilt) for row in rows}


class TestRebuildSnapshots:
    def test_stores_rebuilt_rows_and_keeps_snapshots_taken_on_the_day(self, store: sa.Engine) -> None:
        """Rebuilt days are marked; a day with a snapshot taken on it keeps it unless overwrite is asked."""
        insert_deals(store, [deal("w", status="won", created=utc(2026, 11, 1), closed=utc(2026, 11, 20),
                                  amount=100), deal("open")])
        settings = MetricsSettings(timezone="UTC", currency="NOK")
        run_metrics(store, settings, dt.date(2026, 11, 24), now=utc(2026, 11, 24, 7))  # taken on the day
        result = rebuild_snapshots(store, settings, dt.date(2026, 11, 22), dt.date(2026, 11, 25), now=NOW)
        assert result.rebuilt == (dt.date(2026, 11, 22), dt.date(2026, 11, 23), dt.date(2026, 11, 25))
        assert result.kept == (dt.date(2026, 11, 24),)
        assert stored(store) == {dt.date(2026, 11, d): d != 24 for d in (22, 23, 24, 25)}
        again = rebuild_snapshots(store, settings, dt.date(2026, 11, 22), dt.date(2026, 11, 25), now=NOW,
                                  overwrite=True)
        assert len(again.rebuilt) == 4
        assert again.kept == ()
        assert stored(store) == {dt.date(2026, 11, d): True for d in (22, 23, 24, 25)}
        with store.connect() as conn:
            count = conn.execute(sa.select(sa.func.count()).select_from(snapshots_table)).scalar()
        assert count == 4  # one "all" row per day, nothing doubled

    def test_a_past_day_computed_later_is_rebuilt(self, store: sa.Engine) -> None:
        """run_metrics marks a day computed after it ended as rebuilt, and today's as taken on the day."""
        settings = MetricsSettings(timezone="Europe/Oslo", currency="NOK")
        run_metrics(store, settings, dt.date(2026, 11, 25), now=NOW)
        run_metrics(store, settings, dt.date(2026, 11, 26), now=NOW)
        assert stored(store) == {dt.date(2026, 11, 25): True, dt.date(2026, 11, 26): False}
