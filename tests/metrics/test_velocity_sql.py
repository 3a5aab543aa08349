"""Velocity from SQL aggregates on a real store (SQLite, and PostgreSQL when configured)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
import sqlalchemy as sa

import sales_velocity.metrics.velocity as velocity_module
from sales_velocity.metrics.settings import MetricsSettings
from sales_velocity.metrics.velocity import ScopeVelocity, VelocityReport, compute_velocity, window_bounds
from tests.metrics.test_velocity_rows import (
    deal,
    insert_deals,
    insert_owner,
    insert_pipeline,
    seed_deals,
    utc,
)

D = Decimal
UTC_SETTINGS = MetricsSettings(timezone="UTC", currency="NOK")


def scope(report: VelocityReport, key: str = "") -> ScopeVelocity:
    """The scope with this key ("" is all)."""
    return next(s for s in report.scopes if s.key == key)


class TestSeedThroughStore:
    def test_seed_example(self, store: sa.Engine) -> None:
        """100 open, 20 won at 50 000 after 90 days and 80 lost give exactly 11 111.11 per day."""
        insert_deals(store, seed_deals(utc(2026, 11, 1, 12)))
        all_ = scope(compute_velocity(store, UTC_SETTINGS, dt.date(2026, 11, 26)))
        assert (all_.levers.opportunities, all_.levers.won, all_.levers.lost) == (100, 20, 80)
        assert all_.levers.win_rate == D("0.2")
        assert all_.levers.avg_deal_value == D(50000)
        assert all_.levers.cycle_days == D(90)
        assert all_.velocity.value == D("11111.11")
        assert all_.velocity.undefined_reason is None

    def test_empty_store(self, store: sa.Engine) -> None:
        """An empty store has only the "all" scope, undefined with its reason."""
        report = compute_velocity(store, UTC_SETTINGS, dt.date(2026, 11, 26), window_days=30)
        assert [s.scope for s in report.scopes] == ["all"]
        assert report.scopes[0].levers.opportunities == 0
        assert report.scopes[0].velocity.undefined_reason == "no won deal in the last 30 days"
        assert (report.window_days, report.currency, report.timezone) == (30, "NOK", "UTC")


    def test_one_scan_of_the_deals(self, store: sa.Engine, monkeypatch: pytest.MonkeyPatch) -> None:
        """The report reads the deals table once (one grouped aggregate), however many scopes there are."""
        monkeypatch.setattr(velocity_module, "SCAN_PARTS", 1)
        insert_deals(store, seed_deals(utc(2026, 11, 1, 12), pipeline="p1"))
        statements: list[str] = []

        def record(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
            if not statement.startswith("BEGIN"):
                statements.append(statement)

        sa.event.listen(store, "before_cursor_execute", record)
        try:
            compute_velocity(store, UTC_SETTINGS, dt.date(2026, 11, 26))
        finally:
            sa.event.remove(store, "before_cursor_execute", record)
        on_deals = [s for s in statements if "FROM deals" in s]
        assert len(on_deals) == 1
        assert "GROUP BY" in on_deals[0]
        assert "sum(" in on_deals[0]
        assert len(statements) == 3  # plus the pipeline and owner names

    def test_a_split_scan_gives_the_same_report(
        self, store: sa.Engine, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """On a SQLite file the scan is split into rowid ranges read side by side; no figure changes."""
        deals = seed_deals(utc(2026, 11, 1, 12), pipeline="p1")
        deals += [{**row, "external_id": f"b-{row['external_id']}", "owner_id": f"u{n % 3}"}
                  for n, row in enumerate(seed_deals(utc(2026, 10, 20, 9), pipeline="p2"))]
        deals += [deal(f"c-{n}", status="won", closed=utc(2026, 11, 2, 8), amount=n * 100 + 1,
                       currency="EUR" if n % 2 else None, pipeline="p1", owner=f"u{n % 3}")
                  for n in range(30)]
        insert_deals(store, deals)
        monkeypatch.setattr(velocity_module, "SCAN_PARTS", 1)
        whole = compute_velocity(store, UTC_SETTINGS, dt.date(2026, 11, 26))
        monkeypatch.setattr(velocity_module, "SCAN_PARTS", 3)
        statements: list[str] = []

        def record(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
            if not statement.startswith("BEGIN"):
                statements.append(statement)

        sa.event.listen(store, "before_cursor_execute", record)
        try:
            split = compute_velocity(store, UTC_SETTINGS, dt.date(2026, 11, 26))
        finally:
            sa.event.remove(store, "before_cursor_execute", record)
        assert split == whole
        parts = [s for s in statements if "GROUP BY" in s]
        assert len(parts) == (3 if store.dialect.name == "sqlite" else 1)
        assert all(("rowid BETWEEN" in s) == (store.dialect.name == "sqlite") for s in parts)

    def test_window_override(self, store: sa.Engine) -> None:
        """An explicit window replaces the configured one; a window under one day is refused."""
        insert_deals(store, seed_deals(utc(2026, 11, 1, 12)))
        assert scope(compute_velocity(store, UTC_SETTINGS, dt.date(2026, 11, 26), 20)).levers.won == 0
        with pytest.raises(ValueError, match="at least 1"):
            compute_velocity(store, UTC_SETTINGS, dt.date(2026, 11, 26), 0)


class TestOpenAtPastDate:
    def test_open_is_rebuilt_from_dates(self, store: sa.Engine) -> None:
        """For a past T, deals count as they were then, not by today's status (half-open at start(T+1))."""
        end = utc(2026, 7, 1)  # start(T+1) for T = 2026-06-30 in UTC
        second = dt.timedelta(seconds=1)
        insert_deals(store, [
            deal("open"),
            deal("no-created", created=None),
            deal("created-just-before-end", created=end - second),
            deal("won-after-T", status="won", closed=utc(2026, 8, 1), amount=10),
            deal("won-at-end", status="won", created=utc(2026, 6, 21), closed=end, amount=100),
            deal("lost-after-T", status="lost", closed=end + second),
            deal("deleted-at-end", status="deleted", deleted_at=end),
            deal("won-no-close-updated-after-T", status="won", closed=None, updated=utc(2026, 8, 1)),
            # not open at T:
            deal("created-at-end", created=end),
            deal("won-just-before-end", status="won", created=utc(2026, 6, 21), closed=end - second,
                 amount=500),
            deal("deleted-before-T", status="deleted", deleted_at=end - second),
            deal("deleted-unknown", status="deleted", deleted_at=None),
            deal("archived", archived=True),
            deal("won-no-dates", status="won", closed=None, updated=None, amount=5),
            deal("won-updated-in-window", status="won", created=utc(2026, 6, 5), closed=None,
                 updated=utc(2026, 6, 15), amount=300),
        ])
        all_ = scope(compute_velocity(store, UTC_SETTINGS, dt.date(2026, 6, 30)))
        assert all_.levers.opportunities == 8
        assert (all_.levers.won, all_.levers.lost) == (2, 0)
        assert all_.levers.avg_deal_value == D(400)  # 500 and 300
        assert all_.levers.cycle_days == D(10 * 86400 - 1 + 10 * 86400) / (2 * 86400)
        # today the store has moved on: only the deals open now count (created after T included)
        today = scope(compute_velocity(store, UTC_SETTINGS, dt.date(2026, 11, 26)))
        assert today.levers.opportunities == 4

    def test_archived_deals_count_as_closed_but_never_as_open(self, store: sa.Engine) -> None:
        """Archived deals are out of N, but an archived won deal still counts in p, V and L."""
        close = utc(2026, 11, 1)
        insert_deals(store, [
            deal("archived-open", archived=True),
            deal("archived-won", status="won", archived=True, created=close - dt.timedelta(days=4),
                 closed=close, amount=1000),
            deal("open"),
        ])
        all_ = scope(compute_velocity(store, UTC_SETTINGS, dt.date(2026, 11, 26)))
        assert (all_.levers.opportunities, all_.levers.won) == (1, 1)
        assert all_.velocity.value == D("250.00")


class TestWindowBounds:
    @pytest.mark.parametrize(
        ("zone", "as_of", "end"),
        [
            ("Europe/Oslo", dt.date(2026, 3, 29), utc(2026, 3, 29, 22)),
            ("America/New_York", dt.date(2026, 11, 26), utc(2026, 11, 27, 5)),
        ],
    )
    def test_bounds_are_local_midnights(self, store: sa.Engine, zone: str, as_of: dt.date,
                                        end: dt.datetime) -> None:
        """Half-open: a close at start(T-W+1) is in, at start(T+1) is out; one second either side flips it."""
        settings = MetricsSettings(timezone=zone, currency="USD")
        start, computed_end = window_bounds(as_of, 90, settings.zone)
        assert computed_end == end
        second = dt.timedelta(seconds=1)
        insert_deals(store, [
            deal("won-just-before-end", status="won", closed=end - second, amount=100),
            deal("won-at-end", status="won", closed=end, amount=999),
            deal("lost-at-start", status="lost", closed=start),
            deal("lost-after-start", status="lost", closed=start + second),
            deal("lost-just-before-start", status="lost", closed=start - second),
        ])
        all_ = scope(compute_velocity(store, settings, as_of))
        assert (all_.levers.won, all_.levers.lost, all_.levers.opportunities) == (1, 2, 1)
        assert all_.levers.avg_deal_value == D(100)


class TestCycleLength:
    def test_whole_days_survive_dst(self, store: sa.Engine) -> None:
        """Dates at Oslo midnights across the DST change give 90 days for whole-day deals, 89.958 else."""
        created = utc(2025, 12, 31, 23)  # 2026-01-01 00:00 Oslo (CET)
        closed = utc(2026, 3, 31, 22)  # 2026-04-01 00:00 Oslo (CEST): 90 days minus an hour
        insert_deals(store, [
            deal("dates", status="won", created=created, closed=closed, amount=1, pipeline="dates",
                 whole_days=True),
            deal("times", status="won", created=created, closed=closed, amount=1, pipeline="times"),
        ])
        settings = MetricsSettings(timezone="Europe/Oslo", currency="NOK")
        report = compute_velocity(store, settings, dt.date(2026, 4, 1))
        assert scope(report, "crm/dates").levers.cycle_days == D(90)
        assert scope(report, "crm/times").levers.cycle_days == D(90 * 86400 - 3600) / 86400
        assert scope(report).levers.cycle_days == D(2 * 90 * 86400 - 3600) / (2 * 86400)

    def test_exact_elapsed_time(self, store: sa.Engine) -> None:
        """Times of day count: 3 days and 12 hours is 3.5 days; no creation date is left out of L."""
        insert_deals(store, [
            deal("a", status="won", created=utc(2026, 11, 1, 10), closed=utc(2026, 11, 4, 22), amount=1),
            deal("b", status="won", created=None, closed=utc(2026, 11, 4, 22), amount=1),
        ])
        all_ = scope(compute_velocity(store, UTC_SETTINGS, dt.date(2026, 11, 26)))
        assert all_.levers.cycle_days == D("3.5")
        assert all_.levers.won == 2

    def test_zero_cycle_is_undefined(self, store: sa.Engine) -> None:
        """A close at (or, in bad data, before) the creation time gives L = 0: undefined, not a crash."""
        moment = utc(2026, 11, 2)
        insert_deals(store, [
            deal("same", status="won", created=moment, closed=moment, amount=10),
            deal("backwards", status="won", created=moment, closed=moment - dt.timedelta(days=3), amount=10),
        ])
        all_ = scope(compute_velocity(store, UTC_SETTINGS, dt.date(2026, 11, 26)))
        assert all_.levers.cycle_days == D(0)
        assert all_.velocity.value is None
        assert all_.velocity.undefined_reason == "cycle length is 0 days"

    def test_no_creation_dates(self, store: sa.Engine) -> None:
        """Won deals that all lack a creation date leave L and velocity undefined."""
        insert_deals(store, [deal("x", status="won", created=None, closed=utc(2026, 11, 2), amount=10)])
        all_ = scope(compute_velocity(store, UTC_SETTINGS, dt.date(2026, 11, 26)))
        assert all_.velocity.undefined_reason == "won deals have no creation date"


class TestAmounts:
    def test_currency_conversion_and_exclusions(self, store: sa.Engine) -> None:
        """Base and NULL currencies count as is, rates convert exactly, the rest is counted out."""
        close = utc(2026, 11, 2)
        insert_deals(store, [
            deal("nok", status="won", closed=close, amount="1000.0001", currency="NOK"),
            deal("eur", status="won", closed=close, amount=100, currency="EUR"),
            deal("default", status="won", closed=close, amount=500),
            deal("lower", status="won", closed=close, amount=200, currency="nok"),
            deal("usd", status="won", closed=close, amount=50, currency="USD"),
            deal("no-amount", status="won", closed=close, currency="NOK"),
            deal("no-amount-usd", status="won", closed=close, currency="USD"),
        ])
        settings = MetricsSettings(timezone="UTC", currency="NOK", rates={"EUR": D("11.5")})
        all_ = scope(compute_velocity(store, settings, dt.date(2026, 11, 26)))
        assert all_.levers.won == 7
        assert all_.levers.avg_deal_value == D("712.500025")  # (1000.0001 + 1150 + 500 + 200) / 4
        assert (all_.excluded_no_amount, all_.excluded_currency) == (2, 1)

    @pytest.mark.parametrize(
        ("currency", "amount", "reason"),
        [
            ("NOK", None, "won deals have no amount"),
            ("USD", 10, "won deals have no exchange rate to NOK"),
        ],
    )
    def test_no_usable_amount(self, store: sa.Engine, currency: str, amount: int | None,
                              reason: str) -> None:
        """When no won deal has a usable amount, velocity is undefined and says why."""
        insert_deals(store, [deal("x", status="won", closed=utc(2026, 11, 2), amount=amount,
                                  currency=currency)])
        all_ = scope(compute_velocity(store, UTC_SETTINGS, dt.date(2026, 11, 26)))
        assert all_.levers.avg_deal_value is None
        assert all_.velocity == type(all_.velocity)(None, reason)

    def test_both_kinds_missing(self, store: sa.Engine) -> None:
        """Missing amounts and missing rates together are named together."""
        close = utc(2026, 11, 2)
        insert_deals(store, [deal("x", status="won", closed=close, currency="USD", amount=1),
                             deal("y", status="won", closed=close)])
        all_ = scope(compute_velocity(store, UTC_SETTINGS, dt.date(2026, 11, 26)))
        assert all_.velocity.undefined_reason == "won deals have no amount or no exchange rate to NOK"


class TestScopes:
    def test_pipelines_and_owners_with_labels(self, store: sa.Engine) -> None:
        """Each pipeline and owner is its own scope, labelled by name (or email, or id), in order."""
        insert_pipeline(store, "p1", "New business")
        insert_pipeline(store, "p2", "Renewals")
        insert_owner(store, "o1", "Kari Nordmann", "kari@example.com")
        insert_owner(store, "o2", None, "ola@example.com")
        close = utc(2026, 11, 1, 12)
        insert_deals(store, [
            *seed_deals(close, pipeline="p1"),
            deal("r-won", status="won", created=close - dt.timedelta(days=10), closed=close, amount=100,
                 pipeline="p2", owner="o1"),
            deal("r-open", pipeline="p2", owner="o2"),
            deal("x-open", pipeline="p3", owner="o3"),
            deal("old", status="won", closed=utc(2025, 1, 1), amount=1, pipeline="p4", owner="o4"),
        ])
        report = compute_velocity(store, UTC_SETTINGS, dt.date(2026, 11, 26))
        assert [(s.scope, s.key, s.label) for s in report.scopes] == [
            ("all", "", "All pipelines"),
            ("pipeline", "crm/p1", "New business"),
            ("pipeline", "crm/p3", "p3"),
            ("pipeline", "crm/p2", "Renewals"),
            ("owner", "crm/o1", "Kari Nordmann"),
            ("owner", "crm/o3", "o3"),
            ("owner", "crm/o2", "ola@example.com"),
        ]
        assert scope(report, "crm/p1").velocity.value == D("11111.11")
        renewals = scope(report, "crm/p2")
        assert (renewals.levers.opportunities, renewals.levers.won, renewals.levers.lost) == (1, 1, 0)
        assert renewals.velocity.value == D("10.00")  # 1 x 100 x 1 / 10
        assert scope(report, "crm/o3").velocity.undefined_reason == "no won deal in the last 90 days"
        assert scope(report).levers.opportunities == 102

    def test_same_name_in_two_sources(self, store: sa.Engine) -> None:
        """Two sources with a pipeline of the same name are told apart by the source."""
        insert_pipeline(store, "sales", "Sales", source="hubspot")
        insert_pipeline(store, "1", "Sales", source="pipedrive")
        insert_deals(store, [deal("a", source="hubspot", pipeline="sales"),
                             deal("a", source="pipedrive", pipeline="1")])
        report = compute_velocity(store, UTC_SETTINGS, dt.date(2026, 11, 26))
        assert [s.label for s in report.of_kind("pipeline")] == ["Sales (hubspot)", "Sales (pipedrive)"]
