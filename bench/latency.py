"""Case 2, latency: from a write to the handler seeing it, on a hot shard and after idling.

Each record's new image carries its write time ``t``; ``bench.handlers.record_latency``
notes ``now - t`` when the handler (a sync function, so one thread hop included) gets it.
Two backends, each read by a real ``Supervisor`` (aiobotocore source, SQLite):

* the streams server in its own process (``bench.load_server``): the hot shard takes a
  steady stream of writes, then the other shards, idle since the start, take one each;
* moto's ``ThreadedMotoServer`` in this process: real PutItem calls on one table (hot),
  then one PutItem on each of the other tables, idle since they were created.

Lambda polls each shard at a fixed 250 ms, so a record waits ~125 ms on average (up to
250 ms) before the invoke itself: that model is the baseline.
"""

from __future__ import annotations

import asyncio
import decimal
import logging
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import boto3

from bench import handlers
from bench.harness import (
    ProcessClock,
    migrated,
    percentile,
    pipeline_settings,
    run_supervisor,
    streams_process,
    wait_for,
)
from bench.report import Baseline, CaseResult, Figure, Target

if TYPE_CHECKING:
    from bench.plans import LatencyPlan

__all__ = ["run"]

POLL_PERIOD_MS: Final = 250.0
LAMBDA_P50: Final = Baseline("Lambda: half its 250 ms poll", POLL_PERIOD_MS / 2, measured=False)
LAMBDA_P99: Final = Baseline(
    "Lambda: 99% of its 250 ms poll", POLL_PERIOD_MS * 0.99, measured=False
)
HANDLER: Final = "bench.handlers:record_latency"


def _take_samples() -> list[float]:
    samples = [s * 1000 for s in handlers.LATENCIES_S]
    handlers.LATENCIES_S.clear()
    return samples


def _figures(result: CaseResult, what: str, samples: list[float], *, hot: bool) -> None:
    note = f"{len(samples)} samples"
    p50_target = Target("value", "<", 150.0) if hot else None
    result.add(Figure(f"{what} p50", percentile(samples, 0.5), "ms", LAMBDA_P50, p50_target, note))
    result.add(Figure(f"{what} p99", percentile(samples, 0.99), "ms", LAMBDA_P99, None, note))


async def _streams_server(result: CaseResult, plan: LatencyPlan, store_url: str) -> None:
    shards = plan.idle_shards + 1
    with streams_process("--shards", str(shards)) as server:
        settings = pipeline_settings(
            endpoint_url=server.endpoint_url,
            streams={"latency": server.stream_arn},
            store_url=store_url,
            handler=HANDLER,
        )
        async with run_supervisor(settings) as supervisor:
            progress = supervisor.progress["latency"]
            await wait_for(lambda: progress.get_records_calls >= 2 * shards, timeout_s=60)
            _take_samples()
            server.command(f"hot 0 {plan.hot_rate}")
            await asyncio.sleep(plan.hot_seconds)
            server.command("hot 0 0")
            await asyncio.sleep(0.5)
            _figures(result, "streams server, hot shard", _take_samples(), hot=True)
            await asyncio.sleep(plan.idle_seconds)
            for shard in range(1, shards):
                server.command(f"put {shard}")
                await asyncio.sleep(0.25)
            await wait_for(lambda: len(handlers.LATENCIES_S) >= plan.idle_shards, timeout_s=5)
            idle = f"streams server, shard idle {plan.idle_seconds:g} s"
            _figures(result, idle, _take_samples(), hot=False)


def _create_table(client: Any) -> str:
    name = f"latency{uuid.uuid4().hex[:8]}"
    client.create_table(
        TableName=name,
        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
        StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_IMAGE"},
    )
    return str(client.describe_table(TableName=name)["Table"]["LatestStreamArn"])


def _put(client: Any, arn: str) -> None:
    table = arn.split("/")[1]
    stamp = decimal.Decimal(repr(time.time()))
    client.put_item(TableName=table, Item={"id": {"S": uuid.uuid4().hex}, "t": {"N": str(stamp)}})


def _write_hot(client: Any, arn: str, rate: float, seconds: float) -> None:
    """PutItem at ``rate`` per second for ``seconds`` (drift-free), from a thread."""
    period = 1.0 / rate
    start = time.monotonic()
    n = 0
    while time.monotonic() - start < seconds:
        _put(client, arn)
        n += 1
        time.sleep(max(0.0, start + n * period - time.monotonic()))


async def _moto(result: CaseResult, plan: LatencyPlan, store_url: str) -> None:
    from moto.server import ThreadedMotoServer

    from bench.harness import free_port

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        endpoint = f"http://127.0.0.1:{port}"
        client = boto3.client("dynamodb", endpoint_url=endpoint, region_name="us-east-1")
        arns = [_create_table(client) for _ in range(plan.moto_tables)]
        settings = pipeline_settings(
            endpoint_url=endpoint,
            streams={f"moto{n}": arn for n, arn in enumerate(arns)},
            store_url=store_url,
            handler=HANDLER,
        )
        async with run_supervisor(settings) as supervisor:
            progress = supervisor.progress
            await wait_for(
                lambda: all(p.get_records_calls >= 2 for p in progress.values()), timeout_s=60
            )
            _take_samples()
            await asyncio.to_thread(_write_hot, client, arns[0], plan.hot_rate, plan.hot_seconds)
            await asyncio.sleep(0.5)
            _figures(result, "moto PutItem, hot shard", _take_samples(), hot=True)
            await asyncio.sleep(plan.idle_seconds)
            for arn in arns[1:]:
                await asyncio.to_thread(_put, client, arn)
                await asyncio.sleep(0.25)
            await wait_for(lambda: len(handlers.LATENCIES_S) >= len(arns) - 1, timeout_s=5)
            idle = f"moto PutItem, shard idle {plan.idle_seconds:g} s"
            _figures(result, idle, _take_samples(), hot=False)
        client.close()
    finally:
        server.stop()


async def run(plan: LatencyPlan, workdir: Path) -> CaseResult:
    result = CaseResult("latency", "write -> handler, ms (SQLite checkpoints)")
    clock = ProcessClock()
    started = time.monotonic()
    store_url = await migrated(f"sqlite+aiosqlite:///{workdir / 'latency.db'}")
    await _streams_server(result, plan, store_url)
    await _moto(result, plan, store_url)
    result.seconds = time.monotonic() - started
    result.notes.append(
        f"hot: {plan.hot_rate:g} writes/s for {plan.hot_seconds:g} s; idle: one write per "
        f"shard after {plan.idle_seconds:g} s without any; this process used "
        f"{clock.cpu_fraction():.0%} of a core"
    )
    result.notes.append(
        "baselines are Lambda's model (fixed 250 ms poll, invoke time not included), "
        "not a measurement"
    )
    return result
