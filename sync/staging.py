"""Set-based writes: a batch goes into a staging table, then a few statements apply it.

For every batch (``sync.batch``) the engine calls :meth:`Stager.write`, which

1. bulk-loads the batch into the temporary table ``sync_stage`` (and the stage
   history into ``sync_stage_hist``): ``COPY ... FROM STDIN (FORMAT csv)`` of
   Arrow's C CSV writer's output on PostgreSQL, one ``executemany`` of the
   vectorised-encoded columns into an in-memory table on SQLite (a TEMP table
   belongs to the connection, so the load runs on the engine's own connection
   and transaction: the cursor still commits with the rows it covers);
2. reads each row's stored hash, stage and deletion time in one ``UPDATE .. FROM``;
3. inserts the seen ids (delete detection), the stage events (the CRM history,
   else the change as observed), the field changes (``deal_changes``, the
   stored row against the staged one, dated as ``sync.changes`` dates them) and
   upserts the new and changed deals: unchanged ones are not rewritten.

Every statement is plain SQL run through the driver (``exec_driver_sql``); the
two backends differ only in the placeholders, ``IS NOT`` / ``IS DISTINCT FROM``,
and the money and JSON casts.
"""

from __future__ import annotations

import datetime as dt
import io
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import sqlalchemy as sa

from sales_velocity.sync.batch import TIMESTAMP, finish_batch
from sales_velocity.sync.changes import TRACKED
from sales_velocity.sync.rows import DEAL_COLUMNS

__all__ = ["BatchCounts", "Stager"]

_STAGED = (*DEAL_COLUMNS[:21], "content_hash", "stage_crm_at", "history_len")
"""Columns loaded into ``sync_stage``, in load order (after ``ord``)."""
_TIMESTAMPS = frozenset({"created_at", "closed_at", "stage_entered_at", "next_activity_at",
                         "last_activity_at", "updated_at", "stage_crm_at", "old_deleted_at", "entered_at"})
_PG_TYPES = {
    "amount": "BIGINT", "archived": "BOOLEAN", "whole_days": "BOOLEAN", "expected_close_date": "DATE",
    "history_len": "INTEGER", "ord": "BIGINT",
}
_NOT_UPDATED = ("source", "external_id", "first_seen_at")
_NAIVE = pa.timestamp("us")
_IDS_PER_SELECT = 10_000
_WRITE = "(s.old_hash IS NULL OR s.old_hash <> s.content_hash)"


@dataclass
class BatchCounts:
    """What one batch did to the deals table."""

    inserted: int = 0
    updated: int = 0
    unchanged: int = 0


class Stager:
    """Loads batches into the staging tables of one connection and applies them set-based."""

    def __init__(self, conn: sa.Connection, source: str, run_pk: int | None) -> None:
        self.conn = conn
        self.source = source
        self.run_pk = run_pk
        self.sqlite = conn.dialect.name == "sqlite"
        self.ids: pa.ChunkedArray | pa.Array = pa.array([], pa.string())
        if not self.sqlite and conn.dialect.name != "postgresql":
            raise NotImplementedError(f"unsupported store backend {conn.dialect.name!r}")
        self._sql = _Statements(self.sqlite)

    # ------------------------------------------------------------------ tables

    def create(self) -> None:
        """Create (or empty) the staging tables; they live as long as the connection."""
        for ddl in self._sql.create:
            self.conn.exec_driver_sql(ddl)
        self._clear()

    def drop(self) -> None:
        """Drop the staging tables."""
        for name in ("sync_stage", "sync_stage_hist"):
            self.conn.exec_driver_sql(f"DROP TABLE IF EXISTS {name}")

    def _clear(self) -> None:
        for name in ("sync_stage", "sync_stage_hist"):
            self.conn.exec_driver_sql(f"DELETE FROM {name}")

    # ------------------------------------------------------------------ loading

    def _load(self, table: pa.Table) -> None:
        ordinal = pa.array(range(len(table)), pa.int64())
        staged = table.select(list(_STAGED))
        staged = staged.add_column(0, "ord", ordinal)
        history = table["stage_history"]
        flat = pc.list_flatten(history)
        parents = pc.list_parent_indices(history)
        hist = pa.table({
            "ord": pc.take(ordinal, parents),
            "external_id": pc.take(table["external_id"], parents),
            "stage_id": pc.struct_field(flat, "stage"),
            "entered_at": pc.struct_field(flat, "entered_at"),
        })
        if self.sqlite:
            self._load_sqlite("sync_stage", staged)
            if len(hist):
                self._load_sqlite("sync_stage_hist", hist)
        else:
            self._load_copy("sync_stage", staged)
            if len(hist):
                self._load_copy("sync_stage_hist", hist)

    def _load_sqlite(self, name: str, table: pa.Table) -> None:
        columns = []
        for column_name, column in zip(table.column_names, table.columns, strict=True):
            if column.type == TIMESTAMP:  # SQLite's text form; a cast is 30x faster than strftime
                column = column.cast(_NAIVE).cast(pa.string())
            elif pa.types.is_boolean(column.type):
                column = pc.cast(column, pa.int8())
            elif pa.types.is_date(column.type):
                column = pc.cast(column, pa.string())
            columns.append(column.to_pylist())
            del column_name
        marks = ", ".join("?" * len(columns))
        self.conn.exec_driver_sql(
            f"INSERT INTO {name} ({', '.join(table.column_names)}) VALUES ({marks})",
            list(zip(*columns, strict=True)),
        )

    def _load_copy(self, name: str, table: pa.Table) -> None:
        buffer = io.BytesIO()
        pa_csv.write_csv(table, buffer, pa_csv.WriteOptions(include_header=False))
        raw = self.conn.connection.driver_connection
        statement = f"COPY {name} ({', '.join(table.column_names)}) FROM STDIN (FORMAT csv)"
        dbapi = self.conn.dialect.loaded_dbapi
        try:
            with raw.cursor() as cursor, cursor.copy(statement) as copy:  # type: ignore[union-attr]
                copy.write(buffer.getbuffer())
        except dbapi.Error as exc:  # as SQLAlchemy would raise it: DataError, OperationalError, ...
            raise sa.exc.DBAPIError.instance(statement, None, exc, dbapi.Error) from exc

    # ------------------------------------------------------------------ applying

    def write(self, batch: pa.Table, now: dt.datetime, now_value: Any,
              refs: bool = True) -> tuple[BatchCounts, pa.Table]:
        """Apply one batch; return the counts and the distinct (pipeline, stage, owner) it wrote.

        ``now`` is the sync's clock, ``now_value`` the same as the driver stores it;
        ``refs=False`` skips reading the written ids back (no catalog check is due).
        """
        table = finish_batch(batch)
        conn, sql = self.conn, self._sql
        self.ids = table["external_id"]
        # unchanged rows (stored hash = new hash) never reach the staging table
        ids = self.ids.to_pylist()
        stored: list[Any] = []
        for start in range(0, len(ids), _IDS_PER_SELECT):  # SQLite binds at most 32,766 values
            chunk = ids[start:start + _IDS_PER_SELECT]
            query = sql.stored_hashes(len(chunk))
            stored += conn.exec_driver_sql(query, sql.id_params(self.source, chunk)).all()
        unchanged = 0
        if stored:
            known = pa.array([f"{key}\x1f{digest}" for key, digest in stored], pa.string())
            mine = pc.binary_join_element_wise(table["external_id"], table["content_hash"], "\x1f")
            same = pc.is_in(mine, value_set=known)
            unchanged = int(pc.sum(pc.cast(same, pa.int64())).as_py() or 0)
            if unchanged:
                table = table.filter(pc.invert(same))
        counts = BatchCounts(unchanged=unchanged)
        if not len(table):
            return counts, _no_refs()
        self._clear()
        self._load(table)
        params = {"now": now_value, "source": self.source, "run": self.run_pk}
        if stored:  # a batch of deals the store has never seen has no stored values to read
            if not self.sqlite:
                # PostgreSQL keeps no statistics of a TEMP table: without them it plans the joins
                # with deals (field changes) as hash joins over every deal, once per batch
                conn.exec_driver_sql("ANALYZE sync_stage")
            conn.exec_driver_sql(sql.old_values)
        total, existing, same_count = conn.exec_driver_sql(sql.counts).one()
        counts.inserted = int(total) - int(existing)
        counts.updated = int(existing) - int(same_count or 0)
        counts.unchanged += int(same_count or 0)
        if counts.inserted or counts.updated:
            conn.exec_driver_sql(sql.history_events, sql.bind({}))
            conn.exec_driver_sql(sql.observed_events, sql.bind(params))
            if counts.updated:
                conn.exec_driver_sql(sql.changes, sql.bind(params))
            conn.exec_driver_sql(sql.upsert, sql.bind(params))
            written = conn.exec_driver_sql(sql.written_ids).all() if refs else []
        else:
            written = []
        refs = pa.table({"pipeline": [r[0] for r in written], "stage": [r[1] for r in written],
                         "owner": [r[2] for r in written]}, schema=_REFS)
        return counts, refs

    def mark_seen(self) -> None:
        """Add the last batch's ids to ``sync_seen_ids`` (delete detection of a complete pull)."""
        self.conn.exec_driver_sql(self._sql.seen, [(key,) for key in self.ids.to_pylist()])


_REFS = pa.schema([("pipeline", pa.string()), ("stage", pa.string()), ("owner", pa.string())])


def _no_refs() -> pa.Table:
    return _REFS.empty_table()


class _Statements:
    """The staging DDL and the set-based statements, for one backend."""

    def __init__(self, sqlite: bool) -> None:
        self.sqlite = sqlite
        differ = "IS NOT" if sqlite else "IS DISTINCT FROM"
        self._now = ":now" if sqlite else "%(now)s"
        now = self._now
        run = ":run" if sqlite else "%(run)s"

        def typed(name: str) -> str:
            if sqlite:
                return name
            kind = "TIMESTAMPTZ" if name in _TIMESTAMPS else _PG_TYPES.get(name, "TEXT")
            return f"{name} {kind}"

        staged = ", ".join(typed(c) for c in ("ord", *_STAGED, "old_hash", "old_stage", "old_deleted_at"))
        hist = ", ".join(typed(c) for c in ("ord", "external_id", "stage_id", "entered_at"))
        self.create = [
            f"CREATE TEMP TABLE IF NOT EXISTS sync_stage ({staged}, PRIMARY KEY (external_id))",
            f"CREATE TEMP TABLE IF NOT EXISTS sync_stage_hist ({hist})",
        ]
        # a correlated subquery: one primary-key probe of deals per staged row, whatever the statistics
        self.old_values = (
            "UPDATE sync_stage SET (old_hash, old_stage, old_deleted_at) = (SELECT d.content_hash, "
            "d.stage_id, d.deleted_at FROM deals d "
            "WHERE d.source = sync_stage.source AND d.external_id = sync_stage.external_id)"
        )
        # SQLite: CROSS JOIN keeps the staged rows as the outer loop (deals probed by key)
        join = ("sync_stage s CROSS JOIN deals d "
                "WHERE d.source = s.source AND d.external_id = s.external_id AND"
                if sqlite else
                "sync_stage s JOIN deals d ON d.source = s.source AND d.external_id = s.external_id WHERE")
        self.counts = (
            "SELECT COUNT(*), COUNT(old_hash), "
            "SUM(CASE WHEN old_hash = content_hash THEN 1 ELSE 0 END) FROM sync_stage"
        )
        mark = "?" if sqlite else "%s"
        self.seen = f"INSERT INTO sync_seen_ids (external_id) VALUES ({mark}) ON CONFLICT DO NOTHING"
        events = ("INSERT INTO deal_stage_events (source, external_id, pipeline_id, stage_id, entered_at, "
                  "observed) ")
        self.history_events = (
            f"{events}SELECT s.source, s.external_id, s.pipeline_id, h.stage_id, h.entered_at, false "
            f"FROM sync_stage_hist h JOIN sync_stage s ON s.external_id = h.external_id "
            f"WHERE {_WRITE} ORDER BY s.ord "
            "ON CONFLICT (source, external_id, stage_id, entered_at) DO NOTHING"
        )
        self.observed_events = (
            f"{events}SELECT s.source, s.external_id, s.pipeline_id, s.stage_id, "
            f"COALESCE(s.stage_entered_at, CASE WHEN s.old_stage IS NULL THEN s.created_at END, {now}), "
            "s.stage_entered_at IS NULL FROM sync_stage s "
            "WHERE s.history_len = 0 AND s.stage_id IS NOT NULL AND (s.old_hash IS NULL OR "
            f"(s.old_hash <> s.content_hash AND s.old_stage {differ} s.stage_id)) ORDER BY s.ord "
            "ON CONFLICT (source, external_id, stage_id, entered_at) DO NOTHING"
        )
        amount = "s.amount" if sqlite else "CAST(s.amount AS NUMERIC) / 10000"
        close_at = (f"CASE WHEN s.status IN ('won', 'lost') AND d.status {differ} s.status "
                    f"AND s.closed_at <= {now} THEN s.closed_at END")
        selects = []
        null = {"text": "NULL", "money": "NULL", "date": "NULL"} if sqlite else {
            "text": "CAST(NULL AS TEXT)", "money": "CAST(NULL AS NUMERIC)", "date": "CAST(NULL AS DATE)"}
        for rank, name in enumerate(TRACKED):
            new = amount if name == "amount" else f"s.{name}"
            old = f"d.{name}"
            texts = [null["text"]] * 2
            moneys = [null["money"]] * 2
            dates = [null["date"]] * 2
            if name == "amount":
                moneys = [old, new]
            elif name == "expected_close_date":
                dates = [old, new]
            elif name == "archived":
                texts = [f"CASE WHEN {v} IS NULL THEN NULL WHEN {v} THEN 'true' ELSE 'false' END"
                         for v in (old, new)]
            else:
                texts = [old, new]
            if name == "stage_id":
                crm = f"CASE WHEN s.stage_crm_at <= {now} THEN s.stage_crm_at END"
            elif name == "status":
                crm = close_at
            else:
                crm = "NULL"
            if not sqlite:
                crm = f"CAST({crm} AS TIMESTAMPTZ)"
            value_list = ", ".join(f"{v} AS v{i}" for i, v in enumerate((*texts, *moneys, *dates)))
            selects.append(
                f"SELECT s.ord AS ord, {rank} AS rank, s.source AS source, s.external_id AS external_id, "
                f"'{name}' AS field, {value_list}, "
                f"COALESCE({crm}, {close_at}, {now}) AS changed_at, ({crm}) IS NULL AS observed "
                f"FROM {join} s.old_hash <> s.content_hash AND {old} {differ} {new}"
            )
        union = " UNION ALL ".join(selects)
        self.changes = (
            "INSERT INTO deal_changes (source, external_id, field, old_value, new_value, old_amount, "
            "new_amount, old_date, new_date, changed_at, observed, sync_run_id) "
            "SELECT c.source, c.external_id, c.field, c.v0, c.v1, c.v2, c.v3, c.v4, c.v5, "
            f"c.changed_at, c.observed, {run} FROM ({union}) c ORDER BY c.ord, c.rank"
        )
        values = []
        for name in DEAL_COLUMNS:
            if name == "amount":
                values.append(amount)
            elif name == "raw" and not sqlite:
                values.append("CAST(s.raw AS JSON)")
            elif name in ("first_seen_at", "synced_at"):
                values.append(now)
            elif name == "deleted_at":
                values.append(f"CASE WHEN s.status = 'deleted' THEN COALESCE(s.old_deleted_at, {now}) END")
            else:
                values.append(f"s.{name}")
        updates = ", ".join(f"{c} = excluded.{c}" for c in DEAL_COLUMNS if c not in _NOT_UPDATED)
        self.upsert = (
            f"INSERT INTO deals ({', '.join(DEAL_COLUMNS)}) SELECT {', '.join(values)} "
            f"FROM sync_stage s WHERE {_WRITE} ORDER BY s.ord "
            f"ON CONFLICT (source, external_id) DO UPDATE SET {updates}"
        )
        self.written_ids = (
            f"SELECT DISTINCT s.pipeline_id, s.stage_id, s.owner_id FROM sync_stage s WHERE {_WRITE}"
        )

    def stored_hashes(self, count: int) -> str:
        """``SELECT`` of the stored hashes of ``count`` ids of one source."""
        if self.sqlite:
            return ("SELECT external_id, content_hash FROM deals WHERE source = ? AND external_id IN "
                    f"({', '.join('?' * count)})")
        return "SELECT external_id, content_hash FROM deals WHERE source = %s AND external_id = ANY(%s)"

    def id_params(self, source: str, ids: list[str]) -> tuple[Any, ...]:
        """Parameters of ``stored_hashes``."""
        return (source, *ids) if self.sqlite else (source, ids)

    def bind(self, params: dict[str, Any]) -> dict[str, Any]:
        """Parameters as the driver takes them."""
        return params

