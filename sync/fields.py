"""Which canonical deal fields each source provides: *unknown* is not *empty*.

A CSV export without a next-step column, or a CRM portal without the property,
never gives the field a value; counting every deal of it as "without a next
step" would flag all of them. The sync therefore keeps, per source and per
tracked field, whether the source provides it (table ``source_fields``):

* a connector may **declare** what it provides, by a method
  ``provided_fields() -> Collection[str] | None`` the engine calls after a
  pull (the CSV feed answers from the file's header). A declaration replaces
  what was stored, so a column dropped from the export becomes unknown again;
  ``None`` means "cannot tell from this pull";
* otherwise the sync **observes** (each deal is checked, cheaply, only for
  connectors that do not declare): a field is provided once any deal of the
  source has carried a value for it (ever present; never reset by a pull
  that happens to hold only deals without it).

A field observed in a pull is provided whatever the declaration says.
``metrics.coverage`` turns this into the hygiene rules that are off per source.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Collection
from operator import attrgetter
from typing import Any

import sqlalchemy as sa

from sales_velocity.connectors.base import Deal
from sales_velocity.sync.store import source_fields_table

__all__ = ["TRACKED_FIELDS", "FieldTracker", "declared_fields", "declares_fields", "provided_fields",
           "record_fields"]

TRACKED_FIELDS: tuple[str, ...] = (
    "amount", "expected_close_date", "stage_entered_at", "next_step", "next_activity_at",
    "last_activity_at",
)
"""The deal fields (record attribute = store column) some hygiene rule needs."""


class FieldTracker:
    """Notes which tracked fields the deals of one pull carry a value for.

    A deal is checked with one ``attrgetter`` call over the fields not seen yet
    and one ``tuple.count`` (both in C), so a pull whose deals never carry a
    field pays well under a microsecond per deal; once every field has been
    seen the check is a test of an empty tuple.
    """

    __slots__ = ("_get", "_names")

    def __init__(self) -> None:
        self._names: tuple[str, ...] = ()
        self._get: Callable[[Deal], Any] = attrgetter("amount")
        self._watch(TRACKED_FIELDS)

    def _watch(self, names: tuple[str, ...]) -> None:
        self._names = names
        if len(names) == 1:
            one = attrgetter(names[0])
            self._get = lambda deal: (one(deal),)
        elif names:
            self._get = attrgetter(*names)

    def see(self, deal: Deal) -> None:
        """Note the fields ``deal`` has a value for."""
        names = self._names
        if not names:
            return
        values = self._get(deal)
        if values.count(None) == len(names):
            return
        self._watch(tuple(n for n, v in zip(names, values, strict=True) if v is None))

    @property
    def seen(self) -> frozenset[str]:
        """The tracked fields some deal of the pull had a value for."""
        return frozenset(TRACKED_FIELDS) - frozenset(self._names)


def declares_fields(connector: object) -> bool:
    """Whether ``connector`` can say what it provides (then the sync need not observe each deal)."""
    return callable(getattr(connector, "provided_fields", None))


def declared_fields(connector: object) -> frozenset[str] | None:
    """What ``connector`` says it provides (``provided_fields()``), or ``None`` when it cannot tell."""
    method = getattr(connector, "provided_fields", None)
    if method is None:
        return None
    declared = method()
    return None if declared is None else frozenset(declared) & frozenset(TRACKED_FIELDS)


def record_fields(
    conn: sa.Connection,
    source: str,
    *,
    seen: Collection[str],
    declared: Collection[str] | None,
    now: dt.datetime,
) -> None:
    """Store what ``source`` provides after a good pull (the caller commits)."""
    table = source_fields_table
    stored = provided_fields(conn, source)
    rows = []
    for name in TRACKED_FIELDS:
        if declared is not None:
            provided, said = name in declared or name in seen, True
        else:
            provided, said = name in seen or stored.get(name, False), False
        rows.append({"source": source, "field": name, "provided": provided, "declared": said,
                     "updated_at": now})
    conn.execute(table.delete().where(table.c.source == source))
    conn.execute(table.insert(), rows)


def provided_fields(conn: sa.Connection, source: str) -> dict[str, bool]:
    """``{field: provided}`` of ``source`` as stored (empty before its first recorded pull)."""
    t = source_fields_table
    return {r.field: bool(r.provided)
            for r in conn.execute(sa.select(t.c.field, t.c.provided).where(t.c.source == source))}

