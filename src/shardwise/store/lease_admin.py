"""Operator statements on the lease rows: read them all, free leases, reset a checkpoint.

An operator cannot know a live counter, so ``release_leases`` and ``reset_checkpoint`` select
rows by processor, shard and owner (or by the checkpoint the operator was shown) and
increment the counter themselves: the owner's next fenced statement then fails. Reading is
two SELECTs on one connection; every change is one UPDATE. SQLAlchemy and driver errors
leave as ``StoreError``.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from sqlalchemy import ColumnElement, Row, and_, false, or_, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from shardwise.records import Position, ShardId
from shardwise.store.checkpoints import ShardCheckpoint, checkpoint_from_row
from shardwise.store.engine import map_store_errors, writer
from shardwise.store.models import checkpoints, workers

__all__ = [
    "Released",
    "ShardLease",
    "WorkerBeat",
    "read_leases",
    "release_leases",
    "reset_checkpoint",
]

_ROW = checkpoints.c
# A row someone holds or has reserved (a released lease waiting for the worker that asked).
_TAKEN = or_(_ROW.owner.is_not(None), _ROW.handoff_to.is_not(None))
# What every operator change writes besides its own values: the lease is free, and its
# counter moves so that the owner's next fenced statement fails.
_FREED: Final[Mapping[str, object]] = {
    "owner": None,
    "owner_since": None,
    "handoff_to": None,
    "lease_counter": _ROW.lease_counter + 1,
}


@dataclass(frozen=True, slots=True)
class ShardLease:
    """One shard's row as the operator sees it: its checkpoint and its lease."""

    checkpoint: ShardCheckpoint
    owner: str | None
    counter: int
    owner_since: datetime | None  # when ``owner`` took it, on ``owner``'s clock
    handoff_to: str | None  # a worker that asked for the lease (owner None: reserved for it)

    @property
    def taken(self) -> bool:
        """Owned, or reserved for the worker that asked for it."""
        return self.owner is not None or self.handoff_to is not None


@dataclass(frozen=True, slots=True)
class WorkerBeat:
    """One worker's heartbeat row on one processor's stream."""

    processor: str
    stream_arn: str
    worker_id: str
    heartbeat: int
    started_at: datetime
    updated_at: datetime  # the last renewal round, on the worker's clock


@dataclass(frozen=True, slots=True)
class Released:
    """A lease freed by ``release`` or ``reset``, at its new counter."""

    stream_arn: str
    shard_id: ShardId
    counter: int


def _shard_lease(row: Row[Any]) -> ShardLease:
    return ShardLease(
        checkpoint=checkpoint_from_row(row),
        owner=row.owner,
        counter=int(row.lease_counter),
        owner_since=row.owner_since,
        handoff_to=row.handoff_to,
    )


def _worker_beat(row: Row[Any]) -> WorkerBeat:
    return WorkerBeat(
        processor=row.processor,
        stream_arn=row.stream_arn,
        worker_id=row.worker_id,
        heartbeat=int(row.heartbeat),
        started_at=row.started_at,
        updated_at=row.updated_at,
    )


async def read_leases(
    engine: AsyncEngine, processor: str | None
) -> tuple[list[ShardLease], list[WorkerBeat]]:
    """Every shard and heartbeat row, or one processor's, unordered; one connection."""
    shards = select(checkpoints)
    beats = select(workers)
    if processor is not None:
        shards = shards.where(_ROW.processor == processor)
        beats = beats.where(workers.c.processor == processor)
    with map_store_errors("read leases", engine.url, processor=processor):
        async with engine.connect() as connection:
            shard_rows = (await connection.execute(shards)).all()
            beat_rows = (await connection.execute(beats)).all()
    return [_shard_lease(row) for row in shard_rows], [_worker_beat(row) for row in beat_rows]


async def release_leases(
    engine: AsyncEngine,
    processor: str,
    *,
    shards: Collection[ShardId] | None,
    worker: str | None,
) -> list[Released]:
    """Free the taken leases of ``processor`` - only ``shards`` (not empty), only
    ``worker``'s, both, or all - in one UPDATE; the leases freed, unordered."""
    conditions: list[ColumnElement[bool]] = [_ROW.processor == processor, _TAKEN]
    if shards is not None:
        conditions.append(_ROW.shard_id.in_(sorted(shards)))
    if worker is not None:
        conditions.append(_ROW.owner == worker)
    statement = (
        update(checkpoints)
        .where(*conditions)
        .values(**_FREED)
        .returning(_ROW.stream_arn, _ROW.shard_id, _ROW.lease_counter)
    )
    with map_store_errors("release leases", engine.url, processor=processor):
        async with writer(engine).begin() as connection:
            rows = (await connection.execute(statement)).all()
    return [Released(row.stream_arn, ShardId(row.shard_id), int(row.lease_counter)) for row in rows]


async def reset_checkpoint(engine: AsyncEngine, seen: ShardLease, to: Position) -> Released | None:
    """Move the shard's checkpoint to ``to`` (not finished) and free its lease in one UPDATE,
    only if the checkpoint is still the one in ``seen``; None when it changed or is gone."""
    old = seen.checkpoint
    unchanged = and_(
        _ROW.processor == old.processor,
        _ROW.stream_arn == old.stream_arn,
        _ROW.shard_id == old.shard_id,
        _ROW.sequence_number.is_not_distinct_from(old.sequence_number),
        _ROW.start_position == old.start_position.value,
        _ROW.finished == old.finished,
    )
    statement = (
        update(checkpoints)
        .where(unchanged)
        .values(
            **_FREED,
            sequence_number=to.after,
            start_position=to.start.value,
            finished=false(),
            updated_at=datetime.now(UTC),
        )
        .returning(_ROW.lease_counter)
    )
    with map_store_errors(
        "reset checkpoint", engine.url, processor=old.processor, shard_id=old.shard_id
    ):
        async with writer(engine).begin() as connection:
            counter = (await connection.execute(statement)).scalar()
    return None if counter is None else Released(old.stream_arn, old.shard_id, int(counter))
