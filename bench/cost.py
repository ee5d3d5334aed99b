"""Case 4, cost: GetRecords calls per idle shard per second, what each poll costs on AWS.

Lambda polls every shard 4 times a second whether it has records or not. The target is
a tenth of that once a shard has been idle for a minute. Shards of a streams server
(``bench.load_server``) that never receive a record are read by a real ``Supervisor``;
calls are counted from its progress over a window early on and over a window that starts
``idle_before_s`` after every shard was first polled.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import TYPE_CHECKING, Final

from bench.harness import migrated, pipeline_settings, run_supervisor, streams_process, wait_for
from bench.report import Baseline, CaseResult, Figure, Target

if TYPE_CHECKING:
    from bench.plans import CostPlan

__all__ = ["run"]

LAMBDA: Final = Baseline("Lambda: 4 polls/s per shard", 4.0, measured=False)


async def run(plan: CostPlan, workdir: Path) -> CaseResult:
    result = CaseResult("cost", "GetRecords calls per idle shard per second")
    started = time.monotonic()
    store_url = await migrated(f"sqlite+aiosqlite:///{workdir / 'cost.db'}")
    with streams_process("--shards", str(plan.shards)) as server:
        settings = pipeline_settings(
            endpoint_url=server.endpoint_url,
            streams={"cost": server.stream_arn},
            store_url=store_url,
        )
        async with run_supervisor(settings) as supervisor:
            progress = supervisor.progress["cost"]
            await wait_for(lambda: len(progress.shards) >= plan.shards, timeout_s=60)
            idle_since = time.monotonic()
            for label, starts_after in (("first", 0.0), ("after", plan.idle_before_s)):
                await asyncio.sleep(max(0.0, idle_since + starts_after - time.monotonic()))
                calls = progress.get_records_calls
                window_started = time.monotonic()
                await asyncio.sleep(plan.window_seconds)
                elapsed = time.monotonic() - window_started
                rate = (progress.get_records_calls - calls) / elapsed / plan.shards
                if label == "first":
                    name = f"first {plan.window_seconds:g} s idle"
                    result.add(Figure(name, rate, "calls/shard/s", LAMBDA))
                else:
                    name = f"after {plan.idle_before_s:g} s idle"
                    target = Target("value", "<=", 0.4)
                    result.add(Figure(name, rate, "calls/shard/s", LAMBDA, target))
    result.seconds = time.monotonic() - started
    result.notes.append(
        f"{plan.shards} shards that never receive a record; windows of "
        f"{plan.window_seconds:g} s; ratio < 1 is cheaper than Lambda"
    )
    return result
