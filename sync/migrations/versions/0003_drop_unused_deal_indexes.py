"""Drop the three secondary indexes on deals: no query uses them, every write pays for them

Every metric reads deals with one grouped scan, and the hygiene and reminder
queries read most open deals, so neither planner picked ``ix_deals_status``,
``ix_deals_closed_at`` or ``ix_deals_owner`` at any size the benchmark tried;
keeping them up to date cost about half of SQLite's share of an upsert (see
``bench/README.md``, "secondary indexes").

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27 03:10:00
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_INDEXES = (
    ("ix_deals_status", ["source", "status"]),
    ("ix_deals_closed_at", ["closed_at"]),
    ("ix_deals_owner", ["source", "owner_id"]),
)


def upgrade() -> None:
    for name, _ in _INDEXES:
        op.drop_index(name, table_name="deals")


def downgrade() -> None:
    for name, columns in _INDEXES:
        op.create_index(name, "deals", columns, unique=False)
