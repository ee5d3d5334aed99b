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

When a poll pauses is ``cadence``'s rule; the checkpoint writes are ``checkpointing``'s.
"""

from __future__ import annotations

import asyncio
import enum
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, TypeAlias

import structlog

from shardwise.clock import API_BACKOFF, sleep_or_stop
from shardwise.destinations.base import Destination
from shardwise.dispatch.batcher import Batcher
from shardwise.dispatch.cadence import PollCadence
from shardwise.dispatch.checkpointing import ShardCheckpoints
from shardwise.dispatch.delivery import Delivery, FailurePolicy
from shardwise.dispatch.filters import RecordFilter
from shardwise.dispatch.lanes import Lanes
from shardwise.dispatch.protocols import (
    Checkpointer,
    ShardSource,
    Transactional,
    TransactionStore,
)
from shardwise.dispatch.windows import OpenWindow, WindowedDelivery
from shardwise.errors import (
    ExpiredIteratorError,
    ShardNotFoundError,
    ShardwiseError,
    SourceError,
    ThrottledError,
    TrimmedDataError,
    first_error,
)
from shardwise.observe.progress import ProcessorProgress
from shardwise.processors import Processor
from shardwise.records import (
    Position,
    RecordPage,
    SequenceNumber,
    Shard,
    ShardId,
    StartingPosition,
    StreamRecord,
    shape_of,
)

__all__ = ["ConsumerSettings", "ShardConsumer", "ShardOutcome"]

log = structlog.get_logger("shardwise.dispatch")

# A read-ahead's outcome: the page, or the error reading it (raised where it is taken).
ReadAhead: TypeAlias = "asyncio.Task[RecordPage | Exception]"


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
    # While a shard has data it is polled as Lambda polls it (the source's read limits: 4
    # times a second for DynamoDB Streams, once a second for Kinesis; None: the source's).
    # An idle shard is polled less and less often, down to one call per
    # max_poll_interval_s (GetRecords outside Lambda is billed per request).
    poll_interval_s: float | None = None
    max_poll_interval_s: float = 3.0


async def _discard(prefetch: ReadAhead) -> None:
    """Cancel a read-ahead nobody will use; its outcome (page or error) is dropped: the
    records are read again from the checkpoint."""
    prefetch.cancel()
    await asyncio.wait([prefetch])


def _page(outcome: RecordPage | Exception) -> RecordPage:
    """A read-ahead's page, or its error raised here, as the read's own."""
    if isinstance(outcome, Exception):
        raise outcome
    return outcome


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
        transactions: TransactionStore | None = None,
    ) -> None:
        self._source = source
        self._shard_id = shard_id
        self._start = start
        self._processor = processor
        self._settings = settings
        self._stop = stop
        self._progress = progress
        self._batcher = Batcher(
            source.stream_arn,
            shard_id,
            settings.batch_size,
            settings.window_s,
            settings.policy.payload_limit_bytes,
        )
        self._checkpoints = ShardCheckpoints(
            checkpointer, shard_id, checkpointed=start.after, stop=stop, progress=progress
        )
        self._limits = source.read_limits
        self._cadence = PollCadence(
            settings.poll_interval_s or self._limits.poll_interval_s,
            settings.max_poll_interval_s,
            self._limits.records_per_call,
        )
        self._last_call_at = -math.inf
        self._transactions = transactions
        self._transactional = (
            None
            if transactions is None
            else Transactional(
                transactions.transaction,
                self._checkpoints.transacted,
                lambda: self._checkpoints.checkpointed,
            )
        )
        # Records past the checkpoint that lanes' transactions applied before this worker
        # started the shard (a crash, a lease moved): consumed without an invocation.
        self._applied: set[SequenceNumber] = set()
        self._delivery = Delivery(
            processor=processor,
            policy=settings.policy,
            destination=destination,
            function_arn=processor.function_arn,
            commit=self._checkpoints.batch,
            stop=stop,
            progress=progress,
            transactional=self._transactional,
        )
        self._lanes: Lanes | None = None
        self._windows: WindowedDelivery | None = None
        self._iterator: str | None = None
        self._last_read: SequenceNumber | None = start.after
        self._resume_at_trim_horizon = False
        self._gap_after: str | None = None
        self._api_failures = 0
        # The shards that continue this one, when its last page named them.
        self.child_shards: tuple[Shard, ...] = ()

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
                save=self._checkpoints.window,
                hand_over=self._delivery.hand_over,
                stop=self._stop,
                progress=self._progress,
                window=OpenWindow.decode(await self._checkpoints.window_state()),
                transactional=self._transactional,
            )
        if self._transactions is not None:
            # Loaded with one lane too: the factor may have been lowered since they were.
            after = self._start.after
            self._applied = set(await self._transactions.applied(self._shard_id, after))
        if factor == 1:
            return await self._run_one_lane()
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
                delivery = self._delivery.for_lanes(self._lanes.resolved)
                self._lanes.bind(delivery.deliver, self._checkpoints.lanes)
                outcome = await self._run(tasks)
                await self._lanes.drain()  # in-flight batches finish (nothing new starts)
                return outcome
        except BaseExceptionGroup as group:
            failure = first_error(group)
            if isinstance(failure, ShardwiseError):
                raise failure from group
            raise

    async def _run_one_lane(self) -> ShardOutcome:
        """The loop in a TaskGroup of its own, which owns the read-ahead; an error of the loop
        leaves it as itself (not wrapped in a group), as it would without one."""
        failure: Exception
        async with asyncio.TaskGroup() as tasks:
            try:
                return await self._run(tasks)
            except Exception as exc:  # noqa: BLE001 - raised again just below, outside the group
                failure = exc
        raise failure

    async def _run(self, tasks: asyncio.TaskGroup) -> ShardOutcome:
        prefetch: ReadAhead | None = None
        try:
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    page = await self._read() if prefetch is None else _page(await prefetch)
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
                if not closed and len(page.records) >= self._limits.records_per_call:
                    # A backlog: fetch the next page while this one is being delivered.
                    prefetch = tasks.create_task(self._read_ahead())
                if not await self._accept(page) or not await self._deliver_ready(flush=closed):
                    self._progress.released(self._shard_id, self._pending())
                    return ShardOutcome.STOPPED
                if not await self._checkpoint_filtered_tail():
                    return ShardOutcome.STOPPED
                if closed:
                    self.child_shards = page.child_shards
                    if self._lanes is not None and not await self._lanes.drain():
                        return ShardOutcome.STOPPED
                    finished = await self._checkpoints.finish(self._last_read)
                    return ShardOutcome.FINISHED if finished else ShardOutcome.STOPPED
                pause = self._cadence.pause_s(
                    started, len(page.records), self._lanes or self._batcher
                )
                if await sleep_or_stop(self._stop, pause):
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
        # At most one call per min_call_interval_s on this shard, read-aheads included.
        wait = self._limits.min_call_interval_s - (time.monotonic() - self._last_call_at)
        if wait > 0:
            await asyncio.sleep(wait)
        self._last_call_at = time.monotonic()
        limit = self._limits.records_per_call
        return await self._source.get_records(self._shard_id, self._iterator, limit)

    async def _read_ahead(self) -> RecordPage | Exception:
        """``_read()`` as a task of the loop's TaskGroup: an error is returned, to be raised
        where the page is taken (``_page``), rather than tearing the group down."""
        try:
            return await self._read()
        except Exception as exc:  # noqa: BLE001 - raised by _page when the loop takes the page
            return exc

    def _resume_position(self) -> Position:
        if self._resume_at_trim_horizon:
            return Position(start=StartingPosition.TRIM_HORIZON)
        if self._last_read is not None:
            return Position.after_sequence(self._last_read)
        return self._start

    async def _accept(self, page: RecordPage) -> bool:
        """Take a page's records in (filters, batching); False when stopping."""
        self._progress.polled(self._shard_id, len(page.records), page.millis_behind_latest)
        if not page.records:
            return True
        shape = shape_of(page.records[0])
        first = shape.sequence_number(page.records[0])
        self._last_read = shape.sequence_number(page.records[-1])
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
        if self._applied and records:
            records = self._skip_applied(records)
        if self._lanes is not None:
            return await self._lanes.add(page.records, records)
        self._batcher.add(records, time.monotonic())
        return True

    def _skip_applied(self, records: Sequence[StreamRecord]) -> list[StreamRecord]:
        """``records`` less those a lane's transaction already applied (committed with the
        handler's writes before this worker started the shard): they are resolved as read."""
        shape = shape_of(records[0])
        kept = [r for r in records if shape.sequence_number(r) not in self._applied]
        if len(kept) < len(records):
            self._applied.difference_update(shape.sequence_number(r) for r in records)
            log.info(
                "records already applied by a transaction are not invoked again",
                count=len(records) - len(kept),
            )
        return kept

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

    async def _checkpoint_filtered_tail(self) -> bool:
        """Nothing waits to be delivered, yet records were read past the checkpoint: they
        were all filtered out. Move the checkpoint over them (they are consumed)."""
        if self._lanes is not None or len(self._batcher):
            return True
        return await self._checkpoints.filtered_tail(self._last_read)
