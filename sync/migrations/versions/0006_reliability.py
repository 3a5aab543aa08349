"""Reliability: who holds a lease (host, pid, last renewal), who ran a sync, who claimed a message

* ``sync_leases.host``, ``.pid``, ``.renewed_at``: a lease whose holder is gone
  (same host and the pid is dead, or not renewed within its short TTL) is taken over.
* ``sync_runs.host``, ``.pid``: a ``running`` row whose process is gone is marked
  ``interrupted`` (shown by ``velocity status`` and exported to Prometheus).
* ``outbox.claimed_by``, ``.claimed_at``: a ``sending`` row names the run that claimed
  it, so an overlapping run does not mistake it for an interrupted delivery.

Revision ID: 0006
Revises: 0003
Create Date: 2026-12-02 10:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import sales_velocity.sync.store

revision = "0006"
down_revision = "0004"
branch_labels = None
depends_on = None


def _moment() -> sa.Column[object]:
    return sa.Column("renewed_at", sales_velocity.sync.store.UTCDateTime(timezone=True), nullable=True)


def upgrade() -> None:
    with op.batch_alter_table("sync_leases") as batch_op:
        batch_op.add_column(sa.Column("host", sa.String(255), nullable=True))
        batch_op.add_column(sa.Column("pid", sa.Integer(), nullable=True))
        batch_op.add_column(_moment())
    with op.batch_alter_table("sync_runs") as batch_op:
        batch_op.add_column(sa.Column("host", sa.String(255), nullable=True))
        batch_op.add_column(sa.Column("pid", sa.Integer(), nullable=True))
    with op.batch_alter_table("outbox") as batch_op:
        batch_op.add_column(sa.Column("claimed_by", sa.String(200), nullable=True))
        batch_op.add_column(sa.Column("claimed_at", sales_velocity.sync.store.UTCDateTime(timezone=True),
                                      nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("outbox") as batch_op:
        batch_op.drop_column("claimed_at")
        batch_op.drop_column("claimed_by")
    with op.batch_alter_table("sync_runs") as batch_op:
        batch_op.drop_column("pid")
        batch_op.drop_column("host")
    with op.batch_alter_table("sync_leases") as batch_op:
        batch_op.drop_column("renewed_at")
        batch_op.drop_column("pid")
        batch_op.drop_column("host")
