"""The lease table as one worker's coordinator uses it: lease rows and fenced writes.

Every change to a lease is one compare-and-set on its counter, and a shard's checkpoint
moves in the same statement that checks the lease is still held; the statements, and why
they cannot race or deadlock, are in ``store/leases.py`` and (checkpoints)
``store/fenced_writes.py``. What this module adds is the
lease vocabulary: rows as ``balance`` sees them (a shard has started once it has a
checkpoint, an owner or is finished: parent before child), and a refused checkpoint or
finish is a lost lease (``LeaseLostError``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass

from shardwise.errors import LeaseLostError
from shardwise.leases.balance import LeaseRow
from shardwise.records import SequenceNumber, ShardId
from shardwise.store import CheckpointStore
from shardwise.store.fenced_writes import KEEP, Keep, ShardTransaction
from shardwise.store.leases import Renewal, StoredLease, Taken

__all__ = ["KEEP", "LeaseTable", "Renewal", "Snapshot", "Taken"]


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything one taker round looks at, read on one connection."""

    leases: list[LeaseRow]
    # worker id -> heartbeat counter
    workers: dict[str, int]
    # (owner, counter) of the sync leader's lease; None when the row does not exist yet
    leader: tuple[str | None, int] | None


def _lease_row(stored: StoredLease) -> LeaseRow:
    """A shard has started once it has a checkpoint, an owner, or is finished."""
    started = stored.sequence_number is not None or stored.owner is not None or stored.finished
    return LeaseRow(
        shard_id=stored.shard_id,
        parent_shard_id=stored.parent_shard_id,
        adjacent_parent_shard_id=stored.adjacent_parent_shard_id,
        owner=stored.owner,
        counter=stored.counter,
        handoff_to=stored.handoff_to,
        finished=stored.finished,
        started=started,
    )


class LeaseTable:
    """The lease rows of one processor on one stream, as seen by one worker."""

    def __init__(
        self, store: CheckpointStore, *, processor: str, stream_arn: str, worker_id: str
    ) -> None:
        self._rows = store.lease_rows(
            processor=processor, stream_arn=stream_arn, worker_id=worker_id
        )
        self._checkpoints = store.fenced_checkpoints(
            processor=processor, stream_arn=stream_arn, owner=worker_id
        )
        self.processor = processor
        self.stream_arn = stream_arn
        self.worker_id = worker_id

    async def snapshot(self) -> Snapshot:
        """Every lease, worker heartbeat and the leader lease of this processor and stream."""
        stored = await self._rows.read()
        return Snapshot(
            leases=[_lease_row(lease) for lease in stored.shards],
            workers=stored.workers,
            leader=stored.leader,
        )

    # -- shard leases ----------------------------------------------------------------------

    async def take(self, shard_id: ShardId, seen: int) -> Taken | None:
        """Own the lease if its counter is still ``seen``; None when another change came first."""
        return await self._rows.take(shard_id, seen)

    async def ask_handoff(self, shard_id: ShardId, owner: str, counter: int) -> bool:
        """Ask ``owner`` to hand the lease over to this worker; the owner sees it at its next
        renewal. The counter is unchanged: the owner still holds the lease."""
        return await self._rows.ask_handoff(shard_id, owner, counter)

    async def renew(self, leases: Mapping[ShardId, int], leader: int | None) -> Renewal:
        """Renew the leases held at these counters and the leader lease, and beat this
        worker's heartbeat, in one transaction."""
        return await self._rows.renew(leases, leader)

    async def release(
        self, leases: Mapping[ShardId, int], leader: int | None, *, leave: bool = False
    ) -> None:
        """Free the leases held at these counters (and the leader lease) so another worker may
        take them at once - the one that asked for a lease first, if one did (``handoff_to``
        stays). ``leave`` also deletes this worker's heartbeat row."""
        await self._rows.release(leases, leader, leave=leave)

    async def save(
        self,
        shard_id: ShardId,
        counter: int,
        sequence_number: SequenceNumber | None,
        *,
        window_state: str | Keep | None = KEEP,
    ) -> None:
        """Checkpoint, fenced: raise ``LeaseLostError`` unless the lease is still ours at
        ``counter`` (which stays as it is). ``window_state`` (tumbling windows) is written in
        the same statement; by default it is left as it is, and the checkpoint joins the
        store's coalesced writes (``store/fenced_writes.py``)."""
        if not await self._checkpoints.save(shard_id, counter, sequence_number, window_state):
            raise self._refused("checkpoint", shard_id, counter)

    async def window_state(self, shard_id: ShardId) -> str | None:
        """The open tumbling window stored with the shard's checkpoint, if any."""
        return await self._checkpoints.window_state(shard_id)

    @property
    def one_writer(self) -> bool:
        """A transaction holds the store's only write lock (SQLite) to its end."""
        return self._checkpoints.one_writer

    def transaction(self, shard_id: ShardId) -> AbstractAsyncContextManager[ShardTransaction]:
        """A store transaction whose commit carries the shard's checkpoint (fenced)."""
        return self._checkpoints.transaction(shard_id)

    async def save_in(
        self,
        transaction: ShardTransaction,
        counter: int,
        sequence_number: SequenceNumber | None,
        *,
        window_state: str | Keep | None = KEEP,
    ) -> None:
        """``save`` inside ``transaction``: raise ``LeaseLostError`` (the caller then rolls
        the transaction back) unless the lease is still ours at ``counter``."""
        if not await transaction.checkpoint(counter, sequence_number, window_state):
            raise self._refused("checkpoint", transaction.shard_id, counter)

    async def applied_in(
        self,
        transaction: ShardTransaction,
        counter: int,
        sequence_numbers: Sequence[SequenceNumber],
        checkpointed: SequenceNumber | None,
    ) -> None:
        """Record inside ``transaction`` the records a transactional lane applied, fenced:
        ``LeaseLostError`` (the caller rolls back) unless the lease is ours at ``counter``."""
        if not await transaction.applied(counter, sequence_numbers, checkpointed):
            raise self._refused("checkpoint", transaction.shard_id, counter)

    async def applied(
        self, shard_id: ShardId, after: SequenceNumber | None
    ) -> frozenset[SequenceNumber]:
        """The records past the checkpoint ``after`` that transactional lanes applied."""
        return await self._checkpoints.applied(shard_id, after)

    async def finish(
        self, shard_id: ShardId, counter: int, sequence_number: SequenceNumber | None
    ) -> None:
        """Mark the shard finished and free its lease, fenced like ``save``."""
        if not await self._checkpoints.finish(shard_id, counter, sequence_number):
            raise self._refused("finish", shard_id, counter)

    async def collect(self, shard_id: ShardId, counter: int) -> bool:
        """Delete a finished shard's row (its children have started), unless it changed."""
        return await self._rows.collect(shard_id, counter)

    # -- workers and the sync leader -------------------------------------------------------

    async def forget_worker(self, worker_id: str, heartbeat: int) -> bool:
        """Delete a dead worker's heartbeat row, unless it beat again meanwhile."""
        return await self._rows.forget_worker(worker_id, heartbeat)

    async def take_leader(self, seen: int | None) -> int | None:
        """Become the sync leader if the leader lease is still at ``seen`` (None: no row yet);
        the new counter, or None when another worker came first."""
        return await self._rows.take_leader(seen)

    def _refused(self, operation: str, shard_id: ShardId, counter: int) -> LeaseLostError:
        return LeaseLostError(
            f"{operation} refused (processor {self.processor!r}, shard {shard_id!r}): "
            f"worker {self.worker_id!r} no longer holds the lease at counter {counter}",
            shard_id=shard_id,
        )
