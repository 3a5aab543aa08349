"""The store: migrations match the models, money and time survive a round trip on both backends."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from sales_velocity.kernel.errors import StoreError
from sales_velocity.sync.store import (
    Base,
    check_schema,
    deals_table,
    lean_sync_connection,
    make_engine,
    upgrade,
)


class TestSchema:
    def test_migrations_build_exactly_the_models(self, store: sa.Engine) -> None:
        """After `alembic upgrade head` the database matches the SQLAlchemy models: no drift."""
        with store.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        assert diff == []

    def test_upgrade_is_idempotent_and_check_passes(self, store: sa.Engine) -> None:
        """Running the migrations again changes nothing and the schema check passes."""
        upgrade(store)
        check_schema(store)

    def test_check_schema_on_an_empty_database_says_what_to_do(self, tmp_path) -> None:
        """An uninitialised store is a StoreError that tells the user to run `velocity init`."""
        engine = make_engine(f"sqlite:///{tmp_path / 'empty.db'}")
        with pytest.raises(StoreError, match="velocity init"):
            check_schema(engine)
        engine.dispose()


class TestTypes:
    def test_money_and_datetimes_round_trip_exactly(self, store: sa.Engine) -> None:
        """Decimal amounts come back exact (sums too), datetimes come back aware UTC."""
        when = dt.datetime(2026, 3, 29, 0, 30, tzinfo=dt.timezone(dt.timedelta(hours=1)))
        rows = [
            {"source": "s", "external_id": str(n), "amount": amount, "status": "won",
             "content_hash": "x", "first_seen_at": when, "synced_at": when, "created_at": when}
            for n, amount in enumerate([Decimal("0.1"), Decimal("0.2"), Decimal("12345678901.2345")])
        ]
        with store.begin() as conn:
            conn.execute(deals_table.insert(), rows)
        with store.connect() as conn:
            total = conn.execute(sa.select(sa.func.sum(deals_table.c.amount))).scalar_one()
            created = conn.execute(sa.select(deals_table.c.created_at).limit(1)).scalar_one()
        assert total == Decimal("12345678901.5345")
        assert created == dt.datetime(2026, 3, 28, 23, 30, tzinfo=dt.UTC)
        assert created.utcoffset() == dt.timedelta(0)

    def test_naive_datetimes_are_refused(self, store: sa.Engine) -> None:
        """Writing a naive datetime is an error, never a silent guess."""
        with pytest.raises(sa.exc.StatementError, match="naive datetime"), store.begin() as conn:
            conn.execute(deals_table.insert(), [{
                "source": "s", "external_id": "1", "status": "open", "content_hash": "x",
                "first_seen_at": dt.datetime(2026, 1, 1), "synced_at": dt.datetime(2026, 1, 1)}])  # noqa: DTZ001


class TestFastPath:
    def test_encoded_rows_read_back_through_the_column_types(self, store: sa.Engine) -> None:
        """Rows written by the engine's driver-level encoder read back exactly through the ORM types."""
        from sales_velocity.connectors.base import Deal
        from sales_velocity.sync.rows import DEAL_COLUMNS, RowEncoder

        moment = dt.datetime(2026, 3, 29, 1, 30, 5, 120, tzinfo=dt.UTC)
        deal = Deal(
            source="s", external_id="1", title="Ærlig – «avtale»", amount=Decimal("50000.5055"),
            currency="NOK", pipeline="p", stage="s1", status="won", archived=True, owner="o",
            created_at=moment - dt.timedelta(days=90), closed_at=moment,
            expected_close_date=dt.date(2026, 4, 1), stage_entered_at=moment, next_step="call",
            next_activity_at=moment, last_activity_at=moment, updated_at=moment, link="https://x/1",
            whole_days=True, raw={"amount": "50000.5055", "nested": {"ok": True}},
        )
        encoder = RowEncoder(store.dialect.name)
        row, digest = encoder.deal(deal)
        now = encoder.timestamp(moment)
        with store.begin() as conn:
            conn.exec_driver_sql(encoder.upsert_deals_sql, [(*row, digest, now, now, None)])
        with store.connect() as conn:
            stored = conn.execute(sa.select(deals_table)).one()._mapping
        for name in DEAL_COLUMNS:
            if name in ("source", "external_id", "content_hash", "first_seen_at", "synced_at",
                        "deleted_at"):
                continue
            field = {"pipeline_id": "pipeline", "stage_id": "stage", "owner_id": "owner"}.get(name, name)
            assert stored[name] == getattr(deal, field), name
        assert stored["first_seen_at"] == moment
        assert stored["content_hash"] == digest


class TestLeanSyncConnection:
    def test_temp_tables_on_disk_and_a_small_cache_for_the_block_only(self, sqlite_store: sa.Engine) -> None:
        """In the block: temp_store FILE (1), a TEMP table works, 16 MiB of cache; after it, as before."""
        with sqlite_store.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA cache_size").scalar() == -65536
            conn.rollback()
            with lean_sync_connection(conn):
                assert conn.exec_driver_sql("PRAGMA temp_store").scalar() == 1
                assert conn.exec_driver_sql("PRAGMA cache_size").scalar() == -16384
                conn.exec_driver_sql("CREATE TEMP TABLE scratch (n INTEGER)")
                conn.exec_driver_sql("INSERT INTO scratch VALUES (1), (2)")
                assert conn.exec_driver_sql("SELECT count(*) FROM scratch").scalar() == 2
                conn.rollback()
            assert conn.exec_driver_sql("PRAGMA temp_store").scalar() == 2
            assert conn.exec_driver_sql("PRAGMA cache_size").scalar() == -65536
