"""Run a handler on records through shardwise's real dispatch path, in process, and see what
happened.

``run_handler(handler, records, **esm_settings)`` builds the ``ProcessorConfig`` a
``processors:`` entry with those settings would be, and runs the very ``ShardConsumer``
the worker runs, with the consumer settings the runner derives from that config
(``runner.consumer_settings``) and the processor the runtime opens for it
(``functions.open_processor``): batching, filters, retries, bisection,
ReportBatchItemFailures, maximum record age, the handler timeout, the payload limit,
tumbling windows and parallelization are shardwise's own code. Only the edges are
replaced by memory: the records are served as one closed shard, the checkpoint and the
open window are kept in a dict, and the on-failure destination keeps what it is handed
(whether or not a destination is configured: without one, Lambda and shardwise drop those
records). ``run_processor(config, records)`` does the same for a ``ProcessorConfig`` as
loaded from a ``shardwise.yaml``.

Time: the pauses dispatch takes between attempts (a failed batch's backoff, a poll's
cadence) pass at once, so a test with retries takes no wall-clock time. They are taken
through ``clock.sleep_or_stop``, which waits for the consumer's stop signal with a timeout:
the harness's stop signal ends that wait at once, as if the time had passed. Nothing
global is patched. The handler's timeout (``timeout_seconds``) and the record age
(``maximum_record_age_in_seconds``, against ``time.time()``) stay on the real clock: give
records an old ``created`` to test the age, rather than waiting.

``maximum_retry_attempts`` is -1 by default, as in Lambda: a batch that always fails is
retried forever. The run stops after ``max_invocations`` handler calls, and then
``RunResult.finished`` is False.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import functools
import inspect
import json
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Iterable,
    Mapping,
    Sequence,
)
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal, ParamSpec, TypeAlias

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from shardwise.config import ProcessorConfig
from shardwise.destinations import FailedBatch
from shardwise.dispatch.consumer import ShardConsumer
from shardwise.dispatch.response import interpret_response
from shardwise.dispatch.windows import OpenWindow
from shardwise.functions import Function, open_processor, prepare
from shardwise.observe.progress import ProcessorProgress
from shardwise.processors import Processor, split_handler
from shardwise.records import (
    DYNAMODB_SHAPE,
    Batch,
    Position,
    ReadLimits,
    RecordPage,
    RecordShape,
    SequenceNumber,
    Shard,
    ShardId,
    ShardListing,
    StartingPosition,
    StreamRecord,
    shape_of,
)
from shardwise.runner import consumer_settings
from shardwise.testing.events import dynamodb_stream_arn, kinesis_stream_arn

__all__ = [
    "DEFAULT_SHARD_ID",
    "Invocation",
    "Outcome",
    "RunResult",
    "run_handler",
    "run_handler_sync",
    "run_processor",
    "run_processor_sync",
]

Outcome: TypeAlias = Literal["succeeded", "partial", "failed"]
Records: TypeAlias = Iterable[StreamRecord] | Mapping[str, Any]
P = ParamSpec("P")

# The shard DynamoDB Streams records are served on (a DynamoDB record does not name its
# shard); a Kinesis record's shard is the one its eventID names.
DEFAULT_SHARD_ID: Final = "shardId-00000001704067200000-5f3c9a1e"
DEFAULT_MAX_INVOCATIONS: Final = 1000
_PROCESSOR_NAME: Final = "test-processor"
# ProcessorConfig names its function; a callable handed over directly is named by this
# when its own module:qualname is not a valid handler reference (a local function).
_IN_PROCESS_HANDLER: Final = "test_module:handler"


@dataclass(frozen=True, slots=True)
class Invocation:
    """One handler call: the event as the handler got it (a copy taken before the call),
    and what came of it.

    ``outcome`` is dispatch's verdict: ``failed`` when the handler raised (``error``; a
    timeout is ``HandlerTimeoutError``) or its response fails the whole batch, ``partial``
    when it reported ``batchItemFailures`` from ``failed_from`` on (the records before are
    done), else ``succeeded``. A tumbling-window invocation succeeds when it returns
    ``{"state": {...}}``; the final one of a window (``final``) always does.
    """

    event: dict[str, Any]
    outcome: Outcome
    response: Any = None
    error: BaseException | None = None
    failed_from: int | None = None

    @property
    def records(self) -> list[StreamRecord]:
        records: list[StreamRecord] = self.event["Records"]
        return records

    @property
    def sequence_numbers(self) -> list[str]:
        return [str(shape_of(r).sequence_number(r)) for r in self.records]

    @property
    def final(self) -> bool:
        """The final invocation of a tumbling window (no records)."""
        return bool(self.event.get("isFinalInvokeForWindow"))

    @property
    def done(self) -> list[StreamRecord]:
        """The records this call resolved: all of a successful call, the prefix before
        ``failed_from`` of a partial one, none of a failed one."""
        if self.outcome == "succeeded":
            return self.records
        if self.outcome == "partial" and self.failed_from is not None:
            return self.records[: self.failed_from]
        return []


@dataclass(frozen=True, slots=True)
class RunResult:
    """What happened when the records went through dispatch.

    * ``records``: the records served, in stream order;
    * ``invocations``: every handler call, in the order made (retries and bisected halves
      included);
    * ``checkpoint``: the last sequence number checkpointed (None: none was), and
      ``checkpoints`` every checkpoint written, in order;
    * ``finished``: the shard was read to its end with every record resolved (False when
      the run stopped at ``max_invocations``);
    * ``failures``: what was handed to the on-failure destination, one ``FailedBatch`` per
      record range given up on; ``on_failure`` is Lambda's invocation record for each (with
      ``DDBStreamBatchInfo`` or ``KinesisBatchInfo``, as an SQS or SNS destination gets it)
      and ``failed_records`` their records;
    * ``filtered``: the records ``filter_criteria`` dropped (consumed, never invoked);
    * ``processed``: the records the handler resolved, each once, in stream order;
    * ``open_window``: the tumbling window still open at the end, with its state;
    * ``progress``: the processor's counters, as the metrics endpoint reads them.
    """

    records: tuple[StreamRecord, ...]
    invocations: tuple[Invocation, ...]
    checkpoint: str | None
    checkpoints: tuple[str, ...]
    finished: bool
    failures: tuple[FailedBatch, ...]
    filtered: tuple[StreamRecord, ...]
    open_window: OpenWindow | None
    progress: ProcessorProgress

    @property
    def processed(self) -> list[StreamRecord]:
        # The invoked records are copies: match them to the records served by position.
        positions = {
            str(shape_of(r).sequence_number(r)) for call in self.invocations for r in call.done
        }
        return [r for r in self.records if str(shape_of(r).sequence_number(r)) in positions]

    @property
    def on_failure(self) -> list[dict[str, Any]]:
        return [failed.invocation_record(include_payload=False) for failed in self.failures]

    @property
    def failed_records(self) -> list[StreamRecord]:
        return [record for failed in self.failures for record in failed.records]


async def run_handler(
    handler: Callable[..., Any] | type[Any] | str,
    records: Records,
    *,
    batch_size: int = 100,
    maximum_retry_attempts: int = -1,
    bisect_batch_on_function_error: bool = False,
    function_response_types: Sequence[str] = (),
    maximum_record_age_in_seconds: int = -1,
    filter_criteria: Sequence[str | Mapping[str, Any]] | None = None,
    tumbling_window_in_seconds: int = 0,
    parallelization_factor: int = 1,
    timeout_seconds: float = 900.0,
    payload_limit_bytes: int = 6 * 1024 * 1024,
    name: str = _PROCESSOR_NAME,
    task_root: str | Path | None = None,
    page_size: int | None = None,
    max_invocations: int = DEFAULT_MAX_INVOCATIONS,
    shard_id: str | None = None,
    database_url: str | None = None,
) -> RunResult:
    """Run ``handler`` on ``records`` (a list of records, or an event ``{"Records": [...]}``)
    through the real dispatch path, with the event source mapping settings given (their
    names and defaults as in ``processors:``); return what happened.

    ``handler``: a function ``handler(event, context)`` (sync or async), a class with
    ``process(event, context)``, or a handler reference as in ``processors[].handler``
    (``app.orders.handler``), imported with ``task_root`` (default: the current
    directory) on ``sys.path``, as the runtime does. ``filter_criteria``: patterns, each a
    JSON string or a dict. ``page_size``: records per GetRecords page (default: every
    record in one page). ``shard_id``: the shard the records are served on (default: a
    Kinesis record's own, else ``DEFAULT_SHARD_ID``). ``database_url``: run it as a
    transactional processor (``transactional: true``, an ``async def`` handler) whose
    ``context.transaction`` is a connection to this database (e.g. a SQLite file holding
    the handler's tables); each invocation's writes commit with its checkpoint, as in
    shardwise, and the test reads the outcome from the database.
    """
    served = _records_of(records)
    shape = shape_of(served[0]) if served else DYNAMODB_SHAPE
    reference = handler if isinstance(handler, str) else _reference(handler)
    entry: dict[str, Any] = {
        "name": name,
        "source": _placeholder_source(shape),
        "handler": reference,
        "starting_position": "TRIM_HORIZON",
        "batch_size": batch_size,
        "maximum_retry_attempts": maximum_retry_attempts,
        "bisect_batch_on_function_error": bisect_batch_on_function_error,
        "function_response_types": list(function_response_types),
        "maximum_record_age_in_seconds": maximum_record_age_in_seconds,
        "tumbling_window_in_seconds": tumbling_window_in_seconds,
        "parallelization_factor": parallelization_factor,
        "timeout_seconds": timeout_seconds,
        "payload_limit_bytes": payload_limit_bytes,
        "transactional": database_url is not None,
    }
    if filter_criteria is not None:
        entry["filter_criteria"] = {
            "filters": [
                {"pattern": p if isinstance(p, str) else json.dumps(p)} for p in filter_criteria
            ]
        }
    config = ProcessorConfig.model_validate(entry)
    if isinstance(handler, str):
        function = prepare(config, Path(task_root) if task_root is not None else Path.cwd())
    else:
        function = Function(handler=handler)
    return await _run(
        config,
        function,
        served,
        page_size=page_size,
        max_invocations=max_invocations,
        shard_id=shard_id,
        database_url=database_url,
    )


async def run_processor(
    config: ProcessorConfig,
    records: Records,
    *,
    config_dir: str | Path = ".",
    handler: Callable[..., Any] | type[Any] | None = None,
    page_size: int | None = None,
    max_invocations: int = DEFAULT_MAX_INVOCATIONS,
    shard_id: str | None = None,
    database_url: str | None = None,
) -> RunResult:
    """Run one ``processors:`` entry (e.g. ``load_config(path).processors[0]``) on
    ``records``, as ``run_handler`` does: its function (handler, runtime or invoke URL, as
    the worker opens it; ``config_dir`` is the config file's directory) or ``handler``
    instead, with every setting of the entry. Its on-failure destination is replaced by
    the in-memory one. A transactional entry needs ``database_url`` (see ``run_handler``)."""
    served = _records_of(records)
    if served and shape_of(served[0]).body != config.source.kind:
        raise ValueError(
            f"processor {config.name} reads a {config.source.kind} stream; these are "
            f"{shape_of(served[0]).body} records"
        )
    function = (
        Function(handler=handler) if handler is not None else prepare(config, Path(config_dir))
    )
    return await _run(
        config,
        function,
        served,
        page_size=page_size,
        max_invocations=max_invocations,
        shard_id=shard_id,
        database_url=database_url,
    )


def _synchronous(run: Callable[P, Coroutine[Any, Any, RunResult]]) -> Callable[P, RunResult]:
    """``run`` for a test that is not ``async``: on an event loop of its own."""

    @functools.wraps(run)
    def synchronous(*args: P.args, **kwargs: P.kwargs) -> RunResult:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(run(*args, **kwargs))
        raise RuntimeError(
            f"{run.__name__}_sync was called inside a running event loop: "
            f"await {run.__name__}(...) instead"
        )

    synchronous.__name__ = synchronous.__qualname__ = f"{run.__name__}_sync"
    synchronous.__doc__ = (
        f"``{run.__name__}`` for a test that is not ``async``, on an event loop of its own "
        f"(in an ``async def`` test, ``await {run.__name__}(...)`` instead)."
    )
    return synchronous


run_handler_sync = _synchronous(run_handler)
run_processor_sync = _synchronous(run_processor)


# -- the run --------------------------------------------------------------------------------


async def _run(
    config: ProcessorConfig,
    function: Function,
    records: list[StreamRecord],
    *,
    page_size: int | None,
    max_invocations: int,
    shard_id: str | None,
    database_url: str | None = None,
) -> RunResult:
    if config.transactional:
        if database_url is None:
            raise ValueError(
                f"processor {config.name} is transactional: pass database_url, the database "
                "its context.transaction writes to"
            )
        target = function.handler
        method = getattr(target, "process", None) if inspect.isclass(target) else target
        if not inspect.iscoroutinefunction(method):
            raise ValueError(
                "a transactional handler must be 'async def': context.transaction is an "
                "SQLAlchemy AsyncConnection"
            )
    if max_invocations < 1:
        raise ValueError("max_invocations must be at least 1")
    if page_size is not None and page_size < 1:
        raise ValueError("page_size must be at least 1")
    shape = shape_of(records[0]) if records else DYNAMODB_SHAPE
    stream_arn = _stream_arn(records, shape)
    shard = ShardId(shard_id or _shard_of(records, shape))
    _check_order(records, shape)
    settings = consumer_settings(config)
    stop = _StopWithoutPauses()
    progress = ProcessorProgress(config.name)
    recorder = _RecordingProcessor(
        open_processor(config, function, stream_arn=stream_arn),
        report_batch_item_failures=config.reports_batch_item_failures,
        stop=stop,
        max_invocations=max_invocations,
    )
    checkpointer = _MemoryCheckpointer()
    destination = _MemoryDestination()
    engine = create_async_engine(database_url) if database_url and config.transactional else None
    consumer = ShardConsumer(
        source=_MemorySource(stream_arn, shard, records, page_size or max(1, len(records))),
        shard_id=shard,
        start=Position(start=StartingPosition.TRIM_HORIZON),
        processor=recorder,
        checkpointer=checkpointer,
        settings=settings,
        stop=stop,
        progress=progress,
        destination=destination,
        transactions=None if engine is None else _Transactions(engine, checkpointer),
    )
    await recorder.start()
    try:
        # A task of its own: the consumer binds log context variables (the shard), which
        # stay in the task's copy of the caller's context.
        await asyncio.create_task(consumer.run())
    finally:
        await recorder.stop()
        if engine is not None:
            await engine.dispose()
    record_filter = settings.record_filter
    kept = {id(r) for r in record_filter.keep(records)} if record_filter is not None else None
    return RunResult(
        records=tuple(records),
        invocations=tuple(recorder.invocations),
        checkpoint=checkpointer.checkpoint,
        checkpoints=tuple(checkpointer.saved),
        finished=checkpointer.finished,
        failures=tuple(destination.sent),
        filtered=tuple(r for r in records if kept is not None and id(r) not in kept),
        open_window=OpenWindow.decode(checkpointer.window),
        progress=progress,
    )


def _records_of(records: Records) -> list[StreamRecord]:
    if isinstance(records, Mapping):
        if "Records" not in records:
            raise ValueError('an event is {"Records": [...]}; this one has no "Records"')
        return list(records["Records"])
    return list(records)


def _reference(handler: Callable[..., Any] | type[Any]) -> str:
    """How ``processors[].handler`` would name ``handler``, when it can."""
    module = getattr(handler, "__module__", None)
    qualname = getattr(handler, "__qualname__", None)
    if not callable(handler):
        raise TypeError(f"handler must be callable or a handler reference, not {handler!r}")
    if isinstance(module, str) and isinstance(qualname, str):
        try:
            split_handler(f"{module}:{qualname}")
        except ValueError:
            return _IN_PROCESS_HANDLER
        return f"{module}:{qualname}"
    return _IN_PROCESS_HANDLER


def _placeholder_source(shape: RecordShape) -> dict[str, Any]:
    """The config's source: only its kind matters here (the records name their stream)."""
    if shape.body == "kinesis":
        return {"kinesis": {"stream_arn": kinesis_stream_arn()}}
    return {"dynamodb": {"stream_arn": dynamodb_stream_arn()}}


def _stream_arn(records: Sequence[StreamRecord], shape: RecordShape) -> str:
    arns = {str(r.get("eventSourceARN", "")) for r in records}
    if len(arns) > 1:
        raise ValueError(f"the records come from more than one stream: {sorted(arns)}")
    if arns and (arn := arns.pop()):
        return arn
    return kinesis_stream_arn() if shape.body == "kinesis" else dynamodb_stream_arn()


def _shard_of(records: Sequence[StreamRecord], shape: RecordShape) -> str:
    if shape.body != "kinesis":
        return DEFAULT_SHARD_ID
    shards = {str(r.get("eventID", "")).partition(":")[0] for r in records}
    if len(shards) > 1:
        raise ValueError(
            f"the records are of more than one shard ({sorted(shards)}): run each shard's "
            "records on their own"
        )
    return shards.pop() if shards else DEFAULT_SHARD_ID


def _check_order(records: Sequence[StreamRecord], shape: RecordShape) -> None:
    """Records of a shard have distinct sequence numbers, increasing in stream order."""
    keys: list[tuple[int, ...]] = []
    for index, record in enumerate(records):
        if shape_of(record) is not shape:
            raise ValueError(
                f"record {index} is a {shape_of(record).body} record among {shape.body} ones"
            )
        position = str(shape.sequence_number(record))
        if not all(part.isdigit() for part in position.split(":")):
            raise ValueError(f"record {index}: sequence number {position!r} is not digits")
        key = tuple(int(part) for part in position.split(":"))
        if keys and key <= keys[-1]:
            raise ValueError(
                f"record {index}: sequence number {position} does not come after the one "
                "before it; records are served in stream order, each number once"
            )
        keys.append(key)


# -- the edges, in memory -------------------------------------------------------------------


class _StopWithoutPauses(asyncio.Event):
    """The consumer's stop signal; the harness sets it to stop a run.

    Dispatch pauses (a failed batch's backoff, the poll cadence, API backoff) with
    ``clock.sleep_or_stop``: it waits for this signal with a timeout and goes on when the
    timeout expires. Here the wait ends at once with ``TimeoutError`` - the pause has
    passed - after letting other tasks run, as a real pause would."""

    async def wait(self) -> Literal[True]:
        if not self.is_set():
            await asyncio.sleep(0)
        if self.is_set():
            return True
        raise TimeoutError


class _MemorySource:
    """One closed shard holding ``records``, served ``page_size`` at a time."""

    def __init__(
        self, stream_arn: str, shard_id: ShardId, records: Sequence[StreamRecord], page_size: int
    ) -> None:
        self._stream_arn = stream_arn
        self._shard_id = shard_id
        self._records = list(records)
        self._limits = ReadLimits(records_per_call=page_size, poll_interval_s=0.0)
        self._positions = {
            str(shape_of(r).sequence_number(r)): index for index, r in enumerate(records)
        }

    @property
    def stream_arn(self) -> str:
        return self._stream_arn

    @property
    def read_limits(self) -> ReadLimits:
        return self._limits

    async def describe(self) -> ShardListing:
        first = last = None
        if self._records:
            shape = shape_of(self._records[0])
            first = shape.sequence_number(self._records[0])
            last = shape.sequence_number(self._records[-1])
        shard = Shard(self._shard_id, starting_sequence_number=first, ending_sequence_number=last)
        return ShardListing(status="ENABLED", shards=(shard,))

    async def get_iterator(self, shard_id: ShardId, position: Position) -> str:
        self._check(shard_id)
        if position.after is not None:
            index = self._positions[str(position.after)] + 1
        elif position.start is StartingPosition.LATEST:
            index = len(self._records)
        else:
            index = 0
        return str(index)

    async def get_records(self, shard_id: ShardId, iterator: str, limit: int) -> RecordPage:
        self._check(shard_id)
        start = int(iterator)
        end = min(len(self._records), start + limit)
        return RecordPage(
            records=self._records[start:end],
            next_iterator=str(end) if end < len(self._records) else None,
        )

    def _check(self, shard_id: ShardId) -> None:
        if shard_id != self._shard_id:
            raise ValueError(f"no shard {shard_id} here (only {self._shard_id})")


class _MemoryCheckpointer:
    """The checkpoint, the open window and the finished mark of the one shard."""

    def __init__(self) -> None:
        self.checkpoint: str | None = None
        self.saved: list[str] = []
        self.window: str | None = None
        self.finished = False

    async def save(self, shard_id: ShardId, sequence_number: SequenceNumber) -> None:
        self.checkpoint = str(sequence_number)
        self.saved.append(self.checkpoint)

    async def save_window(
        self, shard_id: ShardId, sequence_number: SequenceNumber | None, window_state: str | None
    ) -> None:
        if sequence_number is not None:
            await self.save(shard_id, sequence_number)
        self.window = window_state

    async def window_state(self) -> str | None:
        return self.window

    async def finish(self, shard_id: ShardId, sequence_number: SequenceNumber | None) -> None:
        if sequence_number is not None and str(sequence_number) != self.checkpoint:
            await self.save(shard_id, sequence_number)
        self.finished = True


class _Transaction:
    """An open transaction of the harness: the connection, and where it checkpoints."""

    def __init__(self, connection: AsyncConnection) -> None:
        self.connection = connection
        self.checkpointed: SequenceNumber | None = None
        self.window: tuple[str | None] | None = None  # (state,) when the window was written

    @property
    def broken(self) -> bool:
        return bool(self.connection.invalidated)

    async def checkpoint(self, sequence_number: SequenceNumber | None) -> None:
        self.checkpointed = sequence_number

    async def checkpoint_window(
        self, sequence_number: SequenceNumber | None, window_state: str | None
    ) -> None:
        self.checkpointed = sequence_number
        self.window = (window_state,)

    async def applied(
        self, sequence_numbers: Sequence[SequenceNumber], checkpointed: SequenceNumber | None
    ) -> None:
        return None  # the lanes checkpoint them once the watermark passes them


class _Transactions:
    """Transactions on ``engine`` whose checkpoint is kept once they commit (a run starts
    once: no lane's applied records are left from before it)."""

    def __init__(self, engine: AsyncEngine, checkpointer: _MemoryCheckpointer) -> None:
        self._engine = engine
        self._checkpointer = checkpointer

    @contextlib.asynccontextmanager
    async def transaction(self, shard_id: ShardId) -> AsyncIterator[_Transaction]:
        async with self._engine.begin() as connection:
            transaction = _Transaction(connection)
            yield transaction
        if transaction.window is not None:
            await self._checkpointer.save_window(
                shard_id, transaction.checkpointed, *transaction.window
            )
        elif transaction.checkpointed is not None:
            await self._checkpointer.save(shard_id, transaction.checkpointed)

    async def applied(
        self, shard_id: ShardId, after: SequenceNumber | None
    ) -> frozenset[SequenceNumber]:
        return frozenset()


class _MemoryDestination:
    """An on-failure destination that keeps what it is handed."""

    target = "memory://shardwise.testing"

    def __init__(self) -> None:
        self.sent: list[FailedBatch] = []

    async def send(self, failed: FailedBatch) -> None:
        self.sent.append(failed)

    async def close(self) -> None:
        return None


class _RecordingProcessor:
    """The processor the runtime opened, with every call recorded; sets ``stop`` once
    ``max_invocations`` calls were made."""

    def __init__(
        self,
        inner: Processor,
        *,
        report_batch_item_failures: bool,
        stop: asyncio.Event,
        max_invocations: int,
    ) -> None:
        self._inner = inner
        self.name = inner.name
        self.function_arn = inner.function_arn
        self._report = report_batch_item_failures
        self._stop = stop
        self._max_invocations = max_invocations
        self.invocations: list[Invocation] = []

    async def start(self) -> None:
        await self._inner.start()

    async def stop(self) -> None:
        await self._inner.stop()

    async def invoke(self, batch: Batch) -> Any:
        return await self._recorded(batch.event(), lambda: self._inner.invoke(batch))

    async def invoke_event(self, event: dict[str, Any], shard_id: str) -> Any:
        return await self._recorded(event, lambda: self._inner.invoke_event(event, shard_id))

    async def _recorded(self, event: dict[str, Any], call: Callable[[], Awaitable[Any]]) -> Any:
        seen = copy.deepcopy(event)
        try:
            response = await call()
        except Exception as exc:
            self._add(Invocation(seen, "failed", error=exc, failed_from=0))
            raise
        self._add(self._judged(seen, response))
        return response

    def _judged(self, event: dict[str, Any], response: Any) -> Invocation:
        if "isFinalInvokeForWindow" in event:
            ok = bool(event["isFinalInvokeForWindow"]) or (
                isinstance(response, dict)
                and isinstance(response.get("state"), dict)
                and not response.get("batchItemFailures")
            )
            if ok:
                return Invocation(event, "succeeded", response)
            return Invocation(event, "failed", response, failed_from=0)
        if not self._report:
            return Invocation(event, "succeeded", response)
        verdict = interpret_response(response, event["Records"])
        if verdict.failed_from is None:
            return Invocation(event, "succeeded", response)
        outcome: Outcome = "partial" if verdict.failed_from else "failed"
        return Invocation(event, outcome, response, failed_from=verdict.failed_from)

    def _add(self, invocation: Invocation) -> None:
        self.invocations.append(invocation)
        if len(self.invocations) >= self._max_invocations:
            self._stop.set()
