"""Case 6, soak (``python -m bench --only soak``, ``make bench-soak``): memory over time.

Not part of ``make bench``: the full plan runs for 10 minutes. A ``Supervisor`` reading
through the raw default transport, with the default ``worker.gc`` (checkpoints in
PostgreSQL when reachable, else SQLite), consumes a streams server (``bench.load_server``)
whose writer puts ``rate`` records/s round-robin over the shards for the whole run. The
handler keeps nothing (``handlers.discard``) and the server holds the last minute of
records per shard (``keep``), so neither grows with the run. RSS (``harness.rss_mb``) is
sampled every ``sample_seconds``; the first and the last ``window_seconds`` are each
summed up by the median of their samples, so memory that grows with time shows as a ratio
above 1. Collector pauses come from ``shardwise.gc_policy.pause_clock()``, counted from
the supervisor's start; a full collection at the end says how much of the growth was
cyclic garbage waiting for the collector rather than memory held.
"""

from __future__ import annotations

import asyncio
import gc
import statistics
import time
from pathlib import Path
from typing import TYPE_CHECKING, Final

from bench.harness import (
    migrated,
    pipeline_settings,
    processed,
    rss_mb,
    run_raw_supervisor,
    scratch_postgres,
    streams_process,
)
from bench.report import Baseline, CaseResult, Figure, Target
from shardwise.gc_policy import GC_PAUSE_BOUNDS_S, pause_clock

if TYPE_CHECKING:
    from bench.plans import SoakPlan

__all__ = ["run"]

HELD_S: Final = 60.0  # records the server holds per shard, in seconds of writing


def _pauses() -> dict[int, tuple[list[int], float]]:
    """Collections so far per generation: counts per pause bucket, and seconds in all."""
    return {g: (list(h.counts), h.sum) for g, h in pause_clock().pauses.items()}


def _longest(counts: list[int]) -> str:
    """The bound of the highest bucket any pause fell in."""
    top = max((i for i, n in enumerate(counts) if n), default=None)
    if top is None:
        return "-"
    if top == len(GC_PAUSE_BOUNDS_S):
        return f"> {GC_PAUSE_BOUNDS_S[-1] * 1000:g} ms"
    return f"<= {GC_PAUSE_BOUNDS_S[top] * 1000:g} ms"


def _median_mb(samples: list[tuple[float, float]], start: float, stop: float) -> tuple[float, int]:
    """The median RSS of the samples taken from ``start`` to ``stop`` s, and how many."""
    window = [mb for at, mb in samples if start <= at <= stop]
    return statistics.median(window), len(window)


def _marks(seconds: float, every: float) -> list[float]:
    """0, every, 2 * every, ... up to ``seconds``."""
    return [n * every for n in range(int(seconds / every + 1e-9) + 1)]


async def run(plan: SoakPlan, workdir: Path) -> CaseResult:
    result = CaseResult("soak", f"RSS under sustained load for {plan.seconds:g} s, raw default")
    async with scratch_postgres() as pg_url:
        store = "SQLite" if pg_url is None else "PostgreSQL"
        url = await migrated(pg_url or f"sqlite+aiosqlite:///{workdir / 'soak.db'}")
        with streams_process("--shards", str(plan.shards)) as server:
            settings = pipeline_settings(
                endpoint_url=server.endpoint_url,
                streams={"soak": server.stream_arn},
                store_url=url,
                handler="bench.handlers:discard",
            )
            before_mb = rss_mb()[0]
            server.command(f"keep {max(1000, round(plan.rate / plan.shards * HELD_S))}")
            server.command(f"rate {plan.rate:g}")
            writing = time.monotonic()
            async with run_raw_supervisor(settings) as supervisor:
                pauses = _pauses()
                started = time.monotonic()
                samples: list[tuple[float, float]] = []  # (seconds since start, RSS in MB)
                while (elapsed := time.monotonic() - started) < plan.seconds:
                    samples.append((elapsed, rss_mb()[0]))
                    await asyncio.sleep(min(plan.sample_seconds, plan.seconds - elapsed))
                samples.append((time.monotonic() - started, rss_mb()[0]))
                seconds = samples[-1][0]
                handled = processed(supervisor.progress)
                written = plan.rate * (time.monotonic() - writing)
                after = _pauses()
                pending = gc.get_count()[0]  # container allocations since the last collection
                unreachable = gc.collect()
                collected_mb = rss_mb()[0]
            server.command("rate 0")

    window = plan.window_seconds
    first_mb, first_n = _median_mb(samples, 0.0, window)
    last_mb, last_n = _median_mb(samples, seconds - window, seconds)
    peak_at, peak_mb = max(samples, key=lambda s: s[1])
    first = f"RSS, first {window:g} s"
    result.add(
        Figure(
            first,
            first_mb,
            "MB",
            Baseline("this process before the supervisor", before_mb),
            note=f"median of {first_n} samples",
        )
    )
    result.add(
        Figure(
            f"RSS, last {window:g} s",
            last_mb,
            "MB",
            Baseline(first, first_mb),
            Target("ratio", "<=", 1.1),
            note=f"median of {last_n} samples",
        )
    )
    result.add(
        Figure("RSS, max", peak_mb, "MB", Baseline(first, first_mb), note=f"at {peak_at:.0f} s")
    )
    result.add(
        Figure(
            "records handled",
            handled,
            "records",
            Baseline("written (rate x time)", written),
            note=f"{handled / seconds:,.0f} records/s",
        )
    )
    result.add(
        Figure(
            "cyclic garbage at the end",
            unreachable,
            "objects",
            note=f"found by a full collection after the run ({pending:,} allocations since the "
            f"last one; RSS {samples[-1][1]:.1f} -> {collected_mb:.1f} MB)",
        )
    )
    for generation, (counts, total_s) in after.items():
        counts_before, total_before_s = pauses[generation]
        new = [n - m for n, m in zip(counts, counts_before, strict=True)]
        paused_s = total_s - total_before_s
        result.add(
            Figure(
                f"GC pauses, generation {generation}",
                sum(new),
                "pauses",
                note=f"{paused_s * 1000:.1f} ms in all ({paused_s / seconds:.3%} of the run), "
                f"longest {_longest(new)}",
            )
        )
    fallback = " (PostgreSQL not reachable at 127.0.0.1:5432)" if store == "SQLite" else ""
    result.notes.append(
        f"{plan.rate:,.0f} records/s written round-robin over {plan.shards} shards (items of a "
        f"key and a write time), read from TRIM_HORIZON, the last {HELD_S:g} s of them held; "
        f"checkpoints in {store}{fallback}"
    )
    marks = [min(samples, key=lambda s: abs(s[0] - at))[1] for at in _marks(seconds, window)]
    result.notes.append(f"RSS every {window:g} s: {', '.join(f'{mb:.1f}' for mb in marks)} MB")
    gc_config = settings.worker.gc
    result.notes.append(
        f"RSS of this process every {plan.sample_seconds:g} s; worker.gc at its defaults "
        f"(freeze_after_start {gc_config.freeze_after_start}, thresholds "
        f"{gc_config.thresholds}); handler bench.handlers:discard"
    )
    return result
