"""Failed batches kept in the store's ``shardwise_failures`` table (the ``sql`` destination).

``FailureStore`` shares the engine (and pool) of the ``CheckpointStore`` it is built from
and never closes it. Every write is one short transaction; SQLAlchemy and driver errors
leave as ``StoreError``, like everything else in this package.

``add`` is idempotent per request id: a batch written again after a commit whose
acknowledgement was lost finds its row (``INSERT ... ON CONFLICT (request_id) DO NOTHING``)
and returns that row's id, so it is stored once.
"""

from __future__ import annotations

import builtins
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Row, select, update
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql.dml import Insert

from shardwise.records import ShardId
from shardwise.store.engine import insert_unless_present, map_store_errors, writer
from shardwise.store.models import failures

__all__ = ["FailureRow", "FailureStore"]


@dataclass(frozen=True, slots=True)
class FailureRow:
    """One stored failed batch; ``record`` is Lambda's invocation record with the payload."""

    id: int
    request_id: str | None  # None on rows stored before migration 0005
    processor: str
    stream_arn: str
    shard_id: ShardId
    condition: str
    start_sequence_number: str
    end_sequence_number: str
    batch_size: int
    failed_at: datetime
    replayed_at: datetime | None
    record: dict[str, Any] = field(repr=False)


def _row(row: Row[Any]) -> FailureRow:
    return FailureRow(
        id=row.id,
        request_id=row.request_id,
        processor=row.processor,
        stream_arn=row.stream_arn,
        shard_id=ShardId(row.shard_id),
        condition=row.condition,
        start_sequence_number=row.start_sequence_number,
        end_sequence_number=row.end_sequence_number,
        batch_size=row.batch_size,
        failed_at=row.failed_at,
        replayed_at=row.replayed_at,
        record=json.loads(row.record),
    )


def _insert_once(dialect: str) -> Insert:
    """INSERT ... ON CONFLICT (request_id) DO NOTHING RETURNING id: a repeated request adds
    no row and returns none."""
    return insert_unless_present(dialect, failures, [failures.c.request_id]).returning(
        failures.c.id
    )


class FailureStore:
    """Add, list and mark failed batches; build one from ``CheckpointStore.engine``."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._writer = writer(engine)
        self._insert = _insert_once(engine.dialect.name)

    async def add(
        self,
        *,
        request_id: str,
        processor: str,
        stream_arn: str,
        shard_id: str,
        condition: str,
        start_sequence_number: str,
        end_sequence_number: str,
        batch_size: int,
        record: Mapping[str, Any],
        failed_at: datetime,
    ) -> int:
        """Store one failed batch and return its id; committed when this returns.

        Storing the same ``request_id`` again stores nothing and returns the first row's id.
        """
        statement = self._insert.values(
            request_id=request_id,
            processor=processor,
            stream_arn=stream_arn,
            shard_id=shard_id,
            condition=condition,
            start_sequence_number=start_sequence_number,
            end_sequence_number=end_sequence_number,
            batch_size=batch_size,
            record=json.dumps(record),
            failed_at=failed_at,
            replayed_at=None,
        )
        with map_store_errors(
            "storing a failed batch", self._engine.url, processor=processor, shard_id=shard_id
        ):
            async with self._writer.begin() as connection:
                added = (await connection.execute(statement)).scalar()
                if added is None:  # stored already, by the write whose acknowledgement was lost
                    query = select(failures.c.id).where(failures.c.request_id == request_id)
                    added = (await connection.execute(query)).scalar_one()
        return int(added)

    async def list(
        self, processor: str, ids: Sequence[int] | None = None
    ) -> builtins.list[FailureRow]:
        """The processor's failed batches (all, or those in ``ids``), oldest first."""
        query = (
            select(failures)
            .where(failures.c.processor == processor)
            .order_by(failures.c.failed_at, failures.c.id)
        )
        if ids is not None:
            query = query.where(failures.c.id.in_(ids))
        with map_store_errors("listing failed batches", self._engine.url, processor=processor):
            async with self._engine.connect() as connection:
                rows = (await connection.execute(query)).all()
        return [_row(row) for row in rows]

    async def mark_replayed(
        self, processor: str, ids: Sequence[int], at: datetime | None = None
    ) -> int:
        """Set ``replayed_at`` (default: now) on the given rows; return how many changed."""
        statement = (
            update(failures)
            .where(failures.c.processor == processor, failures.c.id.in_(ids))
            .values(replayed_at=at or datetime.now(UTC))
        )
        with map_store_errors(
            "marking failed batches replayed", self._engine.url, processor=processor
        ):
            async with self._writer.begin() as connection:
                result = await connection.execute(statement)
        return int(result.rowcount)
