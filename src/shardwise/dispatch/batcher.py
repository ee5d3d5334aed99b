"""Batching: cut a shard's records into batches by ``batch_size`` and the batching window.

Pure and clock-injected, so it can be tested without sleeping. Lambda's rule: a batch is
invoked when it is full, or when ``maximum_batching_window_in_seconds`` has passed since its
first record was read (with a window of 0, whatever one GetRecords call returned is a batch).
"""

from __future__ import annotations

from collections.abc import Iterable

from shardwise.records import Batch, ShardId, StreamRecord

__all__ = ["Batcher"]


class Batcher:
    """Accumulates the records of one shard, in order, and hands out ready batches."""

    def __init__(self, stream_arn: str, shard_id: ShardId, batch_size: int, window_s: float):
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self._stream_arn = stream_arn
        self._shard_id = shard_id
        self._batch_size = batch_size
        self._window_s = window_s
        self._pending: list[StreamRecord] = []
        self._first_read_at: float | None = None

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, records: Iterable[StreamRecord], now: float) -> None:
        before = len(self._pending)
        self._pending.extend(records)
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
        size = self._batch_size
        while len(self._pending) >= size:
            batches.append(self._cut(size))
        due = self.seconds_until_due(now)
        if self._pending and (flush or (due is not None and due <= 0)):
            batches.append(self._cut(len(self._pending)))
        if not self._pending:
            self._first_read_at = None
        elif batches:
            # Records left behind start a new window from now.
            self._first_read_at = now
        return batches

    def _cut(self, count: int) -> Batch:
        records, self._pending = self._pending[:count], self._pending[count:]
        return Batch(stream_arn=self._stream_arn, shard_id=self._shard_id, records=records)
