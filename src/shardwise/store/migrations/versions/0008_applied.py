"""Applied records of transactional lanes, ahead of the checkpoint.

A transactional processor with parallelization_factor > 1 commits each lane's writes with a
row naming the records that invocation applied, since the shard's checkpoint cannot pass
them while an earlier record is pending in another lane. A worker starting the shard skips
them; rows at or before the checkpoint are deleted. A new table only: nothing existing
changes, on either backend.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEX = "ix_shardwise_applied_shard_last_position"


def upgrade() -> None:
    op.create_table(
        "shardwise_applied",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("processor", sa.String(200), nullable=False),
        sa.Column("stream_arn", sa.String(1024), nullable=False),
        sa.Column("shard_id", sa.String(200), nullable=False),
        # The highest applied record's position, zero-padded so that it sorts in SQL.
        sa.Column("last_position", sa.String(96), nullable=False),
        # The applied records' sequence numbers, a JSON list.
        sa.Column("sequence_numbers", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_shardwise_applied"),
    )
    op.create_index(
        INDEX, "shardwise_applied", ["processor", "stream_arn", "shard_id", "last_position"]
    )


def downgrade() -> None:
    op.drop_index(INDEX, table_name="shardwise_applied")
    op.drop_table("shardwise_applied")
