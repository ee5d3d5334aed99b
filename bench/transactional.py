"""Case: a transactional processor against a plain one writing the same rows.

Both read one closed shard of the in-process streams server to its end through the fenced
checkpointer of a lease, as the daemon does, and insert one row per record into a table
of the store's database. The plain processor (the baseline) writes through a connection
of its own and commits, then shardwise commits the batch's checkpoint: two commits per
batch. The transactional processor writes through ``context.transaction``: its rows and
the checkpoint commit together, one commit per batch. The rows, the batches and the
records are the same; the figure is the transactional processor's records/s against the
plain one's, run alternately and the best of the rounds kept for each. Target: the
transaction costs nothing (>= 0.95x).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Column, Integer, MetaData, String, Table, insert
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from bench.harness import leased_shard, migrated, scratch_postgres
from bench.report import Baseline, CaseResult, Figure, Target
from shardwise.dispatch.consumer import ConsumerSettings, ShardConsumer
from shardwise.observe.progress import ProcessorProgress
from shardwise.processors import build_processor
from shardwise.store import CheckpointStore
from shardwise.testing import StreamsServer

__all__ = ["TransactionalPlan", "run"]


@dataclass(frozen=True, slots=True)
class TransactionalPlan:
    records: int  # per run, on one shard
    batch_sizes: tuple[int, ...]
    rounds: int  # each processor runs this often per batch size, alternately


SINK = MetaData()
rows = Table(
    "bench_sink",
    SINK,
    Column("run", String(40), nullable=False),
    Column("seq", String(40), nullable=False),
    Column("item", String(40), nullable=False),
    Column("n", Integer(), nullable=False),
)

Handler = Callable[[dict[str, Any], Any], Awaitable[None]]


def _rows(run: str, event: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per record: its sequence number and its item's key (the generated records'
    partition key is a number)."""
    found = []
    for record in event["Records"]:
        stream = record["dynamodb"]
        [key] = stream["Keys"].values()
        item = next(iter(key.values()))
        found.append({"run": run, "seq": stream["SequenceNumber"], "item": item, "n": len(item)})
    return found


def plain_handler(engine: AsyncEngine, run: str) -> Handler:
    """Writes and commits through a connection of its own (checkpointed afterwards)."""

    async def handler(event: dict[str, Any], context: Any) -> None:
        async with engine.begin() as connection:
            await connection.execute(insert(rows), _rows(run, event))

    return handler


def transactional_handler(run: str) -> Handler:
    """Writes through ``context.transaction`` (committed with the checkpoint)."""

    async def handler(event: dict[str, Any], context: Any) -> None:
        await context.transaction.execute(insert(rows), _rows(run, event))

    return handler


async def records_per_second(
    server: StreamsServer,
    store: CheckpointStore,
    sink: AsyncEngine,
    *,
    records: int,
    batch_size: int,
    transactional: bool,
    run: str,
    timeout_s: float = 120.0,
) -> float:
    """Records/s reading one closed shard of ``records`` to its end."""
    async with leased_shard(server, store, run, records) as (source, leases, lease):
        checkpointer = leases.checkpointer(lease)
        handler = transactional_handler(run) if transactional else plain_handler(sink, run)
        consumer = ShardConsumer(
            source=source,
            shard_id=lease.shard_id,
            start=lease.position,
            processor=build_processor(run, handler, stream_arn=source.stream_arn, timeout_s=60),
            checkpointer=checkpointer,
            settings=ConsumerSettings(batch_size=batch_size, window_s=0.0),
            stop=asyncio.Event(),
            progress=ProcessorProgress(run),
            transactions=checkpointer if transactional else None,
        )
        started = time.perf_counter()
        async with asyncio.timeout(timeout_s):  # a failing handler would retry forever
            await consumer.run()
        elapsed = time.perf_counter() - started
        if not lease.finished:
            raise RuntimeError(f"shard {lease.shard_id} of {run} was not read to its end")
        return records / elapsed


async def _measure(
    result: CaseResult, label: str, url: str, plan: TransactionalPlan, server: StreamsServer
) -> None:
    store = await CheckpointStore.connect(url)
    sink = create_async_engine(url)
    try:
        async with sink.begin() as connection:
            await connection.run_sync(SINK.create_all)
        for batch_size in plan.batch_sizes:
            best = {False: 0.0, True: 0.0}
            for round_ in range(plan.rounds):
                for transactional in (False, True):
                    run = f"{'tx' if transactional else 'plain'}-{batch_size}-{round_}"
                    rate = await records_per_second(
                        server,
                        store,
                        sink,
                        records=plan.records,
                        batch_size=batch_size,
                        transactional=transactional,
                        run=run,
                    )
                    best[transactional] = max(best[transactional], rate)
            result.add(
                Figure(
                    f"{label}, batch_size {batch_size}: transactional",
                    best[True],
                    "records/s",
                    Baseline("plain processor, own commit", best[False]),
                    Target("ratio", ">=", 0.95),
                    f"plain {best[False]:,.0f} records/s",
                )
            )
    finally:
        await sink.dispose()
        await store.close()


async def run(plan: TransactionalPlan, workdir: Path) -> CaseResult:
    result = CaseResult(
        "transactional", "transactional processor vs a plain one writing the same rows"
    )
    started = time.monotonic()
    sqlite_url = await migrated(f"sqlite+aiosqlite:///{workdir / 'transactional.db'}")
    with StreamsServer() as server:
        async with scratch_postgres() as pg_url:
            if pg_url is None:
                result.notes.append("PostgreSQL not reachable at 127.0.0.1:5432: SQLite only")
            else:
                await _measure(result, "PostgreSQL", await migrated(pg_url), plan, server)
        await _measure(result, "SQLite", sqlite_url, plan, server)
    result.seconds = time.monotonic() - started
    result.notes.append(
        f"{plan.records} records per run, one row inserted per record; best of "
        f"{plan.rounds} alternating rounds; checkpoints fenced through a lease"
    )
    return result
