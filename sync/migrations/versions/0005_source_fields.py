"""source_fields: which canonical deal fields each source provides (unknown is not empty)

A field a source never provides (a CSV export without a next-step column, a CRM
portal without the property) is *unknown* there: the hygiene rules that need it
are off for that source. The sync keeps one row per (source, field). Old stores
are filled from their deals: a field is provided where any deal of the source
has a value for it (what the sync would have observed).

Revision ID: 0005
Revises: 0003
Create Date: 2026-12-02 10:40:00
"""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from alembic import op

import sales_velocity.sync.store

revision = "0005"
down_revision = "0007"
branch_labels = None
depends_on = None

_FIELDS = ("amount", "expected_close_date", "stage_entered_at", "next_step", "next_activity_at",
           "last_activity_at")


def upgrade() -> None:
    table = op.create_table(
        "source_fields",
        sa.Column("source", sa.String(100), primary_key=True),
        sa.Column("field", sa.String(40), primary_key=True),
        sa.Column("provided", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("declared", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("updated_at", sales_velocity.sync.store.UTCDateTime(timezone=True), nullable=False),
    )
    conn = op.get_bind()
    deals = sa.table("deals", sa.column("source"), *(sa.column(f) for f in _FIELDS))
    now = dt.datetime.now(dt.UTC)
    counts = [sa.func.count(deals.c[f]).label(f) for f in _FIELDS]
    rows = []
    for row in conn.execute(sa.select(deals.c.source, *counts).group_by(deals.c.source)).mappings():
        for f in _FIELDS:
            rows.append({"source": row["source"], "field": f, "provided": bool(row[f]), "declared": False,
                         "updated_at": now})
    if rows:
        op.bulk_insert(table, rows)


def downgrade() -> None:
    op.drop_table("source_fields")
