"""ParallelizationFactor: up to N batches of one shard in flight, one per lane.

Records are assigned to a lane by their partition key (the item's key attributes), so the
records of one item always go to the same lane and reach the handler in order. Each lane
batches and delivers on its own (Lambda's failure model per lane, via ``Delivery``).

The shard's checkpoint is the ``Watermark``: the highest sequence number below which every
record read is resolved - a failure being retried in one lane holds the checkpoint back
for every lane, so it never passes an unfinished record.
"""

from __future__ import annotations

import asyncio
import time
import zlib
from collections import deque
from collections.abc import Awaitable, Callable, Sequence

import orjson

from shardwise.dispatch.batcher import Batcher
from shardwise.records import (
    Batch,
    SequenceNumber,
    ShardId,
    StreamRecord,
    shape_of,
)

__all__ = ["Lanes", "Watermark", "lane_of"]

# Records read but not yet resolved, per lane, before reading pauses (backpressure).
PENDING_BATCHES_PER_LANE = 2


def lane_of(record: StreamRecord, lanes: int) -> int:
    """The lane of a record: a stable hash of its partition key (DynamoDB: the item's key
    attributes; Kinesis: the partition key)."""
    if lanes == 1:
        return 0
    key = shape_of(record).partition_key(record)
    return zlib.crc32(orjson.dumps(key, option=orjson.OPT_SORT_KEYS)) % lanes


class Watermark:
    """The highest sequence number below which every record read is resolved. Pure."""

    def __init__(self) -> None:
        self._order: deque[str] = deque()
        self._resolved: set[str] = set()
        self._mark: str | None = None

    @property
    def mark(self) -> str | None:
        return self._mark

    @property
    def outstanding(self) -> int:
        return len(self._order)

    def read(self, sequence_numbers: Sequence[str]) -> None:
        """Records read, in shard order."""
        self._order.extend(sequence_numbers)

    def resolve(self, sequence_numbers: Sequence[str]) -> str | None:
        """Records resolved (in any order); the new mark if it moved, else None."""
        self._resolved.update(sequence_numbers)
        moved = None
        while self._order and self._order[0] in self._resolved:
            moved = self._order.popleft()
            self._resolved.discard(moved)
        if moved is not None:
            self._mark = moved
        return moved


class _Lane:
    def __init__(self, batcher: Batcher) -> None:
        self.batcher = batcher
        self.queue: deque[Batch] = deque()
        self.task: asyncio.Task[None] | None = None


Deliver = Callable[[Batch], Awaitable[bool]]
# Called with the new checkpoint (None if it did not move) and the records a lane resolved
# (None for filtered-out records); False when stopping.
Commit = Callable[[SequenceNumber | None, Batch | None], Awaitable[bool]]


class Lanes:
    """The lanes of one shard; ``deliver`` runs Lambda's failure model on a batch and calls
    ``resolved`` for each resolved part of it (see ``Delivery``)."""

    def __init__(
        self,
        count: int,
        *,
        stream_arn: str,
        shard_id: ShardId,
        batch_size: int,
        window_s: float,
        payload_limit_bytes: int | None,
        stop: asyncio.Event,
        tasks: asyncio.TaskGroup,
    ) -> None:
        self._lanes = [
            _Lane(Batcher(stream_arn, shard_id, batch_size, window_s, payload_limit_bytes))
            for _ in range(count)
        ]
        self._stop = stop
        self._tasks = tasks
        self._watermark = Watermark()
        self._limit = PENDING_BATCHES_PER_LANE * batch_size * count
        self._progress = asyncio.Event()
        self._lock = asyncio.Lock()
        self._commit: Commit | None = None
        self._deliver: Deliver | None = None
        self._failed = False

    def bind(self, deliver: Deliver, commit: Commit) -> None:
        self._deliver = deliver
        self._commit = commit

    @property
    def pending(self) -> int:
        """Records read and not resolved yet."""
        return self._watermark.outstanding

    def seconds_until_due(self, now: float) -> float | None:
        dues = [d for lane in self._lanes if (d := lane.batcher.seconds_until_due(now)) is not None]
        return min(dues) if dues else None

    async def add(self, read: Sequence[StreamRecord], kept: Sequence[StreamRecord]) -> bool:
        """Records of a page (``kept`` of them passed the filters); False when stopping."""
        if not read:
            return True
        shape = shape_of(read[0])
        self._watermark.read([shape.sequence_number(r) for r in read])
        now = time.monotonic()
        for record in kept:
            self._lanes[lane_of(record, len(self._lanes))].batcher.add([record], now)
        if len(kept) < len(read):
            kept_ids = {id(r) for r in kept}
            filtered = [shape.sequence_number(r) for r in read if id(r) not in kept_ids]
            return await self._resolve(filtered, None)
        return True

    async def dispatch(self, *, flush: bool) -> bool:
        """Start ready batches in their lanes; wait while too much is pending. False when
        stopping or a lane could not finish."""
        now = time.monotonic()
        for lane in self._lanes:
            lane.queue.extend(lane.batcher.take(now, flush=flush))
            if lane.queue and (lane.task is None or lane.task.done()):
                lane.task = self._tasks.create_task(self._work(lane))
        while self.pending > self._limit and not self._stop.is_set() and not self._failed:
            self._progress.clear()
            await self._progress.wait()
        return not (self._stop.is_set() or self._failed)

    async def drain(self) -> bool:
        """Wait until every lane is idle; True when everything read is resolved."""
        running = [lane.task for lane in self._lanes if lane.task is not None]
        if running:
            await asyncio.wait(running)
        return not self._failed and self.pending == 0

    async def resolved(self, part: Batch) -> bool:
        """Records resolved in a lane (``Delivery``'s commit): move the checkpoint if the
        watermark moved."""
        return await self._resolve(part.sequence_numbers(), part)

    async def _resolve(self, sequence_numbers: Sequence[str], part: Batch | None) -> bool:
        assert self._commit is not None
        async with self._lock:
            mark = self._watermark.resolve(sequence_numbers)
            self._progress.set()
            return await self._commit(SequenceNumber(mark) if mark else None, part)

    async def _work(self, lane: _Lane) -> None:
        assert self._deliver is not None
        while lane.queue and not self._stop.is_set():
            if not await self._deliver(lane.queue.popleft()):
                self._failed = True
                break
        self._progress.set()
