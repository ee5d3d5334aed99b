"""In-memory progress per processor and shard: what the demo, `status` and health read."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from shardwise.records import ShardId

__all__ = ["ProcessorProgress", "ShardProgress"]


@dataclass(slots=True)
class ShardProgress:
    """Where one shard stands."""

    shard_id: ShardId
    checkpoint: str | None = None
    finished: bool = False
    records_processed: int = 0
    # ApproximateCreationDateTime (epoch seconds) of the last processed record.
    last_record_created_s: float | None = None
    checkpointed_at_monotonic: float | None = None


@dataclass(slots=True)
class ProcessorProgress:
    """Counters for one processor; updated by its shard consumers, read by observers."""

    name: str
    get_records_calls: int = 0
    records_read: int = 0
    records_processed: int = 0
    batches_processed: int = 0
    handler_failures: int = 0
    trimmed_gaps: int = 0
    shards: dict[ShardId, ShardProgress] = field(default_factory=dict)

    def shard(self, shard_id: ShardId) -> ShardProgress:
        progress = self.shards.get(shard_id)
        if progress is None:
            progress = self.shards[shard_id] = ShardProgress(shard_id)
        return progress

    def iterator_age_s(self, now_s: float | None = None) -> float | None:
        """Lambda's IteratorAge: now minus the creation time of the last processed record."""
        now = time.time() if now_s is None else now_s
        ages = [
            now - shard.last_record_created_s
            for shard in self.shards.values()
            if shard.last_record_created_s is not None and not shard.finished
        ]
        return max(ages) if ages else None
