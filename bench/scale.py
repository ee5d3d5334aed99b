"""Case 3, scale: one worker on 1000 shards, idle and under light load.

For each reader: CPU (this process's user + system time over wall time, all threads, so
the handler pool and aiosqlite's thread count too), RSS from /proc/self/status and
GetRecords calls per second, over a window that starts once every shard has been polled.
The streams server (``bench.load_server``) runs in its own process and is not counted.

Readers, each on a fresh server: the ``Supervisor`` with its aiobotocore source, the
``Supervisor`` with ``RawDynamoDBStreamsSource`` in its place, and the baseline for CPU: a bare
``aiohttp`` poller (every shard every 250 ms, pages decoded with orjson, nothing signed,
nothing checkpointed), whose CPU per call, times a reader's calls/s, is what the same
calls cost the transport alone. The idle window starts ``settle_seconds`` after every
shard was polled, once idle shards have backed off. RSS is compared with this process
before any reader started.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

import aiohttp
import orjson

from bench.harness import (
    ProcessClock,
    StreamsProcess,
    counting_events,
    migrated,
    pipeline_settings,
    rss_mb,
    run_raw_supervisor,
    run_supervisor,
    streams_process,
    wait_for,
)
from bench.report import Baseline, CaseResult, Figure, Target

if TYPE_CHECKING:
    from bench.plans import ScalePlan

__all__ = ["run"]

POLL_PERIOD_S: Final = 0.25
_HEADERS: Final = {"Content-Type": "application/x-amz-json-1.0"}
_TARGET: Final = "DynamoDBStreams_20120810."


@dataclass(frozen=True, slots=True)
class Window:
    """What one reader cost over one measuring window."""

    cpu_percent: float
    rss_mb: float
    calls_per_s: float
    records_per_s: float


@dataclass(slots=True)
class Counters:
    """Running totals a reader exposes: GetRecords calls, records handled, shards polled."""

    calls: Callable[[], int]
    records: Callable[[], int]
    shards_polled: Callable[[], int]


async def _window(counters: Counters, seconds: float) -> Window:
    clock = ProcessClock()
    calls, records = counters.calls(), counters.records()
    started = time.monotonic()
    await asyncio.sleep(seconds)
    elapsed = time.monotonic() - started
    return Window(
        cpu_percent=100 * clock.cpu_fraction(),
        rss_mb=rss_mb()[0],
        calls_per_s=(counters.calls() - calls) / elapsed,
        records_per_s=(counters.records() - records) / elapsed,
    )


@asynccontextmanager
async def _shardwise(
    server: StreamsProcess, store_url: str, *, raw: bool
) -> AsyncIterator[Counters]:
    name = "scaleraw" if raw else "scale"
    settings = pipeline_settings(
        endpoint_url=server.endpoint_url, streams={name: server.stream_arn}, store_url=store_url
    )
    async with (run_raw_supervisor if raw else run_supervisor)(settings) as supervisor:
        progress = supervisor.progress.values()
        yield Counters(
            calls=lambda: sum(p.get_records_calls for p in progress),
            records=lambda: sum(p.records_processed for p in progress),
            shards_polled=lambda: sum(len(p.shards) for p in progress),
        )


@asynccontextmanager
async def _bare(server: StreamsProcess) -> AsyncIterator[Counters]:
    """Every shard polled every 250 ms by a bare client: the transport's own cost."""
    url = server.endpoint_url + "/"
    totals = {"calls": 0, "records": 0}
    polled: set[str] = set()

    async def post(http: aiohttp.ClientSession, operation: str, body: object) -> bytes:
        headers = {**_HEADERS, "X-Amz-Target": _TARGET + operation}
        async with http.post(url, data=orjson.dumps(body), headers=headers) as response:
            return await response.read()

    async def poll(http: aiohttp.ClientSession, shard_id: str) -> None:
        request = {"StreamArn": server.stream_arn, "ShardId": shard_id}
        answer = await post(http, "GetShardIterator", {**request, "ShardIteratorType": "LATEST"})
        iterator = orjson.loads(answer)["ShardIterator"]
        while iterator:
            started = time.monotonic()
            page = orjson.loads(await post(http, "GetRecords", {"ShardIterator": iterator}))
            totals["calls"] += 1
            totals["records"] += len(page["Records"])
            polled.add(shard_id)
            iterator = page.get("NextShardIterator")
            await asyncio.sleep(max(0.0, POLL_PERIOD_S - (time.monotonic() - started)))

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as http:
        shard_ids: list[str] = []
        start: str | None = None
        while True:
            body: dict[str, object] = {"StreamArn": server.stream_arn, "Limit": 100}
            if start:
                body["ExclusiveStartShardId"] = start
            description = orjson.loads(await post(http, "DescribeStream", body))
            shard_ids += [s["ShardId"] for s in description["StreamDescription"]["Shards"]]
            start = description["StreamDescription"].get("LastEvaluatedShardId")
            if not start:
                break
        tasks = [asyncio.create_task(poll(http, shard_id)) for shard_id in shard_ids]
        try:
            yield Counters(
                calls=lambda: totals["calls"],
                records=lambda: totals["records"],
                shards_polled=lambda: len(polled),
            )
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


async def _measure(
    reader: AbstractAsyncContextManager[Counters],
    server: StreamsProcess,
    plan: ScalePlan,
    *,
    light: bool,
) -> tuple[Window, Window | None, float]:
    """(idle window, light-load window, seconds until every shard was polled)."""
    started = time.monotonic()
    async with reader as counters:
        ready = await wait_for(
            lambda: counters.shards_polled() >= plan.shards,
            timeout_s=plan.warmup_timeout_s,
            interval_s=0.05,
        )
        warmup_s = time.monotonic() - started if ready else float("nan")
        await asyncio.sleep(plan.settle_seconds)
        idle = await _window(counters, plan.window_seconds)
        loaded = None
        if light:
            server.command(f"rate {plan.light_rate}")
            await asyncio.sleep(1.0)
            loaded = await _window(counters, plan.window_seconds)
            server.command("rate 0")
    return idle, loaded, warmup_s


def _report(
    result: CaseResult,
    label: str,
    window: Window,
    *,
    cpu_per_call: float,
    rss: Baseline,
    plan: ScalePlan,
) -> None:
    idle = "idle" in label
    cpu_target = Target("value", "<", 10.0) if idle else None
    cpu = Baseline("bare client, same calls/s", cpu_per_call * window.calls_per_s)
    result.add(Figure(f"{label}: CPU", window.cpu_percent, "% of a core", cpu, cpu_target))
    result.add(Figure(f"{label}: RSS", window.rss_mb, "MB", rss, Target("value", "<", 300.0)))
    lambda_rate = Baseline("Lambda: 4 polls/s per shard", 4.0 * plan.shards, measured=False)
    note = f"{window.records_per_s:.0f} records/s handled"
    result.add(
        Figure(f"{label}: GetRecords", window.calls_per_s, "calls/s", lambda_rate, note=note)
    )


async def run(plan: ScalePlan, workdir: Path) -> CaseResult:
    result = CaseResult("scale", f"{plan.shards} shards, one worker")
    started = time.monotonic()
    rss_before = Baseline("this process before any reader", rss_mb()[0])
    store_url = await migrated(f"sqlite+aiosqlite:///{workdir / 'scale.db'}")
    shards = ("--shards", str(plan.shards))
    with streams_process(*shards) as server:
        bare, _, _ = await _measure(_bare(server), server, plan, light=False)
    cpu_per_call = bare.cpu_percent / bare.calls_per_s if bare.calls_per_s else float("nan")
    result.add(
        Figure(
            "bare aiohttp poller, 4 polls/s per shard: CPU",
            bare.cpu_percent,
            "% of a core",
            note=f"{bare.calls_per_s:.0f} calls/s, {10 * cpu_per_call:.3f} ms CPU per call",
        )
    )
    for name, raw in (("shardwise, aiobotocore", False), ("shardwise, raw default", True)):
        with (
            counting_events("shardwise.leases", "lease lost") as leases_lost,
            streams_process(*shards) as server,
        ):
            idle, loaded, warmup_s = await _measure(
                _shardwise(server, store_url, raw=raw), server, plan, light=True
            )
        _report(result, f"{name}, idle", idle, cpu_per_call=cpu_per_call, rss=rss_before, plan=plan)
        assert loaded is not None
        light = f"{name}, {plan.light_rate:g} records/s"
        _report(result, light, loaded, cpu_per_call=cpu_per_call, rss=rss_before, plan=plan)
        per_call = 10 * idle.cpu_percent / idle.calls_per_s if idle.calls_per_s else float("nan")
        result.notes.append(
            f"{name}: every shard polled {warmup_s:.1f} s after start; idle: "
            f"{per_call:.3f} ms CPU per GetRecords call; {leases_lost()} leases lost "
            "(not renewed in time)"
        )
    result.seconds = time.monotonic() - started
    result.notes.append(
        f"windows of {plan.window_seconds:g} s; CPU counts every thread of this process; "
        "the server's own CPU is not counted"
    )
    return result
