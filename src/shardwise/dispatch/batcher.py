"""Batching: cut a shard's records into batches by ``batch_size`` and the batching window.

Pure and clock-injected, so it can be tested without sleeping. Lambda's rule: a batch is
invoked when it is full, or when ``maximum_batching_window_in_seconds`` has passed since its
first record was read (with a window of 0, whatever one GetRecords call returned is a batch).

A batch is also cut before its event JSON would pass the payload limit (Lambda's 6 MB for a
synchronous invocation). A single record larger than the limit becomes a batch of its own,
marked by ``Batch.payload_bytes``, for dispatch to route to the destination.
"""

from __future__ import annotations

from collections.abc import Iterable

import orjson

from shardwise.records import Batch, ShardId, StreamRecord

__all__ = ["EVENT_OVERHEAD_BYTES", "LAMBDA_PAYLOAD_LIMIT_BYTES", "Batcher", "record_bytes"]

# Lambda's synchronous invocation payload limit.
LAMBDA_PAYLOAD_LIMIT_BYTES = 6 * 1024 * 1024
# {"Records":[]} around the records.
EVENT_OVERHEAD_BYTES = len(b'{"Records":[]}')


def record_bytes(record: StreamRecord) -> int:
    """A record's share of the event JSON: its encoding plus the separating comma."""
    return len(orjson.dumps(record)) + 1


class Batcher:
    """Accumulates the records of one shard, in order, and hands out ready batches."""

    def __init__(
        self,
        stream_arn: str,
        shard_id: ShardId,
        batch_size: int,
        window_s: float,
        payload_limit_bytes: int | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self._stream_arn = stream_arn
        self._shard_id = shard_id
        self._batch_size = batch_size
        self._window_s = window_s
        self._limit = payload_limit_bytes
        self._pending: list[StreamRecord] = []
        self._sizes: list[int] = []
        self._first_read_at: float | None = None

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, records: Iterable[StreamRecord], now: float) -> None:
        before = len(self._pending)
        self._pending.extend(records)
        added = self._pending[before:]
        if self._limit is not None:
            self._sizes.extend(record_bytes(r) for r in added)
        else:
            self._sizes.extend([0] * len(added))
        if before == 0 and self._pending:
            self._first_read_at = now

    def seconds_until_due(self, now: float) -> float | None:
        """How long the window still has to run for the pending records (None if empty)."""
        if self._first_read_at is None:
            return None
        return max(0.0, self._first_read_at + self._window_s - now)

    def take(self, now: float, *, flush: bool = False) -> list[Batch]:
        """Full batches, plus the remainder when the window has closed or ``flush``."""
        batches: list[Batch] = []
        while (count := self._full_batch()) is not None:
            batches.append(self._cut(count))
        due = self.seconds_until_due(now)
        if self._pending and (flush or (due is not None and due <= 0)):
            batches.append(self._cut(len(self._pending)))
        if not self._pending:
            self._first_read_at = None
        elif batches:
            # Records left behind start a new window from now.
            self._first_read_at = now
        return batches

    def _full_batch(self) -> int | None:
        """How many leading records make a full batch now: ``batch_size`` of them, or as
        many as fit under the payload limit (at least one); None if not full yet."""
        if self._limit is not None:
            total = EVENT_OVERHEAD_BYTES - 1  # n records have n - 1 commas
            for index, size in enumerate(self._sizes[: self._batch_size]):
                if total + size > self._limit:
                    return max(index, 1)
                total += size
        return self._batch_size if len(self._pending) >= self._batch_size else None

    def _cut(self, count: int) -> Batch:
        records, self._pending = self._pending[:count], self._pending[count:]
        sizes, self._sizes = self._sizes[:count], self._sizes[count:]
        return Batch(
            stream_arn=self._stream_arn,
            shard_id=self._shard_id,
            records=records,
            payload_bytes=EVENT_OVERHEAD_BYTES - 1 + sum(sizes) if self._limit else 0,
        )
