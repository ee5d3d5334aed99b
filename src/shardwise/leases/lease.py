"""A lease this worker holds, and the fenced checkpoints written through it.

A ``Lease`` is what the runner sees of one shard it may process: where the checkpoint stood
when it was taken (``position``) and a ``lost`` event to stop on. The coordinator renews it
and moves its deadline; ``FencedCheckpointer`` writes the shard's checkpoint only while the
lease is still this worker's, both here (deadline, state) and in the store (owner and
counter), and raises ``LeaseLostError`` otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncConnection

from shardwise.errors import LeaseLostError
from shardwise.leases.table import LeaseTable
from shardwise.records import Position, SequenceNumber, ShardId
from shardwise.store.fenced_writes import KEEP, Keep, ShardTransaction

__all__ = ["FencedCheckpointer", "LeaderLease", "Lease", "LeaseTransaction", "LossReason"]


class LossReason(enum.Enum):
    """Why a lease's ``lost`` event was set."""

    TAKEN = "taken"  # another worker changed the lease: checkpoints are refused
    EXPIRED = "expired"  # not renewed before its deadline: checkpoints are refused
    HANDOFF = "handoff"  # another worker asked for it: checkpoints work until release()
    RELEASED = "released"  # this worker gave it up


class Lease:
    """A shard this worker holds. ``lost`` is set when it must stop processing the shard."""

    def __init__(
        self, shard_id: ShardId, counter: int, position: Position, deadline: float
    ) -> None:
        self.shard_id = shard_id
        self.position = position  # where the checkpoint stood when the lease was taken
        self.lost = asyncio.Event()
        self.reason: LossReason | None = None
        self.finished = False
        self.counter = counter  # the fencing token; moved by the coordinator's renewals
        self.deadline = deadline  # on the coordinator's clock: act on the lease only before
        self.lock = asyncio.Lock()  # a renewal and a checkpoint never use the counter at once

    def writable(self, now: float) -> bool:
        """Whether a checkpoint may be written through this lease at ``now``."""
        held = self.reason is None or self.reason is LossReason.HANDOFF
        return held and not self.finished and now < self.deadline

    def lose(self, reason: LossReason) -> None:
        """Set ``lost``; the first reason sticks (a hand-off may still turn into another)."""
        if self.reason is None or self.reason is LossReason.HANDOFF:
            self.reason = reason
        self.lost.set()

    def __repr__(self) -> str:
        state = "finished" if self.finished else self.reason.value if self.reason else "held"
        return f"<Lease {self.shard_id} counter={self.counter} {state}>"


class LeaseTransaction:
    """An open ``FencedCheckpointer.transaction``: ``connection`` for the processor's own
    statements, ``checkpoint`` to move the shard's checkpoint with them."""

    def __init__(
        self, checkpointer: FencedCheckpointer, lease: Lease, transaction: ShardTransaction
    ) -> None:
        self._checkpointer = checkpointer
        self._lease = lease
        self._transaction = transaction

    @property
    def connection(self) -> AsyncConnection:
        return self._transaction.connection

    async def checkpoint(
        self, sequence_number: SequenceNumber | None, window_state: str | Keep | None = KEEP
    ) -> None:
        """Move the checkpoint in the transaction; ``LeaseLostError`` if the lease is gone
        (the transaction is then rolled back as the error leaves the block)."""
        await self._checkpointer._save_in(
            self._lease, self._transaction, sequence_number, window_state
        )

    async def checkpoint_window(
        self, sequence_number: SequenceNumber | None, window_state: str | None
    ) -> None:
        """``checkpoint`` with the open tumbling window (None: no window open)."""
        await self.checkpoint(sequence_number, window_state)


@dataclass(slots=True)
class LeaderLease:
    """The shard-sync leader lease, while this worker holds it."""

    counter: int
    deadline: float


class FencedCheckpointer:
    """A ``Checkpointer`` for one lease's consumer: writes need the lease, else they raise
    ``LeaseLostError``. ``gone`` tells the coordinator the lease is no longer held."""

    def __init__(
        self,
        table: LeaseTable,
        lease: Lease,
        *,
        clock: Callable[[], float],
        gone: Callable[[Lease], None],
    ) -> None:
        self._table = table
        self._lease = lease
        self._clock = clock
        self._gone = gone

    async def save(self, shard_id: ShardId, sequence_number: SequenceNumber) -> None:
        await self.save_window(shard_id, sequence_number, KEEP)

    async def save_window(
        self,
        shard_id: ShardId,
        sequence_number: SequenceNumber | None,
        window_state: str | Keep | None,
    ) -> None:
        """Checkpoint (if ``sequence_number``) and the open tumbling window, in one write."""
        lease = self._require(shard_id, "checkpoint")
        async with lease.lock:
            self._check(lease, "checkpoint")
            try:
                await self._table.save(
                    shard_id, lease.counter, sequence_number, window_state=window_state
                )
            except LeaseLostError:
                self._lose(lease, LossReason.TAKEN)
                raise

    async def window_state(self) -> str | None:
        """The open tumbling window stored with this lease's checkpoint."""
        return await self._table.window_state(self._lease.shard_id)

    @contextlib.asynccontextmanager
    async def transaction(self, shard_id: ShardId) -> AsyncIterator[LeaseTransaction]:
        """A store transaction for a processor's own writes that commits with the shard's
        checkpoint (``LeaseTransaction.checkpoint``), fenced: a worker that lost the lease
        meanwhile commits nothing. Raising inside the block rolls it all back."""
        lease = self._require(shard_id, "transaction")
        self._check(lease, "transaction")
        async with self._table.transaction(shard_id) as transaction:
            yield LeaseTransaction(self, lease, transaction)

    async def finish(self, shard_id: ShardId, sequence_number: SequenceNumber | None) -> None:
        lease = self._require(shard_id, "finish")
        async with lease.lock:
            self._check(lease, "finish")
            try:
                await self._table.finish(shard_id, lease.counter, sequence_number)
            except LeaseLostError:
                self._lose(lease, LossReason.TAKEN)
                raise
            lease.finished = True
            self._gone(lease)

    async def _save_in(
        self,
        lease: Lease,
        transaction: ShardTransaction,
        sequence_number: SequenceNumber | None,
        window_state: str | Keep | None,
    ) -> None:
        async with lease.lock:  # the counter as of now: renewals move it
            self._check(lease, "checkpoint")
            try:
                await self._table.save_in(
                    transaction, lease.counter, sequence_number, window_state=window_state
                )
            except LeaseLostError:
                self._lose(lease, LossReason.TAKEN)
                raise

    def _require(self, shard_id: ShardId, operation: str) -> Lease:
        if shard_id != self._lease.shard_id:
            raise ValueError(f"{operation} for shard {shard_id} through {self._lease!r}")
        return self._lease

    def _check(self, lease: Lease, operation: str) -> None:
        if lease.writable(self._clock()):
            return
        if lease.reason is None and not lease.finished:
            self._lose(lease, LossReason.EXPIRED)  # the watchdog has not fired yet
        raise LeaseLostError(
            f"{operation} refused: {lease!r} is no longer held by this worker",
            shard_id=lease.shard_id,
        )

    def _lose(self, lease: Lease, reason: LossReason) -> None:
        lease.lose(reason)
        self._gone(lease)
