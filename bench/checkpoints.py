"""Case 5, checkpoint cost: SQL statements per batch, for batch sizes 10, 100 and 1000.

One closed shard of the in-process streams server is read to its end by a ``ShardConsumer``
checkpointing as the daemon does: through the fenced checkpointer of a lease its
``LeaseCoordinator`` took (a batch's checkpoint joins ``CheckpointWriter``'s coalesced
statements; the shard's closing "finish" is one fenced UPDATE). ``CheckpointStore.statements``
counts everything the store sends meanwhile - coalesced checkpoints, lease statements and
its own. A checkpoint must cost the same whatever the batch size and at most one statement
(O(1) per batch, so O(1/batch_size) per record); each figure is also compared with the
smallest batch size. Counts, not timings, so the case runs quickly. The coordinator's clock
stands still and it is never run: renewals (one transaction per lease duration / 3, however
many batches) are not part of a batch's cost.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import TYPE_CHECKING

from bench.handlers import noop
from bench.harness import leased_shard, migrated, scratch_postgres
from bench.report import Baseline, CaseResult, Figure, Target
from shardwise.dispatch.consumer import ConsumerSettings, ShardConsumer
from shardwise.observe.progress import ProcessorProgress
from shardwise.processors import build_processor
from shardwise.store import CheckpointStore
from shardwise.testing import StreamsServer

if TYPE_CHECKING:
    from bench.plans import CheckpointPlan

__all__ = ["run"]


async def statements_per_batch(
    server: StreamsServer, store_url: str, records: int, batch_size: int
) -> tuple[float, int]:
    """(statements per batch, batches) for one shard of ``records`` read to its end."""
    name = f"cp{batch_size}"
    store = await CheckpointStore.connect(store_url)
    try:
        async with leased_shard(server, store, name, records) as (source, leases, lease):
            progress = ProcessorProgress(name)
            before = store.statements
            consumer = ShardConsumer(
                source=source,
                shard_id=lease.shard_id,
                start=lease.position,
                processor=build_processor(name, noop, stream_arn=source.stream_arn, timeout_s=60),
                checkpointer=leases.checkpointer(lease),
                settings=ConsumerSettings(batch_size=batch_size, window_s=0.0),
                stop=asyncio.Event(),
                progress=progress,
            )
            await consumer.run()
            if not lease.finished:
                raise RuntimeError(f"shard {lease.shard_id} was not read to its end")
            statements = store.statements - before - 1  # the shard's closing "finish"
            return statements / progress.batches_processed, progress.batches_processed
    finally:
        await store.close()


async def run(plan: CheckpointPlan, workdir: Path) -> CaseResult:
    result = CaseResult("checkpoints", "SQL statements per batch (CheckpointStore.statements)")
    started = time.monotonic()
    sqlite_url = await migrated(f"sqlite+aiosqlite:///{workdir / 'checkpoints.db'}")
    async with scratch_postgres() as pg_url:
        stores = [("SQLite", sqlite_url)]
        if pg_url is None:
            result.notes.append("PostgreSQL not reachable at 127.0.0.1:5432: SQLite only")
        else:
            stores.append(("PostgreSQL", await migrated(pg_url)))
        with StreamsServer() as server:
            for store, url in stores:
                baseline: Baseline | None = None
                for batch_size in plan.batch_sizes:
                    per_batch, batches = await statements_per_batch(
                        server, url, plan.records, batch_size
                    )
                    if baseline is None:
                        baseline = Baseline(f"batch_size {batch_size}", per_batch)
                    result.add(
                        Figure(
                            f"{store}, batch_size {batch_size}",
                            per_batch,
                            "statements/batch",
                            baseline,
                            Target("value", "<=", 1.0),
                            f"{batches} batches, {per_batch / batch_size:.4f} per record",
                        )
                    )
    result.seconds = time.monotonic() - started
    result.notes.append(
        f"{plan.records} records per shard, checkpointed through a lease (fenced), as the "
        "daemon does; the one 'finish' statement per shard is not counted"
    )
    return result
