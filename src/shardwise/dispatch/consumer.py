"""One shard's lifecycle: read pages, cut batches, deliver them, checkpoint, finish.

Records of a shard are delivered strictly in order with one batch in flight. ``Delivery``
applies Lambda's failure model to each batch and checkpoints records as they are resolved
(processed, or stored in the on-failure destination); a closed shard read to its end is
marked finished so its children can start.

Source errors are handled here, per shard:

* ``ExpiredIteratorError``: reopen after the last record read (nothing re-delivered).
* ``TrimmedDataError``: per ``on_trimmed_data`` - ``trim_horizon`` logs an error naming the
  shard and the gap, counts it and resumes at TRIM_HORIZON; ``stop`` raises.
* ``ShardNotFoundError``: the shard aged out of the stream; logged and counted, and the
  runner marks it finished so its children can start.
* throttling, 5xx, transport errors: retried with jittered exponential backoff.
"""

from __future__ import annotations

import asyncio
import enum
import math
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol

import structlog

from shardwise.clock import API_BACKOFF, sleep_or_stop
from shardwise.destinations.base import Destination
from shardwise.dispatch.batcher import Batcher
from shardwise.dispatch.delivery import Delivery, FailurePolicy
from shardwise.dispatch.filters import RecordFilter
from shardwise.dispatch.lanes import Lanes
from shardwise.dispatch.windows import OpenWindow, WindowedDelivery
from shardwise.errors import (
    ExpiredIteratorError,
    ShardNotFoundError,
    ShardwiseError,
    SourceError,
    StoreError,
    ThrottledError,
    TrimmedDataError,
    first_error,
)
from shardwise.observe.progress import ProcessorProgress
from shardwise.processors import Processor
from shardwise.records import (
    Batch,
    Position,
    RecordPage,
    SequenceNumber,
    ShardId,
    StartingPosition,
)
from shardwise.sources.base import MAX_RECORDS_PER_CALL, ShardSource

__all__ = [
    "Checkpointer",
    "ConsumerSettings",
    "ShardConsumer",
    "ShardOutcome",
    "idle_poll_interval",
    "on_poll_grid",
]

log = structlog.get_logger("shardwise.dispatch")


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


class ShardOutcome(enum.Enum):
    FINISHED = "finished"  # closed and fully processed
    STOPPED = "stopped"  # shutdown requested
    GONE = "gone"  # no longer in the stream


@dataclass(frozen=True, slots=True)
class ConsumerSettings:
    batch_size: int
    window_s: float
    on_trimmed_data: Literal["trim_horizon", "stop"] = "trim_horizon"
    policy: FailurePolicy = field(default_factory=FailurePolicy)
    # TumblingWindowInSeconds: 0 = no windows.
    tumbling_window_s: int = 0
    # ParallelizationFactor: batches of one shard in flight at once, one lane per key hash.
    parallelization_factor: int = 1
    # FilterCriteria: records matching no filter are consumed without an invocation.
    record_filter: RecordFilter | None = None
    # Lambda polls each shard about 4 times per second; so does shardwise while a shard has
    # data. An idle shard is polled less and less often, down to one call per
    # max_poll_interval_s (GetRecords outside Lambda is billed per request).
    poll_interval_s: float = 0.25
    max_poll_interval_s: float = 3.0


async def _discard(prefetch: asyncio.Future[RecordPage]) -> None:
    """Cancel a read-ahead nobody will use; its outcome (page or error) is dropped."""
    prefetch.cancel()
    await asyncio.wait([prefetch])
    if not prefetch.cancelled():
        prefetch.exception()  # retrieved: the records are read again from the checkpoint


# Empty polls at full speed before an idle shard starts to back off (about one second).
IDLE_POLLS_AT_FULL_SPEED = 4


def idle_poll_interval(empty_polls: int, base_s: float, max_s: float) -> float:
    """Seconds between polls after ``empty_polls`` empty pages in a row: ``base_s`` at
    first, then doubling up to ``max_s``, with +-10% jitter so idle shards do not poll in
    lockstep."""
    if empty_polls <= IDLE_POLLS_AT_FULL_SPEED:
        return base_s
    steps = min(empty_polls - IDLE_POLLS_AT_FULL_SPEED, 16)
    interval = min(max_s, base_s * 2.0**steps)
    return interval * random.uniform(0.9, 1.1)


# Backed-off shards wake on a shared grid of this step (the event loop's clock), so the
# polls of many idle shards go out, and their replies come back, in one turn of the loop
# instead of a turn each: a third less CPU for 1000 idle shards (bench/README.md), for at
# most this much more delay on a shard that is idle anyway.
IDLE_POLL_GRID_S = 0.1


def on_poll_grid(delay_s: float, now: float, grid_s: float = IDLE_POLL_GRID_S) -> float:
    """``delay_s`` stretched by less than ``grid_s`` so that it ends on a grid line."""
    return math.ceil((now + delay_s) / grid_s) * grid_s - now


class ShardConsumer:
    """Reads one shard and feeds its batches to the processor, in order."""

    def __init__(
        self,
        *,
        source: ShardSource,
        shard_id: ShardId,
        start: Position,
        processor: Processor,
        checkpointer: Checkpointer,
        settings: ConsumerSettings,
        stop: asyncio.Event,
        progress: ProcessorProgress,
        destination: Destination | None = None,
    ) -> None:
        self._source = source
        self._shard_id = shard_id
        self._start = start
        self._processor = processor
        self._checkpointer = checkpointer
        self._settings = settings
        self._stop = stop
        self._progress = progress
        self._batcher = Batcher(source.stream_arn, shard_id, settings.batch_size, settings.window_s)
        self._delivery = Delivery(
            processor=processor,
            policy=settings.policy,
            destination=destination,
            function_arn=processor.function_arn,
            commit=self._checkpoint,
            stop=stop,
            progress=progress,
        )
        self._lanes: Lanes | None = None
        self._windows: WindowedDelivery | None = None
        self._iterator: str | None = None
        self._last_read: SequenceNumber | None = start.after
        self._checkpointed: SequenceNumber | None = start.after
        self._resume_at_trim_horizon = False
        self._gap_after: str | None = None
        self._api_failures = 0
        self._empty_polls = 0

    async def run(self) -> ShardOutcome:
        structlog.contextvars.bind_contextvars(shard=self._shard_id)
        log.info("shard started", position=self._start.describe())
        factor = self._settings.parallelization_factor
        if self._settings.tumbling_window_s:
            self._windows = WindowedDelivery(
                processor=self._processor,
                shard_id=self._shard_id,
                stream_arn=self._source.stream_arn,
                size_s=self._settings.tumbling_window_s,
                maximum_retry_attempts=self._settings.policy.maximum_retry_attempts,
                save=self._save_window,
                hand_over=self._delivery.hand_over,
                stop=self._stop,
                progress=self._progress,
                window=OpenWindow.decode(await self._checkpointer.window_state()),
            )
        if factor == 1:
            return await self._run()
        try:
            async with asyncio.TaskGroup() as tasks:
                self._lanes = Lanes(
                    factor,
                    stream_arn=self._source.stream_arn,
                    shard_id=self._shard_id,
                    batch_size=self._settings.batch_size,
                    window_s=self._settings.window_s,
                    payload_limit_bytes=self._settings.policy.payload_limit_bytes,
                    stop=self._stop,
                    tasks=tasks,
                )
                delivery = self._delivery.with_commit(self._lanes.resolved)
                self._lanes.bind(delivery.deliver, self._lane_commit)
                outcome = await self._run()
                await self._lanes.drain()  # in-flight batches finish (nothing new starts)
                return outcome
        except BaseExceptionGroup as group:
            failure = first_error(group)
            if isinstance(failure, ShardwiseError):
                raise failure from group
            raise

    async def _run(self) -> ShardOutcome:
        prefetch: asyncio.Future[RecordPage] | None = None
        try:
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    page = await (prefetch if prefetch is not None else self._read())
                except SourceError as exc:
                    prefetch = None
                    outcome = await self._on_source_error(exc)
                    if outcome is not None:
                        return outcome
                    continue
                prefetch = None
                self._api_failures = 0
                closed = page.next_iterator is None
                self._iterator = page.next_iterator
                if not closed and len(page.records) >= MAX_RECORDS_PER_CALL:
                    # A backlog: fetch the next page while this one is being delivered.
                    prefetch = asyncio.ensure_future(self._read())
                if not await self._accept(page) or not await self._deliver_ready(flush=closed):
                    self._progress.released(self._shard_id, self._pending())
                    return ShardOutcome.STOPPED
                if not await self._checkpoint_filtered_tail():
                    return ShardOutcome.STOPPED
                if closed:
                    if self._lanes is not None and not await self._lanes.drain():
                        return ShardOutcome.STOPPED
                    finished = await self._finish()
                    return ShardOutcome.FINISHED if finished else ShardOutcome.STOPPED
                if await sleep_or_stop(self._stop, self._pause_s(started, page)):
                    break
            return ShardOutcome.STOPPED
        finally:
            if prefetch is not None:
                await _discard(prefetch)

    # -- reading ---------------------------------------------------------------------------

    async def _read(self) -> RecordPage:
        if self._iterator is None:
            position = self._resume_position()
            self._iterator = await self._source.get_iterator(self._shard_id, position)
            if self._resume_at_trim_horizon:
                self._resume_at_trim_horizon = False
        return await self._source.get_records(self._shard_id, self._iterator, MAX_RECORDS_PER_CALL)

    def _resume_position(self) -> Position:
        if self._resume_at_trim_horizon:
            return Position(start=StartingPosition.TRIM_HORIZON)
        if self._last_read is not None:
            return Position.after_sequence(self._last_read)
        return self._start

    async def _accept(self, page: RecordPage) -> bool:
        """Take a page's records in (filters, batching); False when stopping."""
        self._progress.polled(self._shard_id, len(page.records))
        if not page.records:
            return True
        first = page.records[0]["dynamodb"]["SequenceNumber"]
        self._last_read = SequenceNumber(page.records[-1]["dynamodb"]["SequenceNumber"])
        if self._gap_after is not None:
            log.error(
                "records lost to stream retention: resumed after the gap",
                gap_after_sequence=self._gap_after,
                resumed_at_sequence=first,
            )
            self._gap_after = None
        records = page.records
        record_filter = self._settings.record_filter
        if record_filter is not None and record_filter.active:
            records = record_filter.keep(records)
            if len(records) < len(page.records):
                self._progress.filtered(self._shard_id, len(page.records) - len(records))
        if self._lanes is not None:
            return await self._lanes.add(page.records, records)
        self._batcher.add(records, time.monotonic())
        return True

    def _pause_s(self, started: float, page: RecordPage) -> float:
        """Poll again at once after a full page, ~4 polls/s while records flow, and back off
        on an idle shard (drift-free: the time the work took is subtracted)."""
        if len(page.records) >= MAX_RECORDS_PER_CALL:
            self._empty_polls = 0
            return 0.0
        self._empty_polls = 0 if page.records else self._empty_polls + 1
        interval = idle_poll_interval(
            self._empty_polls, self._settings.poll_interval_s, self._settings.max_poll_interval_s
        )
        delay = max(0.0, interval - (time.monotonic() - started))
        due = (self._lanes or self._batcher).seconds_until_due(time.monotonic())
        if due is not None and due <= delay:
            return max(0.0, due)  # a batching window closes first: keep its deadline
        if self._empty_polls > IDLE_POLLS_AT_FULL_SPEED:
            delay = on_poll_grid(delay, asyncio.get_running_loop().time())
        return delay

    async def _on_source_error(self, exc: SourceError) -> ShardOutcome | None:
        """Decide what a failed API call means; None = keep going."""
        if isinstance(exc, ExpiredIteratorError):
            log.info("shard iterator expired; reopening", after_sequence=self._last_read)
            self._iterator = None
            return None
        if isinstance(exc, TrimmedDataError):
            self._on_trimmed(exc)
            return None
        if isinstance(exc, ShardNotFoundError):
            log.error("shard is no longer in the stream", error=str(exc))
            self._progress.trimmed(self._shard_id)
            return ShardOutcome.GONE
        self._api_failures += 1
        self._progress.api_failed(exc.code)
        level = "warning" if isinstance(exc, ThrottledError) else "error"
        getattr(log, level)("stream API call failed; backing off", code=exc.code, error=str(exc))
        if not isinstance(exc, ThrottledError):
            self._iterator = None  # reopen from the last position: the iterator may be bad
        if await sleep_or_stop(self._stop, API_BACKOFF.delay(self._api_failures)):
            return ShardOutcome.STOPPED
        return None

    def _on_trimmed(self, exc: TrimmedDataError) -> None:
        position = self._last_read or self._start.describe()
        if self._settings.on_trimmed_data == "stop":
            log.error("data trimmed before it was read; stopping (on_trimmed_data: stop)")
            raise TrimmedDataError(
                f"shard {self._shard_id}: records after {position} were trimmed from the stream "
                "before they were read (on_trimmed_data: stop)",
                code=exc.code,
            ) from exc
        self._progress.trimmed(self._shard_id)
        self._gap_after = str(position)
        log.error(
            "records lost to stream retention: resuming at TRIM_HORIZON",
            gap_after_sequence=str(position),
            error=str(exc),
        )
        self._resume_at_trim_horizon = True
        self._iterator = None

    # -- delivering ------------------------------------------------------------------------

    def _pending(self) -> int:
        return self._lanes.pending if self._lanes is not None else len(self._batcher)

    async def _deliver_ready(self, *, flush: bool) -> bool:
        if self._lanes is not None:
            return await self._lanes.dispatch(flush=flush)
        deliver = self._windows.deliver if self._windows else self._delivery.deliver
        for batch in self._batcher.take(time.monotonic(), flush=flush):
            if self._stop.is_set():
                return False  # not started: it is read again after the restart
            if not await deliver(batch):
                return False
        if self._windows is not None and not len(self._batcher):
            return await self._windows.tick()  # a window whose end has passed is closed
        return True

    async def _write(self, what: str, write: Callable[[], Awaitable[None]]) -> bool:
        """Run a store write to completion (shielded from cancellation), retrying outages."""
        attempt = 0
        while True:
            attempt += 1
            try:
                await asyncio.shield(write())
            except StoreError as exc:
                if not exc.retriable:
                    raise
                log.warning("checkpoint store write failed; retrying", write=what, error=str(exc))
                if await sleep_or_stop(self._stop, API_BACKOFF.delay(attempt)):
                    return False
            else:
                return True

    async def _checkpoint_filtered_tail(self) -> bool:
        """Nothing waits to be delivered, yet records were read past the checkpoint: they
        were all filtered out. Move the checkpoint over them (they are consumed)."""
        last = self._last_read
        if self._lanes is not None or len(self._batcher) or last in (None, self._checkpointed):
            return True
        if not await self._write(
            "checkpoint", lambda: self._checkpointer.save(self._shard_id, last)
        ):
            return False
        self._checkpointed = last
        return True

    async def _save_window(
        self, sequence: SequenceNumber | None, window_state: str | None, run: Batch | None
    ) -> bool:
        """Tumbling windows: the checkpoint and the window state in one write."""
        started = time.monotonic()
        save = self._checkpointer.save_window
        if not await self._write(
            "checkpoint", lambda: save(self._shard_id, sequence, window_state)
        ):
            return False
        if sequence is not None:
            self._checkpointed = sequence
        if run is not None:
            created = run.records[-1]["dynamodb"].get("ApproximateCreationDateTime")
            self._progress.checkpointed(
                self._shard_id,
                run.last_sequence_number,
                len(run),
                float(created) if isinstance(created, int | float) else None,
                time.monotonic() - started,
            )
        return True

    async def _lane_commit(self, mark: SequenceNumber | None, part: Batch | None) -> bool:
        """The lanes' watermark moved (``mark``) and/or a lane resolved ``part``."""
        started = time.monotonic()
        if mark is not None:
            if not await self._write(
                "checkpoint", lambda: self._checkpointer.save(self._shard_id, mark)
            ):
                return False
            self._checkpointed = mark
        if part is not None:
            created = part.records[-1]["dynamodb"].get("ApproximateCreationDateTime")
            self._progress.checkpointed(
                self._shard_id,
                self._checkpointed or part.last_sequence_number,
                len(part),
                float(created) if isinstance(created, int | float) else None,
                time.monotonic() - started,
            )
        return True

    async def _checkpoint(self, batch: Batch) -> bool:
        sequence = batch.last_sequence_number
        started = time.monotonic()
        saved = await self._write(
            "checkpoint", lambda: self._checkpointer.save(self._shard_id, sequence)
        )
        if not saved:
            return False
        self._checkpointed = sequence
        created = batch.records[-1]["dynamodb"].get("ApproximateCreationDateTime")
        self._progress.checkpointed(
            self._shard_id,
            sequence,
            len(batch),
            float(created) if isinstance(created, int | float) else None,
            time.monotonic() - started,
        )
        return True

    async def _finish(self) -> bool:
        last = self._last_read
        if not await self._write("finish", lambda: self._checkpointer.finish(self._shard_id, last)):
            return False
        self._progress.finished(self._shard_id)
        log.info("shard finished", last_sequence=last)
        return True
