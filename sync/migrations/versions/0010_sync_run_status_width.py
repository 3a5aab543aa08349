"""Room for ``interrupted`` in ``sync_runs.status`` (String(10) -> String(20))

A ``running`` row whose process is gone is closed as ``interrupted`` (11
characters): PostgreSQL enforces the old ``VARCHAR(10)``; SQLite never did.

Revision ID: 0010
Revises: 0005
Create Date: 2026-12-02 16:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("sync_runs") as batch_op:
        batch_op.alter_column("status", type_=sa.String(20), existing_type=sa.String(10),
                              existing_nullable=False)


def downgrade() -> None:
    op.execute("UPDATE sync_runs SET status = 'failed' WHERE status = 'interrupted'")
    with op.batch_alter_table("sync_runs") as batch_op:
        batch_op.alter_column("status", type_=sa.String(10), existing_type=sa.String(20),
                              existing_nullable=False)
