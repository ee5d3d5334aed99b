"""Tumbling windows (TumblingWindowInSeconds): stateful aggregation per shard.

Windows are aligned to the clock (multiples of the window length since the epoch) and a
record belongs to the window of its ``ApproximateCreationDateTime``. Each invocation gets,
besides ``Records``, Lambda's ``window {start, end}``, ``state``, ``shardId``,
``eventSourceARN``, ``isFinalInvokeForWindow`` and ``isWindowTerminatedEarly``; the handler
returns ``{"state": {...}}``, which the next invocation of the window receives. A response
without a ``state`` dict is a failed invocation, as in Lambda.

The open window's state is written with the checkpoint it belongs to (one statement), so a
restart or a lease move continues the window. When a record of a later window arrives, or
the window's end has passed on the clock, the handler gets the final invocation
(``isFinalInvokeForWindow``, no records) and the state is dropped; a failing final
invocation is retried until it succeeds. A state larger than 1 MB ends the window early
(``isWindowTerminatedEarly``): the final invocation gets that state, and the window goes on
with a fresh one.

A transactional processor (``transactional``) gets each invocation in a store transaction:
its writes commit together with the checkpoint and the window state it returned (the final
invocation's, with the window closed), or roll back when the invocation failed - so a
window's state and the rows written from it never disagree after a crash.

Simplifications (stated in the README): a response's ``batchItemFailures`` fail the whole
batch, and batches are not bisected.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import structlog

from shardwise.clock import HANDLER_BACKOFF, Backoff, retries
from shardwise.destinations.base import FailedBatch, FailureCondition
from shardwise.dispatch.protocols import Transaction, Transactional
from shardwise.dispatch.transacting import transact
from shardwise.errors import HandlerError
from shardwise.observe.progress import ProcessorProgress
from shardwise.processors import Processor
from shardwise.records import Batch, SequenceNumber, ShardId, shape_of

__all__ = ["STATE_LIMIT_BYTES", "OpenWindow", "WindowedDelivery", "window_start"]

log = structlog.get_logger("shardwise.dispatch")

# Lambda's limit on a window's state.
STATE_LIMIT_BYTES = 1024 * 1024

# Store the window (None = no window open) with the checkpoint (None = unchanged) and count
# the records of ``run``; False when stopping.
SaveWindow = Callable[[SequenceNumber | None, str | None, Batch | None], Awaitable[bool]]
HandOver = Callable[[FailedBatch], Awaitable[bool]]
# The window to store once an invocation succeeded, from the state it returned.
After = Callable[[dict[str, Any] | None], "OpenWindow | None"]


def window_start(record: dict[str, Any], size_s: int) -> int:
    created = shape_of(record).arrival_time(record)
    seconds = int(created) if created is not None else int(time.time())
    return seconds - seconds % size_s


def _iso(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(slots=True)
class OpenWindow:
    start: int
    state: dict[str, Any] = field(default_factory=dict)

    def encode(self) -> str:
        return json.dumps({"start": self.start, "state": self.state}, separators=(",", ":"))

    @classmethod
    def decode(cls, text: str | None) -> OpenWindow | None:
        if not text:
            return None
        data = json.loads(text)
        return cls(start=int(data["start"]), state=dict(data.get("state") or {}))


class WindowedDelivery:
    """Delivers one shard's batches window by window."""

    def __init__(
        self,
        *,
        processor: Processor,
        shard_id: ShardId,
        stream_arn: str,
        size_s: int,
        maximum_retry_attempts: int,
        save: SaveWindow,
        hand_over: HandOver,
        stop: asyncio.Event,
        progress: ProcessorProgress,
        window: OpenWindow | None = None,
        backoff: Backoff = HANDLER_BACKOFF,
        transactional: Transactional | None = None,
    ) -> None:
        self._processor = processor
        self._shard_id = shard_id
        self._stream_arn = stream_arn
        self._size_s = size_s
        self._max_retries = maximum_retry_attempts
        self._save = save
        self._hand_over = hand_over
        self._stop = stop
        self._progress = progress
        self._backoff = backoff
        self._transactional = transactional
        self.window = window

    async def deliver(self, batch: Batch) -> bool:
        """Deliver ``batch`` (cut at window boundaries); False when stopping."""
        for run in self._runs(batch):
            start = window_start(run.records[0], self._size_s)
            if self.window is not None and self.window.start != start:
                if not await self.close(terminated_early=False):
                    return False
            if self.window is None:
                self.window = OpenWindow(start)
            if not await self._deliver_run(run):
                return False
        return True

    async def tick(self) -> bool:
        """Close the open window once its end has passed on the clock."""
        if self.window is None or time.time() < self.window.start + self._size_s:
            return True
        return await self.close(terminated_early=False)

    async def close(self, *, terminated_early: bool) -> bool:
        """The final invocation of the open window (retried until it succeeds)."""
        window = self.window
        if window is None:
            return True
        after = OpenWindow(window.start) if terminated_early else None
        if not await self._final_invocation(window, after, terminated_early=terminated_early):
            return False
        self.window = after
        if self._transactional is not None:
            return True  # stored by the final invocation's transaction
        return await self._save(None, after.encode() if after else None, None)

    async def _final_invocation(
        self, window: OpenWindow, after: OpenWindow | None, *, terminated_early: bool
    ) -> bool:
        """Invoke the handler for the end of ``window`` until it succeeds; False if stopped."""
        async for _ in retries(self._stop, self._backoff):
            event = {"Records": [], **self._fields(window, final=True, early=terminated_early)}
            ok, _, problem = await self._call(event, None, lambda _: after)
            if ok:
                return True
            log.error(
                "final window invocation failed; retrying",
                window=_iso(window.start),
                problem=problem,
            )
        return False

    async def _deliver_run(self, run: Batch) -> bool:
        window = self.window
        assert window is not None
        async for attempt in retries(self._stop, self._backoff):
            event = {"Records": list(run.records), **self._fields(window, final=False, early=False)}
            ok, state, problem = await self._call(
                event, run, lambda state: OpenWindow(window.start, state or {})
            )
            if ok and state is not None:
                window.state = state
                saved = self._transactional is not None or await self._save(
                    run.last_sequence_number, window.encode(), run
                )
                if saved and len(json.dumps(state)) > STATE_LIMIT_BYTES:
                    log.error(
                        "window state over 1 MB: window terminated early",
                        window=_iso(window.start),
                        limit_bytes=STATE_LIMIT_BYTES,
                    )
                    return await self.close(terminated_early=True)
                return saved
            if self._stop.is_set():
                return False  # never given up while stopping: read again after the restart
            log.error(
                "windowed invocation failed",
                window=_iso(window.start),
                problem=problem,
                attempt=attempt,
            )
            if 0 <= self._max_retries < attempt:
                failed = FailedBatch(
                    processor=self._processor.name,
                    function_arn=self._processor.function_arn,
                    stream_arn=run.stream_arn,
                    shard_id=run.shard_id,
                    condition=FailureCondition.RETRY_ATTEMPTS_EXHAUSTED,
                    records=run.records,
                    approximate_invoke_count=attempt,
                    error_message=problem,
                )
                if not await self._hand_over(failed):
                    return False
                return await self._save(run.last_sequence_number, window.encode(), run)
        return False

    async def _call(
        self, event: dict[str, Any], run: Batch | None, after: After
    ) -> tuple[bool, dict[str, Any] | None, str | None]:
        """Invoke once: (ok, the state returned, the problem). A transactional processor's
        invocation runs in a transaction that, when it succeeded, stores the checkpoint
        (``run``'s last record) and the window ``after`` its state, and commits."""
        transactional = self._transactional
        if transactional is None:
            return await self._invoke(event, run)
        started = time.monotonic()
        Outcome = tuple[bool, dict[str, Any] | None, str | None]

        async def body(transaction: Transaction) -> tuple[Outcome, bool]:
            ok, state, problem = await self._invoke(event, run)
            if not ok:
                return (ok, state, problem), False
            stored = after(state)
            try:
                await transaction.checkpoint_window(
                    run.last_sequence_number if run else None,
                    stored.encode() if stored else None,
                )
            except HandlerError as exc:  # the handler's own statement aborted the transaction
                return (False, None, str(exc)), False
            return (ok, state, problem), True

        outcome = await transact(transactional.open, self._shard_id, self._stop, body)
        if outcome is None:
            return False, None, "stopping"  # nothing committed; read again after the restart
        result, committed = outcome
        if committed and run is not None:
            transactional.transacted(run, started)
        return result

    async def _invoke(
        self, event: dict[str, Any], run: Batch | None
    ) -> tuple[bool, dict[str, Any] | None, str | None]:
        size = len(run) if run else 0
        started = time.monotonic()
        try:
            value = await self._processor.invoke_event(event, str(event["shardId"]))
        except Exception as exc:  # noqa: BLE001 - any handler failure fails the invocation
            self._progress.invoked(size, time.monotonic() - started, ok=False)
            return False, None, f"{type(exc).__name__}: {exc}"
        ok, state, problem = _state_of(value, final=event["isFinalInvokeForWindow"])
        self._progress.invoked(size, time.monotonic() - started, ok=ok)
        return ok, state, problem

    def _fields(self, window: OpenWindow, *, final: bool, early: bool) -> dict[str, Any]:
        return {
            "window": {"start": _iso(window.start), "end": _iso(window.start + self._size_s)},
            "state": window.state,
            "shardId": self._shard_id,
            "eventSourceARN": self._stream_arn,
            "isFinalInvokeForWindow": final,
            "isWindowTerminatedEarly": early,
        }

    def _runs(self, batch: Batch) -> list[Batch]:
        """``batch`` cut where the records' window changes."""
        runs: list[list[dict[str, Any]]] = []
        last: int | None = None
        for record in batch.records:
            start = window_start(record, self._size_s)
            if start != last:
                runs.append([])
                last = start
            runs[-1].append(record)
        return [Batch(batch.stream_arn, batch.shard_id, run) for run in runs]


def _state_of(value: Any, *, final: bool) -> tuple[bool, dict[str, Any] | None, str | None]:
    """(ok, new state, problem) from a windowed handler's return value."""
    if final:
        return True, None, None
    if not isinstance(value, dict) or not isinstance(value.get("state"), dict):
        return False, None, 'a tumbling-window handler must return {"state": {...}}'
    if value.get("batchItemFailures"):
        return False, None, "batchItemFailures fail the whole batch in a tumbling window"
    return True, value["state"], None
