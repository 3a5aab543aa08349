"""Deal rows for the metrics tests, written straight into the store with SQLAlchemy Core (no tests here)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from sales_velocity.sync.store import deals_table, owners_table, pipelines_table

SYNCED = dt.datetime(2026, 11, 26, 6, 0, tzinfo=dt.UTC)
LONG_AGO = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> dt.datetime:
    """An aware UTC datetime."""
    return dt.datetime(year, month, day, hour, minute, tzinfo=dt.UTC)


def deal(
    external_id: str,
    *,
    status: str = "open",
    created: dt.datetime | None = LONG_AGO,
    closed: dt.datetime | None = None,
    amount: Decimal | int | str | None = None,
    currency: str | None = None,
    pipeline: str | None = None,
    owner: str | None = None,
    source: str = "crm",
    archived: bool = False,
    whole_days: bool = False,
    deleted_at: dt.datetime | None = None,
    updated: dt.datetime | None = None,
) -> dict[str, Any]:
    """A complete ``deals`` row (every key present, so rows can be inserted together)."""
    return {
        "source": source, "external_id": external_id, "title": f"Deal {external_id}",
        "amount": None if amount is None else Decimal(amount), "currency": currency,
        "pipeline_id": pipeline, "stage_id": None, "status": status, "archived": archived,
        "owner_id": owner, "created_at": created, "closed_at": closed, "expected_close_date": None,
        "stage_entered_at": None, "next_step": None, "next_activity_at": None,
        "last_activity_at": None, "updated_at": updated, "link": None, "whole_days": whole_days,
        "raw": None, "content_hash": "x", "first_seen_at": SYNCED, "synced_at": SYNCED,
        "deleted_at": deleted_at,
    }


def insert_deals(engine: sa.Engine, rows: list[dict[str, Any]]) -> None:
    """Insert deal rows in one transaction."""
    with engine.begin() as conn:
        conn.execute(deals_table.insert(), rows)


def insert_pipeline(engine: sa.Engine, external_id: str, name: str, source: str = "crm") -> None:
    """Insert one pipeline row."""
    with engine.begin() as conn:
        conn.execute(pipelines_table.insert().values(
            source=source, external_id=external_id, name=name, display_order=0))


def insert_owner(engine: sa.Engine, external_id: str, name: str | None, email: str | None,
                 source: str = "crm") -> None:
    """Insert one owner row."""
    with engine.begin() as conn:
        conn.execute(owners_table.insert().values(
            source=source, external_id=external_id, name=name, email=email))


def seed_deals(close: dt.datetime, pipeline: str | None = None) -> list[dict[str, Any]]:
    """The seed example as deals: 100 open, 20 won at 50 000 after 90 days, 80 lost."""
    cycle = dt.timedelta(days=90)
    rows = [deal(f"open-{i}", pipeline=pipeline) for i in range(100)]
    rows += [deal(f"won-{i}", status="won", created=close - cycle, closed=close, amount=50000,
                  pipeline=pipeline) for i in range(20)]
    rows += [deal(f"lost-{i}", status="lost", closed=close, amount=1, pipeline=pipeline) for i in range(80)]
    return rows
