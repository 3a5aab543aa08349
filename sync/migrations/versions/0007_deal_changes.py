"""deal_changes: tracked field changes of deals (stage, status, amount, close date, owner, ...)

One row per field that changed, with its old and new value and when: the CRM's
own time where it has one, else when the sync saw it. ``velocity movement`` and
the ``repeatedly_pushed`` hygiene rule read it. Old stores start with an empty
table: changes are recorded from the first sync after the upgrade.

Revision ID: 0007
Revises: 0003
Create Date: 2026-12-02 10:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import sales_velocity.sync.store

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "deal_changes",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("source", sa.String(length=100), nullable=False),
        sa.Column("external_id", sa.String(length=200), nullable=False),
        sa.Column("field", sa.String(length=30), nullable=False),
        sa.Column("old_value", sa.String(length=200), nullable=True),
        sa.Column("new_value", sa.String(length=200), nullable=True),
        sa.Column("old_amount", sales_velocity.sync.store.Money(precision=20, scale=4), nullable=True),
        sa.Column("new_amount", sales_velocity.sync.store.Money(precision=20, scale=4), nullable=True),
        sa.Column("old_date", sa.Date(), nullable=True),
        sa.Column("new_date", sa.Date(), nullable=True),
        sa.Column("changed_at", sales_velocity.sync.store.UTCDateTime(timezone=True), nullable=False),
        sa.Column("observed", sa.Boolean(), nullable=False),
        sa.Column("sync_run_id", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("deal_changes") as batch_op:
        batch_op.create_index("ix_deal_changes_deal", ["source", "external_id", "changed_at"], unique=False)
        batch_op.create_index("ix_deal_changes_changed_at", ["changed_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("deal_changes") as batch_op:
        batch_op.drop_index("ix_deal_changes_changed_at")
        batch_op.drop_index("ix_deal_changes_deal")
    op.drop_table("deal_changes")
