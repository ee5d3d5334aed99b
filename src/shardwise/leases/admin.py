"""The operator's side of the lease table: read it whole, release leases, reset a checkpoint.

Workers change a lease only by compare-and-set on the counter they last saw. An operator
cannot know a live counter (it moves every third of the lease duration), so ``release`` and
``reset`` select rows by processor, shard and owner and increment the counter themselves.
That is all fencing needs: the owner's next renewal and its next checkpoint are conditional
on the counter it holds, find it moved, and stop it (its lease's ``lost`` is set,
checkpoints raise ``LeaseLostError``), while any worker may take the freed row at once.

``read`` is two SELECTs on one connection; every change is one UPDATE. SQLAlchemy and
driver errors leave as ``StoreError``. Times read here were written on the workers' clocks:
they are for display, never for deciding anything.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from sqlalchemy import ColumnElement, Row, and_, false, or_, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from shardwise.records import Position, ShardId
from shardwise.store import ShardCheckpoint
from shardwise.store.checkpoints import checkpoint_from_row
from shardwise.store.engine import map_store_errors, writer
from shardwise.store.models import checkpoints, workers

__all__ = ["LeaseAdmin", "LeaseView", "Released", "ShardLease", "WorkerBeat"]

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
class LeaseView:
    """Every shard row and heartbeat row, ordered by processor, stream and id."""

    shards: list[ShardLease]
    workers: list[WorkerBeat]


@dataclass(frozen=True, slots=True)
class Released:
    """A lease freed by ``release`` or ``reset``, at its new counter."""

    stream_arn: str
    shard_id: ShardId
    counter: int


def _shard_lease(row: Row[Any]) -> ShardLease:
    checkpoint = checkpoint_from_row(row)
    return ShardLease(
        checkpoint=checkpoint,
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


class LeaseAdmin:
    """Operator reads and changes on the lease table of every processor in one store."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._writer = writer(engine)

    async def read(self, processor: str | None = None) -> LeaseView:
        """Every shard and heartbeat row, or one processor's; two SELECTs, one connection.
        Ordered in code point order (as Python sorts), whatever the database's collation."""
        shards = select(checkpoints)
        beats = select(workers)
        if processor is not None:
            shards = shards.where(_ROW.processor == processor)
            beats = beats.where(workers.c.processor == processor)
        with self._errors("read leases", processor):
            async with self._engine.connect() as connection:
                shard_rows = (await connection.execute(shards)).all()
                beat_rows = (await connection.execute(beats)).all()
        found = sorted(map(_shard_lease, shard_rows), key=_shard_key)
        heartbeats = sorted(map(_worker_beat, beat_rows), key=_worker_key)
        return LeaseView(shards=found, workers=heartbeats)

    async def release(
        self,
        processor: str,
        *,
        shards: Collection[ShardId] | None = None,
        worker: str | None = None,
    ) -> list[Released]:
        """Free the taken leases of ``processor`` - only ``shards``, only ``worker``'s, both,
        or every one when neither is given - clearing owner and hand-off and incrementing
        the counter. One UPDATE; the leases freed, in shard order."""
        if shards is not None and not shards:
            return []
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
        with self._errors("release leases", processor):
            async with self._writer.begin() as connection:
                rows = (await connection.execute(statement)).all()
        released = [
            Released(row.stream_arn, ShardId(row.shard_id), int(row.lease_counter)) for row in rows
        ]
        return sorted(released, key=lambda lease: (lease.stream_arn, lease.shard_id))

    async def reset(self, seen: ShardLease, to: Position) -> Released | None:
        """Move the shard's checkpoint to ``to`` (not finished) and free its lease, in one
        UPDATE - only if the checkpoint is still the one in ``seen``, so what the operator
        was shown is what is replaced. None when the row changed meanwhile or is gone."""
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
        with self._errors("reset checkpoint", old.processor, old.shard_id):
            async with self._writer.begin() as connection:
                counter = (await connection.execute(statement)).scalar()
        return None if counter is None else Released(old.stream_arn, old.shard_id, int(counter))

    def _errors(
        self, operation: str, processor: str | None, shard_id: str | None = None
    ) -> AbstractContextManager[None]:
        return map_store_errors(operation, self._engine.url, processor=processor, shard_id=shard_id)


def _shard_key(lease: ShardLease) -> tuple[str, str, str]:
    checkpoint = lease.checkpoint
    return (checkpoint.processor, checkpoint.stream_arn, checkpoint.shard_id)


def _worker_key(beat: WorkerBeat) -> tuple[str, str, str]:
    return (beat.processor, beat.stream_arn, beat.worker_id)
