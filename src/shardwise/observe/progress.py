"""Progress per processor and shard: the one sink dispatch reports events to.

Shard consumers call the event methods (``polled``, ``invoked``, ``checkpointed``, ...);
the demo, health checks and the Prometheus exporter (``observe.metrics``, which reads these
objects at scrape time) read the counters. Keep the methods cheap: they run on the hot path,
on the event loop, so readers on the loop always see a consistent picture.

Counters only grow. Durations and batch sizes also go into fixed-bucket ``Histogram``s; a
scrape turns those into Prometheus histograms.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections import Counter
from dataclasses import dataclass, field

from shardwise.records import ShardId

__all__ = [
    "BATCH_SIZE_BUCKETS",
    "CHECKPOINT_SECONDS_BUCKETS",
    "HANDLER_SECONDS_BUCKETS",
    "Histogram",
    "ProcessorProgress",
    "ShardProgress",
]

# Upper bounds (inclusive, like Prometheus's ``le``); an implicit +Inf bucket follows.
HANDLER_SECONDS_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
)  # fmt: skip
BATCH_SIZE_BUCKETS = (1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 10_000.0)
CHECKPOINT_SECONDS_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip


@dataclass(slots=True)
class Histogram:
    """Observations counted per bucket: ``counts[i]`` holds values in (bounds[i-1], bounds[i]],
    the last entry those above every bound. Not cumulative; the exporter sums them up."""

    bounds: tuple[float, ...]
    counts: list[int] = field(init=False)
    sum: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1


@dataclass(slots=True)
class ShardProgress:
    """Where one shard stands."""

    shard_id: ShardId
    checkpoint: str | None = None
    records_processed: int = 0
    # ApproximateCreationDateTime (epoch seconds) of the last record delivered while the
    # shard was behind; None once a poll came back empty (caught up).
    last_record_created_s: float | None = None
    checkpointed_at_monotonic: float | None = None
    # Records read but not yet checkpointed: waiting for the handler or the window.
    pending: int = 0
    # GetRecords calls on this shard (their rate is the shard's calls/s).
    get_records_calls: int = 0
    # Kinesis' MillisBehindLatest of the last page (None: the source does not tell).
    millis_behind_latest: int | None = None
    # When ``pending`` last went from 0 to more: with the checkpoint time, how long the
    # shard has had work it did not get through.
    pending_since_monotonic: float | None = None

    def stalled_s(self, now_monotonic: float) -> float:
        """How long records have been pending without the checkpoint advancing; 0 if none."""
        if self.pending == 0 or self.pending_since_monotonic is None:
            return 0.0
        since = self.pending_since_monotonic
        if self.checkpointed_at_monotonic is not None:
            since = max(since, self.checkpointed_at_monotonic)
        return max(0.0, now_monotonic - since)


@dataclass(slots=True)
class ProcessorProgress:
    """Counters for one processor; updated by its shard consumers, read by observers."""

    name: str
    get_records_calls: int = 0
    empty_polls: int = 0
    records_read: int = 0
    records_processed: int = 0
    batches_processed: int = 0
    handler_failures: int = 0
    handler_seconds_total: float = 0.0
    checkpoint_writes: int = 0
    checkpoint_seconds_total: float = 0.0
    trimmed_gaps: int = 0
    api_errors: Counter[str] = field(default_factory=Counter)
    # The shards being read here; a finished one leaves the map and is only counted.
    shards: dict[ShardId, ShardProgress] = field(default_factory=dict)
    shards_finished: int = 0
    # Every handler call, failed or not (Lambda's InvokedEventCount counts its records).
    invocations: int = 0
    records_invoked: int = 0
    failed_invoke_records: int = 0  # FailedInvokeEventCount
    # Lambda's failure model: records that never reached (or left) the handler.
    records_filtered: int = 0  # FilteredOutEventCount
    records_dropped: int = 0  # DroppedEventCount
    records_sent_to_destination: int = 0  # OnFailureDestinationDeliveredEventCount
    destination_failures: int = 0
    handler_duration: Histogram = field(default_factory=lambda: Histogram(HANDLER_SECONDS_BUCKETS))
    batch_size: Histogram = field(default_factory=lambda: Histogram(BATCH_SIZE_BUCKETS))
    checkpoint_duration: Histogram = field(
        default_factory=lambda: Histogram(CHECKPOINT_SECONDS_BUCKETS)
    )

    def shard(self, shard_id: ShardId) -> ShardProgress:
        progress = self.shards.get(shard_id)
        if progress is None:
            progress = self.shards[shard_id] = ShardProgress(shard_id)
        return progress

    # -- events ----------------------------------------------------------------------------

    def polled(
        self, shard_id: ShardId, records: int, millis_behind_latest: int | None = None
    ) -> None:
        """A GetRecords call returned ``records`` records (and, from Kinesis, how far
        behind the shard's tip they are)."""
        self.get_records_calls += 1
        self.records_read += records
        shard = self.shard(shard_id)
        shard.get_records_calls += 1
        if millis_behind_latest is not None:
            shard.millis_behind_latest = millis_behind_latest
        if records and shard.pending == 0:
            shard.pending_since_monotonic = time.monotonic()
        shard.pending += records
        if records == 0:
            self.empty_polls += 1
            if shard.pending == 0:
                shard.last_record_created_s = None  # caught up: no iterator age

    def api_failed(self, code: str | None) -> None:
        """A stream API call failed (throttling, 5xx, transport, ...)."""
        self.api_errors[code or "Unknown"] += 1

    def invoked(self, size: int, duration_s: float, *, ok: bool) -> None:
        """The handler ran on a batch of ``size`` records."""
        self.handler_seconds_total += duration_s
        self.invocations += 1
        self.records_invoked += size
        self.handler_duration.observe(duration_s)
        self.batch_size.observe(size)
        if not ok:
            self.handler_failures += 1
            self.failed_invoke_records += size

    def checkpointed(
        self,
        shard_id: ShardId,
        sequence: str,
        records: int,
        last_created_s: float | None,
        duration_s: float,
    ) -> None:
        """``records`` records up to ``sequence`` are done and durably checkpointed."""
        shard = self.shard(shard_id)
        shard.checkpoint = sequence
        shard.checkpointed_at_monotonic = time.monotonic()
        shard.records_processed += records
        shard.pending = max(0, shard.pending - records)
        if last_created_s is not None:
            shard.last_record_created_s = last_created_s
        self.records_processed += records
        self.batches_processed += 1
        self.checkpoint_writes += 1
        self.checkpoint_seconds_total += duration_s
        self.checkpoint_duration.observe(duration_s)

    def released(self, shard_id: ShardId, records: int) -> None:
        """Records read but given up on (stopping): they will be read again."""
        shard = self.shard(shard_id)
        shard.pending = max(0, shard.pending - records)

    def finished(self, shard_id: ShardId) -> None:
        """``shard_id`` was read to its end. It leaves the per-shard views and is counted:
        a stream rolls its shards over every few hours, so keeping each one would grow
        the map (and every view of it) for as long as the worker runs."""
        self.shards_finished += 1
        self.shards.pop(shard_id, None)

    def trimmed(self, shard_id: ShardId) -> None:
        """Records of ``shard_id`` aged out of the stream before they were read."""
        self.trimmed_gaps += 1
        self.shard(shard_id)

    def gone(self, shard_id: ShardId) -> None:
        """This worker reads ``shard_id`` no more and will not again: it left the stream (or,
        with leases, went to another worker). It leaves the per-shard views."""
        self.shards.pop(shard_id, None)

    def filtered(self, shard_id: ShardId, records: int) -> None:
        """``records`` records matched none of the filters: consumed without an invocation."""
        self.records_filtered += records
        shard = self.shard(shard_id)
        shard.pending = max(0, shard.pending - records)

    def dropped(self, records: int) -> None:
        """``records`` records were given up on with no destination to keep them."""
        self.records_dropped += records

    def sent_to_destination(self, records: int) -> None:
        """``records`` given-up records were stored in the on-failure destination."""
        self.records_sent_to_destination += records

    def destination_failed(self) -> None:
        """A write to the on-failure destination failed (it is retried)."""
        self.destination_failures += 1

    # -- views -----------------------------------------------------------------------------

    def iterator_age_s(self, now_s: float | None = None) -> float | None:
        """Lambda's IteratorAge: now minus the creation time of the last record delivered,
        for shards that are behind; None when every shard is caught up."""
        now = time.time() if now_s is None else now_s
        ages = [
            now - shard.last_record_created_s
            for shard in self.shards.values()
            if shard.last_record_created_s is not None
        ]
        return max(ages) if ages else None
