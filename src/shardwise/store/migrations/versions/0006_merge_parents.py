"""Checkpoints: a shard's second parent, for Kinesis merges.

A Kinesis MergeShards closes two shards and opens one child whose ListShards entry names
both: ``ParentShardId`` and ``AdjacentParentShardId``. The child may start only when both
parents are read to their end, across workers, so the lease row keeps the second parent
too. NULL for every shard with at most one parent (all of DynamoDB Streams).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "shardwise_checkpoints",
        sa.Column("adjacent_parent_shard_id", sa.String(200), nullable=True),
    )


def downgrade() -> None:
    with op.batch_alter_table("shardwise_checkpoints") as batch:
        batch.drop_column("adjacent_parent_shard_id")
