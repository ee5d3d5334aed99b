"""Start and stop everything: store, AWS clients, one runner per processor, signals, drain.

Ownership of tasks is strict: the supervisor's TaskGroup owns one ``ProcessorRunner`` per
enabled processor (``runner.py``); each runner's TaskGroup owns its lease coordinator and one
``ShardConsumer`` per shard it holds the lease of.

Shutdown (SIGTERM / SIGINT, or ``request_stop()``): the stop event is set, consumers stop
polling and let their in-flight batch finish and checkpoint; after
``worker.shutdown_timeout_seconds`` whatever is still running is cancelled (its batch is not
checkpointed and will be delivered again). A second signal cancels at once.
"""

from __future__ import annotations

import asyncio
import functools
import signal
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from aiobotocore.session import AioSession

from shardwise.aws import (
    AWS_MAX_CONNECTIONS,
    aws_client_config,
    aws_session,
    credential_environment,
    endpoint_override,
)
from shardwise.clock import relay_first, sleep_or_stop
from shardwise.config import AwsConfig, ProcessorConfig, Settings, load_config
from shardwise.destinations import open_destination
from shardwise.dispatch.protocols import ShardSource
from shardwise.errors import (
    ConfigError,
    HandlerImportError,
    ShardwiseError,
    StoreError,
    first_error,
)
from shardwise.functions import Function, open_processor, prepare
from shardwise.gc_policy import GcPolicy
from shardwise.leases import LeaseCoordinator
from shardwise.observe.progress import ProcessorProgress
from shardwise.records import StreamRecord
from shardwise.runner import ProcessorRunner
from shardwise.sources.dynamodb import DynamoDBStreamsSource, resolve_stream_arn
from shardwise.sources.dynamodb_raw import (
    RawDynamoDBStreamsSource,
    RawStreamsClient,
    open_raw_client,
)
from shardwise.sources.kinesis import KinesisSource
from shardwise.sources.kinesis import resolve_stream_arn as resolve_kinesis_arn
from shardwise.sources.sigv4 import KINESIS
from shardwise.store import CheckpointStore
from shardwise.store.idempotency import IdempotencyStore

__all__ = ["Supervisor"]

log = structlog.get_logger("shardwise.supervisor")


@dataclass(slots=True)
class _Running:
    """A processor's runner task, its own stop event and what it opened."""

    config: ProcessorConfig
    stop: asyncio.Event
    task: asyncio.Task[None]


@dataclass(slots=True)
class _Connections:
    """What every processor shares: the store and the AWS clients."""

    store: CheckpointStore
    session: AioSession
    aws: AwsConfig
    client_kwargs: dict[str, Any]
    stack: AsyncExitStack
    streams: Any = None  # the aiobotocore client (transport: aiobotocore)
    raw: RawStreamsClient | None = None  # the raw client (transport: raw)
    kinesis: RawStreamsClient | None = None  # the Kinesis client, once a processor needs it
    tables: Any = None

    async def source(self, config: ProcessorConfig, stream_arn: str) -> ShardSource:
        kinesis = config.source.kinesis
        if kinesis is not None:
            return KinesisSource(
                await self.kinesis_client(),
                stream_arn,
                at_timestamp=config.starting_position_timestamp,
                deaggregate=kinesis.deaggregate,
                identity_arn=kinesis.invoke_identity_arn,
                on_corrupt=functools.partial(_corrupt_aggregate, config.name),
            )
        if self.raw is not None:
            return RawDynamoDBStreamsSource(self.raw, stream_arn)
        return DynamoDBStreamsSource(self.streams, stream_arn)

    async def kinesis_client(self) -> RawStreamsClient:
        """The Kinesis client every Kinesis processor shares, opened when first asked for
        (Kinesis is always read through the raw client)."""
        if self.kinesis is None:
            self.kinesis = await open_raw_client(
                self.aws, max_connections=AWS_MAX_CONNECTIONS, api=KINESIS
            )
            self.stack.push_async_callback(self.kinesis.close)
        return self.kinesis

    async def stream_arn(self, config: ProcessorConfig) -> str:
        kinesis = config.source.kinesis
        if kinesis is not None:
            if kinesis.stream_arn:
                return kinesis.stream_arn
            return await resolve_kinesis_arn(await self.kinesis_client(), str(kinesis.stream_name))
        source = config.source.dynamodb
        assert source is not None
        if source.stream_arn:
            return source.stream_arn
        if self.tables is None:
            self.tables = await self.stack.enter_async_context(
                self.session.create_client(
                    "dynamodb",
                    endpoint_url=endpoint_override(self.aws, "dynamodb"),
                    **self.client_kwargs,
                )
            )
        return await resolve_stream_arn(self.tables, str(source.table))


def _corrupt_aggregate(processor: str, record: StreamRecord, reason: str) -> None:
    """A KPL aggregate that could not be split: it is delivered whole, and said so."""
    log.warning(
        "KPL aggregate delivered as one record: it could not be split",
        processor=processor,
        event_id=record.get("eventID"),
        reason=reason,
    )


class Supervisor:
    """Runs every enabled processor of a ``Settings`` until stopped.

    SIGHUP (or ``request_reload()``) reads ``config_path`` again and applies its processors:
    removed and changed ones drain and stop, added and changed ones start (a changed one only
    once its old runner has ended); the others keep running untouched. Changes outside
    ``processors`` need a restart and are only logged.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        config_path: Path | None = None,
        adjust: Callable[[Settings], Settings] | None = None,
    ) -> None:
        self.settings = settings
        self.config_path = config_path
        # Applied to the file's settings on reload as they were to ``settings`` (a worker
        # process's own worker id and endpoint, ``workers/link.py``).
        self._adjust = adjust
        self.stop_event = asyncio.Event()
        self.started = asyncio.Event()
        self.progress: dict[str, ProcessorProgress] = {
            p.name: ProcessorProgress(p.name) for p in settings.processors if p.enabled
        }
        self.store: CheckpointStore | None = None  # set while connected (for /readyz)
        self.failed: dict[str, str] = {}  # processors that failed after a reload started them
        self._signals = 0
        self._running: dict[str, _Running] = {}
        self._tasks: asyncio.TaskGroup | None = None
        self._connections: _Connections | None = None
        self._reloading = asyncio.Lock()

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
            for running in self._running.values():
                running.task.cancel()

    def request_reload(self) -> None:
        """Apply the config file's processors again (SIGHUP)."""
        if self._tasks is None or self.stop_event.is_set():
            return
        if self.config_path is None:
            log.warning("reload requested, but no config file is known; ignored")
            return
        self._tasks.create_task(self.reload())

    async def run(self, *, install_signal_handlers: bool = True) -> None:
        loop = asyncio.get_running_loop()
        handlers = {
            signal.SIGTERM: self.request_stop,
            signal.SIGINT: self.request_stop,
            signal.SIGHUP: self.request_reload,
        }
        if install_signal_handlers:
            for sig, handler in handlers.items():
                loop.add_signal_handler(sig, handler)
        try:
            async with AsyncExitStack() as stack:
                enabled = [p for p in self.settings.processors if p.enabled]
                targets = self._import(enabled)
                for p in self.settings.processors:
                    if not p.enabled:
                        log.info("processor disabled; its position is kept", processor=p.name)
                self._connections = await self._connect(stack)
                gc_policy = GcPolicy(self.settings.worker.gc)
                gc_policy.apply()
                stack.callback(gc_policy.restore)
                async with asyncio.TaskGroup() as tasks:
                    self._tasks = tasks
                    for config in enabled:
                        await self._launch(config, targets[config.name], isolated=False)
                    tasks.create_task(self._drain_deadline())
                    tasks.create_task(self._purge_idempotency(self._connections.store))
                    self.started.set()
        except BaseExceptionGroup as group:
            # One processor failed and the others were stopped: report that failure itself.
            failure = first_error(group)
            if isinstance(failure, ShardwiseError):
                raise failure from group
            raise
        finally:
            self._tasks = None
            if install_signal_handlers:
                for sig in handlers:
                    loop.remove_signal_handler(sig)
        log.info("stopped")

    async def reload(self) -> None:
        """Read the config file again and apply its processors (see the class docstring)."""
        assert self.config_path is not None
        async with self._reloading:
            try:
                new = load_config(self.config_path)
                if self._adjust is not None:
                    new = self._adjust(new)
            except ConfigError as exc:
                log.error("reload failed; keeping the running configuration", problems=exc.problems)
                return
            self._warn_about_restart_only_changes(new)
            old = {p.name: p for p in self.settings.processors if p.enabled}
            wanted = {p.name: p for p in new.processors if p.enabled}
            stopping = [name for name in old if wanted.get(name) != old[name]]
            starting = [name for name in wanted if old.get(name) != wanted[name]]
            try:
                targets = self._import([wanted[name] for name in starting])
            except HandlerImportError as exc:
                log.error("reload failed; keeping the running configuration", error=str(exc))
                return
            for name in stopping:
                await self._retire(name)
            self.settings = self.settings.model_copy(update={"processors": new.processors})
            for name in starting:
                self.progress[name] = ProcessorProgress(name)
                self.failed.pop(name, None)
                await self._launch(wanted[name], targets[name], isolated=True)
            unchanged = sorted(set(old) & set(wanted) - set(stopping))
            log.info("configuration reloaded", stopped=stopping, started=starting, kept=unchanged)

    def _warn_about_restart_only_changes(self, new: Settings) -> None:
        sections = ("aws", "store", "http", "log", "worker", "health")
        changed = [name for name in sections if getattr(new, name) != getattr(self.settings, name)]
        if changed:
            log.warning("these sections change only on restart; not applied", sections=changed)

    def _import(self, configs: list[ProcessorConfig]) -> dict[str, Function]:
        return {p.name: prepare(p, self.settings.config_dir) for p in configs}

    async def _retire(self, name: str) -> None:
        """Drain one processor (bounded by the shutdown timeout) and forget it.

        Returns only once its runner has ended - drained, or cancelled at the deadline and
        done cleaning up (leases released, handler torn down) - so that a replacement for
        the same processor never starts beside it.
        """
        running = self._running.pop(name, None)
        if running is None:
            return
        running.stop.set()
        _, pending = await asyncio.wait(
            [running.task], timeout=self.settings.worker.shutdown_timeout_seconds
        )
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)
        self.progress.pop(name, None)
        log.info("processor retired", processor=name)

    def _forget_store(self) -> None:
        self.store = None

    async def _purge_idempotency(self, store: CheckpointStore) -> None:
        """Delete the store's expired ``shardwise.idempotency`` rows at start, then every
        ``store.idempotency_purge_interval_seconds`` until the worker stops (every worker
        does: deleting expired rows twice is harmless)."""
        interval = self.settings.store.idempotency_purge_interval_seconds
        if not interval:
            return
        rows = IdempotencyStore(store.engine)
        while not self.stop_event.is_set():
            try:
                purged = await rows.purge_expired()
            except StoreError as exc:
                log.warning("purging expired idempotency rows failed", error=str(exc))
            else:
                if purged:
                    log.info("expired idempotency rows purged", rows=purged)
            if await sleep_or_stop(self.stop_event, interval):
                return

    async def _drain_deadline(self) -> None:
        await self.stop_event.wait()
        tasks = [running.task for running in self._running.values()]
        if not tasks:
            return
        _, pending = await asyncio.wait(
            tasks, timeout=self.settings.worker.shutdown_timeout_seconds
        )
        if pending:
            log.warning("drain deadline passed; cancelling in-flight batches", running=len(pending))
            for task in pending:
                task.cancel()

    async def _connect(self, stack: AsyncExitStack) -> _Connections:
        store = await CheckpointStore.connect(self.settings.store.url)
        stack.push_async_callback(store.close)
        self.store = store
        stack.callback(self._forget_store)
        aws = self.settings.aws
        session = aws_session(aws)
        client_kwargs: dict[str, Any] = {"region_name": aws.region, "config": aws_client_config()}
        connections = _Connections(store, session, aws, client_kwargs, stack)
        if aws.transport == "raw":
            connections.raw = await open_raw_client(aws, max_connections=AWS_MAX_CONNECTIONS)
            stack.push_async_callback(connections.raw.close)
        else:
            connections.streams = await stack.enter_async_context(
                session.create_client(
                    "dynamodbstreams",
                    endpoint_url=endpoint_override(aws, "dynamodbstreams"),
                    **client_kwargs,
                )
            )
        return connections

    async def _launch(self, config: ProcessorConfig, target: Function, *, isolated: bool) -> None:
        """Start one processor's runner in the supervisor's TaskGroup.

        ``isolated`` (processors started by a reload): a failure is logged and recorded in
        ``failed`` instead of stopping every other processor.
        """
        assert self._tasks is not None and self._connections is not None
        stop = asyncio.Event()
        task = self._tasks.create_task(self._run_processor(config, target, stop, isolated))
        self._running[config.name] = _Running(config, stop, task)

    async def _run_processor(
        self, config: ProcessorConfig, target: Function, stop: asyncio.Event, isolated: bool
    ) -> None:
        try:
            async with AsyncExitStack() as resources, asyncio.TaskGroup() as tasks:
                relay = tasks.create_task(relay_first(stop, self.stop_event))
                try:
                    runner = await self._runner(config, target, stop, resources)
                    await runner.run()
                finally:
                    relay.cancel()
        except* ShardwiseError as group:
            if not isolated:
                raise
            failure = first_error(group)
            self.failed[config.name] = str(failure)
            log.error(
                "processor failed; the others keep running",
                processor=config.name,
                error=str(failure),
            )

    async def _runner(
        self,
        config: ProcessorConfig,
        target: Function,
        stop: asyncio.Event,
        resources: AsyncExitStack,
    ) -> ProcessorRunner:
        connections = self._connections
        assert connections is not None
        arn = await connections.stream_arn(config)
        processor = open_processor(
            config,
            target,
            stream_arn=arn,
            region=connections.aws.region,
            credentials=functools.partial(credential_environment, connections.session),
        )
        destination = None
        if config.destination_config is not None:
            destination = await open_destination(
                config.destination_config.on_failure.destination,
                settings=self.settings,
                store=connections.store,
                processor=config.name,
            )
            resources.push_async_callback(destination.close)
        worker = self.settings.worker
        leases = LeaseCoordinator(
            connections.store,
            processor=config.name,
            stream_arn=arn,
            worker_id=worker.id,
            lease_duration_s=worker.lease_duration_seconds,
            max_leases=worker.max_leases_per_worker,
        )
        return ProcessorRunner(
            config,
            source=await connections.source(config, arn),
            processor=processor,
            store=connections.store,
            leases=leases,
            stop=stop,
            progress=self.progress[config.name],
            sync_interval_s=worker.shard_sync_interval_seconds,
            destination=destination,
        )
