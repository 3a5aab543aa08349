"""Rows for notifier and hygiene tests, written straight into the store."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from sales_velocity.sync.store import (
    deal_changes_table,
    deals_table,
    owners_table,
    pipelines_table,
    snapshots_table,
    source_fields_table,
    stage_events_table,
    stages_table,
    sync_runs_table,
)

NOW = dt.datetime(2026, 11, 26, 9, 0, tzinfo=dt.UTC)
AS_OF = dt.date(2026, 11, 26)
SOURCE = "demo"


def days_ago(n: float, now: dt.datetime = NOW) -> dt.datetime:
    """An aware UTC instant ``n`` days before ``now``."""
    return now - dt.timedelta(days=n)


def add_pipeline(
    engine: sa.Engine,
    pipeline: str = "new",
    name: str = "New Business",
    stages: tuple[tuple[str, str, int | None], ...] = (
        ("lead", "Lead", None),
        ("proposal", "Proposal", None),
        ("won", "Won", None),
    ),
    source: str = SOURCE,
) -> None:
    """A pipeline with stages ``(id, name, rotting_days)``; a stage named Won is the won stage."""
    with engine.begin() as conn:
        conn.execute(
            sa.insert(pipelines_table).values(source=source, external_id=pipeline, name=name, display_order=0)
        )
        for order, (sid, sname, rotting) in enumerate(stages):
            conn.execute(
                sa.insert(stages_table).values(
                    source=source,
                    pipeline_id=pipeline,
                    external_id=sid,
                    name=sname,
                    display_order=order,
                    is_won=sname == "Won",
                    is_lost=sname == "Lost",
                    rotting_days=rotting,
                )
            )


def add_owner(
    engine: sa.Engine, owner: str, name: str | None, email: str | None, source: str = SOURCE
) -> None:
    """An owner row."""
    with engine.begin() as conn:
        conn.execute(sa.insert(owners_table).values(source=source, external_id=owner, name=name, email=email))


def add_deal(engine: sa.Engine, external_id: str, **values: Any) -> None:
    """A deal that breaks no hygiene rule unless ``values`` say otherwise."""
    row: dict[str, Any] = {
        "source": SOURCE,
        "external_id": external_id,
        "title": f"Deal {external_id}",
        "amount": Decimal("1000"),
        "currency": "NOK",
        "pipeline_id": "new",
        "stage_id": "lead",
        "status": "open",
        "archived": False,
        "owner_id": "o1",
        "created_at": days_ago(5),
        "closed_at": None,
        "expected_close_date": AS_OF + dt.timedelta(days=30),
        "stage_entered_at": days_ago(2),
        "next_step": "Call",
        "next_activity_at": NOW + dt.timedelta(days=2),
        "last_activity_at": days_ago(1),
        "updated_at": days_ago(1),
        "link": f"https://crm.example.com/deal/{external_id}",
        "whole_days": False,
        "raw": None,
        "content_hash": "x",
        "first_seen_at": days_ago(5),
        "synced_at": NOW,
    }
    row.update(values)
    with engine.begin() as conn:
        conn.execute(sa.insert(deals_table).values(**row))


def update_deal(engine: sa.Engine, external_id: str, **values: Any) -> None:
    """Change a deal (as a later sync would)."""
    with engine.begin() as conn:
        conn.execute(
            sa.update(deals_table)
            .where(deals_table.c.source == SOURCE, deals_table.c.external_id == external_id)
            .values(**values)
        )


def add_change(engine: sa.Engine, external_id: str, field: str, old: Any, new: Any,
               changed_at: dt.datetime) -> None:
    """A recorded field change (the typed old/new columns chosen by ``field``, as ``sync.changes`` does)."""
    pair = {"amount": ("old_amount", "new_amount"),
            "expected_close_date": ("old_date", "new_date")}.get(field, ("old_value", "new_value"))
    with engine.begin() as conn:
        conn.execute(sa.insert(deal_changes_table).values(
            source=SOURCE, external_id=external_id, field=field, changed_at=changed_at, observed=True,
            **{pair[0]: old, pair[1]: new}))


def add_event(
    engine: sa.Engine, external_id: str, stage: str, entered_at: dt.datetime, pipeline: str = "new"
) -> None:
    """A stage entry event."""
    with engine.begin() as conn:
        conn.execute(
            sa.insert(stage_events_table).values(
                source=SOURCE,
                external_id=external_id,
                pipeline_id=pipeline,
                stage_id=stage,
                entered_at=entered_at,
                observed=False,
            )
        )


def add_snapshot(
    engine: sa.Engine,
    as_of: dt.date,
    velocity: Decimal | None,
    *,
    scope: str = "all",
    key: str = "",
    label: str = "All pipelines",
    opportunities: int = 100,
    won: int = 20,
    lost: int = 80,
    win_rate: Decimal | None = Decimal("0.2"),
    avg_deal_value: Decimal | None = Decimal("50000"),
    cycle_days: Decimal | None = Decimal("90"),
    window_days: int = 90,
    currency: str = "NOK",
    reason: str | None = None,
) -> None:
    """A velocity snapshot row, as ``metrics.job.run_metrics`` stores it."""
    with engine.begin() as conn:
        conn.execute(
            sa.insert(snapshots_table).values(
                as_of=as_of,
                window_days=window_days,
                scope=scope,
                key=key,
                label=label,
                currency=currency,
                opportunities=opportunities,
                won=won,
                lost=lost,
                win_rate=win_rate,
                avg_deal_value=avg_deal_value,
                cycle_days=cycle_days,
                velocity=velocity,
                undefined_reason=reason,
                excluded_no_amount=0,
                excluded_currency=0,
                computed_at=NOW,
            )
        )


def add_sync_run(
    engine: sa.Engine,
    status: str = "ok",
    *,
    finished_at: dt.datetime = NOW - dt.timedelta(hours=1),
    error: str | None = None,
    source: str = SOURCE,
) -> None:
    """A finished sync run of ``source`` (what ``sync.engine`` records), one minute long."""
    with engine.begin() as conn:
        conn.execute(
            sa.insert(sync_runs_table).values(
                run_id="test", source=source, full=False, started_at=finished_at - dt.timedelta(minutes=1),
                finished_at=finished_at, status=status, error=error,
            )
        )


def set_fields(engine: sa.Engine, provided: dict[str, bool], source: str = SOURCE) -> None:
    """Record which tracked fields ``source`` provides (as ``sync.fields`` does after a pull)."""
    with engine.begin() as conn:
        conn.execute(sa.delete(source_fields_table).where(source_fields_table.c.source == source))
        conn.execute(
            sa.insert(source_fields_table),
            [{"source": source, "field": f, "provided": p, "declared": True, "updated_at": NOW}
             for f, p in provided.items()],
        )
