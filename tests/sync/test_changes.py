"""The sync records field changes: typed old/new values, the CRM's time where it has one, nothing twice."""

from __future__ import annotations

import dataclasses
import datetime as dt
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from sales_velocity.connectors.base import Checkpoint, StageVisit, StreamItem
from sales_velocity.sync.engine import sync_source
from sales_velocity.sync.store import deal_changes_table, make_engine, upgrade
from tests.sync.test_engine import T0, ScriptedConnector, clock, deal

LATER = T0 + dt.timedelta(days=2)


def changes(store: sa.Engine) -> list[sa.Row[Any]]:
    """Every recorded change, in id order."""
    c = deal_changes_table.c
    with store.connect() as conn:
        return list(conn.execute(sa.select(deal_changes_table).order_by(c.id)))


class TestRecording:
    def test_first_sight_records_nothing(self, store: sa.Engine) -> None:
        """A deal seen for the first time is not a change (its creation date says when it came)."""
        sync_source(store, ScriptedConnector([deal("1"), Checkpoint("a")]), now=clock())
        assert changes(store) == []

    def test_each_tracked_field_with_typed_old_and_new(self, store: sa.Engine) -> None:
        """Stage, amount, currency, close date, owner, pipeline and archive: one row each, typed values."""
        before = deal("1", expected_close_date=dt.date(2026, 12, 1))
        after = dataclasses.replace(
            before, stage="s2", amount=Decimal("2000.25"), currency="EUR",
            expected_close_date=dt.date(2027, 1, 15), owner="u2", pipeline="p1", archived=True,
            title="renamed", next_step="not tracked",
        )
        sync_source(store, ScriptedConnector([before, Checkpoint("a")], owner_ids=("u1", "u2")), now=clock())
        sync_source(store, ScriptedConnector([after, Checkpoint("b")], owner_ids=("u1", "u2")),
                    now=clock(LATER))
        found = {r.field: r for r in changes(store)}
        assert set(found) == {"stage_id", "archived", "amount", "currency", "expected_close_date", "owner_id"}
        assert (found["stage_id"].old_value, found["stage_id"].new_value) == ("s1", "s2")
        assert (found["amount"].old_amount, found["amount"].new_amount) == (Decimal("1000.50"),
                                                                            Decimal("2000.25"))
        assert (found["expected_close_date"].old_date, found["expected_close_date"].new_date) == (
            dt.date(2026, 12, 1), dt.date(2027, 1, 15))
        assert (found["archived"].old_value, found["archived"].new_value) == ("false", "true")
        assert (found["owner_id"].old_value, found["currency"].new_value) == ("u1", "EUR")
        assert all(r.changed_at == LATER and r.observed for r in found.values())
        assert {r.sync_run_id for r in found.values()} == {2}

    def test_crm_times_for_stage_entry_and_close(self, store: sa.Engine) -> None:
        """A stage change is dated by the CRM's entry date, a win by its close time, and so is the amount."""
        sync_source(store, ScriptedConnector([deal("1"), deal("2"), Checkpoint("a")]), now=clock())
        entered = T0 + dt.timedelta(hours=5)
        won = T0 + dt.timedelta(hours=7)
        moved = deal("1", stage="s2", stage_history=(StageVisit("s1", T0), StageVisit("s2", entered)))
        closed = deal("2", stage="won", status="won", closed_at=won, amount=Decimal(1500))
        sync_source(store, ScriptedConnector([moved, closed, Checkpoint("b")]), now=clock(LATER))
        found = {(r.external_id, r.field): (r.changed_at, r.observed) for r in changes(store)}
        assert found == {
            ("1", "stage_id"): (entered, False),
            ("2", "status"): (won, False),
            ("2", "stage_id"): (won, True),  # seen with the close: dated with it
            ("2", "amount"): (won, True),
        }

    def test_a_crm_time_in_the_future_is_not_trusted(self, store: sa.Engine) -> None:
        """A close time after our clock (a skewed CRM clock) is recorded as observed now."""
        sync_source(store, ScriptedConnector([deal("1"), Checkpoint("a")]), now=clock())
        future = LATER + dt.timedelta(days=1)
        sync_source(store, ScriptedConnector([deal("1", status="lost", closed_at=future), Checkpoint("b")]),
                    now=clock(LATER))
        [row] = changes(store)
        assert (row.field, row.changed_at, row.observed) == ("status", LATER, True)

    def test_deletion_by_a_complete_pull_is_recorded_in_sql(self, store: sa.Engine) -> None:
        """A deal missing from a complete pull: one status change open -> deleted, observed."""
        sync_source(store, ScriptedConnector([deal("1"), deal("2"), Checkpoint("a", complete=True)]),
                    now=clock())
        sync_source(store, ScriptedConnector([deal("1"), Checkpoint("b", complete=True)]), now=clock(LATER))
        sync_source(store, ScriptedConnector([deal("1"), Checkpoint("c", complete=True)]),
                    now=clock(LATER + dt.timedelta(hours=1)))
        [row] = changes(store)
        assert (row.external_id, row.field) == ("2", "status")
        assert (row.old_value, row.new_value) == ("open", "deleted")
        assert (row.changed_at, row.observed) == (LATER, True)

    def test_unchanged_full_repull_records_nothing(self, store: sa.Engine) -> None:
        """The same data pulled again in full (also with a new title only) adds no change row."""
        items: list[StreamItem] = [deal("1"), deal("2", amount=None), Checkpoint("a", complete=True)]
        sync_source(store, ScriptedConnector(items), now=clock())
        sync_source(store, ScriptedConnector(items), full=True, now=clock(LATER))
        retitled: list[StreamItem] = [deal("1", title="new"), deal("2", amount=None),
                                      Checkpoint("b", complete=True)]
        sync_source(store, ScriptedConnector(retitled), full=True, now=clock(LATER))
        assert changes(store) == []


def test_an_old_store_migrates_and_keeps_its_deals(tmp_path) -> None:
    """A store at revision 0003 with deals upgrades to head: deal_changes exists, the deals stay."""
    engine = make_engine(f"sqlite:///{tmp_path / 'old.db'}")
    upgrade(engine, "0003")
    with engine.begin() as conn:
        conn.execute(sa.text(
            "INSERT INTO deals (source, external_id, status, archived, whole_days, content_hash, "
            "first_seen_at, synced_at) VALUES ('s', '1', 'open', 0, 0, 'x', '2026-01-01 00:00:00.000000', "
            "'2026-01-01 00:00:00.000000')"))
    upgrade(engine)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM deals")).scalar_one() == 1
        assert conn.execute(sa.text("SELECT count(*) FROM deal_changes")).scalar_one() == 0
    engine.dispose()
