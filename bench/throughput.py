"""Case 1, throughput: records/s through a no-op handler, batch_size 1000, 1 and 64 shards.

The streams server (``bench.load_server``: ``shardwise.testing``'s, with a longer listen
backlog) runs in its own process with every record written before anything is timed.
Against it, in this order:

* the server's own ceiling: many concurrent readers fetching pages and parsing nothing;
* (b) the transport+parse ceiling: each shard read to its end by a bare ``aiohttp`` client
  (no signing) whose pages are decoded with ``orjson`` and nothing else;
* (a) what a user writes by hand: boto3, DescribeStream, GetShardIterator, a GetRecords
  loop per shard in a thread of its own, records made JSON-safe (``json.dumps(...,
  default=str)``) and handed to the no-op handler; no checkpoints;
* shardwise end to end: a real ``Supervisor`` (checkpoints in SQLite and in PostgreSQL)
  with its aiobotocore source, and with ``RawDynamoDBStreamsSource`` in its place.

Every run starts at TRIM_HORIZON (the server keeps no per-reader state). Rates count
from the first page handled to the last; start-up (store, listing, leases, first page) is
a fixed cost, shown in each figure's note. Store schemas are migrated before any run.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import aiohttp
import boto3
import orjson
from botocore.config import Config

from bench import handlers
from bench.handlers import noop
from bench.harness import (
    Stopwatch,
    StreamsProcess,
    Timed,
    migrated,
    pipeline_settings,
    processed,
    run_raw_supervisor,
    run_supervisor,
    scratch_postgres,
    streams_process,
    wait_for,
)
from bench.report import Baseline, CaseResult, Figure, Target

__all__ = ["ThroughputPlan", "run"]

_TARGET: Final = "DynamoDBStreams_20120810."
_HEADERS: Final = {"Content-Type": "application/x-amz-json-1.0"}
NAIVE: Final = "naive boto3"
CEILING: Final = "aiohttp+orjson ceiling (b)"


@dataclass(frozen=True, slots=True)
class ThroughputPlan:
    """One stream layout and how long to give each reader."""

    shards: int
    records_per_shard: int
    payload_bytes: int = 100
    ceiling_seconds: float = 3.0
    timeout_s: float = 120.0

    @property
    def total(self) -> int:
        return self.shards * self.records_per_shard


# -- the bare client: the ceiling and the transport+parse baseline ---------------------------


async def _post(
    http: aiohttp.ClientSession, url: str, operation: str, body: dict[str, Any]
) -> bytes:
    headers = {**_HEADERS, "X-Amz-Target": _TARGET + operation}
    async with http.post(url, data=orjson.dumps(body), headers=headers) as response:
        payload = await response.read()
        if response.status != 200:
            raise RuntimeError(f"{operation}: HTTP {response.status}: {payload[:200]!r}")
        return payload


async def _shard_ids(http: aiohttp.ClientSession, url: str, arn: str) -> list[str]:
    shard_ids: list[str] = []
    start: str | None = None
    while True:
        request: dict[str, Any] = {"StreamArn": arn, "Limit": 100}
        if start:
            request["ExclusiveStartShardId"] = start
        description = orjson.loads(await _post(http, url, "DescribeStream", request))
        shards = description["StreamDescription"]
        shard_ids += [s["ShardId"] for s in shards["Shards"]]
        start = shards.get("LastEvaluatedShardId")
        if not start:
            return shard_ids


async def _iterator(http: aiohttp.ClientSession, url: str, arn: str, shard_id: str) -> str:
    request = {"StreamArn": arn, "ShardId": shard_id, "ShardIteratorType": "TRIM_HORIZON"}
    iterator: str = orjson.loads(await _post(http, url, "GetShardIterator", request))[
        "ShardIterator"
    ]
    return iterator


def _bare_session(connections: int) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=connections))


async def server_ceiling(server: StreamsProcess, *, readers: int, seconds: float) -> float:
    """Records/s the server hands out to ``readers`` concurrent clients that parse nothing."""
    url = server.endpoint_url + "/"
    async with _bare_session(readers) as http:
        shard_ids = await _shard_ids(http, url, server.stream_arn)
        deadline = time.perf_counter() + seconds
        counts = [0] * readers

        async def read(n: int) -> None:
            shard_id = shard_ids[n % len(shard_ids)]
            iterator: str | None = None
            while time.perf_counter() < deadline:
                if iterator is None:
                    iterator = await _iterator(http, url, server.stream_arn, shard_id)
                body = await _post(http, url, "GetRecords", {"ShardIterator": iterator})
                records = body.count(b'"eventID"')
                counts[n] += records
                tail = body.rfind(b'"NextShardIterator":"')
                iterator = None if tail < 0 or not records else body[tail + 21 : -2].decode()

        started = time.perf_counter()
        async with asyncio.TaskGroup() as tasks:
            for n in range(readers):
                tasks.create_task(read(n))
        return sum(counts) / (time.perf_counter() - started)


async def bare_client(server: StreamsProcess, total: int, *, timeout_s: float) -> Timed:
    """(b): every shard read to its end, pages decoded with orjson; nothing else."""
    url = server.endpoint_url + "/"
    stopwatch = Stopwatch()
    counts: list[int] = []
    async with _bare_session(64) as http:
        shard_ids = await _shard_ids(http, url, server.stream_arn)
        counts = [0] * len(shard_ids)

        async def read(n: int, shard_id: str) -> None:
            iterator: str | None = await _iterator(http, url, server.stream_arn, shard_id)
            while iterator is not None:
                body = await _post(
                    http, url, "GetRecords", {"ShardIterator": iterator, "Limit": 1000}
                )
                page = orjson.loads(body)
                records = page["Records"]
                if not records:
                    return
                counts[n] += len(records)
                stopwatch.handled(sum(counts))
                iterator = page.get("NextShardIterator")

        async with asyncio.timeout(timeout_s), asyncio.TaskGroup() as tasks:
            for n, shard_id in enumerate(shard_ids):
                tasks.create_task(read(n, shard_id))
    return stopwatch.timed(sum(counts), total)


# -- (a) the hand-written boto3 consumer ---------------------------------------------------------


def naive_boto3(server: StreamsProcess, total: int) -> Timed:
    """What a user writes by hand: boto3, one thread per shard, JSON-safe records."""
    stopwatch = Stopwatch()
    handled = [0]
    lock = threading.Lock()
    client = boto3.client(
        "dynamodbstreams",
        endpoint_url=server.endpoint_url,
        region_name="us-east-1",
        config=Config(max_pool_connections=64, retries={"total_max_attempts": 1}),
    )
    shard_ids: list[str] = []
    kwargs: dict[str, Any] = {"StreamArn": server.stream_arn}
    while True:
        description = client.describe_stream(**kwargs)["StreamDescription"]
        shard_ids += [s["ShardId"] for s in description["Shards"]]
        if "LastEvaluatedShardId" not in description:
            break
        kwargs["ExclusiveStartShardId"] = description["LastEvaluatedShardId"]

    def read(shard_id: str) -> int:
        iterator: str | None = client.get_shard_iterator(
            StreamArn=server.stream_arn, ShardId=shard_id, ShardIteratorType="TRIM_HORIZON"
        )["ShardIterator"]
        count = 0
        while iterator:
            response = client.get_records(ShardIterator=iterator, Limit=1000)
            records = response["Records"]
            if not records:
                break
            noop({"Records": json.loads(json.dumps(records, default=str))}, None)
            count += len(records)
            with lock:
                handled[0] += len(records)
                stopwatch.handled(handled[0])
            iterator = response.get("NextShardIterator")
        return count

    with ThreadPoolExecutor(max_workers=len(shard_ids)) as pool:
        done = sum(pool.map(read, shard_ids))
    client.close()
    return stopwatch.timed(done, total)


# -- shardwise --------------------------------------------------------------------------------


async def shardwise(
    server: StreamsProcess, store_url: str, name: str, total: int, *, raw: bool, timeout_s: float
) -> Timed:
    """A real ``Supervisor`` (raw: reading through ``RawDynamoDBStreamsSource``).

    Timed by the no-op handler's own notes of its calls (``handlers.CALLS``), so watching
    for the end, every 20 ms, adds nothing to the figure.
    """
    settings = pipeline_settings(
        endpoint_url=server.endpoint_url,
        streams={name: server.stream_arn},
        store_url=store_url,
    )
    handlers.CALLS.clear()
    started = time.perf_counter()
    async with (run_raw_supervisor if raw else run_supervisor)(settings) as supervisor:
        complete = await wait_for(
            lambda: processed(supervisor.progress) >= total, timeout_s=timeout_s, interval_s=0.02
        )
    calls = sorted(handlers.CALLS)
    if not calls:
        return Timed(0, 0.0, complete=False, startup_s=time.perf_counter() - started)
    (first_at, first), last_at = calls[0], calls[-1][0]
    records = sum(n for _, n in calls) - first
    return Timed(records, last_at - first_at, complete, startup_s=first_at - started)


@contextmanager
def _timer(result: CaseResult) -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    finally:
        result.seconds += time.perf_counter() - started


def _figure(
    name: str, timed: Timed, baseline: Baseline | None = None, target: Target | None = None
) -> Figure:
    note = f"start-up {timed.startup_s:.2f} s"
    if not timed.complete:
        note += f"; timed out after {timed.records} records"
    return Figure(name, timed.rate, "records/s", baseline, target, note)


async def _one_layout(
    result: CaseResult, plan: ThroughputPlan, sqlite_url: str, pg_url: str | None
) -> None:
    label = f"{plan.shards} shard{'s' if plan.shards > 1 else ''}"
    args = [
        "--shards",
        str(plan.shards),
        "--records",
        str(plan.records_per_shard),
        "--payload-bytes",
        str(plan.payload_bytes),
    ]
    with streams_process(*args) as server:
        ceiling_rate = await server_ceiling(server, readers=32, seconds=plan.ceiling_seconds)
        result.add(Figure(f"server ceiling, 32 readers, {label}", ceiling_rate, "records/s"))
        bare = await bare_client(server, plan.total, timeout_s=plan.timeout_s)
        ceiling = Baseline(CEILING, bare.rate)
        result.add(_figure(f"{CEILING}, {label}", bare, Baseline("server ceiling", ceiling_rate)))
        naive = await asyncio.to_thread(naive_boto3, server, plan.total)
        baseline = Baseline(NAIVE, naive.rate)
        result.add(_figure(f"{NAIVE}, {label}", naive, ceiling))
        stores = [("SQLite", sqlite_url)] + ([("PostgreSQL", pg_url)] if pg_url else [])
        for store, url in stores:
            name = f"tp{plan.shards}{store[:2].lower()}"
            timed = await shardwise(
                server, url, name + "a", plan.total, raw=False, timeout_s=plan.timeout_s
            )
            what = f"shardwise, aiobotocore ({store}), {label}"
            result.add(_figure(what, timed, baseline, Target("ratio", ">=", 5.0)))
            result.add(_figure(what, timed, ceiling, Target("ratio", ">=", 0.6)))
            timed = await shardwise(
                server, url, name + "r", plan.total, raw=True, timeout_s=plan.timeout_s
            )
            what = f"shardwise, raw default ({store}), {label}"
            result.add(_figure(what, timed, baseline, Target("ratio", ">=", 5.0)))
            result.add(_figure(what, timed, ceiling, Target("ratio", ">=", 0.6)))


async def run(plans: list[ThroughputPlan], workdir: Path) -> CaseResult:
    result = CaseResult("throughput", "records/s, no-op handler, batch_size 1000")
    with _timer(result):
        sqlite_url = await migrated(f"sqlite+aiosqlite:///{workdir / 'throughput.db'}")
        async with scratch_postgres() as pg_url:
            if pg_url is None:
                result.notes.append("PostgreSQL not reachable at 127.0.0.1:5432: SQLite only")
            else:
                await migrated(pg_url)
            for plan in plans:
                await _one_layout(result, plan, sqlite_url, pg_url)
    result.notes.append(
        "server and readers share this machine's cores; the ceiling rows say what the "
        "server alone can hand out"
    )
    result.notes.append(
        f"records: {', '.join(f'{p.shards} x {p.records_per_shard:,}' for p in plans)} "
        f"({plans[0].payload_bytes}-byte payload, NEW_AND_OLD_IMAGES)"
    )
    return result
