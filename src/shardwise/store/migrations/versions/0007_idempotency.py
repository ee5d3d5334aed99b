"""Idempotency: one row per side effect outside SQL that ran, or is running, for a record.

``shardwise.idempotency`` (``@idempotent`` and Powertools' ``SqlPersistenceLayer``) keeps
here which (namespace, key) pairs a call holds or has completed, with the result to hand
back on a repeat. Rows lapse at ``expires_at``; the index on it serves ``purge_expired``.
A new table only: nothing existing changes, on either backend.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "shardwise_idempotency",
        # The function (or Powertools layer) the key belongs to.
        sa.Column("namespace", sa.String(200), nullable=False),
        # The record's eventID by default; a Powertools key is "<function>#<hash>".
        sa.Column("key", sa.String(1024), nullable=False),
        # in_progress while a call holds the key, then completed.
        sa.Column("status", sa.String(16), nullable=False),
        # The call holding the key (a uuid4): only it may complete or release the row.
        sa.Column("token", sa.String(64), nullable=False),
        # The call's result as JSON text, once completed.
        sa.Column("result", sa.Text(), nullable=True),
        # Powertools' payload validation hash, when it validates payloads.
        sa.Column("payload_hash", sa.String(256), nullable=True),
        # Past it the row counts as absent.
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        # Past it an in_progress row belongs to a crashed call; NULL: never before expires_at.
        sa.Column("in_progress_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("namespace", "key", name="pk_shardwise_idempotency"),
    )
    op.create_index("ix_shardwise_idempotency_expires_at", "shardwise_idempotency", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_shardwise_idempotency_expires_at", table_name="shardwise_idempotency")
    op.drop_table("shardwise_idempotency")
