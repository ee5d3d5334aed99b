"""The operator's side of the lease table: read it whole, release leases, reset a checkpoint.

Workers change a lease only by compare-and-set on the counter they last saw. An operator
cannot know a live counter (it moves every third of the lease duration), so ``release`` and
``reset`` select rows by processor, shard and owner and increment the counter themselves.
That is all fencing needs: the owner's next renewal and its next checkpoint are conditional
on the counter it holds, find it moved, and stop it (its lease's ``lost`` is set,
checkpoints raise ``LeaseLostError``), while any worker may take the freed row at once.

The statements are in ``store/lease_admin.py``: ``read`` is two SELECTs on one connection,
every change one UPDATE; SQLAlchemy and driver errors leave as ``StoreError``. Times read
here were written on the workers' clocks: they are for display, never for deciding anything.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine

from shardwise.records import Position, ShardId
from shardwise.store.lease_admin import (
    Released,
    ShardLease,
    WorkerBeat,
    read_leases,
    release_leases,
    reset_checkpoint,
)

__all__ = ["LeaseAdmin", "LeaseView", "Released", "ShardLease", "WorkerBeat"]


@dataclass(frozen=True, slots=True)
class LeaseView:
    """Every shard row and heartbeat row, ordered by processor, stream and id."""

    shards: list[ShardLease]
    workers: list[WorkerBeat]


class LeaseAdmin:
    """Operator reads and changes on the lease table of every processor in one store."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def read(self, processor: str | None = None) -> LeaseView:
        """Every shard and heartbeat row, or one processor's; two SELECTs, one connection.
        Ordered in code point order (as Python sorts), whatever the database's collation."""
        shards, heartbeats = await read_leases(self._engine, processor)
        return LeaseView(
            shards=sorted(shards, key=_shard_key), workers=sorted(heartbeats, key=_worker_key)
        )

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
        released = await release_leases(self._engine, processor, shards=shards, worker=worker)
        return sorted(released, key=lambda lease: (lease.stream_arn, lease.shard_id))

    async def reset(self, seen: ShardLease, to: Position) -> Released | None:
        """Move the shard's checkpoint to ``to`` (not finished) and free its lease, in one
        UPDATE - only if the checkpoint is still the one in ``seen``, so what the operator
        was shown is what is replaced. None when the row changed meanwhile or is gone."""
        return await reset_checkpoint(self._engine, seen, to)


def _shard_key(lease: ShardLease) -> tuple[str, str, str]:
    checkpoint = lease.checkpoint
    return (checkpoint.processor, checkpoint.stream_arn, checkpoint.shard_id)


def _worker_key(beat: WorkerBeat) -> tuple[str, str, str]:
    return (beat.processor, beat.stream_arn, beat.worker_id)
