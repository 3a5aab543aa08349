"""Export of the stored deals in the canonical CSV columns, names resolved, streamed.

``export_rows`` reads them (a server-side cursor, never every deal at once);
``write_export`` writes them as CSV (the header first) or JSON lines.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
from collections.abc import Iterable, Iterator
from decimal import Decimal
from typing import Any, Literal, TextIO

import sqlalchemy as sa

from sales_velocity.sync.store import deals_table, owners_table, pipelines_table, stages_table

__all__ = ["EXPORT_COLUMNS", "export_rows", "write_export"]

EXPORT_COLUMNS = (
    "source", "id", "title", "amount", "currency", "pipeline", "stage", "status", "archived",
    "owner", "owner_email", "created_at", "closed_at", "expected_close_date", "stage_entered_at",
    "next_step", "next_activity_at", "last_activity_at", "updated_at", "link",
)


def export_rows(engine: sa.Engine, source: str | None = None) -> Iterator[dict[str, Any]]:
    """Stream stored deals in canonical columns, names resolved (server-side cursor, no full load)."""
    d, o, p, s = deals_table, owners_table, pipelines_table, stages_table
    query = (
        sa.select(
            d, o.c.name.label("owner_name"), o.c.email.label("owner_email"),
            p.c.name.label("pipeline_name"), s.c.name.label("stage_name"),
        )
        .outerjoin(o, sa.and_(o.c.source == d.c.source, o.c.external_id == d.c.owner_id))
        .outerjoin(p, sa.and_(p.c.source == d.c.source, p.c.external_id == d.c.pipeline_id))
        .outerjoin(s, sa.and_(s.c.source == d.c.source, s.c.pipeline_id == d.c.pipeline_id,
                              s.c.external_id == d.c.stage_id))
        .order_by(d.c.source, d.c.external_id)
    )
    if source:
        query = query.where(d.c.source == source)
    with engine.connect() as conn:
        for row in conn.execution_options(stream_results=True, yield_per=1000).execute(query):
            yield {
                "source": row.source, "id": row.external_id, "title": row.title,
                "amount": row.amount, "currency": row.currency,
                "pipeline": row.pipeline_name or row.pipeline_id,
                "stage": row.stage_name or row.stage_id, "status": row.status,
                "archived": row.archived, "owner": row.owner_name or row.owner_id,
                "owner_email": row.owner_email, "created_at": row.created_at,
                "closed_at": row.closed_at, "expected_close_date": row.expected_close_date,
                "stage_entered_at": row.stage_entered_at, "next_step": row.next_step,
                "next_activity_at": row.next_activity_at, "last_activity_at": row.last_activity_at,
                "updated_at": row.updated_at, "link": row.link,
            }


def _plain(value: Any) -> Any:
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, Decimal):
        cents = value.quantize(Decimal("0.01"))
        return str(cents if cents == value else value.normalize())
    if isinstance(value, bool):
        return value
    if value is None or isinstance(value, str | int):
        return value
    return str(value)


def _csv_cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return _plain(value)


def write_export(rows: Iterable[dict[str, Any]], fmt: Literal["csv", "json"], out: TextIO) -> None:
    """Write ``rows`` (from ``export_rows``) to ``out`` as CSV with a header, or as JSON lines."""
    if fmt == "json":
        for row in rows:
            out.write(json.dumps({k: _plain(v) for k, v in row.items()}, ensure_ascii=False) + "\n")
        return
    writer = csv.DictWriter(out, fieldnames=EXPORT_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _csv_cell(v) for k, v in row.items()})
