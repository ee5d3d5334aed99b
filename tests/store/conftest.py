"""Store test fixtures: a migrated store on each backend, and leases to checkpoint through."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol, TypeAlias

import pytest

from shardwise.leases.table import LeaseTable
from shardwise.records import ShardId
from shardwise.store import CheckpointStore

__all__ = ["ARN", "PROCESSOR", "Holding", "TakeLeases", "take_leases"]

ARN = "arn:aws:dynamodb:us-east-1:123456789012:table/orders/stream/2024-01-01T00:00:00.000"
PROCESSOR = "orders"

# A worker's lease table and the counter of each lease it holds.
Holding: TypeAlias = tuple[LeaseTable, dict[ShardId, int]]


class TakeLeases(Protocol):
    async def __call__(
        self, shard_ids: Iterable[ShardId], *, processor: str = PROCESSOR, worker_id: str = "w"
    ) -> Holding: ...


@pytest.fixture
def take_leases(store: CheckpointStore) -> TakeLeases:
    """Take the free leases of registered shards as one worker on ``store``: checkpoints are
    written only through a lease, fenced, as the daemon writes them."""

    async def take(
        shard_ids: Iterable[ShardId], *, processor: str = PROCESSOR, worker_id: str = "w"
    ) -> Holding:
        table = LeaseTable(store, processor=processor, stream_arn=ARN, worker_id=worker_id)
        counters: dict[ShardId, int] = {}
        for shard_id in shard_ids:
            taken = await table.take(shard_id, 0)
            assert taken is not None, f"the lease of {shard_id} is not free"
            counters[shard_id] = taken.counter
        return table, counters

    return take
