"""Movement on both backends: two syncs of a scripted CRM, every class by hand, the bridge exact."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa

from sales_velocity.connectors.base import Checkpoint, Deal
from sales_velocity.kernel.errors import ConfigError
from sales_velocity.metrics.movement import MovementScope, compute_movement, parse_scope, period_bounds
from sales_velocity.metrics.movement_report import movement_data, render_movement
from sales_velocity.metrics.settings import MetricsSettings
from sales_velocity.sync.engine import sync_source
from tests.metrics.movement_helpers import assert_bridge, by_deal
from tests.notify.test_render import golden
from tests.sync.test_engine import ScriptedConnector, clock, deal

UTC = dt.UTC
OSLO = ZoneInfo("Europe/Oslo")
SETTINGS = MetricsSettings(timezone="Europe/Oslo", currency="NOK", rates={"EUR": Decimal("11.5")})
SYNC1 = dt.datetime(2026, 11, 2, 12, 0, tzinfo=UTC)
SYNC2 = dt.datetime(2026, 11, 5, 12, 0, tzinfo=UTC)
SINCE = dt.datetime(2026, 11, 3, tzinfo=OSLO).astimezone(UTC)
UNTIL = dt.datetime(2026, 11, 10, tzinfo=OSLO).astimezone(UTC)
OLD = SYNC1 - dt.timedelta(days=30)
CLOSE = dt.date(2026, 11, 20)
OWNERS = ("u1", "u2")


def before() -> list[Deal]:
    """The CRM at the first sync: twelve open deals."""
    return [
        deal("progress", amount=Decimal(100), stage="s1", created_at=OLD, expected_close_date=CLOSE),
        deal("back", amount=Decimal(200), stage="s2", created_at=OLD, expected_close_date=CLOSE),
        deal("win", amount=Decimal(300), created_at=OLD, expected_close_date=CLOSE),
        deal("lose", amount=Decimal(400), created_at=OLD, expected_close_date=CLOSE),
        deal("gone", amount=Decimal(500), created_at=OLD, expected_close_date=CLOSE),
        deal("push", amount=Decimal(600), created_at=OLD, expected_close_date=CLOSE),
        deal("pull", amount=Decimal(700), created_at=OLD, expected_close_date=CLOSE),
        deal("up", amount=Decimal(800), created_at=OLD, expected_close_date=CLOSE),
        deal("down", amount=Decimal(900), created_at=OLD, expected_close_date=CLOSE),
        deal("owner", amount=Decimal(1000), created_at=OLD, expected_close_date=CLOSE),
        deal("euro", amount=Decimal(10), currency="EUR", created_at=OLD, expected_close_date=CLOSE),
        deal("still", amount=Decimal("1100.25"), created_at=OLD, expected_close_date=CLOSE),
    ]


def after() -> list[Deal]:
    """The CRM at the second sync: one change of each kind, a new deal, one deal gone."""
    won_at = dt.datetime(2026, 11, 4, 9, 0, tzinfo=UTC)
    rows = {d.external_id: d for d in before()}
    del rows["gone"]
    import dataclasses as dc

    rows["progress"] = dc.replace(rows["progress"], stage="s2")
    rows["back"] = dc.replace(rows["back"], stage="s1")
    rows["win"] = dc.replace(rows["win"], status="won", stage="won", amount=Decimal(350), closed_at=won_at)
    rows["lose"] = dc.replace(rows["lose"], status="lost", closed_at=won_at)
    rows["push"] = dc.replace(rows["push"], expected_close_date=dt.date(2027, 1, 15))
    rows["pull"] = dc.replace(rows["pull"], expected_close_date=dt.date(2026, 11, 12))
    rows["up"] = dc.replace(rows["up"], amount=Decimal("1250.50"))
    rows["down"] = dc.replace(rows["down"], amount=Decimal(450))
    rows["owner"] = dc.replace(rows["owner"], owner="u2")
    rows["euro"] = dc.replace(rows["euro"], amount=Decimal(12))
    rows["new"] = deal("new", amount=Decimal(1200), created_at=dt.datetime(2026, 11, 4, 15, tzinfo=UTC))
    return list(rows.values())


def two_syncs(store: sa.Engine) -> None:
    """Sync the CRM before, then after (both complete pulls)."""
    sync_source(store, ScriptedConnector([*before(), Checkpoint("a", complete=True)], owner_ids=OWNERS),
                now=clock(SYNC1))
    sync_source(store, ScriptedConnector([*after(), Checkpoint("b", complete=True)], owner_ids=OWNERS),
                now=clock(SYNC2))


class TestClasses:
    def test_every_class_from_two_syncs(self, store: sa.Engine) -> None:
        """Each deal lands in its class with from/to, and the values are the hand-computed ones."""
        two_syncs(store)
        m = compute_movement(store, SETTINGS, since=SINCE, until=UNTIL)
        moves = by_deal(m)
        assert moves["progress"] == {("progressed", "Qualified", "Proposal")}
        assert moves["back"] == {("moved_back", "Proposal", "Qualified")}
        assert moves["win"] == {("won", "Qualified", "won"), ("amount_up", "300.0000", "350.0000")}
        assert moves["lose"] == {("lost", "Qualified", "lost")}
        assert moves["gone"] == {("deleted", "Qualified", "deleted")}
        assert moves["push"] == {("pushed", "2026-11-20", "2027-01-15")}
        assert moves["pull"] == {("pulled_in", "2026-11-20", "2026-11-12")}
        assert moves["up"] == {("amount_up", "800.0000", "1250.5000")}
        assert moves["down"] == {("amount_down", "900.0000", "450.0000")}
        assert moves["owner"] == {("reassigned", "Owner u1", "Owner u2")}
        assert moves["euro"] == {("amount_up", "115.0000", "138.0000")}
        assert moves["new"] == {("added", None, "Qualified")}
        assert "still" not in moves
        c = m.classes
        assert (c["won"].count, c["won"].value) == (1, Decimal(350))  # the amount it was won at
        assert (c["lost"].count, c["lost"].value) == (1, Decimal(400))
        assert (c["deleted"].count, c["deleted"].value) == (1, Decimal(500))
        assert (c["added"].count, c["added"].value) == (1, Decimal(1200))
        assert (c["amount_up"].count, c["amount_up"].value) == (3, Decimal(50) + Decimal("450.50") + 23)
        assert (c["amount_down"].count, c["amount_down"].value) == (1, Decimal(450))
        assert (c["pushed"].count, c["pushed"].value) == (1, Decimal(600))
        assert (c["pushed"].slipped_month, c["pushed"].slipped_quarter) == (1, 1)
        assert (c["pulled_in"].count, c["reassigned"].count) == (1, 1)
        assert (c["progressed"].value, c["moved_back"].value) == (Decimal(100), Decimal(200))

    def test_open_values_and_bridge_by_hand(self, store: sa.Engine) -> None:
        """Open at start = the twelve deals; at end = what is left; the bridge adds up exactly."""
        two_syncs(store)
        m = compute_movement(store, SETTINGS, since=SINCE, until=UNTIL)
        start = sum(Decimal(n) for n in range(100, 1100, 100)) + Decimal(115) + Decimal("1100.25")
        end = (Decimal(100 + 200 + 600 + 700 + 1000) + Decimal("1250.50") + 450 + 138
               + Decimal("1100.25") + 1200)
        assert (m.open_start.count, m.open_start.value) == (12, start)
        assert (m.open_end.count, m.open_end.value) == (10, end)
        assert m.bridge_end() == end
        assert_bridge(m)

    def test_a_period_before_the_changes_has_no_movement(self, store: sa.Engine) -> None:
        """The week before the second sync's changes: nothing moved, start equals end."""
        two_syncs(store)
        m = compute_movement(store, SETTINGS, since=SINCE - dt.timedelta(days=7), until=SINCE)
        assert m.deals == []
        assert m.open_start.value == m.open_end.value
        assert m.open_end.count == 12
        assert_bridge(m)

    def test_half_open_bounds(self, store: sa.Engine) -> None:
        """A change exactly at ``until`` belongs to the next period; one at ``since`` to this one."""
        two_syncs(store)
        before_sync = compute_movement(store, SETTINGS, since=SINCE, until=SYNC2)
        # CRM-dated ones only: the new deal, the close, and the amount the deal was won with
        assert {d.change for d in before_sync.deals} == {"added", "won", "lost", "amount_up"}
        at_sync = compute_movement(store, SETTINGS, since=SYNC2, until=UNTIL)
        assert "deleted" in {d.change for d in at_sync.deals}
        assert "won" not in {d.change for d in at_sync.deals}
        assert_bridge(before_sync)
        assert_bridge(at_sync)

    def test_pipeline_scope_counts_moves_in_and_out(self, store: sa.Engine) -> None:
        """A deal moved to another pipeline leaves the pipeline scope as moved_out; the bridge holds."""
        sync_source(store, ScriptedConnector([*before(), Checkpoint("a", complete=True)], owner_ids=OWNERS),
                    now=clock(SYNC1))
        moved = [d if d.external_id != "owner" else deal("owner", amount=Decimal(1000), created_at=OLD,
                                                          pipeline="p2", owner="u1")
                 for d in before()]
        sync_source(store, ScriptedConnector([*moved, Checkpoint("b", complete=True)], owner_ids=OWNERS),
                    now=clock(SYNC2))
        scope = parse_scope(store, "pipeline:fake/p1")
        m = compute_movement(store, SETTINGS, since=SINCE, until=UNTIL, scope=scope)
        assert (m.classes["moved_out"].count, m.classes["moved_out"].value) == (1, Decimal(1000))
        assert_bridge(m)
        owner = compute_movement(store, SETTINGS, since=SINCE, until=UNTIL,
                                 scope=parse_scope(store, "owner:u2"))
        assert owner.open_end.count == 0
        assert_bridge(owner)

    def test_a_full_repull_with_nothing_changed_records_nothing(self, store: sa.Engine) -> None:
        """Syncing the same CRM again adds no deal_changes row."""
        two_syncs(store)
        with store.connect() as conn:
            first = conn.execute(sa.text("SELECT count(*) FROM deal_changes")).scalar_one()
        sync_source(store, ScriptedConnector([*after(), Checkpoint("c", complete=True)], owner_ids=OWNERS),
                    full=True, now=clock(SYNC2 + dt.timedelta(hours=1)))
        with store.connect() as conn:
            again = conn.execute(sa.text("SELECT count(*) FROM deal_changes")).scalar_one()
        assert first == again == 13  # 12 field changes on 10 deals + 1 deletion


class TestInputs:
    def test_default_period_is_the_last_seven_local_days(self) -> None:
        """No --since/--until: [local midnight 6 days before today, local midnight after today)."""
        start, end = period_bounds(None, None, today=dt.date(2026, 3, 31), zone=OSLO)
        assert start == dt.datetime(2026, 3, 24, 23, 0, tzinfo=UTC)  # CET, before the DST change
        assert end == dt.datetime(2026, 3, 31, 22, 0, tzinfo=UTC)  # CEST
        assert (end - start) == dt.timedelta(days=7, hours=-1)

    def test_dates_and_datetimes(self) -> None:
        """--until DATE includes that day; a naive DATETIME is local; an empty period is refused."""
        start, end = period_bounds(dt.date(2026, 11, 1), dt.date(2026, 11, 1), today=dt.date(2026, 12, 1),
                                   zone=OSLO)
        assert start == dt.datetime(2026, 10, 31, 23, tzinfo=UTC)
        assert end == dt.datetime(2026, 11, 1, 23, tzinfo=UTC)
        naive = dt.datetime(2026, 11, 1, 8, 30)  # noqa: DTZ001 - a local time, as typed on the command line
        start, _ = period_bounds(naive, None, today=dt.date(2026, 12, 1), zone=OSLO)
        assert start == dt.datetime(2026, 11, 1, 7, 30, tzinfo=UTC)
        with pytest.raises(ConfigError, match="empty"):
            period_bounds(dt.date(2026, 11, 2), dt.date(2026, 11, 1), today=dt.date(2026, 12, 1), zone=OSLO)

    def test_unknown_scope_is_a_clear_error(self, store: sa.Engine) -> None:
        """A scope that matches nothing, or a bad kind, names what is wrong."""
        with pytest.raises(ConfigError, match="no pipeline 'nope'"):
            parse_scope(store, "pipeline:nope")
        with pytest.raises(ConfigError, match="use all, pipeline:KEY or owner:KEY"):
            parse_scope(store, "stage:x")
        assert parse_scope(store, "all") == MovementScope()


class TestOutput:
    def test_json_contract(self, store: sa.Engine) -> None:
        """The JSON document has the contract's keys and shapes; values are exact decimal strings."""
        two_syncs(store)
        data = movement_data(compute_movement(store, SETTINGS, since=SINCE, until=UNTIL))
        for key in ("since", "until", "currency", "open_start", "open_end", "added", "won", "lost", "deleted",
                    "progressed", "moved_back", "pushed", "pulled_in", "reassigned"):
            assert key in data
        assert set(data["added"]) == {"count", "value"}
        assert set(data["amount_up"]) == {"count", "delta"}
        assert data["since"] == "2026-11-03T00:00:00+01:00"
        assert set(data["deals"][0]) == {"id", "title", "owner", "change", "from", "to", "value"}
        assert data["deals"][0]["id"].startswith("fake/")
        assert data["open_start"] == {"count": 12, "value": "6715.2500"}

    def test_table_and_csv(self, store: sa.Engine) -> None:
        """The table (golden file) shows the bridge and the deals; the CSV has one line per deal change."""
        two_syncs(store)
        m = compute_movement(store, SETTINGS, since=SINCE, until=UNTIL)
        table = render_movement(m, "table")
        golden("movement_table.txt", table)
        lines = render_movement(m, "csv").splitlines()
        assert lines[0] == "id,title,owner,change,from,to,value"
        assert len(lines) == 1 + len(m.deals)
