"""Failures: each stored batch carries its request id, unique, so a retried write stores once.

The ``sql`` destination writes a failed batch in one transaction; when the commit succeeds
but its acknowledgement is lost (a dropped connection), dispatch retries the same batch. The
request id (``requestContext.requestId``, the same on every retry of one failed batch) makes
that retry a no-op: ``INSERT ... ON CONFLICT (request_id) DO NOTHING``. The uniqueness is a
unique index, created in place on both backends (no batch copy of the table on SQLite). Rows
stored before this revision keep a NULL request id; NULLs never conflict.

Revision ID: 0005
Revises: 0004
Create Date: 2025-01-05 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A uuid4 string; NULL on rows stored before this revision.
    op.add_column("shardwise_failures", sa.Column("request_id", sa.String(64), nullable=True))
    op.create_index(
        "uq_shardwise_failures_request_id", "shardwise_failures", ["request_id"], unique=True
    )


def downgrade() -> None:
    op.drop_index("uq_shardwise_failures_request_id", table_name="shardwise_failures")
    with op.batch_alter_table("shardwise_failures") as batch:
        batch.drop_column("request_id")
