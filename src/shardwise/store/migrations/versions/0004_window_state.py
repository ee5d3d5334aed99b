"""Tumbling windows: the open window's start and state, kept on the checkpoint row.

The state is written in the same statement as the checkpoint it belongs to, so a restart or
a lease move resumes the window exactly where the last checkpoint left it.

Revision ID: 0004
Revises: 0003
Create Date: 2025-01-04 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # JSON {"start": <epoch seconds>, "state": {...}}; NULL when no window is open.
    op.add_column("shardwise_checkpoints", sa.Column("window_state", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("shardwise_checkpoints") as batch:
        batch.drop_column("window_state")
