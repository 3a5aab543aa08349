"""Deal batches: the columnar form in which deals travel from a connector to the store.

A batch is a ``pyarrow.Table`` with the columns of ``BATCH_SCHEMA``, one row per deal,
in canonical, backend-neutral values:

* amounts as ``int64`` units of 1/10,000 (``Money``'s scale; rounded half to even,
  as ``sync.rows`` rounds), timestamps as ``timestamp[us, UTC]``, the expected close
  date as ``date32``, the raw payload as JSON text;
* ``stage_history`` as a list of ``(stage, entered_at)`` structs.

Connectors that read columnar data (the CSV feed) build such a table themselves;
the engine turns every other connector's ``Deal`` records into one with
:func:`deals_to_batch`, a page at a time. :func:`finish_batch` adds what the store
needs and is derived, vectorised: the content hash (unchanged deals are not
rewritten) and the CRM time of the current stage (for ``deal_changes``).

Why Arrow: it is the exchange format of this field (dlt, DuckDB, pandas and polars
all speak it), its compute kernels do per-column work in C, and its CSV reader
and writer are the fastest way in and out of a file (see ``bench/README.md``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Sequence
from decimal import Decimal
from operator import attrgetter

import pyarrow as pa
import pyarrow.compute as pc

from sales_velocity.connectors.base import Deal

__all__ = [
    "BATCH_SCHEMA", "HISTORY_TYPE", "TIMESTAMP", "deals_to_batch", "encode_json", "finish_batch", "is_batch",
    "returning_memory_pool",
]

def returning_memory_pool() -> str:
    """Arrow's allocations from jemalloc where the wheel has it; returns the pool's backend name.

    mimalloc, the wheels' default on Linux, keeps memory it was handed back for
    reuse; a sync allocates and frees a batch's buffers thousands of times, and
    at a million rows mimalloc held about 50 MB more than jemalloc, which hands
    freed pages back to the system after a second. ``ARROW_DEFAULT_MEMORY_POOL``,
    when set, is the user's choice and is kept.
    """
    if not os.environ.get("ARROW_DEFAULT_MEMORY_POOL"):
        with contextlib.suppress(NotImplementedError):  # a build without jemalloc: its default stays
            pa.set_memory_pool(pa.jemalloc_memory_pool())
    return str(pa.default_memory_pool().backend_name)


TIMESTAMP = pa.timestamp("us", tz="UTC")
HISTORY_TYPE = pa.list_(pa.struct([("stage", pa.string()), ("entered_at", TIMESTAMP)]))

BATCH_SCHEMA = pa.schema([
    ("source", pa.string()), ("external_id", pa.string()), ("title", pa.string()),
    ("amount", pa.int64()), ("currency", pa.string()), ("pipeline_id", pa.string()),
    ("stage_id", pa.string()), ("status", pa.string()), ("archived", pa.bool_()),
    ("owner_id", pa.string()), ("created_at", TIMESTAMP), ("closed_at", TIMESTAMP),
    ("expected_close_date", pa.date32()), ("stage_entered_at", TIMESTAMP), ("next_step", pa.string()),
    ("next_activity_at", TIMESTAMP), ("last_activity_at", TIMESTAMP), ("updated_at", TIMESTAMP),
    ("link", pa.string()), ("whole_days", pa.bool_()), ("raw", pa.string()),
    ("stage_history", HISTORY_TYPE),
])
"""The columns of a deal batch, in ``sync.rows.DEAL_COLUMNS`` order (plus the history)."""

_FIELDS = ("source", "external_id", "title", "amount", "currency", "pipeline", "stage", "status",
           "archived", "owner", "created_at", "closed_at", "expected_close_date", "stage_entered_at",
           "next_step", "next_activity_at", "last_activity_at", "updated_at", "link", "whole_days", "raw",
           "stage_history")
_GET = attrgetter(*_FIELDS)
_AMOUNT = _FIELDS.index("amount")
_RAW = _FIELDS.index("raw")
_HISTORY = _FIELDS.index("stage_history")
_SCALE = Decimal(10000)

try:  # ten times faster than the standard library; the same JSON (``str`` for what JSON lacks)
    import orjson

    _ORJSON_OPTIONS = (orjson.OPT_NON_STR_KEYS | orjson.OPT_PASSTHROUGH_DATETIME
                       | orjson.OPT_PASSTHROUGH_DATACLASS)

    def encode_json(value: object) -> str:
        """A raw payload as JSON text."""
        try:
            return orjson.dumps(value, default=str, option=_ORJSON_OPTIONS).decode()
        except TypeError:  # e.g. an integer beyond 64 bits
            return _STDLIB_JSON.encode(value)
except ImportError:  # pragma: no cover - orjson is a dependency; the standard library still works
    def encode_json(value: object) -> str:
        """A raw payload as JSON text."""
        return _STDLIB_JSON.encode(value)

_STDLIB_JSON = json.JSONEncoder(ensure_ascii=False, default=str)


def is_batch(item: object) -> bool:
    """Whether a stream item is a columnar batch (a ``pyarrow`` table or record batch)."""
    return isinstance(item, pa.Table | pa.RecordBatch)


def units(value: Decimal | None) -> int | None:
    """An amount as integer 1/10,000 units (half to even), as ``Money`` stores it on SQLite."""
    return None if value is None else int((value * _SCALE).to_integral_value())


def deals_to_batch(deals: Sequence[Deal]) -> pa.Table:
    """The batch of ``deals`` (one row each, in order)."""
    columns = list(zip(*map(_GET, deals), strict=True)) if deals else [()] * len(_FIELDS)
    encode = encode_json
    arrays: list[pa.Array] = []
    for i, (column, fld) in enumerate(zip(columns, BATCH_SCHEMA, strict=True)):
        if i == _AMOUNT:
            values: Sequence[object] = [None if v is None else int((v * _SCALE).to_integral_value())
                                        for v in column]
        elif i == _RAW:
            values = [None if v is None else encode(v) for v in column]
        elif i == _HISTORY:
            values = [[(v.stage, v.entered_at) for v in h] if h else None for h in column]
        else:
            values = column
        arrays.append(pa.array(values, type=fld.type))
    return pa.Table.from_arrays(arrays, schema=BATCH_SCHEMA)


def _text(column: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray | pa.Array:
    """A column as text for the hash (timestamps and dates through their integers: 30x faster)."""
    if pa.types.is_timestamp(column.type):
        column = column.cast(pa.int64())
    elif pa.types.is_date32(column.type):
        column = column.cast(pa.int32())
    return pc.cast(column, pa.string())


def finish_batch(table: pa.Table) -> pa.Table:
    """Add ``content_hash``, ``stage_crm_at`` and ``history_len`` to a batch.

    The hash covers every stored column and the stage history, so an unchanged
    deal is recognised in SQL and not rewritten. ``stage_crm_at`` is the CRM's time
    for the deal's current stage: ``stage_entered_at``, else the latest history
    visit of that stage.
    """
    table = table.select(BATCH_SCHEMA.names).cast(BATCH_SCHEMA)
    history = table["stage_history"]
    flat = pc.list_flatten(history)
    parents = pc.list_parent_indices(history)
    stages, entered = pc.struct_field(flat, "stage"), pc.struct_field(flat, "entered_at")
    visit_text = pc.binary_join_element_wise(stages, _text(entered), "@")
    lengths = pc.fill_null(pc.list_value_length(history), 0)
    offsets = pa.array([0, *pc.cumulative_sum(lengths).to_pylist()], pa.int32()) \
        if len(table) else pa.array([0], pa.int32())
    history_text = pc.binary_join(pa.ListArray.from_arrays(offsets, _combined(visit_text)), ";")
    parts = [_text(table[name]) for name in BATCH_SCHEMA.names[:-1]]
    joined = pc.binary_join_element_wise(*parts, history_text, "\x1f", null_handling="replace",
                                         null_replacement="\x00")
    md5 = hashlib.md5
    digests = pa.array([md5(v.encode(), usedforsecurity=False).hexdigest() for v in joined.to_pylist()],
                       pa.string())
    # the CRM time of the current stage: its entry date, else the latest visit of it in the history
    crm = table["stage_entered_at"]
    if len(flat):
        current = pc.take(table["stage_id"], parents)
        match = pc.equal(stages, current)
        visits = pa.table({"row": parents, "at": pc.if_else(match, entered, pa.scalar(None, TIMESTAMP))})
        latest = visits.group_by("row").aggregate([("at", "max")])
        by_row = pc.index_in(pa.array(range(len(table)), pa.int32()), value_set=latest["row"])
        from_history = pc.take(latest["at_max"], by_row)
        crm = pc.coalesce(_combined(crm), from_history)
    return (table.drop_columns(["stage_history"])
            .append_column("content_hash", digests)
            .append_column("stage_crm_at", _combined(crm).cast(TIMESTAMP))
            .append_column("history_len", _combined(lengths).cast(pa.int32()))
            .append_column("stage_history", history))


def _combined(column: pa.ChunkedArray | pa.Array) -> pa.Array:
    if isinstance(column, pa.ChunkedArray):
        return column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    return column
