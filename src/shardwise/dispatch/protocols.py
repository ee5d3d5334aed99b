"""What dispatch reads from and writes to: the ``ShardSource`` and ``Checkpointer`` protocols.

Dispatch owns these interfaces and imports neither ``shardwise.sources`` nor
``shardwise.leases``: a stream source (``sources/``: DynamoDB Streams today, Kinesis later)
implements ``ShardSource`` and translates its API's errors into
``shardwise.errors.SourceError`` subclasses; the lease's ``FencedCheckpointer`` (``leases/``)
implements ``Checkpointer`` and raises ``LeaseLostError`` once the lease is gone. The runner
wires the two to a ``ShardConsumer``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Protocol, TypeAlias

from shardwise.records import (
    Batch,
    Position,
    ReadLimits,
    RecordPage,
    SequenceNumber,
    ShardId,
    ShardListing,
)

__all__ = [
    "MAX_RECORDS_PER_CALL",
    "Checkpointer",
    "ShardSource",
    "Transaction",
    "TransactionStore",
    "Transactional",
    "Transactions",
]

# DynamoDB Streams' GetRecords returns at most this many records per call (and at most 1 MB).
MAX_RECORDS_PER_CALL = 1000


class ShardSource(Protocol):
    """Lists the shards of one stream and reads them."""

    @property
    def stream_arn(self) -> str: ...

    @property
    def read_limits(self) -> ReadLimits:
        """Its API's page size and polling budget per shard."""
        ...

    async def describe(self) -> ShardListing:
        """The stream's status and every shard currently in it (all pages)."""
        ...

    async def get_iterator(self, shard_id: ShardId, position: Position) -> str:
        """An iterator for ``shard_id`` at ``position``."""
        ...

    async def get_records(self, shard_id: ShardId, iterator: str, limit: int) -> RecordPage:
        """The next page of records, in the handler's record shape."""
        ...


class Transaction(Protocol):
    """An open store transaction of a transactional processor's invocation."""

    @property
    def connection(self) -> Any:
        """The ``AsyncConnection`` the handler writes through."""

    @property
    def broken(self) -> bool:
        """The connection to the store broke during the transaction (a statement of the
        handler failed on it): the store's failure, not the handler's."""

    async def checkpoint(self, sequence_number: SequenceNumber | None) -> None:
        """Move the shard's checkpoint inside the transaction (fenced: ``LeaseLostError``
        when the lease is gone, and the transaction then rolls back)."""

    async def checkpoint_window(
        self, sequence_number: SequenceNumber | None, window_state: str | None
    ) -> None:
        """``checkpoint`` (None: unchanged) with the open tumbling window (None: no window
        open), both inside the transaction."""

    async def applied(
        self, sequence_numbers: Sequence[SequenceNumber], checkpointed: SequenceNumber | None
    ) -> None:
        """Record inside the transaction, fenced like ``checkpoint``, that it applied
        ``sequence_numbers``: a lane's records (``parallelization_factor`` > 1) the shard's
        checkpoint cannot pass yet. ``checkpointed`` is the shard's durable checkpoint:
        what is recorded at or before it is not needed any more."""


# Opens a transaction on a shard: committed when the block ends, rolled back if it raises.
Transactions: TypeAlias = Callable[[ShardId], AbstractAsyncContextManager[Transaction]]


class TransactionStore(Protocol):
    """Where a transactional processor's invocations run: the store's database."""

    def transaction(self, shard_id: ShardId) -> AbstractAsyncContextManager[Transaction]:
        """A transaction on ``shard_id``: committed when the block ends, rolled back if it
        raises."""
        ...

    async def applied(
        self, shard_id: ShardId, after: SequenceNumber | None
    ) -> frozenset[SequenceNumber]:
        """The records past the checkpoint ``after`` that lanes' transactions applied
        (``Transaction.applied``): a worker starting the shard skips them."""
        ...


@dataclass(frozen=True, slots=True)
class Transactional:
    """A transactional processor's side of delivery: ``open`` a transaction on the shard,
    ``transacted`` to count a part its transaction checkpointed (with when its invocation
    started, ``time.monotonic()``), and ``checkpointed``, the shard's durable checkpoint."""

    open: Transactions
    transacted: Callable[[Batch, float], None]
    checkpointed: Callable[[], SequenceNumber | None] = lambda: None


class Checkpointer(Protocol):
    """Durable positions of one processor on one stream."""

    async def save(self, shard_id: ShardId, sequence_number: SequenceNumber) -> None: ...

    async def save_window(
        self, shard_id: ShardId, sequence_number: SequenceNumber | None, window_state: str | None
    ) -> None:
        """The checkpoint (None: unchanged) and the open tumbling window, in one write."""

    async def window_state(self) -> str | None:
        """The open tumbling window stored with the checkpoint."""

    async def finish(self, shard_id: ShardId, sequence_number: SequenceNumber | None) -> None: ...
