"""Checkpoints: one row per (processor, stream, shard).

Revision ID: 0001
Revises:
Create Date: 2025-01-01 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "shardwise_checkpoints",
        sa.Column("processor", sa.String(200), nullable=False),
        sa.Column("stream_arn", sa.String(1024), nullable=False),
        sa.Column("shard_id", sa.String(200), nullable=False),
        sa.Column("parent_shard_id", sa.String(200), nullable=True),
        # A decimal string of varying length: never compared in SQL.
        sa.Column("sequence_number", sa.String(128), nullable=True),
        # TRIM_HORIZON or LATEST: where to start while sequence_number is null.
        sa.Column("start_position", sa.String(16), nullable=False),
        # The shard is closed and every record in it was processed.
        sa.Column("finished", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint(
            "processor", "stream_arn", "shard_id", name="pk_shardwise_checkpoints"
        ),
    )


def downgrade() -> None:
    op.drop_table("shardwise_checkpoints")
