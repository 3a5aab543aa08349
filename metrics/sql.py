"""SQL expressions the metrics share, compiled per backend."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

__all__ = ["ElapsedSeconds", "EpochSeconds", "JoinedText", "elapsed_days"]


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


@compiles(EpochSeconds, "sqlite")
def _epoch_seconds_sqlite(element: EpochSeconds, compiler: SQLCompiler, **kw: Any) -> str:
    (moment,) = (compiler.process(arg, **kw) for arg in element.clauses)
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
