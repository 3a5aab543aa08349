"""velocity_snapshots.rebuilt: a snapshot rebuilt from deal dates, not taken on its day

The first run (and ``velocity metrics --since DATE``) rebuilds the past days'
snapshots from created/closed dates, so trends exist from day one; ``rebuilt``
lets a reader tell such a reconstruction from a snapshot taken on the day.
Existing snapshots were all taken on their day (or back-filled the next run):
they get ``false``.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 10:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("velocity_snapshots") as batch_op:
        batch_op.add_column(sa.Column("rebuilt", sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("velocity_snapshots") as batch_op:
        batch_op.drop_column("rebuilt")
