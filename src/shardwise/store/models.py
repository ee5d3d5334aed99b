"""The checkpoint tables as SQLAlchemy Core sees them.

The migrations in ``migrations/versions`` own the DDL; these ``Table`` objects mirror them for
queries and for Alembic's autogenerate (``tests/store/test_migrations.py`` checks that the two
agree on every backend). Change both together, in a new migration.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Final

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    false,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

__all__ = [
    "UTCDateTime",
    "applied",
    "checkpoints",
    "failures",
    "idempotency",
    "leaders",
    "metadata",
    "workers",
]

# Constraint names are part of the schema: later migrations refer to them by name.
NAMING_CONVENTION: Final = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING_CONVENTION)


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every backend.

    PostgreSQL stores ``timestamptz``; SQLite has no time zones, so the value is stored as UTC
    wall-clock time and handed back with ``tzinfo=UTC``.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: checkpoint times must be timezone-aware")
        value = value.astimezone(UTC)
        return value if dialect.name == "postgresql" else value.replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


# One row per (processor, stream, shard): where that processor is in that shard.
# sequence_number is a decimal string of varying length: never compare it in SQL.
checkpoints = Table(
    "shardwise_checkpoints",
    metadata,
    Column("processor", String(200), nullable=False),
    Column("stream_arn", String(1024), nullable=False),
    Column("shard_id", String(200), nullable=False),
    Column("parent_shard_id", String(200), nullable=True),
    # A merged shard's second parent (Kinesis AdjacentParentShardId; migration 0006).
    Column("adjacent_parent_shard_id", String(200), nullable=True),
    Column("sequence_number", String(128), nullable=True),
    Column("start_position", String(16), nullable=False),
    Column("finished", Boolean(), nullable=False, server_default=false()),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    # The shard's lease (migration 0003): owner is a worker id, or NULL when the lease is free;
    # lease_counter is the fencing token, incremented by every take, renew and release;
    # handoff_to names a worker that asked the owner to hand the lease over.
    Column("owner", String(200), nullable=True),
    Column("lease_counter", BigInteger(), nullable=False, server_default=text("0")),
    Column("owner_since", UTCDateTime(), nullable=True),
    Column("handoff_to", String(200), nullable=True),
    # The open tumbling window (migration 0004): JSON {"start", "state"}, written together
    # with the checkpoint it belongs to; NULL when no window is open.
    Column("window_state", Text(), nullable=True),
    PrimaryKeyConstraint("processor", "stream_arn", "shard_id"),
)

# One row per failed batch stored by the ``sql`` on-failure destination. ``record`` is Lambda's
# invocation record with the payload, as JSON text; the other columns repeat what listing
# needs so it never parses JSON. replayed_at is set by ``shardwise failures replay``.
# request_id (migration 0005) is the batch's requestContext.requestId, unique so a write
# retried after a lost commit acknowledgement stores nothing twice; NULL on older rows.
failures = Table(
    "shardwise_failures",
    metadata,
    Column("id", Integer(), autoincrement=True, nullable=False),
    Column("processor", String(200), nullable=False),
    Column("stream_arn", String(1024), nullable=False),
    Column("shard_id", String(200), nullable=False),
    Column("condition", String(64), nullable=False),
    Column("start_sequence_number", String(128), nullable=False),
    Column("end_sequence_number", String(128), nullable=False),
    Column("batch_size", Integer(), nullable=False),
    Column("record", Text(), nullable=False),
    Column("failed_at", UTCDateTime(), nullable=False),
    Column("replayed_at", UTCDateTime(), nullable=True),
    Column("request_id", String(64), nullable=True),
    PrimaryKeyConstraint("id"),
    Index("ix_shardwise_failures_processor_failed_at", "processor", "failed_at"),
    Index("uq_shardwise_failures_request_id", "request_id", unique=True),
)

# One row per worker taking part in a processor's stream; ``heartbeat`` is incremented on every
# renewal round, and a worker is live while other workers see it change. The timestamps are
# for display only: no decision is ever made by comparing clocks.
workers = Table(
    "shardwise_workers",
    metadata,
    Column("processor", String(200), nullable=False),
    Column("stream_arn", String(1024), nullable=False),
    Column("worker_id", String(200), nullable=False),
    Column("heartbeat", BigInteger(), nullable=False, server_default=text("0")),
    Column("started_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    PrimaryKeyConstraint("processor", "stream_arn", "worker_id"),
)

# One row per processor and stream: the lease of the worker that lists and registers shards.
leaders = Table(
    "shardwise_leaders",
    metadata,
    Column("processor", String(200), nullable=False),
    Column("stream_arn", String(1024), nullable=False),
    Column("owner", String(200), nullable=True),
    Column("lease_counter", BigInteger(), nullable=False, server_default=text("0")),
    Column("updated_at", UTCDateTime(), nullable=False),
    PrimaryKeyConstraint("processor", "stream_arn"),
)

# One row per (namespace, key): a side effect outside SQL that ran, or is running, for one
# record (migration 0007; store/idempotency.py). namespace is the function (or Powertools
# layer) the key belongs to; status is "in_progress" while a call holds the key, then
# "completed" with its JSON result. token names the call holding the key, so a call whose
# marker was taken over can neither complete nor release the new holder's. Past expires_at
# the row counts as absent; an in_progress row also past in_progress_expires_at (NULL: it
# never lapses early) belongs to a call that crashed, and the next call takes it over.
# payload_hash is Powertools' hash of the validated part of the payload.
idempotency = Table(
    "shardwise_idempotency",
    metadata,
    Column("namespace", String(200), nullable=False),
    Column("key", String(1024), nullable=False),
    Column("status", String(16), nullable=False),
    Column("token", String(64), nullable=False),
    Column("result", Text(), nullable=True),
    Column("payload_hash", String(256), nullable=True),
    Column("expires_at", UTCDateTime(), nullable=False),
    Column("in_progress_expires_at", UTCDateTime(), nullable=True),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    PrimaryKeyConstraint("namespace", "key"),
    Index("ix_shardwise_idempotency_expires_at", "expires_at"),
)

# One row per invocation of a transactional processor with parallelization_factor > 1
# (migration 0008): the records one lane's transaction applied, committed with the handler's
# writes, while the shard's checkpoint could not pass them yet (an earlier record was still
# pending in another lane). A worker starting the shard skips these records. last_position is
# the highest of them as records.sortable_position (sequence_number cannot be compared in
# SQL): a row at or before the checkpoint is not needed any more and is deleted.
applied = Table(
    "shardwise_applied",
    metadata,
    Column("id", Integer(), autoincrement=True, nullable=False),
    Column("processor", String(200), nullable=False),
    Column("stream_arn", String(1024), nullable=False),
    Column("shard_id", String(200), nullable=False),
    Column("last_position", String(96), nullable=False),
    Column("sequence_numbers", Text(), nullable=False),  # JSON list
    Column("created_at", UTCDateTime(), nullable=False),
    PrimaryKeyConstraint("id"),
    Index(
        "ix_shardwise_applied_shard_last_position",
        "processor",
        "stream_arn",
        "shard_id",
        "last_position",
    ),
)
