"""Field changes of deals: compare the stored row with the incoming one, record what moved.

The sync engine records changes set-based (``sync.staging``: one ``INSERT .. SELECT``
per batch of the stored row against the staged one, with the rules below);
:meth:`ChangeRecorder.compare` is the same comparison for one deal in Python, for
a stored row's tracked columns and a newly encoded row: one ``deal_changes`` row
per tracked field that differs. A deal seen for
the first time records nothing (its creation date says when it was added), and a
deal whose content hash did not change is never compared, so a full re-pull of
unchanged data records nothing.

The comparison is a plain "old row vs new row" per column, so it can be
expressed set-based as well; :func:`changes_from_select` builds exactly that
``INSERT .. SELECT`` for any pair of old/new columns, and the engine already uses
it for deals a complete pull no longer contains (``status`` -> ``deleted``)::

    INSERT INTO deal_changes (source, external_id, field, old_value, new_value, ...)
    SELECT d.source, d.external_id, 'status', d.status, 'deleted', :now, ...
    FROM deals d WHERE <not in this pull>

When a change happened is the CRM's own time where the record carries one: the
new stage's entry date for a stage change, the close time for a deal that became
won or lost. Every other change is dated when the sync saw it (``observed``),
except that changes seen together with a close are dated with the close (a deal
is won at the amount it was won with, not at last week's amount).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from sales_velocity.connectors.base import Deal
from sales_velocity.sync.rows import DEAL_COLUMNS, RowEncoder
from sales_velocity.sync.store import deal_changes_table

__all__ = ["TRACKED", "ChangeRecorder", "changes_from_select"]

TRACKED: tuple[str, ...] = (
    "stage_id", "status", "archived", "amount", "currency", "expected_close_date", "owner_id", "pipeline_id",
)
"""The deals columns whose changes are recorded, in the order ``tracked_sql`` reads them."""

_MONEY = frozenset({"amount"})
_DATE = frozenset({"expected_close_date"})
_FLAG = frozenset({"archived"})
_INDEX = {name: DEAL_COLUMNS.index(name) for name in TRACKED}
_STATUS = TRACKED.index("status")
_INSERT_COLUMNS = (
    "source", "external_id", "field", "old_value", "new_value", "old_amount", "new_amount",
    "old_date", "new_date", "changed_at", "observed", "sync_run_id",
)


def _same(old: Any, new: Any) -> bool:
    """Equality of a stored driver value and an encoded one (``Decimal('5.0000') == 5``)."""
    if old is None or new is None:
        return old is None and new is None
    if isinstance(old, bool) or isinstance(new, bool):
        return bool(old) == bool(new)
    return bool(old == new)


def _flag_text(value: Any) -> str | None:
    return None if value is None else ("true" if bool(value) else "false")


class ChangeRecorder:
    """Turns (stored row, incoming row) pairs of one source into ``deal_changes`` rows."""

    def __init__(self, encoder: RowEncoder, source: str, run_pk: int | None) -> None:
        self.encoder = encoder
        self.source = source
        self.run_pk = run_pk
        mark = encoder.mark
        columns, marks = ", ".join(_INSERT_COLUMNS), ", ".join([mark] * len(_INSERT_COLUMNS))
        self.insert_sql = f"INSERT INTO deal_changes ({columns}) VALUES ({marks})"  # noqa: S608 - constant names

    @staticmethod
    def tracked_sql() -> str:
        """The tracked columns, for the engine's ``SELECT`` of the stored rows."""
        return ", ".join(TRACKED)

    def compare(
        self, old: Sequence[Any], new: Sequence[Any], deal: Deal, now: dt.datetime,
    ) -> list[tuple[Any, ...]]:
        """The change rows of one deal: ``old`` holds the stored tracked columns, ``new`` the encoded row."""
        out: list[tuple[Any, ...]] = []
        closed_at: dt.datetime | None = None
        if not _same(old[_STATUS], new[_INDEX["status"]]) and new[_INDEX["status"]] in ("won", "lost"):
            closed_at, observed = self._when("status", new[_INDEX["status"]], deal, now)
            closed_at = None if observed else closed_at
        for i, name in enumerate(TRACKED):
            before, after = old[i], new[_INDEX[name]]
            if _same(before, after):
                continue
            at, observed = self._when(name, after, deal, now)
            if observed and closed_at is not None:  # seen with the close: part of closing it
                at = closed_at
            text_old = text_new = money_old = money_new = date_old = date_new = None
            if name in _MONEY:
                money_old, money_new = before, after
            elif name in _DATE:
                date_old, date_new = before, after
            elif name in _FLAG:
                text_old, text_new = _flag_text(before), _flag_text(after)
            else:
                text_old, text_new = before, after
            out.append((
                self.source, deal.external_id, name, text_old, text_new, money_old, money_new,
                date_old, date_new, self.encoder.timestamp(at), self.encoder.flag(observed), self.run_pk,
            ))
        return out

    @staticmethod
    def _when(name: str, new: Any, deal: Deal, now: dt.datetime) -> tuple[dt.datetime, bool]:
        """The CRM's time of the change where the record has one, else ``now`` (observed)."""
        crm: dt.datetime | None = None
        if name == "stage_id":
            crm = deal.stage_entered_at
            if crm is None:
                visits = [v.entered_at for v in deal.stage_history if v.stage == deal.stage]
                crm = max(visits) if visits else None
        elif name == "status" and new in ("won", "lost"):
            crm = deal.closed_at
        if crm is None or crm > now:  # a clock ahead of ours is not trusted
            return now, True
        return crm, False


def changes_from_select(
    select_from: sa.FromClause,
    source: sa.ColumnElement[Any],
    external_id: sa.ColumnElement[Any],
    field: str,
    old: sa.ColumnElement[Any],
    new: sa.ColumnElement[Any],
    *,
    changed_at: dt.datetime,
    where: sa.ColumnElement[bool] | None = None,
    run_pk: int | None = None,
) -> sa.Insert:
    """The set-based form of :meth:`ChangeRecorder.compare` for one text field.

    ``INSERT INTO deal_changes .. SELECT`` the rows of ``select_from`` where ``old``
    is distinct from ``new`` (and ``where`` holds), dated ``changed_at`` as observed.
    """
    c = deal_changes_table.c
    distinct = old.is_distinct_from(new)
    query = sa.select(
        source, external_id, sa.literal(field, sa.String()), old, new,
        sa.literal(changed_at, c.changed_at.type), sa.true(), sa.literal(run_pk, sa.Integer()),
    ).select_from(select_from).where(distinct if where is None else sa.and_(where, distinct))
    return deal_changes_table.insert().from_select(
        [c.source, c.external_id, c.field, c.old_value, c.new_value, c.changed_at, c.observed,
         c.sync_run_id],
        query,
    )
