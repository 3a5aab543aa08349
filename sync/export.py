"""Export of the stored deals in the canonical CSV columns, names resolved, streamed.

``export_rows`` reads them (a server-side cursor, never every deal at once), each
with its stage history from ``deal_stage_events`` (a second ordered cursor,
merged by key); ``write_export`` writes them as CSV (the header first) or JSON lines.

The CSV is the CSV feed's own format: ``stage_history`` is ``Stage@date; Stage@date``,
so an export read back through a ``kind = "csv"`` source keeps "where deals wait".
Text cells that a spreadsheet would run as a formula (starting with ``=``, ``+``,
``-``, ``@``, a tab or a carriage return) are written with a leading ``'``, which
Excel and LibreOffice show as text; the CSV feed drops that guard when it reads
the file back. JSON lines carry the values as they are.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
from collections.abc import Iterable, Iterator, Sequence
from decimal import Decimal
from typing import Any, Literal, TextIO

import sqlalchemy as sa

from sales_velocity.sync.store import (
    deals_table,
    owners_table,
    pipelines_table,
    stage_events_table,
    stages_table,
)

__all__ = ["EXPORT_COLUMNS", "export_rows", "neutralise_formula", "write_export"]

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
"""A cell starting with one of these is a formula (or may become one) in Excel and LibreOffice."""

EXPORT_COLUMNS = (
    "source", "id", "title", "amount", "currency", "pipeline", "stage", "status", "archived",
    "owner", "owner_email", "created_at", "closed_at", "expected_close_date", "stage_entered_at",
    "next_step", "next_activity_at", "last_activity_at", "updated_at", "link", "stage_history",
)

StageHistory = list[tuple[str, dt.datetime]]


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
        streaming = conn.execution_options(stream_results=True, yield_per=1000)
        histories = _histories(streaming, source)
        pending: tuple[tuple[str, str], StageHistory] | None = next(histories, None)
        for row in streaming.execute(query):
            key = (row.source, row.external_id)
            history: StageHistory = []
            if pending is not None and pending[0] == key:
                history, pending = pending[1], next(histories, None)
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
                "updated_at": row.updated_at, "link": row.link, "stage_history": history,
            }


def _histories(conn: sa.Connection, source: str | None) -> Iterator[tuple[tuple[str, str], StageHistory]]:
    """Each deal's stage visits, ``((source, external_id), [(stage name, entered_at), ...])``, by key.

    Only deals that exist, ordered by the database like the deals query, so the two
    merge by equal keys without holding either in memory (and without comparing
    strings in Python, whose order may differ from the database's collation);
    stage ids are resolved to names as in the ``stage`` column.
    """
    d, e, s = deals_table, stage_events_table, stages_table
    query = (
        sa.select(e.c.source, e.c.external_id, e.c.stage_id, e.c.entered_at,
                  s.c.name.label("stage_name"))
        .join(d, sa.and_(d.c.source == e.c.source, d.c.external_id == e.c.external_id))
        .outerjoin(s, sa.and_(s.c.source == e.c.source, s.c.pipeline_id == e.c.pipeline_id,
                              s.c.external_id == e.c.stage_id))
        .order_by(d.c.source, d.c.external_id, e.c.entered_at, e.c.id)
    )
    if source:
        query = query.where(e.c.source == source)
    key: tuple[str, str] | None = None
    visits: StageHistory = []
    for row in conn.execute(query):
        here = (row.source, row.external_id)
        if here != key:
            if key is not None:
                yield key, visits
            key, visits = here, []
        visits.append((row.stage_name or row.stage_id, row.entered_at))
    if key is not None:
        yield key, visits


def neutralise_formula(text: str) -> str:
    """``text`` as a spreadsheet shows it as text: a leading ``'`` before a formula's first character."""
    return f"'{text}" if text.startswith(FORMULA_START) else text


def _history_cell(history: Sequence[tuple[str, dt.datetime]]) -> str:
    return "; ".join(f"{stage}@{entered_at.isoformat()}" for stage, entered_at in history)


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
    if isinstance(value, str):  # text from the CRM: never a live formula in a spreadsheet
        return neutralise_formula(value)
    return _plain(value)


def write_export(rows: Iterable[dict[str, Any]], fmt: Literal["csv", "json"], out: TextIO) -> None:
    """Write ``rows`` (from ``export_rows``) to ``out`` as CSV with a header, or as JSON lines."""
    if fmt == "json":
        for row in rows:
            record = {k: _plain(v) for k, v in row.items() if k != "stage_history"}
            record["stage_history"] = [{"stage": stage, "entered_at": entered_at.isoformat()}
                                       for stage, entered_at in row.get("stage_history", [])]
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
        return
    # CRLF (RFC 4180), so a CR inside a cell is quoted too
    writer = csv.DictWriter(out, fieldnames=EXPORT_COLUMNS, lineterminator="\r\n")
    writer.writeheader()
    for row in rows:
        cells = {k: _csv_cell(v) for k, v in row.items() if k != "stage_history"}
        cells["stage_history"] = neutralise_formula(_history_cell(row.get("stage_history", [])))
        writer.writerow(cells)
