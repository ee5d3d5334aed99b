"""Progress per processor and shard: the one sink dispatch reports events to.

Shard consumers call the event methods (``polled``, ``invoked``, ``checkpointed``, ...);
the demo, ``shardwise status``, health checks and the Prometheus exporter read the
counters. Keep the methods cheap: they run on the hot path.
"""

from __future__ import annotations

import time
from collections import Counter
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
    # ApproximateCreationDateTime (epoch seconds) of the last record delivered while the
    # shard was behind; None once a poll came back empty (caught up).
    last_record_created_s: float | None = None
    checkpointed_at_monotonic: float | None = None
    # Records read but not yet checkpointed: waiting for the handler or the window.
    pending: int = 0


@dataclass(slots=True)
class ProcessorProgress:
    """Counters for one processor; updated by its shard consumers, read by observers."""

    name: str
    get_records_calls: int = 0
    empty_polls: int = 0
    records_read: int = 0
    records_processed: int = 0
    batches_processed: int = 0
    handler_failures: int = 0
    handler_seconds_total: float = 0.0
    checkpoint_writes: int = 0
    checkpoint_seconds_total: float = 0.0
    trimmed_gaps: int = 0
    api_errors: Counter[str] = field(default_factory=Counter)
    shards: dict[ShardId, ShardProgress] = field(default_factory=dict)

    def shard(self, shard_id: ShardId) -> ShardProgress:
        progress = self.shards.get(shard_id)
        if progress is None:
            progress = self.shards[shard_id] = ShardProgress(shard_id)
        return progress

    # -- events ----------------------------------------------------------------------------

    def polled(self, shard_id: ShardId, records: int) -> None:
        """A GetRecords call returned ``records`` records."""
        self.get_records_calls += 1
        self.records_read += records
        shard = self.shard(shard_id)
        shard.pending += records
        if records == 0:
            self.empty_polls += 1
            if shard.pending == 0:
                shard.last_record_created_s = None  # caught up: no iterator age

    def api_failed(self, code: str | None) -> None:
        """A stream API call failed (throttling, 5xx, transport, ...)."""
        self.api_errors[code or "Unknown"] += 1

    def invoked(self, size: int, duration_s: float, *, ok: bool) -> None:
        """The handler ran on a batch of ``size`` records."""
        self.handler_seconds_total += duration_s
        if not ok:
            self.handler_failures += 1

    def checkpointed(
        self,
        shard_id: ShardId,
        sequence: str,
        records: int,
        last_created_s: float | None,
        duration_s: float,
    ) -> None:
        """``records`` records up to ``sequence`` are done and durably checkpointed."""
        shard = self.shard(shard_id)
        shard.checkpoint = sequence
        shard.checkpointed_at_monotonic = time.monotonic()
        shard.records_processed += records
        shard.pending = max(0, shard.pending - records)
        if last_created_s is not None:
            shard.last_record_created_s = last_created_s
        self.records_processed += records
        self.batches_processed += 1
        self.checkpoint_writes += 1
        self.checkpoint_seconds_total += duration_s

    def released(self, shard_id: ShardId, records: int) -> None:
        """Records read but given up on (stopping): they will be read again."""
        shard = self.shard(shard_id)
        shard.pending = max(0, shard.pending - records)

    def finished(self, shard_id: ShardId) -> None:
        shard = self.shard(shard_id)
        shard.finished = True
        shard.pending = 0
        shard.last_record_created_s = None

    def trimmed(self, shard_id: ShardId) -> None:
        """Records of ``shard_id`` aged out of the stream before they were read."""
        self.trimmed_gaps += 1
        self.shard(shard_id)

    # -- views -----------------------------------------------------------------------------

    def iterator_age_s(self, now_s: float | None = None) -> float | None:
        """Lambda's IteratorAge: now minus the creation time of the last record delivered,
        for shards that are behind; None when every shard is caught up."""
        now = time.time() if now_s is None else now_s
        ages = [
            now - shard.last_record_created_s
            for shard in self.shards.values()
            if shard.last_record_created_s is not None and not shard.finished
        ]
        return max(ages) if ages else None
