"""SQL expressions the metrics share, compiled per backend."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

__all__ = [
    "SCAN_CACHE_KIB", "ElapsedSeconds", "EpochSeconds", "JoinedText", "elapsed_days", "small_page_cache",
]


class ElapsedSeconds(FunctionElement[Any]):
    """SQL: seconds (fractional) from the first timestamp to the second."""

    type = sa.Numeric()
    inherit_cache = True
    name = "elapsed_seconds"


@compiles(ElapsedSeconds)
def _elapsed_seconds_default(element: ElapsedSeconds, compiler: SQLCompiler, **kw: Any) -> str:
    start, end = (compiler.process(arg, **kw) for arg in element.clauses)
    return f"EXTRACT(EPOCH FROM ({end} - {start}))"


@compiles(ElapsedSeconds, "sqlite")
def _elapsed_seconds_sqlite(element: ElapsedSeconds, compiler: SQLCompiler, **kw: Any) -> str:
    start, end = (compiler.process(arg, **kw) for arg in element.clauses)
    return f"((julianday({end}) - julianday({start})) * 86400.0)"


def elapsed_days(start: sa.ColumnElement[Any], end: sa.ColumnElement[Any]) -> sa.ColumnElement[Any]:
    """SQL: fractional days from ``start`` to ``end``."""
    return ElapsedSeconds(start, end) / 86400.0


class EpochSeconds(FunctionElement[Any]):
    """SQL: whole seconds since 1970-01-01 UTC of a timestamp (fractions dropped, toward the past)."""

    type = sa.BigInteger()
    inherit_cache = True
    name = "epoch_seconds"


@compiles(EpochSeconds)
def _epoch_seconds_default(element: EpochSeconds, compiler: SQLCompiler, **kw: Any) -> str:
    (moment,) = (compiler.process(arg, **kw) for arg in element.clauses)
    return f"CAST(floor(EXTRACT(EPOCH FROM {moment})) AS BIGINT)"


UNIXEPOCH = sqlite3.sqlite_version_info >= (3, 38, 0)
"""Whether the SQLite library has ``unixepoch()`` (3.38): the same integer as ``strftime('%s')``, cheaper."""


@compiles(EpochSeconds, "sqlite")
def _epoch_seconds_sqlite(element: EpochSeconds, compiler: SQLCompiler, **kw: Any) -> str:
    (moment,) = (compiler.process(arg, **kw) for arg in element.clauses)
    # Both compute iJD/1000 - 210866760000 from the parsed time (no text round trip for unixepoch):
    # about a fifth of the forecast's deal scan at 1,000,000 deals.
    if UNIXEPOCH:
        return f"unixepoch({moment})"
    return f"CAST(strftime('%s', {moment}) AS INTEGER)"


class JoinedText(FunctionElement[Any]):
    """SQL: the texts of a group joined with a separator (``group_concat`` / ``string_agg``)."""

    type = sa.Text()
    inherit_cache = True
    name = "joined_text"


@compiles(JoinedText)
def _joined_default(element: JoinedText, compiler: SQLCompiler, **kw: Any) -> str:
    text, sep = (compiler.process(arg, **kw) for arg in element.clauses)
    return f"string_agg({text}, {sep})"


@compiles(JoinedText, "sqlite")
def _joined_sqlite(element: JoinedText, compiler: SQLCompiler, **kw: Any) -> str:
    text, sep = (compiler.process(arg, **kw) for arg in element.clauses)
    return f"group_concat({text}, {sep})"


SCAN_CACHE_KIB = 8192
"""SQLite page cache (KiB) of a connection while it scans the deals once (the store's default is 64 MiB)."""


@contextmanager
def small_page_cache(conn: sa.Connection) -> Iterator[None]:
    """On SQLite, a small page cache for one sequential scan, then the connection's own size again.

    A scan reads each page once, so a big cache only holds memory: every pooled
    connection keeps its cache (64 MiB each at 1,000,000 deals). Lowering the
    size frees the cached pages; restoring it allocates nothing. Elsewhere: nothing.
    """
    if conn.dialect.name != "sqlite":
        yield
        return
    before = conn.exec_driver_sql("PRAGMA cache_size").scalar()
    conn.exec_driver_sql(f"PRAGMA cache_size=-{SCAN_CACHE_KIB}")
    try:
        yield
    finally:
        conn.exec_driver_sql(f"PRAGMA cache_size={int(before or 0)}")
