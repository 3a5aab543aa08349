"""Field changes of deals: compare the stored row with the incoming one, record what moved.

The sync engine records changes set-based (``sync.staging``: one ``INSERT .. SELECT``
per batch of the stored row against the staged one, with the rules below): one
``deal_changes`` row per field of ``TRACKED`` that differs. A deal seen for
the first time records nothing (its creation date says when it was added), and a
deal whose content hash did not change is never compared, so a full re-pull of
unchanged data records nothing.

The comparison is a plain "old row vs new row" per column; :func:`changes_from_select`
builds that ``INSERT .. SELECT`` for any pair of old/new text columns, and the engine
uses it for deals a complete pull no longer contains (``status`` -> ``deleted``)::

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
from typing import Any

import sqlalchemy as sa

from sales_velocity.sync.store import deal_changes_table

__all__ = ["TRACKED", "changes_from_select"]

TRACKED: tuple[str, ...] = (
    "stage_id", "status", "archived", "amount", "currency", "expected_close_date", "owner_id", "pipeline_id",
)
"""The deals columns whose changes are recorded (``sync.staging`` ranks them in this order)."""

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
    """The set-based change rows of one text field.

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
