"""Start and stop everything: store, AWS clients, one runner per processor, signals, drain.

Ownership of tasks is strict: the supervisor's TaskGroup owns one ``ProcessorRunner`` per
enabled processor; each runner's TaskGroup owns one ``ShardConsumer`` per shard it reads.

Shutdown (SIGTERM / SIGINT, or ``request_stop()``): the stop event is set, consumers stop
polling and let their in-flight batch finish and checkpoint; after
``worker.shutdown_timeout_seconds`` whatever is still running is cancelled (its batch is not
checkpointed and will be delivered again). A second signal cancels at once.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import structlog
from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession

from shardwise.clock import API_BACKOFF, sleep_or_stop
from shardwise.config import ProcessorConfig, Settings
from shardwise.destinations import Destination, open_destination
from shardwise.dispatch.consumer import ConsumerSettings, ShardConsumer, ShardOutcome
from shardwise.dispatch.delivery import FailurePolicy
from shardwise.dispatch.filters import RecordFilter, compile_filters
from shardwise.errors import ShardwiseError, SourceError, StreamNotFoundError, first_error
from shardwise.observe.progress import ProcessorProgress
from shardwise.processors import Processor, build_processor, import_handler
from shardwise.records import (
    Position,
    SequenceNumber,
    Shard,
    ShardId,
    ShardListing,
    StartingPosition,
)
from shardwise.sources.base import ShardSource
from shardwise.sources.dynamodb import DynamoDBStreamsSource, resolve_stream_arn
from shardwise.sources.lineage import ready_shards
from shardwise.store import CheckpointStore, ShardCheckpoint, ShardRegistration

__all__ = ["ProcessorRunner", "Supervisor", "aws_client_config"]

log = structlog.get_logger("shardwise.supervisor")

# A finished shard wakes the runner so its children start at once; listings triggered that
# way are spaced at least this far apart (DescribeStream allows 10 calls/s per account).
MIN_RELIST_INTERVAL_S = 1.0


def aws_client_config(max_connections: int = 64) -> AioConfig:
    """Our clients do their own backoff: botocore must not retry behind our back."""
    return AioConfig(
        retries={"total_max_attempts": 1},
        connect_timeout=5,
        read_timeout=20,
        max_pool_connections=max_connections,
    )


class _StoreCheckpointer:
    """Binds the store to one processor and stream for a ShardConsumer."""

    def __init__(self, store: CheckpointStore, processor: str, stream_arn: str) -> None:
        self._store = store
        self._processor = processor
        self._stream_arn = stream_arn

    async def save(self, shard_id: ShardId, sequence_number: SequenceNumber) -> None:
        await self._store.save(self._processor, self._stream_arn, shard_id, sequence_number)

    async def finish(self, shard_id: ShardId, sequence_number: SequenceNumber | None) -> None:
        await self._store.finish(self._processor, self._stream_arn, shard_id, sequence_number)


def plan_registrations(
    new_shards: Sequence[Shard], starting_position: StartingPosition, *, first_time: bool
) -> list[ShardRegistration]:
    """Where newly listed shards start.

    The processor's ``starting_position`` applies only the first time it meets a stream:
    with LATEST, closed shards then hold only past records and are marked finished, open ones
    start at LATEST. Every shard that appears later (splits, rollovers) starts at
    TRIM_HORIZON, so nothing written to it is skipped.
    """
    latest = first_time and starting_position is StartingPosition.LATEST
    return [
        ShardRegistration(
            shard_id=shard.shard_id,
            parent_shard_id=shard.parent_shard_id,
            start_position=StartingPosition.LATEST if latest else StartingPosition.TRIM_HORIZON,
            finished=latest and shard.closed,
        )
        for shard in new_shards
    ]


def start_position(checkpoint: ShardCheckpoint) -> Position:
    if checkpoint.sequence_number is not None:
        return Position.after_sequence(checkpoint.sequence_number)
    return Position(start=checkpoint.start_position)


class ProcessorRunner:
    """One processor on one stream: lists shards, starts consumers parent-first."""

    def __init__(
        self,
        config: ProcessorConfig,
        *,
        source: ShardSource,
        processor: Processor,
        store: CheckpointStore,
        stop: asyncio.Event,
        progress: ProcessorProgress,
        sync_interval_s: float,
        destination: Destination | None = None,
    ) -> None:
        self.config = config
        self._destination = destination
        self._source = source
        self._processor = processor
        self._store = store
        self._stop = stop
        self._progress = progress
        self._sync_interval_s = sync_interval_s
        self._checkpointer = _StoreCheckpointer(store, config.name, source.stream_arn)
        self._consumer_settings = ConsumerSettings(
            batch_size=config.batch_size,
            window_s=config.maximum_batching_window_in_seconds,
            on_trimmed_data=config.on_trimmed_data,
            max_poll_interval_s=config.max_poll_interval_seconds,
            record_filter=self._record_filter(config),
            policy=FailurePolicy(
                maximum_retry_attempts=config.maximum_retry_attempts,
                bisect_batch_on_function_error=config.bisect_batch_on_function_error,
                report_batch_item_failures=config.reports_batch_item_failures,
                maximum_record_age_s=config.maximum_record_age_in_seconds,
                payload_limit_bytes=config.payload_limit_bytes,
            ),
        )
        self._running: dict[ShardId, asyncio.Task[ShardOutcome]] = {}
        self._wake = asyncio.Event()

    @staticmethod
    def _record_filter(config: ProcessorConfig) -> RecordFilter | None:
        if config.filter_criteria is None:
            return None
        record_filter = compile_filters([f.pattern for f in config.filter_criteria.filters])
        for note in record_filter.notes:
            log.warning(
                "filter pattern may not match what it means to",
                processor=config.name,
                filter_index=note.filter_index,
                position=note.position,
                note=note.message,
            )
        return record_filter

    async def run(self) -> None:
        structlog.contextvars.bind_contextvars(processor=self.config.name)
        log.info("processor starting", stream_arn=self._source.stream_arn)
        await self._processor.start()
        try:
            async with asyncio.TaskGroup() as tasks:
                await self._coordinate(tasks)
        finally:
            await self._processor.stop()
            log.info("processor stopped")

    async def _coordinate(self, tasks: asyncio.TaskGroup) -> None:
        first = True
        while not self._stop.is_set():
            listing = await self._describe()
            if listing is None:
                return
            if not listing.enabled:
                if first:
                    raise StreamNotFoundError(
                        f"processor {self.config.name}: stream {self._source.stream_arn} is "
                        f"{listing.status}; enable the table's stream or point the processor "
                        "at its LatestStreamArn"
                    )
                log.warning("stream was disabled; reading what remains", status=listing.status)
            first = False
            checkpoints = await self._register(listing)
            finished = {sid for sid, c in checkpoints.items() if c.finished}
            self._running = {s: t for s, t in self._running.items() if not t.done()}
            for shard in ready_shards(listing.shards, finished):
                if shard.shard_id not in self._running:
                    start = start_position(checkpoints[shard.shard_id])
                    self._running[shard.shard_id] = tasks.create_task(
                        self._consume(shard.shard_id, start)
                    )
            await self._wait_for_next_sync()

    async def _wait_for_next_sync(self) -> None:
        try:
            async with asyncio.timeout(self._sync_interval_s):
                await self._first_of(self._wake.wait(), self._stop.wait())
        except TimeoutError:
            return
        self._wake.clear()
        await sleep_or_stop(self._stop, MIN_RELIST_INTERVAL_S)

    @staticmethod
    async def _first_of(*waits: Any) -> None:
        pending = [asyncio.ensure_future(w) for w in waits]
        try:
            await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in pending:
                task.cancel()

    async def _describe(self) -> ShardListing | None:
        """List the stream, retrying API errors; None when stopping meanwhile."""
        attempt = 0
        while True:
            attempt += 1
            try:
                return await self._source.describe()
            except StreamNotFoundError:
                raise
            except SourceError as exc:
                log.warning("listing shards failed; backing off", code=exc.code, error=str(exc))
                if await sleep_or_stop(self._stop, API_BACKOFF.delay(attempt)):
                    return None

    async def _register(self, listing: ShardListing) -> dict[ShardId, ShardCheckpoint]:
        name, arn = self.config.name, self._source.stream_arn
        checkpoints = await self._store.load(name, arn)
        new = [s for s in listing.shards if s.shard_id not in checkpoints]
        if not new:
            return checkpoints
        plan = plan_registrations(new, self.config.starting_position, first_time=not checkpoints)
        inserted = await self._store.register_shards(name, arn, plan)
        log.info("shards discovered", new=inserted, listed=len(listing.shards))
        return await self._store.load(name, arn)

    async def _consume(self, shard_id: ShardId, start: Position) -> ShardOutcome:
        consumer = ShardConsumer(
            source=self._source,
            shard_id=shard_id,
            start=start,
            processor=self._processor,
            checkpointer=self._checkpointer,
            settings=self._consumer_settings,
            stop=self._stop,
            progress=self._progress,
            destination=self._destination,
        )
        outcome = await consumer.run()
        if outcome is ShardOutcome.FINISHED:
            self._wake.set()
        elif outcome is ShardOutcome.GONE:
            self._progress.gone(shard_id)
        return outcome


class Supervisor:
    """Runs every enabled processor of a ``Settings`` until stopped."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.stop_event = asyncio.Event()
        self.started = asyncio.Event()
        self.progress: dict[str, ProcessorProgress] = {
            p.name: ProcessorProgress(p.name) for p in settings.processors if p.enabled
        }
        self.store: CheckpointStore | None = None  # set while connected (for /readyz)
        self._signals = 0
        self._runner_tasks: list[asyncio.Task[None]] = []

    def request_stop(self) -> None:
        """Begin a graceful drain; a second request cancels what is still running."""
        self._signals += 1
        if self._signals == 1:
            log.info(
                "stop requested; draining",
                grace_s=self.settings.worker.shutdown_timeout_seconds,
            )
            self.stop_event.set()
        else:
            log.warning("second stop request; cancelling in-flight work")
            for task in self._runner_tasks:
                task.cancel()

    async def run(self, *, install_signal_handlers: bool = True) -> None:
        loop = asyncio.get_running_loop()
        if install_signal_handlers:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.request_stop)
        try:
            async with AsyncExitStack() as stack:
                runners = await self._build(stack)
                async with asyncio.TaskGroup() as tasks:
                    self._runner_tasks = [tasks.create_task(r.run()) for r in runners]
                    tasks.create_task(self._drain_deadline())
                    self.started.set()
        except BaseExceptionGroup as group:
            # One processor failed and the others were stopped: report that failure itself.
            failure = first_error(group)
            if isinstance(failure, ShardwiseError):
                raise failure from group
            raise
        finally:
            if install_signal_handlers:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(sig)
        log.info("stopped")

    def _forget_store(self) -> None:
        self.store = None

    async def _drain_deadline(self) -> None:
        await self.stop_event.wait()
        if not self._runner_tasks:
            return
        _, pending = await asyncio.wait(
            self._runner_tasks, timeout=self.settings.worker.shutdown_timeout_seconds
        )
        if pending:
            log.warning("drain deadline passed; cancelling in-flight batches", running=len(pending))
            for task in pending:
                task.cancel()

    async def _build(self, stack: AsyncExitStack) -> list[ProcessorRunner]:
        """Import every handler first (fail fast), then connect the store and AWS."""
        enabled = [p for p in self.settings.processors if p.enabled]
        paths = search_paths(self.settings)
        targets = {p.name: import_handler(p.handler, paths) for p in enabled}
        for p in self.settings.processors:
            if not p.enabled:
                log.info("processor disabled; its position is kept", processor=p.name)
        store = await CheckpointStore.connect(self.settings.store.url)
        stack.push_async_callback(store.close)
        self.store = store
        stack.callback(self._forget_store)
        aws = self.settings.aws
        session = AioSession(profile=aws.profile) if aws.profile else AioSession()
        client_kwargs: dict[str, Any] = {
            "region_name": aws.region,
            "endpoint_url": aws.endpoint_url,
            "config": aws_client_config(),
        }
        streams = await stack.enter_async_context(
            session.create_client("dynamodbstreams", **client_kwargs)
        )
        tables: Any = None
        runners: list[ProcessorRunner] = []
        for config in enabled:
            source_config = config.source.dynamodb
            if source_config.stream_arn:
                arn = source_config.stream_arn
            else:
                if tables is None:
                    tables = await stack.enter_async_context(
                        session.create_client("dynamodb", **client_kwargs)
                    )
                arn = await resolve_stream_arn(tables, str(source_config.table))
            processor = build_processor(
                config.name, targets[config.name], stream_arn=arn, timeout_s=config.timeout_seconds
            )
            progress = self.progress[config.name]
            destination = None
            if config.destination_config is not None:
                destination = await open_destination(
                    config.destination_config.on_failure.destination,
                    settings=self.settings,
                    store=store,
                    processor=config.name,
                )
                stack.push_async_callback(destination.close)
            runners.append(
                ProcessorRunner(
                    config,
                    source=DynamoDBStreamsSource(streams, arn),
                    processor=processor,
                    store=store,
                    stop=self.stop_event,
                    progress=progress,
                    sync_interval_s=self.settings.worker.shard_sync_interval_seconds,
                    destination=destination,
                )
            )
        return runners


def search_paths(settings: Settings) -> list[Path]:
    """Like Lambda's task root: the config file's directory, then the current directory."""
    paths = [settings.config_dir.resolve(), Path.cwd().resolve()]
    return list(dict.fromkeys(paths))
