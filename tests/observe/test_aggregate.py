"""The parent's endpoint over its worker processes': merged /metrics, /healthz, /readyz."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from shardwise.config import HttpConfig, Settings, parse_config
from shardwise.errors import ShardwiseError
from shardwise.observe.aggregate import AggregateServer, merge_metrics
from shardwise.observe.health import ObserveServer
from shardwise.observe.metrics import build_registry, render
from shardwise.observe.progress import ProcessorProgress
from tests.conftest import free_port

SETTINGS = parse_config(
    """
    http: {bind: "127.0.0.1:0"}
    processors:
      - name: p
        source: {dynamodb: {table: Orders}}
        handler: mod:handler
        starting_position: LATEST
    """
)


@dataclass
class FakeWorker:
    """What the pool tells the endpoint about a worker process."""

    worker_id: str
    pid: int | None = 100
    port: int | None = None
    restarts: int = 0
    problem: str | None = None


@dataclass
class Child:
    """A worker process's own endpoint: a real ObserveServer over its progress."""

    worker: FakeWorker
    progress: ProcessorProgress
    started: asyncio.Event
    server: ObserveServer


def exposition(processed: int) -> str:
    progress = ProcessorProgress("p")
    progress.records_processed = processed
    progress.handler_duration.observe(0.02)
    body, _ = render(build_registry({"p": progress}, process_metrics=False))
    return body.decode()


class TestMergeMetrics:
    """Every sample gets its worker label; every family keeps one HELP and one TYPE."""

    def test_labels_and_one_header_per_family(self) -> None:
        merged = merge_metrics({"w-p1": exposition(7), "w-p0": exposition(5)})
        by_name = {family.name: family for family in merged}
        processed = by_name["shardwise_records_processed"]
        assert processed.type == "counter"
        assert [(s.labels, s.value) for s in processed.samples] == [
            ({"processor": "p", "worker": "w-p0"}, 5.0),
            ({"processor": "p", "worker": "w-p1"}, 7.0),
        ]
        buckets = [
            s
            for s in by_name["shardwise_handler_duration_seconds"].samples
            if s.name.endswith("_bucket")
        ]
        assert {s.labels["worker"] for s in buckets} == {"w-p0", "w-p1"}
        assert all("le" in s.labels for s in buckets)
        assert len(merged) == len(list(text_string_to_metric_families(exposition(0))))

    def test_a_family_of_another_type_is_left_out(self) -> None:
        other = (
            "# HELP shardwise_records_processed_total x\n"
            "# TYPE shardwise_records_processed_total gauge\n"
            "shardwise_records_processed_total 3\n"
        )
        merged = merge_metrics({"a": exposition(1), "b": other})
        [family] = [f for f in merged if f.name == "shardwise_records_processed"]
        assert {s.labels["worker"] for s in family.samples} == {"a"}

    def test_nothing_to_merge(self) -> None:
        assert merge_metrics({}) == []


Make = Callable[..., Awaitable[Child]]


@pytest.fixture
async def children() -> AsyncIterator[Make]:
    async with AsyncExitStack() as stack:

        async def make(worker_id: str, *, processed: int = 0, started: bool = True) -> Child:
            progress = ProcessorProgress("p")
            progress.records_processed = processed
            ready = asyncio.Event()
            if started:
                ready.set()
            server = ObserveServer(
                SETTINGS,
                {"p": progress},
                store=None,
                started=ready,
                max_checkpoint_stall_s=60,
            )
            await stack.enter_async_context(server)
            worker = FakeWorker(worker_id, port=server.bound_port)
            return Child(worker, progress, ready, server)

        yield make


async def get(port: int, path: str, accept: str | None = None) -> tuple[int, str, str]:
    headers = {"Accept": accept} if accept else {}
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}{path}", headers=headers) as response,
    ):
        return response.status, response.headers["Content-Type"], await response.text()


def samples(text: str, name: str) -> dict[str, float]:
    """Sample values of ``name`` by their worker label."""
    return {
        sample.labels.get("worker", ""): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    }


def parent(settings: Settings, workers: list[FakeWorker]) -> AggregateServer:
    return AggregateServer(settings, workers, stopping=asyncio.Event(), probe_timeout_s=2)


class TestMetricsEndpoint:
    """/metrics: both children's series, labelled, and the parent's own."""

    async def test_both_children(self, children: Make) -> None:
        a, b = await children("w-p0", processed=3), await children("w-p1", processed=4)
        async with parent(SETTINGS, [a.worker, b.worker]) as server:
            status, _, text = await get(server.bound_port, "/metrics")
        assert status == 200
        assert samples(text, "shardwise_records_processed_total") == {"w-p0": 3, "w-p1": 4}
        assert text.count("# HELP shardwise_records_processed_total ") == 1
        assert samples(text, "shardwise_worker_process_up") == {"w-p0": 1, "w-p1": 1}
        assert samples(text, "shardwise_worker_processes") == {"": 2}
        assert samples(text, "shardwise_build_info").keys() == {"w-p0", "w-p1"}

    async def test_a_silent_child_is_down_not_an_error(self, children: Make) -> None:
        a = await children("w-p0", processed=3)
        gone = FakeWorker("w-p1", port=free_port(), restarts=2)  # nothing listens there
        async with parent(SETTINGS, [a.worker, gone]) as server:
            status, _, text = await get(server.bound_port, "/metrics")
        assert status == 200
        assert samples(text, "shardwise_records_processed_total") == {"w-p0": 3}
        assert samples(text, "shardwise_worker_process_up") == {"w-p0": 1, "w-p1": 0}
        assert samples(text, "shardwise_worker_process_restarts_total") == {"w-p0": 0, "w-p1": 2}

    async def test_openmetrics_when_asked(self, children: Make) -> None:
        a = await children("w-p0", processed=1)
        async with parent(SETTINGS, [a.worker]) as server:
            accept = "application/openmetrics-text; version=1.0.0"
            status, content_type, text = await get(server.bound_port, "/metrics", accept)
        assert status == 200
        assert content_type.startswith("application/openmetrics-text")
        assert text.rstrip().endswith("# EOF")
        assert 'shardwise_records_processed_total{processor="p",worker="w-p0"} 1.0' in text


class TestHealthEndpoint:
    """/healthz: healthy only when every child is; problems name the worker."""

    async def test_all_healthy(self, children: Make) -> None:
        a, b = await children("w-p0"), await children("w-p1")
        starting = FakeWorker("w-p2")  # started, not listening yet: as a single process is
        async with parent(SETTINGS, [a.worker, b.worker, starting]) as server:
            status, _, text = await get(server.bound_port, "/healthz")
        body = json.loads(text)
        assert status == 200, body
        assert body["problems"] == []
        assert {w: e["state"] for w, e in body["workers"].items()} == {
            "w-p0": "ok",
            "w-p1": "ok",
            "w-p2": "starting",
        }

    async def test_an_unhealthy_child(self, children: Make) -> None:
        a, b = await children("w-p0"), await children("w-p1")

        async def crash() -> None:
            raise RuntimeError("boom")

        task = asyncio.create_task(crash())
        await asyncio.wait([task])
        b.server.watch("supervisor", task)
        async with parent(SETTINGS, [a.worker, b.worker]) as server:
            status, _, text = await get(server.bound_port, "/healthz")
        body = json.loads(text)
        assert status == 503
        assert body["problems"] == ["worker w-p1: task supervisor died: RuntimeError: boom"]
        assert body["workers"]["w-p0"]["state"] == "ok"
        assert body["workers"]["w-p1"]["state"] == "failing"

    async def test_a_child_waiting_for_its_restart(self, children: Make) -> None:
        a = await children("w-p0")
        down = FakeWorker(
            "w-p1", pid=None, restarts=1, problem="killed by SIGKILL; restarting in 2 s"
        )
        async with parent(SETTINGS, [a.worker, down]) as server:
            status, _, text = await get(server.bound_port, "/healthz")
        body = json.loads(text)
        assert status == 503
        assert body["problems"] == [
            "worker w-p1: not running: killed by SIGKILL; restarting in 2 s"
        ]
        assert body["workers"]["w-p1"] == {
            "pid": None,
            "restarts": 1,
            "problem": "killed by SIGKILL; restarting in 2 s",
            "state": "not running",
        }


class TestReadyEndpoint:
    """/readyz: ready when every child is, and the parent is not stopping."""

    async def test_waits_for_every_child(self, children: Make) -> None:
        a, b = await children("w-p0"), await children("w-p1", started=False)
        stopping = asyncio.Event()
        workers = [a.worker, b.worker]
        async with AggregateServer(SETTINGS, workers, stopping=stopping) as server:
            status, _, text = await get(server.bound_port, "/readyz")
            assert status == 503
            assert json.loads(text)["checks"] == {"workers": "1 of 2 ready"}
            b.started.set()
            status, _, text = await get(server.bound_port, "/readyz")
            assert status == 200, text
            stopping.set()
            status, _, text = await get(server.bound_port, "/readyz")
            assert status == 503
            assert json.loads(text)["checks"]["processes"] == "stopping"


class TestBind:
    """An address in use is a clear error naming http.bind."""

    async def test_address_in_use(self, children: Make) -> None:
        a = await children("w-p0")
        bind = f"127.0.0.1:{a.worker.port}"
        settings = SETTINGS.model_copy(update={"http": HttpConfig(bind=bind)})
        with pytest.raises(ShardwiseError, match=f"http.bind {bind}: cannot listen"):
            async with parent(settings, [a.worker]):
                pass
