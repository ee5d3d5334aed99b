"""Leases: an owner and a fencing counter on every checkpoint row, workers and sync leaders.

The lease lives on the checkpoint row itself, so moving a checkpoint and proving ownership
are one compare-and-set statement. Existing rows start free (owner NULL, counter 0).

Revision ID: 0003
Revises: 0002
Create Date: 2025-01-03 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_LEASE_COLUMNS = ("owner", "lease_counter", "owner_since", "handoff_to")


def upgrade() -> None:
    # ADD COLUMN works in place on both backends (no batch copy of the table on SQLite).
    # The worker id holding the lease; NULL when the lease is free.
    op.add_column("shardwise_checkpoints", sa.Column("owner", sa.String(200), nullable=True))
    # The fencing token: incremented by every take, renew and release of the lease.
    op.add_column(
        "shardwise_checkpoints",
        sa.Column("lease_counter", sa.BigInteger(), nullable=False, server_default=sa.text("0")),
    )
    # When the current owner took the lease: for display, never for decisions.
    op.add_column(
        "shardwise_checkpoints",
        sa.Column("owner_since", sa.DateTime(timezone=True), nullable=True),
    )
    # A worker that asked the owner to hand the lease over (balancing).
    op.add_column("shardwise_checkpoints", sa.Column("handoff_to", sa.String(200), nullable=True))
    op.create_table(
        "shardwise_workers",
        sa.Column("processor", sa.String(200), nullable=False),
        sa.Column("stream_arn", sa.String(1024), nullable=False),
        sa.Column("worker_id", sa.String(200), nullable=False),
        # Incremented on every renewal round: live while other workers see it change.
        sa.Column("heartbeat", sa.BigInteger(), nullable=False, server_default=sa.text("0")),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint(
            "processor", "stream_arn", "worker_id", name="pk_shardwise_workers"
        ),
    )
    op.create_table(
        "shardwise_leaders",
        sa.Column("processor", sa.String(200), nullable=False),
        sa.Column("stream_arn", sa.String(1024), nullable=False),
        # The worker that lists and registers the stream's shards; NULL when nobody is.
        sa.Column("owner", sa.String(200), nullable=True),
        sa.Column("lease_counter", sa.BigInteger(), nullable=False, server_default=sa.text("0")),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("processor", "stream_arn", name="pk_shardwise_leaders"),
    )


def downgrade() -> None:
    op.drop_table("shardwise_leaders")
    op.drop_table("shardwise_workers")
    # SQLite cannot always drop columns in place: batch mode copies the table instead.
    with op.batch_alter_table("shardwise_checkpoints") as batch:
        for column in reversed(_LEASE_COLUMNS):
            batch.drop_column(column)
