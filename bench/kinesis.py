"""Case kinesis: records/s from Kinesis, and GetRecords calls per shard against Kinesis' limit.

**Throughput** (records/s through a no-op handler, ``batch_size`` 10,000, Kinesis' most,
so every GetRecords page of 10,000 records is one batch), per layout of 1 and 4 shards on
a Kinesis stream of the streams server (``bench.load_server --kinesis --no-limits``, in
its own process, every record written before anything is timed). The rate limits are
off: with them no reader gets more than 5 pages a second from a shard, and what is
measured is what each reader spends per record, as in the DynamoDB case. shardwise keeps to
that limit itself (``KinesisSource.read_limits``: one call per 0.2 s per shard); for these
rows its floor is lifted as well (``_no_call_floor``), so every reader runs unthrottled.
Against it, in this order, with the helpers of ``bench.throughput`` given ``KINESIS`` for
the protocol:

* the server's own ceiling: 32 concurrent readers fetching pages and parsing nothing;
* (b) the transport+parse ceiling: every shard read to its end over a blocking keep-alive
  ``http.client`` connection of its own, all from one thread with a GetRecords call
  (Limit 10,000) outstanding on each, pages decoded with ``orjson``, collector off,
  nothing signed;
* (b2) the same over a bare ``aiohttp`` client; shardwise is compared with the faster;
* (a) what a user writes by hand: ``boto3.client("kinesis")``, ListShards,
  GetShardIterator, a GetRecords loop per shard in a thread of its own, records made
  JSON-safe and handed to the no-op handler; no checkpoints;
* shardwise end to end: a real ``Supervisor`` with a ``source: {kinesis: ...}`` processor
  (``KinesisSource``, the raw client), checkpoints in SQLite.

Rates count from the first batch (page) handled to the last, as in the DynamoDB case;
the fast readers run ``best_of`` times and the fastest run counts.

**GetRecords calls per shard**, counted by the server, on streams with Kinesis' limits
on (5 GetRecords calls/s per shard, shared by every consumer of the stream): shardwise
on ``idle_shards`` shards that receive nothing, once idle polling has backed off; then
with ``busy_rate`` records/s flowing into ``busy_shards`` of them; idle and busy are
compared with Lambda's documented polling of a shard with a standard iterator (once per
second), and by how many consumers polling like this fit within the limit,
``floor(5 / calls per shard per second)``. Last, a backlog: ``backlog_shards`` shards of a
stream of their own, ``backlog_records`` each written before shardwise starts, read under
the limits (records/s against the 5 x 10,000 the limit lets any reader have, and the calls
made, throttled ones included, against the limit itself).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import math
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from bench import handlers
from bench.harness import (
    StreamsProcess,
    Timed,
    migrated,
    pipeline_settings,
    run_raw_supervisor,
    streams_process,
    wait_for,
)
from bench.report import Baseline, CaseResult, Figure, Target
from bench.throughput import (
    KINESIS,
    NAIVE,
    ThroughputPlan,
    best_of,
    ceilings,
    naive_boto3,
    rate_figure,
    shardwise,
    timer,
)
from shardwise.sources.kinesis import KinesisSource

__all__ = ["KinesisPlan", "run"]

GET_RECORDS_LIMIT: Final = 5  # calls per second per shard, shared by every consumer
LAMBDA: Final = Baseline("Lambda: 1 GetRecords/s per shard", 1.0, measured=False)
LAMBDA_CONSUMERS: Final = Baseline("Lambda: 5 / 1 call/s", 5.0, measured=False)
LIMIT: Final = Baseline("Kinesis limit: 5 calls/s per shard", 5.0, measured=False)
THROTTLED: Final = "ProvisionedThroughputExceededException"


@dataclass(frozen=True, slots=True)
class KinesisPlan:
    """The throughput layouts, and the sizes and windows of the GetRecords counts."""

    layouts: tuple[ThroughputPlan, ...]
    batch_size: int = 10_000
    idle_shards: int = 64
    settle_seconds: float = 15.0  # after every shard was polled: idle polls backed off
    idle_window_seconds: float = 30.0
    busy_shards: int = 4  # shards 0 .. busy_shards-1, written to at busy_rate each
    busy_rate: float = 200.0  # records/s per busy shard
    busy_warmup_seconds: float = 4.0  # a backed-off shard notices records within 3 s
    busy_window_seconds: float = 10.0
    backlog_shards: int = 2  # a stream of their own, each written backlog_records first
    backlog_records: int = 300_000
    timeout_s: float = 120.0


# -- throughput ------------------------------------------------------------------------------


@contextmanager
def _no_call_floor() -> Iterator[None]:
    """shardwise's own 5 calls/s per shard lifted, as the server's limit is for these rows."""
    limits = KinesisSource.read_limits
    KinesisSource.read_limits = dataclasses.replace(limits, min_call_interval_s=0.0)  # type: ignore[misc]
    try:
        yield
    finally:
        KinesisSource.read_limits = limits  # type: ignore[misc]


async def _one_layout(
    result: CaseResult, plan: ThroughputPlan, batch_size: int, store_url: str
) -> None:
    label = f"{plan.shards} shard{'s' if plan.shards > 1 else ''}"
    timeout_s = plan.timeout_s
    args = ["--kinesis", "--no-limits", "--shards", str(plan.shards)]
    args += ["--records", str(plan.records_per_shard), "--payload-bytes", str(plan.payload_bytes)]
    with streams_process(*args) as server:
        ceiling = await ceilings(result, server, plan, label, KINESIS)
        best = f"; best of {plan.best_of} runs"
        naive = await asyncio.to_thread(naive_boto3, server, plan.total, KINESIS)
        result.add(rate_figure(f"{NAIVE}, {label}", naive, ceiling))
        with _no_call_floor():
            timed = await best_of(
                plan.best_of,
                lambda n: shardwise(
                    server,
                    store_url,
                    f"kin{plan.shards}r{n}",
                    plan.total,
                    raw=True,
                    timeout_s=timeout_s,
                    source="kinesis",
                    batch_size=batch_size,
                ),
            )
        what = f"shardwise (SQLite), {label}"
        of_ceiling = Target("ratio", ">=", 0.6) if plan.shards > 1 else None
        result.add(
            rate_figure(
                what, timed, Baseline(NAIVE, naive.rate), Target("ratio", ">=", 8.0), note=best
            )
        )
        result.add(rate_figure(what, timed, ceiling, of_ceiling, note=best))


# -- GetRecords calls per shard, counted by the server --------------------------------------


@dataclass(frozen=True, slots=True)
class _Calls:
    """The server's counts between two ``calls`` queries."""

    seconds: float
    get_records: Counter[str]  # per shard id
    operations: Counter[str]

    def per_shard_s(self, shard_ids: list[str]) -> float:
        """GetRecords calls per second per shard, on average over ``shard_ids``."""
        calls = sum(self.get_records[shard_id] for shard_id in shard_ids)
        return calls / self.seconds / len(shard_ids)

    def busiest_s(self, shard_ids: list[str]) -> float:
        return max(self.get_records[shard_id] for shard_id in shard_ids) / self.seconds


class _Counter:
    """Reads the server's counts (``calls``) without stalling the event loop."""

    def __init__(self, server: StreamsProcess) -> None:
        self._server = server
        self._last: tuple[float, Counter[str], Counter[str]] | None = None

    async def _read(self) -> tuple[float, Counter[str], Counter[str]]:
        answer = json.loads(await asyncio.to_thread(self._server.query, "calls"))
        return (
            time.monotonic(),
            Counter[str](answer["get_records"]),
            Counter[str](answer["operations"]),
        )

    async def start(self) -> list[str]:
        """Start a window; the shard ids seen so far, in order."""
        self._last = await self._read()
        return sorted(self._last[1])

    async def since_start(self) -> _Calls:
        """The counts since ``start``; the next window starts here."""
        assert self._last is not None
        before, now = self._last, await self._read()
        self._last = now
        return _Calls(now[0] - before[0], now[1] - before[1], now[2] - before[2])


def _consumers(calls_per_shard_s: float) -> float:
    """How many consumers polling like this fit within the shard's 5 calls/s."""
    if calls_per_shard_s <= 0:
        return math.nan
    return float(math.floor(GET_RECORDS_LIMIT / calls_per_shard_s))


async def _calls(result: CaseResult, plan: KinesisPlan, store_url: str) -> None:
    busy = range(plan.busy_shards)
    args = ["--kinesis", "--shards", str(plan.idle_shards), "--payload-bytes", "100"]
    with streams_process(*args) as server:  # the service's rate limits on
        settings = pipeline_settings(
            endpoint_url=server.endpoint_url,
            streams={"kcalls": server.stream_arn},
            store_url=store_url,
            source="kinesis",
            batch_size=plan.batch_size,
        )
        counter = _Counter(server)
        async with run_raw_supervisor(settings) as supervisor:
            progress = supervisor.progress["kcalls"]
            started = time.monotonic()
            await wait_for(lambda: len(progress.shards) >= plan.idle_shards, timeout_s=60)
            polled_s = time.monotonic() - started
            await asyncio.sleep(plan.settle_seconds)

            # Idle: nothing written anywhere.
            shard_ids = await counter.start()
            idle = await _sleep_and_count(counter, plan.idle_window_seconds)
            idle_rate = idle.per_shard_s(shard_ids)
            list_shards_s = idle.operations["ListShards"] / idle.seconds
            result.add(
                Figure(
                    f"idle, {plan.idle_shards} shards: GetRecords",
                    idle_rate,
                    "calls/shard/s",
                    LAMBDA,
                    note=(
                        f"busiest shard {idle.busiest_s(shard_ids):.2f}/s; ListShards "
                        f"{list_shards_s:.2f}/s for the stream; window {idle.seconds:.0f} s "
                        f"from {plan.settle_seconds:g} s after every shard was polled "
                        f"({polled_s:.1f} s after start)"
                    ),
                )
            )
            result.add(
                Figure(
                    "idle: consumers within 5 calls/s per shard",
                    _consumers(idle_rate),
                    "consumers",
                    LAMBDA_CONSUMERS,
                    Target("value", ">=", 5),
                    note=f"floor(5 / {idle_rate:.2f})",
                )
            )

            # Busy: records flowing into some shards, the rest still idle.
            busy_ids = [shard_ids[i] for i in busy]
            for i in busy:
                server.command(f"hot {i} {plan.busy_rate:g}")
            await asyncio.sleep(plan.busy_warmup_seconds)
            throttled, handled = progress.api_errors[THROTTLED], progress.records_processed
            await counter.start()
            flowing = await _sleep_and_count(counter, plan.busy_window_seconds)
            throttled = progress.api_errors[THROTTLED] - throttled
            handled = progress.records_processed - handled
            for i in busy:
                server.command(f"hot {i} 0")
            busy_rate = flowing.per_shard_s(busy_ids)
            result.add(
                Figure(
                    f"busy, {plan.busy_rate:g} records/s per shard: GetRecords",
                    busy_rate,
                    "calls/shard/s",
                    LAMBDA,
                    note=(
                        f"{plan.busy_shards} shards; busiest {flowing.busiest_s(busy_ids):.2f}/s; "
                        f"{handled / flowing.seconds:,.0f} records/s handled; {throttled} "
                        f"throttled; window {flowing.seconds:.0f} s"
                    ),
                )
            )
            result.add(
                Figure(
                    "busy: consumers within 5 calls/s per shard",
                    _consumers(busy_rate),
                    "consumers",
                    LAMBDA_CONSUMERS,
                    Target("value", ">=", 5),
                    note=f"floor(5 / {busy_rate:.2f})",
                )
            )


@contextmanager
def _quiet(logger: str) -> Iterator[None]:
    """``logger``'s warnings off: under a backlog throttled calls are expected (and
    counted in the table), one warning each."""
    target = logging.getLogger(logger)
    level = target.level
    target.setLevel(logging.ERROR)
    try:
        yield
    finally:
        target.setLevel(level)


async def _backlog(result: CaseResult, plan: KinesisPlan, store_url: str) -> None:
    """A backlog read under the limits: shards written in full before shardwise starts;
    calls counted from the first batch handled to the last."""
    total = plan.backlog_shards * plan.backlog_records
    args = ["--kinesis", "--shards", str(plan.backlog_shards)]
    args += ["--records", str(plan.backlog_records), "--payload-bytes", "100"]
    with streams_process(*args) as server:  # the service's rate limits on
        settings = pipeline_settings(
            endpoint_url=server.endpoint_url,
            streams={"kbacklog": server.stream_arn},
            store_url=store_url,
            source="kinesis",
            batch_size=plan.batch_size,
        )
        counter = _Counter(server)
        handlers.CALLS.clear()
        started = time.perf_counter()
        async with run_raw_supervisor(settings) as supervisor:
            progress = supervisor.progress["kbacklog"]
            await wait_for(lambda: bool(handlers.CALLS), timeout_s=plan.timeout_s)
            await counter.start()  # the other shards may not have been polled yet
            throttled = progress.api_errors[THROTTLED]
            complete = await wait_for(
                lambda: progress.records_processed >= total,
                timeout_s=plan.timeout_s,
                interval_s=0.02,
            )
            counted = await counter.since_start()
            throttled = progress.api_errors[THROTTLED] - throttled
    calls = sorted(handlers.CALLS) or [(time.perf_counter(), 0)]  # none: timed out
    (first_at, first), last_at = calls[0], calls[-1][0]
    timed = Timed(
        sum(n for _, n in calls) - first, last_at - first_at, complete, first_at - started
    )
    shard_ids = sorted(counted.get_records)
    made = sum(counted.get_records.values())
    label = f"{plan.backlog_shards} shard{'s' if plan.backlog_shards > 1 else ''}"
    most = Baseline(
        f"5 calls/s x 10,000 records x {label}",
        GET_RECORDS_LIMIT * KINESIS.page_limit * plan.backlog_shards,
        measured=False,
    )
    result.add(
        rate_figure(
            f"backlog under the limits, {label}: shardwise",
            timed,
            most,
            note=f"; {plan.backlog_records:,} records per shard written before the start",
        )
    )
    result.add(
        Figure(
            f"backlog under the limits, {label}: GetRecords",
            counted.per_shard_s(shard_ids),
            "calls/shard/s",
            LIMIT,
            Target("value", "<=", GET_RECORDS_LIMIT),
            note=(
                f"{made} calls, {throttled} throttled ({throttled / max(made, 1):.0%}); "
                f"busiest shard {counted.busiest_s(shard_ids):.2f}/s; window "
                f"{counted.seconds:.1f} s, from the first batch handled to the last"
            ),
        )
    )


async def _sleep_and_count(counter: _Counter, seconds: float) -> _Calls:
    await asyncio.sleep(seconds)
    return await counter.since_start()


async def run(plan: KinesisPlan, workdir: Path) -> CaseResult:
    result = CaseResult(
        "kinesis",
        f"records/s (no-op handler, batch_size {plan.batch_size:,}) and GetRecords calls "
        "per shard, Kinesis",
    )
    with timer(result):
        store_url = await migrated(f"sqlite+aiosqlite:///{workdir / 'kinesis.db'}")
        for layout in plan.layouts:
            await _one_layout(result, layout, plan.batch_size, store_url)
        await _calls(result, plan, store_url)
        with _quiet("shardwise.dispatch"):
            await _backlog(result, plan, store_url)
    first = plan.layouts[0]
    result.notes.append(
        f"throughput: rate limits off; records: "
        f"{', '.join(f'{p.shards} x {p.records_per_shard:,}' for p in plan.layouts)} "
        f"({first.payload_bytes}-byte padding in a JSON data blob, base64 on the wire); "
        "GetRecords Limit 10,000 for every reader; ceilings read with the collector off; "
        "targets: >= 8x naive boto3, >= 0.6 of the stronger ceiling (as the DynamoDB case's, "
        "SQLite)"
    )
    result.notes.append(
        "calls: Kinesis' limits on (5 GetRecords/s per shard, shared by all consumers), "
        "counted by the server, throttled calls included; Lambda's model: a standard "
        "iterator polls each shard once a second"
    )
    return result
