"""Failures: one row per failed batch stored by the ``sql`` on-failure destination.

Revision ID: 0002
Revises: 0001
Create Date: 2025-01-02 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "shardwise_failures",
        # INTEGER PRIMARY KEY: SQLite's rowid; SERIAL on PostgreSQL.
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("processor", sa.String(200), nullable=False),
        sa.Column("stream_arn", sa.String(1024), nullable=False),
        sa.Column("shard_id", sa.String(200), nullable=False),
        # RetryAttemptsExhausted, RecordAgeExceeded or MaximumPayloadSizeExceeded.
        sa.Column("condition", sa.String(64), nullable=False),
        # Decimal strings of varying length: never compared in SQL.
        sa.Column("start_sequence_number", sa.String(128), nullable=False),
        sa.Column("end_sequence_number", sa.String(128), nullable=False),
        sa.Column("batch_size", sa.Integer(), nullable=False),
        # Lambda's invocation record with the payload, as JSON.
        sa.Column("record", sa.Text(), nullable=False),
        sa.Column("failed_at", sa.DateTime(timezone=True), nullable=False),
        # Set by `shardwise failures replay` once the handler succeeded on the records.
        sa.Column("replayed_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_shardwise_failures"),
    )
    op.create_index(
        "ix_shardwise_failures_processor_failed_at",
        "shardwise_failures",
        ["processor", "failed_at"],
    )


def downgrade() -> None:
    op.drop_index("ix_shardwise_failures_processor_failed_at", table_name="shardwise_failures")
    op.drop_table("shardwise_failures")
