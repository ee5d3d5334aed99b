"""Liveness and readiness: the progress rule, loop lag, dead tasks, the store ping, over HTTP."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from shardwise.config import HttpConfig, Settings, parse_config
from shardwise.errors import ShardwiseError, StoreError
from shardwise.observe.health import HealthReport, ObserveServer, health_report
from shardwise.observe.progress import ProcessorProgress
from shardwise.records import ShardId
from shardwise.store import CheckpointStore
from tests.e2e import create_table, running, settings_for, wait_until, write_module


async def get(port: int, path: str) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}{path}") as response,
    ):
        body: dict[str, Any] = await response.json()
        return response.status, body


async def eventually(port: int, path: str, status: int, timeout_s: float = 20.0) -> dict[str, Any]:
    """Poll ``path`` until it answers ``status``; return that answer's body."""
    deadline = time.monotonic() + timeout_s
    while True:
        code, body = await get(port, path)
        if code == status:
            return body
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} still answers {code} {body}, not {status}")
        await asyncio.sleep(0.1)


def local_settings() -> Settings:
    return parse_config(
        """
        http: {bind: "127.0.0.1:0"}
        processors:
          - name: p
            source: {dynamodb: {table: Orders}}
            handler: mod:handler
            starting_position: LATEST
        """
    )


def block_loop(seconds: float) -> None:
    """Hold the event loop, as a sync call made by mistake on it would."""
    time.sleep(seconds)


class FakeStore:
    """A store whose ping succeeds or fails as the test says."""

    def __init__(self) -> None:
        self.up = True

    async def ping(self) -> None:
        if not self.up:
            raise StoreError("ping failed on sqlite+aiosqlite:///x.db: database is locked")


def stalled_progress(
    pending: int, pending_since: float, checkpointed_at: float | None
) -> ProcessorProgress:
    progress = ProcessorProgress("orders")
    shard = progress.shard(ShardId("shard-1"))
    shard.pending = pending
    shard.pending_since_monotonic = pending_since
    shard.checkpointed_at_monotonic = checkpointed_at
    shard.checkpoint = "100" if checkpointed_at is not None else None
    return progress


class TestHealthReport:
    """The pure progress rule."""

    def test_healthy_without_pending_records(self) -> None:
        """Nothing pending is never a stall, however old the checkpoint."""
        report = health_report({"orders": stalled_progress(0, 0.0, 0.0)}, 10_000.0, 300)
        assert report.healthy
        assert report.to_json() == {"status": "ok", "problems": [], "stalled_shards": []}

    def test_pending_past_the_limit_is_a_stall(self) -> None:
        """Records pending and no checkpoint since, for the limit or longer: named in the report."""
        report = health_report({"orders": stalled_progress(3, 100.0, 50.0)}, 400.0, 300)
        assert not report.healthy
        body = report.to_json()
        assert body["status"] == "failing"
        assert body["stalled_shards"] == [
            {
                "processor": "orders",
                "shard": "shard-1",
                "records_pending": 3,
                "stalled_seconds": 300.0,
                "checkpoint": "100",
            }
        ]
        assert "processor orders shard shard-1" in body["problems"][0]

    def test_recent_checkpoint_resets_the_clock(self) -> None:
        """A checkpoint after the records became pending restarts the stall clock."""
        report = health_report({"orders": stalled_progress(3, 100.0, 350.0)}, 400.0, 300)
        assert report.healthy

    def test_never_checkpointed(self) -> None:
        """A shard that never checkpointed stalls from when its records became pending."""
        progress = stalled_progress(5, 10.0, None)
        assert not health_report({"orders": progress}, 311.0, 300).healthy
        assert health_report({"orders": progress}, 309.0, 300).healthy

    def test_finished_shards_never_stall(self) -> None:
        """A finished shard is done, whatever its counters say."""
        progress = stalled_progress(5, 10.0, None)
        progress.finished(ShardId("shard-1"))
        assert health_report({"orders": progress}, 10_000.0, 300).healthy

    def test_problems_make_it_unhealthy(self) -> None:
        """Other problems (loop lag, dead tasks) are listed after the stalls."""
        report = HealthReport(max_stall_s=300).with_problems("event loop lag 9 s")
        assert not report.healthy
        assert report.to_json()["problems"] == ["event loop lag 9 s"]

    def test_polled_starts_the_stall_clock(self) -> None:
        """Records read into an empty shard start the clock; a checkpoint catching up clears it."""
        progress = ProcessorProgress("orders")
        progress.polled(ShardId("s"), 4)
        shard = progress.shards[ShardId("s")]
        assert shard.pending_since_monotonic is not None
        later = shard.pending_since_monotonic + 60
        assert shard.stalled_s(later) == pytest.approx(60)
        progress.checkpointed(ShardId("s"), "9", 4, None, 0.001)
        assert shard.stalled_s(later) == 0


class TestObserveServer:
    """The endpoints without a supervisor: lifecycle, loop lag, dead tasks, readiness."""

    async def test_lifecycle(self) -> None:
        """bound_port only while serving; start once; stop is idempotent."""
        server = ObserveServer(
            local_settings(), {}, store=None, started=asyncio.Event(), max_checkpoint_stall_s=1
        )
        with pytest.raises(RuntimeError):
            _ = server.bound_port
        await server.start()
        try:
            assert server.bound_port > 0
            with pytest.raises(RuntimeError):
                await server.start()
        finally:
            await server.stop()
        await server.stop()
        with pytest.raises(RuntimeError):
            _ = server.bound_port

    async def test_address_in_use(self) -> None:
        """A port already taken is a ShardwiseError naming http.bind, not a traceback."""
        first = ObserveServer(
            local_settings(), {}, store=None, started=asyncio.Event(), max_checkpoint_stall_s=1
        )
        async with first:
            taken = local_settings().model_copy(
                update={"http": HttpConfig(bind=f"127.0.0.1:{first.bound_port}")}
            )
            second = ObserveServer(
                taken, {}, store=None, started=asyncio.Event(), max_checkpoint_stall_s=1
            )
            with pytest.raises(ShardwiseError, match=f"http.bind 127.0.0.1:{first.bound_port}"):
                await second.start()

    async def test_loop_lag_fails_liveness(self) -> None:
        """A blocked loop fails /healthz, and it passes again once the loop runs freely."""
        server = ObserveServer(
            local_settings(),
            {},
            store=None,
            started=asyncio.Event(),
            max_checkpoint_stall_s=1,
            max_loop_lag_s=0.3,
            loop_tick_s=0.05,
        )
        async with server:
            assert (await get(server.bound_port, "/healthz"))[0] == 200
            block_loop(0.6)
            status, body = await get(server.bound_port, "/healthz")
            assert status == 503
            assert "event loop lag" in body["problems"][0]
            await eventually(server.bound_port, "/healthz", 200, timeout_s=5)

    async def test_dead_task_fails_both_checks(self) -> None:
        """A watched task that died fails liveness and readiness, naming the task."""

        async def boom() -> None:
            raise RuntimeError("boom")

        started = asyncio.Event()
        started.set()
        server = ObserveServer(
            local_settings(), {}, store=None, started=started, max_checkpoint_stall_s=1
        )
        task = asyncio.create_task(boom())
        await asyncio.wait([task])
        server.watch("supervisor", task)
        async with server:
            status, body = await get(server.bound_port, "/healthz")
            assert status == 503
            assert body["problems"] == ["task supervisor died: RuntimeError: boom"]
            status, body = await get(server.bound_port, "/readyz")
            assert status == 503
            assert body["checks"]["tasks"] == "task supervisor died: RuntimeError: boom"

    async def test_readiness(self) -> None:
        """Not ready while starting, ready once started with the store up, not ready when
        the store fails or the processors are stopping."""
        started, stopping, store = asyncio.Event(), asyncio.Event(), FakeStore()
        server = ObserveServer(
            local_settings(),
            {},
            store=store,
            started=started,
            stopping=stopping,
            max_checkpoint_stall_s=1,
        )
        async with server:
            port = server.bound_port
            status, body = await get(port, "/readyz")
            assert (status, body["checks"]["processors"]) == (503, "starting")
            assert body["checks"]["config"] == "loaded (1 enabled processor(s))"
            started.set()
            status, body = await get(port, "/readyz")
            assert (status, body["status"]) == (200, "ready")
            assert body["checks"] == {
                "config": "loaded (1 enabled processor(s))",
                "processors": "started: p",
                "store": "ok",
            }
            store.up = False
            status, body = await get(port, "/readyz")
            assert status == 503
            assert body["checks"]["store"].startswith("unreachable: ping failed")
            store.up = True
            stopping.set()
            status, body = await get(port, "/readyz")
            assert (status, body["checks"]["processors"]) == (503, "stopping")
            assert (await get(port, "/healthz"))[0] == 200


GATED_HANDLER = """
import asyncio

gate = asyncio.Event()

async def handler(event, context):
    await gate.wait()
"""


class TestAgainstSupervisor:
    """A real run against moto: a hung handler fails liveness; the store decides readiness."""

    async def test_hung_handler_then_released(self, tmp_path: Path, moto_endpoint: str) -> None:
        """Records stuck in the handler past the limit -> 503 naming processor and shard."""
        table, name = create_table(moto_endpoint)
        module = write_module(
            tmp_path, f"gated_{tmp_path.name[-8:].replace('-', '_')}", GATED_HANDLER
        )
        db = tmp_path / "cp.db"
        settings = settings_for(
            tmp_path,
            endpoint_url=moto_endpoint,
            store_url=f"sqlite+aiosqlite:///{db}",
            extra="http:\n  bind: 127.0.0.1:0",
            processors=f"""
            - name: gated
              source: {{dynamodb: {{table: {name}}}}}
              handler: {module}:handler
              starting_position: TRIM_HORIZON
              timeout_seconds: 900
            """,
        )
        for i in range(3):
            table.put_item(Item={"id": str(i)})
        opened: list[CheckpointStore] = []
        async with running(settings) as supervisor:
            server = ObserveServer(
                settings,
                supervisor.progress,
                store=lambda: opened[0] if opened else None,
                started=supervisor.started,
                max_checkpoint_stall_s=0.5,
            )
            async with server:
                port = server.bound_port
                body = await eventually(port, "/readyz", 503)
                assert body["checks"]["store"] == "not connected yet"
                await wait_until(supervisor.started.is_set, what="the supervisor started")
                opened.append(
                    await CheckpointStore.connect(f"sqlite+aiosqlite:///{db}", migrate=False)
                )
                await eventually(port, "/readyz", 200)

                body = await eventually(port, "/healthz", 503)
                [stalled] = body["stalled_shards"]
                assert stalled["processor"] == "gated"
                assert stalled["shard"] == next(iter(supervisor.progress["gated"].shards))
                assert stalled["records_pending"] == 3
                assert stalled["stalled_seconds"] >= 0.5
                assert stalled["checkpoint"] is None
                assert f"processor gated shard {stalled['shard']}" in body["problems"][0]

                gate: asyncio.Event = sys.modules[module].gate
                gate.set()
                body = await eventually(port, "/healthz", 200)
                assert body == {"status": "ok", "problems": [], "stalled_shards": []}
                assert supervisor.progress["gated"].records_processed == 3

                await opened[0].close()
                body = await eventually(port, "/readyz", 503)
                assert body["checks"]["store"].startswith("unreachable: <CheckpointStore sqlite")


class TestFailedProcessors:
    """A processor that failed on its own (after a reload) makes liveness fail, by name."""

    async def test_failed_processor_is_reported(self) -> None:
        settings = parse_config(
            "processors: [{name: p, source: {dynamodb: {table: Orders}}, "
            "handler: 'm:h', starting_position: LATEST}]"
        )
        failed: dict[str, str] = {}
        server = ObserveServer(
            settings,
            {},
            store=None,
            started=asyncio.Event(),
            max_checkpoint_stall_s=60,
            failed=failed,
        )
        assert server.liveness().healthy
        failed["audit"] = "StreamNotFoundError: stream Nope does not exist"
        report = server.liveness()
        assert not report.healthy
        assert any("processor audit failed" in problem for problem in report.problems)
