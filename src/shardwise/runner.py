"""One processor on one stream: shard sync, leases, and a consumer per leased shard.

* **Shard sync** - the worker elected through the store (``LeaseCoordinator.is_sync_leader``)
  lists the stream and registers new shards; the others only read the lease table. Every
  worker lists once at start, so a missing or disabled stream is a clear error everywhere.
* **Leases** - ``LeaseCoordinator`` renews and takes leases (parents before children,
  balanced across live workers). Each lease it hands over starts a ``ShardConsumer`` that
  writes checkpoints through the lease's fenced checkpointer and stops as soon as the lease
  is lost; a stale owner can never move a checkpoint.
* **Drain** - on stop, nothing new is taken, consumers finish their in-flight batch, and
  every lease is released (owner cleared) so another worker takes it at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import structlog

from shardwise.clock import API_BACKOFF, relay_first, retries, sleep_or_stop, wait_first
from shardwise.config import ProcessorConfig
from shardwise.destinations import Destination
from shardwise.dispatch.consumer import ConsumerSettings, ShardConsumer, ShardOutcome
from shardwise.dispatch.delivery import FailurePolicy
from shardwise.dispatch.filters import RecordFilter, compile_filters
from shardwise.dispatch.protocols import ShardSource
from shardwise.errors import LeaseLostError, SourceError, StoreError, StreamNotFoundError
from shardwise.leases import Lease, LeaseCoordinator, collected_ancestors
from shardwise.observe.progress import ProcessorProgress
from shardwise.processors import Processor
from shardwise.records import Shard, ShardId, ShardListing, StartingPosition
from shardwise.store import CheckpointStore, ShardRegistration

__all__ = ["ProcessorRunner", "plan_registrations"]

log = structlog.get_logger("shardwise.runner")

# A finished shard wakes the sync loop so its children start at once; listings triggered that
# way are spaced at least this far apart (DescribeStream allows 10 calls/s per account).
MIN_RELIST_INTERVAL_S = 1.0
# Until the first shard sync has registered the stream's shards, look again this often.
FIRST_SYNC_POLL_S = 0.2


def plan_registrations(
    new_shards: Sequence[Shard], starting_position: StartingPosition, *, first_time: bool
) -> list[ShardRegistration]:
    """Where newly listed shards start.

    The processor's ``starting_position`` applies only the first time it meets a stream:
    with LATEST, closed shards then hold only past records and are marked finished, open ones
    start at LATEST; with AT_TIMESTAMP every shard starts at the timestamp (a closed one may
    hold records after it). Every shard that appears later (splits, rollovers) starts at
    TRIM_HORIZON, so nothing written to it is skipped.
    """
    start = starting_position if first_time else StartingPosition.TRIM_HORIZON
    latest = start is StartingPosition.LATEST
    return [
        ShardRegistration(
            shard_id=shard.shard_id,
            parent_shard_id=shard.parent_shard_id,
            adjacent_parent_shard_id=shard.adjacent_parent_shard_id,
            start_position=start,
            finished=latest and shard.closed,
        )
        for shard in new_shards
    ]


def consumer_settings(config: ProcessorConfig) -> ConsumerSettings:
    return ConsumerSettings(
        batch_size=config.batch_size,
        window_s=config.maximum_batching_window_in_seconds,
        on_trimmed_data=config.on_trimmed_data,
        max_poll_interval_s=config.max_poll_interval_seconds,
        parallelization_factor=config.parallelization_factor,
        tumbling_window_s=config.tumbling_window_in_seconds,
        record_filter=_record_filter(config),
        policy=FailurePolicy(
            maximum_retry_attempts=config.maximum_retry_attempts,
            bisect_batch_on_function_error=config.bisect_batch_on_function_error,
            report_batch_item_failures=config.reports_batch_item_failures,
            maximum_record_age_s=config.maximum_record_age_in_seconds,
            payload_limit_bytes=config.payload_limit_bytes,
        ),
    )


def _record_filter(config: ProcessorConfig) -> RecordFilter | None:
    if config.filter_criteria is None:
        return None
    record_filter = compile_filters([f.pattern for f in config.filter_criteria.filters])
    # The notes read patterns against DynamoDB's record shape; a Kinesis record has another.
    notes = record_filter.notes if config.source.kind == "dynamodb" else ()
    for note in notes:
        log.warning(
            "filter pattern may not match what it means to",
            processor=config.name,
            filter_index=note.filter_index,
            position=note.position,
            note=note.message,
        )
    return record_filter


class ProcessorRunner:
    """Runs one processor on one stream until stopped."""

    def __init__(
        self,
        config: ProcessorConfig,
        *,
        source: ShardSource,
        processor: Processor,
        store: CheckpointStore,
        leases: LeaseCoordinator,
        stop: asyncio.Event,
        progress: ProcessorProgress,
        sync_interval_s: float,
        destination: Destination | None = None,
    ) -> None:
        self.config = config
        self._source = source
        self._processor = processor
        self._store = store
        self._leases = leases
        self._stop = stop
        self._progress = progress
        self._sync_interval_s = sync_interval_s
        self._destination = destination
        self._settings = consumer_settings(config)
        self._consumers: dict[ShardId, asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        self._synced = False
        self._first_listing: ShardListing | None = None

    async def run(self) -> None:
        structlog.contextvars.bind_contextvars(processor=self.config.name)
        log.info("processor starting", stream_arn=self._source.stream_arn)
        await self._check_stream()
        if self._stop.is_set():
            log.info("processor stopped before it started")
            return
        await self._processor.start()
        try:
            if self._stop.is_set():
                return  # stopped during start(): no lease was ever taken
            # No await between the check above and the lease task's first step: a stop
            # that comes later finds the coordinator running, to release what it took.
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(
                    self._leases.run(lambda lease: self._start(lease, tasks), stop=self._stop)
                )
                await self._sync_until_stopped(tasks)
                await self._drain()
        finally:
            await self._processor.stop()
            log.info("processor stopped")

    async def _drain(self) -> None:
        """Stopping: consumers finish their in-flight batch, then every lease is freed."""
        running = [task for task in self._consumers.values() if not task.done()]
        if running:
            await asyncio.wait(running)
        await self._leases.release_all()

    # -- shard sync ------------------------------------------------------------------------

    async def _check_stream(self) -> None:
        listing = await self._describe()
        self._first_listing = listing  # the leader's first sync uses it: no second listing
        if listing is not None and not listing.enabled:
            raise StreamNotFoundError(
                f"processor {self.config.name}: stream {self._source.stream_arn} is "
                f"{listing.status}; enable the table's stream or point the processor at its "
                "LatestStreamArn"
            )

    async def _sync_until_stopped(self, tasks: asyncio.TaskGroup) -> None:
        store_failures = 0
        while not self._stop.is_set():
            if self._leases.is_sync_leader():
                listing, self._first_listing = self._first_listing, None
                if listing is None:
                    listing = await self._describe()
                if listing is None:
                    return
                if not listing.enabled:
                    log.warning("stream was disabled; reading what remains", status=listing.status)
                try:
                    registered = await self._register(listing)
                except StoreError as exc:
                    # The store is down (a restart, a fail-over): the sync leader retries;
                    # the consumers and lease renewals ride out the outage on their own.
                    if not exc.retriable:
                        raise
                    store_failures += 1
                    log.warning("registering shards failed; retrying", error=str(exc))
                    self._first_listing = listing
                    if await sleep_or_stop(self._stop, API_BACKOFF.delay(store_failures)):
                        return
                    continue
                store_failures = 0
                if registered or not self._synced:
                    self._synced = True
                    # New shards: take them now rather than at the next taker round.
                    await self._leases.take_once(
                        lambda lease: self._start(lease, tasks), stop=self._stop
                    )
            self._first_listing = None  # only fresh at start; later syncs list again
            await self._wait_for_next_sync()

    async def _wait_for_next_sync(self) -> None:
        interval = self._sync_interval_s if self._synced else FIRST_SYNC_POLL_S
        try:
            async with asyncio.timeout(interval):
                await wait_first(self._wake, self._stop)
        except TimeoutError:
            return
        self._wake.clear()
        await sleep_or_stop(self._stop, MIN_RELIST_INTERVAL_S)

    async def _describe(self) -> ShardListing | None:
        """List the stream, retrying API errors; None when stopping meanwhile."""
        async for _ in retries(self._stop, API_BACKOFF):
            try:
                return await self._source.describe()
            except StreamNotFoundError:
                raise
            except SourceError as exc:
                log.warning("listing shards failed; backing off", code=exc.code, error=str(exc))
        return None

    async def _register(self, listing: ShardListing) -> int:
        """Register shards not in the table yet; how many were new."""
        name, arn = self.config.name, self._source.stream_arn
        checkpoints = await self._store.load(name, arn)
        # Finished parents are deleted once their children started: never register them again.
        collected = collected_ancestors(listing.shards, checkpoints.keys())
        known = checkpoints.keys() | collected
        new = [s for s in listing.shards if s.shard_id not in known]
        if not new:
            return 0
        plan = plan_registrations(new, self.config.starting_position, first_time=not checkpoints)
        inserted = await self._store.register_shards(name, arn, plan)
        log.info("shards discovered", new=inserted, listed=len(listing.shards))
        return inserted

    async def _register_children(self, shard_id: ShardId, children: Sequence[Shard]) -> None:
        """Register the children a finished shard's last page named (Kinesis ChildShards)
        at once, on whichever worker read it; the sync leader's listing finds them too, so
        a store error here only costs the time until then."""
        if not children:
            return
        plan = plan_registrations(children, self.config.starting_position, first_time=False)
        try:
            inserted = await self._store.register_shards(
                self.config.name, self._source.stream_arn, plan
            )
        except StoreError as exc:
            log.warning("registering child shards failed", shard=shard_id, error=str(exc))
            return
        if inserted:
            log.info("child shards registered", shard=shard_id, new=inserted)

    # -- consumers -------------------------------------------------------------------------

    def _start(self, lease: Lease, tasks: asyncio.TaskGroup) -> None:
        previous = self._consumers.get(lease.shard_id)
        self._consumers[lease.shard_id] = tasks.create_task(self._consume(lease, previous))

    async def _consume(self, lease: Lease, previous: asyncio.Task[None] | None) -> None:
        shard_id = lease.shard_id
        if previous is not None and not previous.done():
            await asyncio.wait([previous])  # an earlier lease on this shard is still draining
        checkpointer = self._leases.checkpointer(lease)
        stop = asyncio.Event()
        consumer = ShardConsumer(
            source=self._source,
            shard_id=shard_id,
            start=lease.position,
            processor=self._processor,
            checkpointer=checkpointer,
            settings=self._settings,
            stop=stop,
            progress=self._progress,
            destination=self._destination,
            transactions=checkpointer if self.config.transactional else None,
        )
        outcome = ShardOutcome.STOPPED
        try:
            async with asyncio.TaskGroup() as tasks:
                relay = tasks.create_task(relay_first(stop, self._stop, lease.lost))
                try:
                    outcome = await consumer.run()
                except LeaseLostError as exc:
                    log.warning("lease lost; shard stops here", shard=shard_id, error=str(exc))
                finally:
                    relay.cancel()
            if outcome is ShardOutcome.GONE:
                # Aged out of the stream: done, so its children may start everywhere.
                await checkpointer.finish(shard_id, None)
        except LeaseLostError:
            pass
        finally:
            await self._leases.release(lease)
        if outcome is ShardOutcome.FINISHED:
            await self._register_children(shard_id, consumer.child_shards)
            self._wake.set()
        elif not self._stop.is_set():
            self._progress.gone(shard_id)  # another worker has it now, or it left the stream
