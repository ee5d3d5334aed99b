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
import signal
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import structlog
from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession

from shardwise.config import Settings
from shardwise.destinations import open_destination
from shardwise.errors import ShardwiseError, first_error
from shardwise.leases import LeaseCoordinator
from shardwise.observe.progress import ProcessorProgress
from shardwise.processors import build_processor, import_handler
from shardwise.runner import ProcessorRunner
from shardwise.sources.dynamodb import DynamoDBStreamsSource, resolve_stream_arn
from shardwise.store import CheckpointStore

__all__ = ["Supervisor", "aws_client_config", "search_paths"]

log = structlog.get_logger("shardwise.supervisor")


def aws_client_config(max_connections: int = 64) -> AioConfig:
    """Our clients do their own backoff: botocore must not retry behind our back."""
    return AioConfig(
        retries={"total_max_attempts": 1},
        connect_timeout=5,
        read_timeout=20,
        max_pool_connections=max_connections,
    )


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
            worker = self.settings.worker
            leases = LeaseCoordinator(
                store,
                processor=config.name,
                stream_arn=arn,
                worker_id=worker.id,
                lease_duration_s=worker.lease_duration_seconds,
                max_leases=worker.max_leases_per_worker,
            )
            runners.append(
                ProcessorRunner(
                    config,
                    source=DynamoDBStreamsSource(streams, arn),
                    processor=processor,
                    store=store,
                    leases=leases,
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
