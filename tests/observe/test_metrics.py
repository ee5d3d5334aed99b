"""The Prometheus exporter: read from progress at scrape time, and over HTTP in a real run."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from shardwise import __version__
from shardwise.observe.health import ObserveServer
from shardwise.observe.metrics import ProgressCollector, build_registry, render
from shardwise.observe.progress import Histogram, ProcessorProgress
from shardwise.records import ShardId
from tests.e2e import create_table, running, settings_for, wait_until, write_module

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample of an exposition, keyed by (sample name, labels)."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


async def scrape(port: int) -> Samples:
    """GET /metrics over HTTP and parse it."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/metrics") as response,
    ):
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return parse(await response.text())


def busy_progress(now_monotonic: float = 1000.0) -> ProcessorProgress:
    """A processor with something in every series: two shards reading, one finished."""
    progress = ProcessorProgress("orders")
    progress.polled(ShardId("shard-a"), 5)
    progress.polled(ShardId("shard-a"), 0)
    progress.polled(ShardId("shard-b"), 2)
    progress.invoked(3, 0.2, ok=False)
    progress.invoked(3, 0.02, ok=True)
    progress.checkpointed(ShardId("shard-a"), "300", 3, 1_700_000_000.0, 0.004)
    progress.api_failed("LimitExceededException")
    progress.api_failed(None)
    progress.trimmed(ShardId("shard-a"))
    progress.polled(ShardId("shard-b"), 4)  # ... all filtered out
    progress.filtered(ShardId("shard-b"), 4)
    progress.dropped(2)
    progress.sent_to_destination(1)
    progress.destination_failed()
    progress.polled(ShardId("shard-c"), 0)
    progress.finished(ShardId("shard-c"))
    shard_a = progress.shards[ShardId("shard-a")]
    shard_a.checkpointed_at_monotonic = now_monotonic - 7.0
    shard_a.pending_since_monotonic = now_monotonic - 30.0
    progress.shards[ShardId("shard-b")].pending_since_monotonic = now_monotonic - 12.0
    return progress


def collect(progress: Mapping[str, ProcessorProgress], **clocks: float) -> Samples:
    collector = ProgressCollector(
        progress,
        wall_clock=lambda: clocks.get("now", 1_700_000_060.0),
        monotonic=lambda: clocks.get("now_monotonic", 1000.0),
    )
    registry = build_registry({}, process_metrics=False)
    registry.register(collector)
    body, _ = render(registry)
    return parse(body.decode())


class TestProgressCollector:
    """Each series reads the progress counters as they are at scrape time."""

    def test_counters(self) -> None:
        """Counters carry the processor label and the progress values."""
        samples = collect({"orders": busy_progress()})
        expected = {
            "shardwise_records_polled_total": 11,
            "shardwise_get_records_calls_total": 5,
            "shardwise_empty_polls_total": 2,
            "shardwise_invocations_total": 2,
            "shardwise_invoked_records_total": 6,
            "shardwise_failed_invocations_total": 1,
            "shardwise_failed_invoke_records_total": 3,
            "shardwise_records_processed_total": 3,
            "shardwise_checkpoint_writes_total": 1,
            "shardwise_trimmed_gaps_total": 1,
            "shardwise_records_filtered_total": 4,
            "shardwise_records_dropped_total": 2,
            "shardwise_records_sent_to_destination_total": 1,
            "shardwise_destination_failures_total": 1,
        }
        for name, count in expected.items():
            assert value(samples, name, processor="orders") == count, name

    def test_api_errors_by_code(self) -> None:
        """API errors are counted per error code; a missing code is Unknown."""
        samples = collect({"orders": busy_progress()})
        throttled = value(
            samples, "shardwise_api_errors_total", processor="orders", code="LimitExceededException"
        )
        unknown = value(samples, "shardwise_api_errors_total", processor="orders", code="Unknown")
        assert (throttled, unknown) == (1, 1)

    def test_histograms_are_cumulative(self) -> None:
        """Handler duration, batch size and checkpoint latency become Prometheus histograms."""
        samples = collect({"orders": busy_progress()})
        bucket = "shardwise_handler_duration_seconds_bucket"
        assert value(samples, bucket, processor="orders", le="0.025") == 1
        assert value(samples, bucket, processor="orders", le="0.1") == 1
        assert value(samples, bucket, processor="orders", le="0.25") == 2
        assert value(samples, bucket, processor="orders", le="+Inf") == 2
        assert value(samples, "shardwise_handler_duration_seconds_count", processor="orders") == 2
        total = value(samples, "shardwise_handler_duration_seconds_sum", processor="orders")
        assert total is not None and abs(total - 0.22) < 1e-9
        assert (
            value(samples, "shardwise_batch_size_records_bucket", processor="orders", le="2.0") == 0
        )
        assert (
            value(samples, "shardwise_batch_size_records_bucket", processor="orders", le="5.0") == 2
        )
        checkpoint = "shardwise_checkpoint_duration_seconds_bucket"
        assert value(samples, checkpoint, processor="orders", le="0.005") == 1
        assert value(samples, checkpoint, processor="orders", le="0.0025") == 0

    def test_shard_gauges(self) -> None:
        """Per-shard gauges cover the shards being read; finished ones are only counted."""
        samples = collect({"orders": busy_progress()}, now=1_700_000_060.0, now_monotonic=1000.0)
        a, b = (
            {"processor": "orders", "shard": "shard-a"},
            {"processor": "orders", "shard": "shard-b"},
        )
        assert value(samples, "shardwise_shard_iterator_age_seconds", **a) == 60.0
        assert value(samples, "shardwise_shard_iterator_age_seconds", **b) == 0.0
        assert value(samples, "shardwise_shard_records_pending", **a) == 2
        assert value(samples, "shardwise_shard_records_pending", **b) == 2
        assert value(samples, "shardwise_shard_checkpoint_stall_seconds", **a) == 7.0
        assert value(samples, "shardwise_shard_checkpoint_stall_seconds", **b) == 12.0
        assert value(samples, "shardwise_shard_seconds_since_checkpoint", **a) == 7.0
        assert value(samples, "shardwise_shard_seconds_since_checkpoint", **b) is None
        shard_c = {"processor": "orders", "shard": "shard-c"}
        assert value(samples, "shardwise_shard_records_pending", **shard_c) is None
        assert value(samples, "shardwise_shards_owned", processor="orders") == 2
        assert value(samples, "shardwise_shards_finished", processor="orders") == 1
        assert value(samples, "shardwise_iterator_age_seconds", processor="orders") == 60.0

    def test_finished_shards_are_counted_not_kept(self) -> None:
        """A stream rolls its shards over every few hours: a week of finished shards must
        not pile up in the worker's memory or in any per-shard view."""
        progress = ProcessorProgress("orders")
        for n in range(1000):
            shard = ShardId(f"shard-{n}")
            progress.polled(shard, 3)
            progress.checkpointed(shard, "42", 3, 1_700_000_000.0, 0.001)
            progress.finished(shard)
        progress.polled(ShardId("shard-live"), 0)
        assert list(progress.shards) == ["shard-live"]
        samples = collect({"orders": progress})
        assert value(samples, "shardwise_shards_finished", processor="orders") == 1000
        assert value(samples, "shardwise_shards_owned", processor="orders") == 1
        assert value(samples, "shardwise_records_processed_total", processor="orders") == 3000

    def test_iterator_age_zero_when_caught_up(self) -> None:
        """A processor whose shards are all caught up reports iterator age 0, not nothing."""
        progress = ProcessorProgress("idle")
        progress.polled(ShardId("s"), 0)
        samples = collect({"idle": progress})
        assert value(samples, "shardwise_iterator_age_seconds", processor="idle") == 0.0
        assert (
            value(samples, "shardwise_shard_iterator_age_seconds", processor="idle", shard="s") == 0
        )

    def test_gone_shards_leave_the_gauges(self) -> None:
        """A shard no longer read here has no per-shard series and no iterator age."""
        progress = busy_progress()
        progress.gone(ShardId("shard-a"))
        samples = collect({"orders": progress})
        assert value(samples, "shardwise_shards_owned", processor="orders") == 1
        assert value(samples, "shardwise_iterator_age_seconds", processor="orders") == 0.0
        shard_a = {"processor": "orders", "shard": "shard-a"}
        assert value(samples, "shardwise_shard_records_pending", **shard_a) is None

    def test_reads_live_objects(self) -> None:
        """Processors added and counters moved after registration show in the next scrape."""
        progress: dict[str, ProcessorProgress] = {}
        registry = build_registry(progress, process_metrics=False)
        assert value(parse(render(registry)[0].decode()), "shardwise_records_polled_total") is None
        progress["late"] = ProcessorProgress("late")
        progress["late"].polled(ShardId("s"), 3)
        samples = parse(render(registry)[0].decode())
        assert value(samples, "shardwise_records_polled_total", processor="late") == 3


class TestRegistry:
    """Build info, process metrics, loop lag and content negotiation."""

    def test_build_info_and_process_metrics(self) -> None:
        """shardwise_build_info carries the version; the process collector is included."""
        samples = parse(render(build_registry({}, loop_lag_s=lambda: 0.25))[0].decode())
        assert value(samples, "shardwise_build_info", version=__version__) == 1
        assert value(samples, "shardwise_event_loop_lag_seconds") == 0.25
        assert value(samples, "process_cpu_seconds_total") is not None
        assert any(name == "python_info" for name, _ in samples)

    def test_registries_are_independent(self) -> None:
        """Two supervisors in one process get registries that do not collide."""
        first = build_registry({"a": ProcessorProgress("a")})
        second = build_registry({"b": ProcessorProgress("b")})
        assert (
            value(parse(render(first)[0].decode()), "shardwise_invocations_total", processor="b")
            is None
        )
        assert (
            value(parse(render(second)[0].decode()), "shardwise_invocations_total", processor="b")
            == 0
        )

    def test_openmetrics_on_request(self) -> None:
        """A scraper asking for OpenMetrics gets it."""
        body, content_type = render(
            build_registry({}), "application/openmetrics-text; version=1.0.0"
        )
        assert content_type.startswith("application/openmetrics-text")
        assert body.rstrip().endswith(b"# EOF")


class TestHistogram:
    """Progress histograms: Prometheus's inclusive upper bounds, cheap to observe."""

    def test_bounds_are_inclusive(self) -> None:
        """A value equal to a bound lands in that bound's bucket; larger ones in +Inf."""
        histogram = Histogram((1.0, 2.0))
        for observed in (0.5, 1.0, 1.5, 2.0, 3.0):
            histogram.observe(observed)
        assert histogram.counts == [2, 2, 1]
        assert (histogram.count, histogram.sum) == (5, 8.0)


HANDLER = """
calls = 0

def handler(event, context):
    global calls
    calls += 1
    if calls == 1:
        raise RuntimeError("the first invocation fails")
"""


class TestScrapeDuringRun:
    """A supervisor against moto, scraped over HTTP while it works."""

    async def test_values_move(self, tmp_path: Path, moto_endpoint: str) -> None:
        """Processed == written, polls counted, the failed first call counted, age back to 0."""
        table, name = create_table(moto_endpoint)
        write_module(tmp_path, "fails_once", HANDLER)
        settings = settings_for(
            tmp_path,
            endpoint_url=moto_endpoint,
            store_url=f"sqlite+aiosqlite:///{tmp_path / 'cp.db'}",
            extra="http:\n  bind: 127.0.0.1:0",
            processors=f"""
            - name: counted
              source: {{dynamodb: {{table: {name}}}}}
              handler: fails_once:handler
              starting_position: TRIM_HORIZON
              batch_size: 10
            """,
        )
        written = 25
        for i in range(written):
            table.put_item(Item={"id": f"item-{i}"})
        async with running(settings) as supervisor:
            server = ObserveServer(
                settings,
                supervisor.progress,
                store=None,
                started=supervisor.started,
                max_checkpoint_stall_s=300,
            )
            async with server:
                port = server.bound_port
                assert port != 0
                samples = await scrape(port)
                assert value(samples, "shardwise_build_info", version=__version__) == 1
                await wait_until(
                    lambda: (
                        "counted" in supervisor.progress
                        and supervisor.progress["counted"].records_processed >= written
                    ),
                    what="every record processed",
                )
                samples = await scrape(port)
                label = {"processor": "counted"}
                assert value(samples, "shardwise_records_processed_total", **label) == written
                assert value(samples, "shardwise_records_polled_total", **label) == written
                calls = value(samples, "shardwise_get_records_calls_total", **label)
                assert calls is not None and calls > 0
                assert value(samples, "shardwise_failed_invocations_total", **label) == 1
                assert value(samples, "shardwise_invoked_records_total", **label) == written + 10
                assert value(samples, "shardwise_shards_owned", **label) == 1
                assert value(samples, "shardwise_iterator_age_seconds", **label) is not None

                async def caught_up() -> bool:
                    age = value(await scrape(port), "shardwise_iterator_age_seconds", **label)
                    return age == 0.0

                await wait_until_async(caught_up, what="iterator age back to 0")
                samples = await scrape(port)
                pending = [
                    v for (n, _), v in samples.items() if n == "shardwise_shard_records_pending"
                ]
                assert pending == [0]


async def wait_until_async(
    predicate: Callable[[], Awaitable[bool]], timeout_s: float = 20.0, what: str = "condition"
) -> None:
    """``wait_until`` for a predicate that has to await (a scrape)."""
    deadline = time.monotonic() + timeout_s
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.1)


class TestPerShardCalls:
    """GetRecords calls per shard, so calls/s per shard is a PromQL rate away."""

    def test_counter_per_shard(self) -> None:
        progress = ProcessorProgress("orders")
        for _ in range(3):
            progress.polled(ShardId("shard-a"), 0)
        progress.polled(ShardId("shard-b"), 2)
        samples = parse(
            render(build_registry({"orders": progress}, process_metrics=False))[0].decode()
        )
        calls = "shardwise_shard_get_records_calls_total"
        assert value(samples, calls, processor="orders", shard="shard-a") == 3
        assert value(samples, calls, processor="orders", shard="shard-b") == 1
