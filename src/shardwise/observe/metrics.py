"""Prometheus exposition of the progress objects, read at scrape time.

``ProgressCollector`` keeps no numbers of its own: every scrape reads the live
``ProcessorProgress`` of each processor, so there is one set of books (the one dispatch
writes) and nothing to keep in step. ``build_registry`` puts it in a registry of its own
together with the process metrics and ``shardwise_build_info``; ``render`` turns that
registry into the text a scraper asked for (Prometheus text or OpenMetrics).

Scrapes run on the event loop, like every progress event, so a scrape never sees a
half-applied event. Series, all labelled ``processor`` (per-shard ones also ``shard``):

* Lambda's stream metrics: ``shardwise_iterator_age_seconds`` (IteratorAge, the oldest
  shard), ``shardwise_records_polled_total`` (PolledEventCount),
  ``shardwise_records_filtered_total``, ``shardwise_invoked_records_total``,
  ``shardwise_failed_invoke_records_total``, ``shardwise_records_dropped_total``,
  ``shardwise_records_sent_to_destination_total``.
* Reading: ``shardwise_get_records_calls_total``, ``shardwise_empty_polls_total``,
  ``shardwise_api_errors_total{code}``, ``shardwise_trimmed_gaps_total``.
* Handling: ``shardwise_invocations_total``, ``shardwise_failed_invocations_total``,
  ``shardwise_records_processed_total``, ``shardwise_handler_duration_seconds``,
  ``shardwise_batch_size_records``, ``shardwise_destination_failures_total``.
* Checkpoints: ``shardwise_checkpoint_writes_total``,
  ``shardwise_checkpoint_duration_seconds``.
* Shards: ``shardwise_shards_owned`` / ``shardwise_shards_finished``, and per shard being
  read ``shardwise_shard_iterator_age_seconds``, ``shardwise_shard_records_pending``,
  ``shardwise_shard_checkpoint_stall_seconds``, ``shardwise_shard_seconds_since_checkpoint``,
  ``shardwise_shard_get_records_calls_total``, and from Kinesis
  ``shardwise_shard_millis_behind_latest`` (MillisBehindLatest of the last page).
* The worker: ``shardwise_build_info{version}``, ``shardwise_event_loop_lag_seconds`` (with
  the health server), ``shardwise_gc_pause_seconds{generation}`` (each garbage collection's
  pause) and ``shardwise_gc_frozen_objects``, and prometheus-client's ``process_*``,
  ``python_gc_*`` and ``python_info``.

Iterator age is 0 once a shard is caught up (Lambda reports nothing then; a gauge that
vanished would look like a scrape failure to an alert).
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from itertools import accumulate

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from shardwise import __version__
from shardwise.gc_policy import pause_clock
from shardwise.observe.progress import Histogram, ProcessorProgress

__all__ = ["ProgressCollector", "build_registry", "render"]

PROCESSOR = ["processor"]
SHARD = ["processor", "shard"]

# (metric name, help, ProcessorProgress attribute) for the plain per-processor counters.
_COUNTERS: tuple[tuple[str, str, str], ...] = (
    ("shardwise_records_polled_total", "Records read with GetRecords.", "records_read"),
    ("shardwise_get_records_calls_total", "GetRecords calls made.", "get_records_calls"),
    ("shardwise_empty_polls_total", "GetRecords calls that returned no record.", "empty_polls"),
    ("shardwise_invocations_total", "Handler invocations, failed or not.", "invocations"),
    (
        "shardwise_invoked_records_total",
        "Records in handler invocations, failed or not.",
        "records_invoked",
    ),
    (
        "shardwise_failed_invocations_total",
        "Handler invocations that failed (raised, timed out or reported failures).",
        "handler_failures",
    ),
    (
        "shardwise_failed_invoke_records_total",
        "Records in handler invocations that failed.",
        "failed_invoke_records",
    ),
    (
        "shardwise_records_processed_total",
        "Records done and checkpointed.",
        "records_processed",
    ),
    ("shardwise_checkpoint_writes_total", "Checkpoints written.", "checkpoint_writes"),
    (
        "shardwise_trimmed_gaps_total",
        "Times records aged out of the stream before they were read.",
        "trimmed_gaps",
    ),
    (
        "shardwise_records_filtered_total",
        "Records that matched no filter and were consumed without an invocation.",
        "records_filtered",
    ),
    (
        "shardwise_records_dropped_total",
        "Records given up on with no on-failure destination to keep them.",
        "records_dropped",
    ),
    (
        "shardwise_records_sent_to_destination_total",
        "Given-up records stored in the on-failure destination.",
        "records_sent_to_destination",
    ),
    (
        "shardwise_destination_failures_total",
        "Failed writes to the on-failure destination (each is retried).",
        "destination_failures",
    ),
)

# (metric name, help, ProcessorProgress attribute holding a Histogram).
_HISTOGRAMS: tuple[tuple[str, str, str], ...] = (
    ("shardwise_handler_duration_seconds", "Handler invocation time.", "handler_duration"),
    ("shardwise_batch_size_records", "Records per handler invocation.", "batch_size"),
    (
        "shardwise_checkpoint_duration_seconds",
        "Time to write a checkpoint to the store.",
        "checkpoint_duration",
    ),
)


class ProgressCollector(Collector):
    """Reads every processor's ``ProcessorProgress`` when scraped."""

    def __init__(
        self,
        progress: Mapping[str, ProcessorProgress],
        *,
        wall_clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._progress = progress
        self._wall_clock = wall_clock
        self._monotonic = monotonic

    def collect(self) -> Iterator[Metric]:
        processors = sorted(self._progress.items())
        yield from self._counters(processors)
        yield from self._histograms(processors)
        yield from self._gauges(processors)

    @staticmethod
    def _counters(processors: list[tuple[str, ProcessorProgress]]) -> Iterator[Metric]:
        for name, documentation, attribute in _COUNTERS:
            family = CounterMetricFamily(name, documentation, labels=PROCESSOR)
            for processor, progress in processors:
                family.add_metric([processor], getattr(progress, attribute))
            yield family
        errors = CounterMetricFamily(
            "shardwise_api_errors_total",
            "Failed stream API calls, by error code.",
            labels=[*PROCESSOR, "code"],
        )
        for processor, progress in processors:
            for code, count in sorted(progress.api_errors.items()):
                errors.add_metric([processor, code], count)
        yield errors

    @staticmethod
    def _histograms(processors: list[tuple[str, ProcessorProgress]]) -> Iterator[Metric]:
        for name, documentation, attribute in _HISTOGRAMS:
            family = HistogramMetricFamily(name, documentation, labels=PROCESSOR)
            for processor, progress in processors:
                histogram: Histogram = getattr(progress, attribute)
                family.add_metric([processor], _buckets(histogram), histogram.sum)
            yield family

    def _gauges(self, processors: list[tuple[str, ProcessorProgress]]) -> Iterator[Metric]:
        now, now_monotonic = self._wall_clock(), self._monotonic()
        gauges = {
            name: GaugeMetricFamily(name, documentation, labels=labels)
            for name, documentation, labels in (
                ("shardwise_iterator_age_seconds", "Oldest shard's iterator age.", PROCESSOR),
                ("shardwise_shards_owned", "Shards read here and not finished.", PROCESSOR),
                ("shardwise_shards_finished", "Shards read to their end.", PROCESSOR),
                (
                    "shardwise_shard_iterator_age_seconds",
                    "Now minus the creation time of the last record delivered; 0 caught up.",
                    SHARD,
                ),
                ("shardwise_shard_records_pending", "Records read, not checkpointed.", SHARD),
                (
                    "shardwise_shard_checkpoint_stall_seconds",
                    "How long records have been pending without the checkpoint advancing.",
                    SHARD,
                ),
                (
                    "shardwise_shard_seconds_since_checkpoint",
                    "Seconds since this process last checkpointed the shard.",
                    SHARD,
                ),
                (
                    "shardwise_shard_millis_behind_latest",
                    "Kinesis MillisBehindLatest of the shard's last GetRecords page.",
                    SHARD,
                ),
            )
        }
        calls = CounterMetricFamily(
            "shardwise_shard_get_records_calls",
            "GetRecords calls on the shard (rate: calls/s per shard, billed per request).",
            labels=SHARD,
        )
        for processor, progress in processors:
            age = progress.iterator_age_s(now)
            gauges["shardwise_iterator_age_seconds"].add_metric([processor], max(0.0, age or 0.0))
            reading = list(progress.shards.values())
            gauges["shardwise_shards_owned"].add_metric([processor], len(reading))
            gauges["shardwise_shards_finished"].add_metric([processor], progress.shards_finished)
            for shard in sorted(reading, key=lambda s: s.shard_id):
                labels = [processor, shard.shard_id]
                created = shard.last_record_created_s
                shard_age = 0.0 if created is None else max(0.0, now - created)
                gauges["shardwise_shard_iterator_age_seconds"].add_metric(labels, shard_age)
                gauges["shardwise_shard_records_pending"].add_metric(labels, shard.pending)
                calls.add_metric(labels, shard.get_records_calls)
                gauges["shardwise_shard_checkpoint_stall_seconds"].add_metric(
                    labels, shard.stalled_s(now_monotonic)
                )
                if shard.millis_behind_latest is not None:
                    gauges["shardwise_shard_millis_behind_latest"].add_metric(
                        labels, shard.millis_behind_latest
                    )
                if shard.checkpointed_at_monotonic is not None:
                    since = now_monotonic - shard.checkpointed_at_monotonic
                    gauges["shardwise_shard_seconds_since_checkpoint"].add_metric(labels, since)
        yield from gauges.values()
        yield calls


class _Constant(Collector):
    """Metrics that are fixed for the life of the process, or read from a callback."""

    def __init__(self, loop_lag_s: Callable[[], float] | None) -> None:
        self._loop_lag_s = loop_lag_s

    def collect(self) -> Iterable[Metric]:
        info = GaugeMetricFamily(
            "shardwise_build_info", "The running shardwise version.", labels=["version"]
        )
        info.add_metric([__version__], 1)
        yield info
        pauses = HistogramMetricFamily(
            "shardwise_gc_pause_seconds",
            "Time the garbage collector stopped this process, per collection.",
            labels=["generation"],
        )
        for generation, histogram in pause_clock().pauses.items():
            pauses.add_metric([str(generation)], _buckets(histogram), histogram.sum)
        yield pauses
        yield GaugeMetricFamily(
            "shardwise_gc_frozen_objects",
            "Objects made at start-up that the garbage collector no longer scans.",
            value=gc.get_freeze_count(),
        )
        if self._loop_lag_s is not None:
            yield GaugeMetricFamily(
                "shardwise_event_loop_lag_seconds",
                "How late the event loop ran the health ticker, last time it ticked.",
                value=self._loop_lag_s(),
            )


def _buckets(histogram: Histogram) -> list[tuple[str, float]]:
    """Prometheus's cumulative ``le`` buckets of a progress histogram."""
    bounds = [*(repr(float(bound)) for bound in histogram.bounds), "+Inf"]  # le="0.5"
    return list(zip(bounds, accumulate(histogram.counts), strict=True))


def build_registry(
    progress: Mapping[str, ProcessorProgress],
    *,
    loop_lag_s: Callable[[], float] | None = None,
    process_metrics: bool = True,
) -> CollectorRegistry:
    """A registry for one supervisor: its progress, build info, process and Python metrics.

    ``loop_lag_s`` adds ``shardwise_event_loop_lag_seconds`` (the health server's ticker).
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ProgressCollector(progress))
    registry.register(_Constant(loop_lag_s))
    if process_metrics:
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
    return registry


def render(registry: CollectorRegistry, accept: str | None = None) -> tuple[bytes, str]:
    """The exposition body and its content type, in the format ``accept`` asks for."""
    encoder, content_type = choose_encoder(accept or "")
    return encoder(registry), content_type
