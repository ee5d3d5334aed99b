"""Deliver one batch with Lambda's failure model: retries, bisection, partial failures,
maximum record age, handler timeout and the on-failure destination.

The planner (pure) decides; this module does the I/O: invoke the handler, back off, hand
given-up records to the destination (retrying it until they are stored), and commit the
resolved prefix of the batch so the checkpoint advances as records are resolved - never
past one that is not.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import structlog

from shardwise.clock import API_BACKOFF, HANDLER_BACKOFF, Backoff, retries, sleep_or_stop
from shardwise.destinations.base import (
    Destination,
    DestinationError,
    FailedBatch,
    FailureCondition,
)
from shardwise.dispatch.planner import Next, RetryPlanner, Segment
from shardwise.dispatch.protocols import Transaction, Transactional
from shardwise.dispatch.response import Response, interpret_response, looks_like_failure_report
from shardwise.dispatch.transacting import transact
from shardwise.errors import HandlerError
from shardwise.observe.progress import ProcessorProgress
from shardwise.processors import Processor
from shardwise.records import Batch, StreamRecord, shape_of
from shardwise.tasks import to_completion

__all__ = ["Delivery", "FailurePolicy"]

log = structlog.get_logger("shardwise.dispatch")

Commit = Callable[[Batch], Awaitable[bool]]


@dataclass(frozen=True, slots=True)
class FailurePolicy:
    """The ESM failure settings of one processor."""

    maximum_retry_attempts: int = -1
    bisect_batch_on_function_error: bool = False
    report_batch_item_failures: bool = False
    # -1 is Lambda's "infinite": age never decides, a record is lost only when the stream
    # itself trims it (TrimmedDataAccess, on_trimmed_data). A positive value is compared
    # against this worker's clock.
    maximum_record_age_s: int = -1
    # A batch whose event JSON is larger (one record alone above it) is not invoked.
    payload_limit_bytes: int | None = None

    @property
    def max_age_s(self) -> int | None:
        """The age past which records skip the handler; None when age never decides."""
        return self.maximum_record_age_s if self.maximum_record_age_s >= 0 else None


class Delivery:
    """Delivers batches of one shard; ``commit`` durably checkpoints a resolved prefix."""

    def __init__(
        self,
        *,
        processor: Processor,
        policy: FailurePolicy,
        destination: Destination | None,
        function_arn: str,
        commit: Commit,
        stop: asyncio.Event,
        progress: ProcessorProgress,
        clock: Callable[[], float] = time.time,
        backoff: Backoff = HANDLER_BACKOFF,
        transactional: Transactional | None = None,
        in_lanes: bool = False,
        store_backoff: Backoff = API_BACKOFF,
    ) -> None:
        self._processor = processor
        self._transactional = transactional
        # A lane's delivery: its resolved records go to ``commit`` (the lanes' watermark)
        # even when a transaction applied them, since the checkpoint may not pass them yet.
        self._in_lanes = in_lanes
        self._store_backoff = store_backoff  # a transaction the store failed runs again
        self._transacted_to = 0  # the batch's records its invocations' transactions committed
        self._policy = policy
        self._destination = destination
        self._function_arn = function_arn
        self._commit = commit
        self._stop = stop
        self._progress = progress
        self._clock = clock
        self._backoff = backoff
        self._warned_unreported = False

    def for_lanes(self, commit: Commit) -> Delivery:
        """The same delivery for the lanes of a shard, handing resolved records to
        ``commit`` (``Lanes.resolved``)."""
        return Delivery(
            processor=self._processor,
            policy=self._policy,
            destination=self._destination,
            function_arn=self._function_arn,
            commit=commit,
            stop=self._stop,
            progress=self._progress,
            clock=self._clock,
            backoff=self._backoff,
            transactional=self._transactional,
            in_lanes=True,
            store_backoff=self._store_backoff,
        )

    async def deliver(self, batch: Batch) -> bool:
        """Resolve every record of ``batch``; False when stopping left some unresolved."""
        planner = RetryPlanner(
            len(batch),
            maximum_retry_attempts=self._policy.maximum_retry_attempts,
            bisect=self._policy.bisect_batch_on_function_error,
        )
        committed = 0
        self._transacted_to = 0
        going_on = await self._refuse_oversized(batch, planner)
        while True:
            if planner.resolved > committed:
                # What an invocation's own transaction committed is not written again.
                committed = max(committed, min(self._transacted_to, planner.resolved))
                if not await self._commit_prefix(batch, committed, planner.resolved):
                    return False
                committed = planner.resolved
            if not going_on or (segment := planner.current) is None:
                return going_on
            if self._stop.is_set():
                return False  # the rest is read again after the restart
            going_on = await self._step(batch, planner, segment)

    async def _step(self, batch: Batch, planner: RetryPlanner, segment: Segment) -> bool:
        """Act once on the current segment; False when stopping."""
        expired = self._expired_prefix(batch.records, segment.start, segment.end)
        if expired:
            return await self._expire(batch, planner, segment, expired)
        planner.invoked()
        outcome = (
            await self._invoke(batch, segment.start, segment.end)
            if self._transactional is None
            else await self._invoke_in_transaction(
                self._transactional, batch, segment.start, segment.end
            )
        )
        if outcome is None:
            return False  # stopping: the rest is read again after the restart
        response, error = outcome
        if response.ok:
            planner.succeeded()
            return True
        step = planner.failed(response.failed_from or 0)
        if step is Next.GIVE_UP:
            condition = FailureCondition.RETRY_ATTEMPTS_EXHAUSTED
            return await self._give_up(batch, planner, segment, condition, error)
        if step is Next.RETRY:
            return not await sleep_or_stop(self._stop, self._backoff.delay(segment.attempts))
        return True

    async def _expire(
        self, batch: Batch, planner: RetryPlanner, segment: Segment, expired: int
    ) -> bool:
        """The first ``expired`` records of ``segment`` are past the maximum record age: to
        the destination, unprocessed. False when stopping."""
        failed = self._failed(batch, segment, expired, FailureCondition.RECORD_AGE_EXCEEDED)
        if not await self.hand_over(failed):
            return False
        planner.discard_prefix(expired)
        return True

    async def _refuse_oversized(self, batch: Batch, planner: RetryPlanner) -> bool:
        """A record larger than the payload limit (the batcher gives it a batch of its own)
        is never invoked: it goes to the destination. False when stopping."""
        limit = self._policy.payload_limit_bytes
        segment = planner.current
        if limit is None or batch.payload_bytes <= limit or segment is None:
            return True
        error = f"event payload of {batch.payload_bytes} bytes is over the {limit}-byte limit"
        condition = FailureCondition.MAXIMUM_PAYLOAD_SIZE_EXCEEDED
        return await self._give_up(batch, planner, segment, condition, error)

    async def _give_up(
        self,
        batch: Batch,
        planner: RetryPlanner,
        segment: Segment,
        condition: FailureCondition,
        error: str | None,
    ) -> bool:
        if not await self.hand_over(self._failed(batch, segment, len(segment), condition, error)):
            return False
        planner.give_up()
        return True

    async def _commit_prefix(self, batch: Batch, start: int, end: int) -> bool:
        if end <= start:
            return True
        part = Batch(batch.stream_arn, batch.shard_id, batch.records[start:end])
        return await self._commit(part)

    def _expired_prefix(self, records: Sequence[StreamRecord], start: int, end: int) -> int:
        """How many leading records of ``start:end`` are older than the maximum age."""
        max_age_s = self._policy.max_age_s
        if max_age_s is None or end <= start:
            return 0
        oldest_allowed = self._clock() - max_age_s
        count = 0
        shape = shape_of(records[start])
        for record in records[start:end]:
            created = shape.arrival_time(record)
            if created is None or created >= oldest_allowed:
                break
            count += 1
        return count

    async def _invoke_in_transaction(
        self, transactional: Transactional, batch: Batch, start: int, end: int
    ) -> tuple[Response, str | None] | None:
        """Invoke inside a store transaction that commits the handler's writes together
        with the checkpoint of the records this invocation resolved (all of them, or the
        prefix before the first reported failure), and rolls everything back when it
        resolved none. In a lane the checkpoint may not pass them yet (an earlier record is
        pending in another lane): the transaction records them as applied instead, and the
        lanes move the checkpoint. The store failing runs the invocation again without
        counting it as failed (``transact``); None when the worker stopped meanwhile. A lost
        lease (``LeaseLostError``) leaves as it is: nothing commits."""
        started = time.monotonic()

        async def body(transaction: Transaction) -> tuple[tuple[Response, str | None, int], bool]:
            response, error = await self._invoke(batch, start, end)
            resolved = end - start if response.ok else response.failed_from or 0
            if not resolved:
                return (response, error, 0), False
            done = batch.records[start : start + resolved]
            try:
                if self._in_lanes:
                    sequence_numbers = [batch.shape.sequence_number(r) for r in done]
                    await transaction.applied(sequence_numbers, transactional.checkpointed())
                else:
                    await transaction.checkpoint(batch.shape.sequence_number(done[-1]))
            except HandlerError as exc:  # the handler's own statement aborted the transaction
                log.error("handler left its transaction unable to commit", error=str(exc))
                return (Response(failed_from=0, problem=str(exc)), str(exc), 0), False
            return (response, error, resolved), True

        outcome = await transact(
            transactional.open, batch.shard_id, self._stop, body, backoff=self._store_backoff
        )
        if outcome is None:
            return None
        (response, error, resolved), committed = outcome
        if committed and not self._in_lanes:  # in lanes: counted and checkpointed as resolved
            self._transacted_to = start + resolved
            transactional.transacted(
                Batch(batch.stream_arn, batch.shard_id, batch.records[start : start + resolved]),
                started,
            )
        return response, error

    async def _invoke(self, batch: Batch, start: int, end: int) -> tuple[Response, str | None]:
        part = (
            batch
            if (start, end) == (0, len(batch))
            else Batch(batch.stream_arn, batch.shard_id, batch.records[start:end])
        )
        first, last = part.first_sequence_number, part.last_sequence_number
        started = time.monotonic()
        try:
            value = await self._processor.invoke(part)
        except Exception as exc:
            self._progress.invoked(len(part), time.monotonic() - started, ok=False)
            error = f"{type(exc).__name__}: {exc}"
            log.exception(
                "handler failed",
                first_sequence=first,
                last_sequence=last,
                size=len(part),
                error=error,
            )
            return Response(failed_from=0, problem=error), error
        elapsed = time.monotonic() - started
        if not self._policy.report_batch_item_failures:
            if looks_like_failure_report(value) and not self._warned_unreported:
                self._warned_unreported = True
                log.warning(
                    "handler returned batchItemFailures but function_response_types does not "
                    "include ReportBatchItemFailures: the failures are ignored (as in Lambda)"
                )
            self._progress.invoked(len(part), elapsed, ok=True)
            return Response(failed_from=None), None
        response = interpret_response(value, part.records)
        self._progress.invoked(len(part), elapsed, ok=response.failed_from != 0)
        if response.problem:
            log.error(
                "handler response counts as a failure of the whole batch",
                first_sequence=first,
                last_sequence=last,
                problem=response.problem,
            )
        elif not response.ok:
            log.warning(
                "handler reported failed records",
                first_failed_sequence=part.shape.sequence_number(
                    part.records[response.failed_from or 0]
                ),
                size=len(part),
            )
        return response, response.problem or (None if response.ok else "batchItemFailures")

    def _failed(
        self,
        batch: Batch,
        segment: Segment,
        count: int,
        condition: FailureCondition,
        error: str | None = None,
    ) -> FailedBatch:
        """The first ``count`` records of ``segment``, given up on for ``condition``."""
        return FailedBatch(
            processor=self._processor.name,
            function_arn=self._function_arn,
            stream_arn=batch.stream_arn,
            shard_id=batch.shard_id,
            condition=condition,
            records=batch.records[segment.start : segment.start + count],
            approximate_invoke_count=segment.invocations,
            function_error="Unhandled" if segment.invocations else None,
            error_message=error,
        )

    async def hand_over(self, failed: FailedBatch) -> bool:
        """Store given-up records in the destination (retrying), or drop and count them."""
        where = {
            "condition": failed.condition.value,
            "first_sequence": failed.start_sequence_number,
            "last_sequence": failed.end_sequence_number,
            "size": len(failed.records),
        }
        if self._destination is None:
            self._progress.dropped(len(failed.records))
            log.error("records dropped: no on-failure destination is configured", **where)
            return True
        async for _ in retries(self._stop, API_BACKOFF):
            try:
                await to_completion(self._destination.send(failed))
            except DestinationError as exc:
                self._progress.destination_failed()
                log.warning(
                    "on-failure destination write failed; retrying", error=str(exc), **where
                )
            else:
                self._progress.sent_to_destination(len(failed.records))
                log.warning(
                    "records sent to the on-failure destination",
                    target=self._destination.target,
                    **where,
                )
                return True
        return False
