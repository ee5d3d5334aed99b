"""``python -m bench --profile``: one throughput run of each source under pyinstrument.

Profiles the 1-shard throughput layout read end to end by the ``Supervisor``
(aiobotocore source) and by the raw source, and writes each call tree as text to
``bench/results/profile-<reader>.txt`` (the call tree, then self time by function);
``bench/README.md`` sums up their top costs.
pyinstrument is a development dependency (``pip install pyinstrument``).
"""

from __future__ import annotations

from pathlib import Path

from bench.harness import migrated, streams_process
from bench.report import CaseResult, Figure
from bench.throughput import ThroughputPlan, shardwise

__all__ = ["run"]


async def run(plan: ThroughputPlan, workdir: Path, results: Path) -> CaseResult:
    from pyinstrument import Profiler

    result = CaseResult(
        "profile", f"pyinstrument, {plan.shards} shard x {plan.records_per_shard:,}"
    )
    store_url = await migrated(f"sqlite+aiosqlite:///{workdir / 'profile.db'}")
    args = ["--shards", str(plan.shards), "--records", str(plan.records_per_shard)]
    args += ["--payload-bytes", str(plan.payload_bytes)]
    with streams_process(*args) as server:
        for reader, raw in (("supervisor", False), ("raw", True)):
            profiler = Profiler(async_mode="enabled", interval=0.0005)
            with profiler:
                timed = await shardwise(
                    server,
                    store_url,
                    f"profile{reader}",
                    plan.total,
                    raw=raw,
                    timeout_s=plan.timeout_s,
                )
            path = results / f"profile-{reader}.txt"
            tree = profiler.output_text(unicode=False, color=False, show_all=False)
            flat = profiler.output_text(unicode=False, color=False, flat=True, show_all=True)
            top = "\n".join(flat.splitlines()[:40])
            path.write_text(f"{tree}\n\nSelf time by function (flat, top lines):\n{top}\n")
            result.add(Figure(f"{reader} under the profiler", timed.rate, "records/s"))
            result.notes.append(f"{reader}: call tree in {path}")
    return result
