"""Which fields a source provides: declared by the CSV header, observed otherwise, migrated for old stores."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import sqlalchemy as sa
from alembic import command

from sales_velocity.connectors.csv_feed.connector import CsvFeedConnector
from sales_velocity.connectors.csv_feed.settings import CsvFeedSettings
from sales_velocity.kernel.config import validate_settings
from sales_velocity.sync.engine import sync_source
from sales_velocity.sync.fields import TRACKED_FIELDS
from sales_velocity.sync.store import _alembic_config, deals_table, make_engine, source_fields_table, upgrade
from tests.sync.test_engine import T0, ScriptedConnector, clock, deal

HEADER = "id,title,amount,stage,created_at,closed_at"


def stored(store: sa.Engine, source: str) -> dict[str, tuple[bool, bool]]:
    """``{field: (provided, declared)}`` as the store holds them for ``source``."""
    t = source_fields_table.c
    with store.connect() as conn:
        rows = conn.execute(sa.select(t.field, t.provided, t.declared).where(t.source == source))
        return {r.field: (bool(r.provided), bool(r.declared)) for r in rows}


def csv_feed(tmp_path: Path, text: str) -> CsvFeedConnector:
    """A CSV feed named ``csv`` on a file with ``text``."""
    path = tmp_path / "deals.csv"
    path.write_text(text, encoding="utf-8")
    raw = {"name": "csv", "kind": "csv", "path": str(path)}
    return CsvFeedConnector(validate_settings(CsvFeedSettings, raw, "sources[0]", {"config_dir": tmp_path}))


class TestDeclared:
    def test_a_csv_without_next_step_columns_declares_them_unknown(self, store, tmp_path) -> None:
        """The header decides: no next_step, next_activity_at, last_activity_at... columns -> not provided."""
        feed = csv_feed(tmp_path, f"{HEADER}\n1,A,100,Lead,2026-11-01,\n")
        assert sync_source(store, feed, now=clock()).status == "ok"
        fields = stored(store, "csv")
        assert set(fields) == set(TRACKED_FIELDS)
        assert fields["amount"] == (True, True)
        for name in ("next_step", "next_activity_at", "last_activity_at", "stage_entered_at",
                     "expected_close_date"):
            assert fields[name] == (False, True), name

    def test_a_column_that_is_there_but_blank_is_provided(self, store, tmp_path) -> None:
        """A next_step column with no values is *empty*, not unknown: the rule stays on."""
        feed = csv_feed(tmp_path, f"{HEADER},next_step\n1,A,100,Lead,2026-11-01,,\n")
        sync_source(store, feed, now=clock())
        assert stored(store, "csv")["next_step"] == (True, True)

    def test_a_column_dropped_from_the_export_becomes_unknown_again(self, store, tmp_path) -> None:
        """A declaration replaces what was stored (the export changed shape)."""
        sync_source(store, csv_feed(tmp_path, f"{HEADER},next_step\n1,A,100,Lead,2026-11-01,,Call\n"),
                    now=clock())
        assert stored(store, "csv")["next_step"] == (True, True)
        sync_source(store, csv_feed(tmp_path, f"{HEADER}\n1,A,100,Lead,2026-11-01,\n"), full=True,
                    now=clock(T0 + dt.timedelta(hours=1)))
        assert stored(store, "csv")["next_step"] == (False, True)


class TestObserved:
    def test_a_field_is_provided_once_any_deal_had_a_value(self, store) -> None:
        """Without a declaration, the sync notes fields with a value; never reset by a later pull."""
        first = ScriptedConnector([deal("1", next_step="Call"), deal("2")])
        sync_source(store, first, now=clock())
        fields = stored(store, "fake")
        assert fields["next_step"] == (True, False)
        assert fields["amount"] == (True, False)
        assert fields["last_activity_at"] == (False, False)
        later = ScriptedConnector([deal("3", last_activity_at=T0)])
        sync_source(store, later, now=clock(T0 + dt.timedelta(hours=1)))
        fields = stored(store, "fake")
        assert fields["next_step"] == (True, False)  # still: it was present once
        assert fields["last_activity_at"] == (True, False)

    def test_a_failed_pull_records_nothing(self, store) -> None:
        """Fields are recorded after a good pull only."""
        failing = ScriptedConnector([deal("1", next_step="Call")], fail_after=0)
        assert sync_source(store, failing, now=clock()).status == "failed"
        assert stored(store, "fake") == {}


class TestMigration:
    def test_old_stores_are_filled_from_their_deals(self, db_url: str) -> None:
        """Upgrading from 0003: a field is provided where some deal of the source has a value."""
        engine = make_engine(db_url)
        try:
            command.upgrade(_alembic_config(engine), "0003")
            row = {"status": "open", "content_hash": "x", "first_seen_at": T0, "synced_at": T0,
                   "next_step": None, "last_activity_at": None}
            with engine.begin() as conn:
                conn.execute(deals_table.insert(), [
                    {**row, "source": "old", "external_id": "1", "next_step": "Call"},
                    {**row, "source": "old", "external_id": "2", "last_activity_at": T0},
                ])
            upgrade(engine)
            fields = stored(engine, "old")
            assert {f for f, (provided, _) in fields.items() if provided} == {"next_step", "last_activity_at"}
            assert set(fields) == set(TRACKED_FIELDS)
        finally:
            engine.dispose()
