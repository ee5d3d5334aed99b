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
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
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
        self,
        checkpointer: FencedCheckpointer,
        lease: Lease,
        transaction: ShardTransaction,
        *,
        locked: bool,
    ) -> None:
        self._checkpointer = checkpointer
        self._lease = lease
        self._transaction = transaction
        self._locked = locked  # the transaction holds the lease's lock to its end

    @property
    def connection(self) -> AsyncConnection:
        return self._transaction.connection

    @property
    def broken(self) -> bool:
        return self._transaction.broken

    async def checkpoint(
        self, sequence_number: SequenceNumber | None, window_state: str | Keep | None = KEEP
    ) -> None:
        """Move the checkpoint in the transaction; ``LeaseLostError`` if the lease is gone
        (the transaction is then rolled back as the error leaves the block)."""
        table, transaction = self._checkpointer._table, self._transaction
        await self._checkpointer._fenced(
            self._lease,
            "checkpoint",
            lambda counter: table.save_in(
                transaction, counter, sequence_number, window_state=window_state
            ),
            locked=self._locked,
        )

    async def checkpoint_window(
        self, sequence_number: SequenceNumber | None, window_state: str | None
    ) -> None:
        """``checkpoint`` with the open tumbling window (None: no window open)."""
        await self.checkpoint(sequence_number, window_state)

    async def applied(
        self, sequence_numbers: Sequence[SequenceNumber], checkpointed: SequenceNumber | None
    ) -> None:
        """Record in the transaction that it applied ``sequence_numbers`` (a lane's records
        the checkpoint cannot pass yet); ``LeaseLostError`` if the lease is gone."""
        table, transaction = self._checkpointer._table, self._transaction
        await self._checkpointer._fenced(
            self._lease,
            "checkpoint",
            lambda counter: table.applied_in(transaction, counter, sequence_numbers, checkpointed),
            locked=self._locked,
        )


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
        await self._fenced(
            self._require(shard_id, "checkpoint"),
            "checkpoint",
            lambda counter: self._table.save(
                shard_id, counter, sequence_number, window_state=window_state
            ),
        )

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
        # SQLite: the transaction holds the file's write lock from its start, so a renewal
        # cannot write until it ends. Holding the lease's lock as long (taken before the
        # write lock, as a renewal takes them) keeps a renewal that holds the lease's lock
        # from waiting on the file while the transaction waits on the lease's lock.
        one_writer = self._table.one_writer
        async with lease.lock if one_writer else contextlib.nullcontext():
            async with self._table.transaction(shard_id) as transaction:
                yield LeaseTransaction(self, lease, transaction, locked=one_writer)

    async def applied(
        self, shard_id: ShardId, after: SequenceNumber | None
    ) -> frozenset[SequenceNumber]:
        """The records past the checkpoint ``after`` that transactional lanes applied."""
        self._require(shard_id, "read applied records")
        return await self._table.applied(shard_id, after)

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

    async def _fenced(
        self,
        lease: Lease,
        operation: str,
        write: Callable[[int], Awaitable[None]],
        *,
        locked: bool = False,
    ) -> None:
        """Run ``write`` with the lease's counter as of now (renewals move it, under the
        lease's lock, which ``locked`` says the caller holds); a write refused for the
        counter loses the lease."""
        async with contextlib.nullcontext() if locked else lease.lock:
            self._check(lease, operation)
            try:
                await write(lease.counter)
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
