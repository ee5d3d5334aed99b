"""Case "processes": one container using all its cores (``worker.processes``).

A Python worker runs its handlers on one core at a time (the GIL). A CPU-bound stock
handler (``bench.handlers:spin``: ``spin_us`` of pure-Python work per record, the loop count
measured here first) reads a stream of ``shards`` shards, its records written beforehand,
through ``shardwise run`` as a subprocess: once with ``worker.processes: 1``, then with each
larger count. Every handler process notes the time of each batch it finished in a file of
its own, so nothing polls the workers while they run; the rate is taken between the
moments a quarter and nine tenths of the records were done. Start-up (interpreters,
imports, the first lease rounds, a hand-off while the workers balance) and the last shards
running out unevenly are reported beside it, not averaged in. The figure is the largest
count's rate over one process's; on this 2-core machine the target is 1.6x. Other load on
the machine (the streams server runs beside the workers) comes straight off the ratio.
"""

from __future__ import annotations

import asyncio
import os
import resource
import signal
import sys
import textwrap
import time
from dataclasses import dataclass
from itertools import accumulate
from pathlib import Path
from typing import Final

from bench.handlers import burn
from bench.harness import free_port, scratch_postgres, streams_process
from bench.report import Baseline, CaseResult, Figure, Target

__all__ = ["ProcessesPlan", "run"]

ROOT: Final = Path(__file__).resolve().parent.parent
POLL_S: Final = 0.25
WINDOW: Final = (0.25, 0.9)  # the rate is measured between these fractions of the records
TARGET_RATIO: Final = 1.6


@dataclass(frozen=True, slots=True)
class ProcessesPlan:
    shards: int
    records_per_shard: int
    spin_us: float = 200.0  # pure-Python work per record
    processes: tuple[int, ...] = (1, 2)
    batch_size: int = 100
    timeout_s: float = 180.0


@dataclass(frozen=True, slots=True)
class _Run:
    processes: int
    rate: float  # records/s inside the window
    startup_s: float  # from the start of `shardwise run` to the first batch done
    total_s: float  # from the start to the last batch done
    cores: float  # CPU time of `shardwise run` and its worker processes over wall time


def calibrate(spin_us: float) -> int:
    """Iterations of ``burn`` that take ``spin_us`` on this machine (the fastest of a few)."""
    sample = 200_000
    fastest = min(_timed(sample) for _ in range(5))
    return max(1, round(sample * spin_us / 1e6 / fastest))


def _timed(iterations: int) -> float:
    started = time.perf_counter()
    burn(iterations)
    return time.perf_counter() - started


def _config(
    plan: ProcessesPlan, workdir: Path, *, endpoint: str, arn: str, store: str, processes: int
) -> tuple[Path, int]:
    """The config of one run and the port of its endpoint."""
    port = free_port()
    path = workdir / f"processes-{processes}.yaml"
    path.write_text(
        textwrap.dedent(
            f"""
            aws: {{region: us-east-1, endpoint_url: "{endpoint}"}}
            store: {{url: "{store}"}}
            http: {{bind: "127.0.0.1:{port}"}}
            log: {{level: WARNING}}
            worker:
              id: bench
              processes: {processes}
              lease_duration_seconds: 3
              shutdown_timeout_seconds: 10
            processors:
              - name: cpu-p{processes}
                source: {{dynamodb: {{stream_arn: "{arn}"}}}}
                handler: bench.handlers:spin
                starting_position: TRIM_HORIZON
                batch_size: {plan.batch_size}
            """
        )
    )
    return path, port


def _progress(directory: Path) -> list[tuple[float, int]]:
    """(time.time(), records) for every batch the handlers finished, in time order."""
    batches = []
    for path in directory.glob("progress-*.log"):
        complete = path.read_text().rpartition("\n")[0]
        for line in complete.splitlines():
            when, records = line.split()
            batches.append((float(when), int(records)))
    return sorted(batches)


async def _measure(
    plan: ProcessesPlan, processes: int, config: tuple[Path, int], iterations: int
) -> _Run:
    total = plan.shards * plan.records_per_shard
    path, _ = config
    progress = path.parent / f"progress-{processes}"
    progress.mkdir()
    env = {
        **os.environ,
        "BENCH_SPIN_ITERATIONS": str(iterations),
        "BENCH_SPIN_PROGRESS_DIR": str(progress),
    }
    cpu_before = _children_cpu_s()
    started = time.time()
    daemon = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "shardwise", "run", "-c", str(path)),
        cwd=ROOT,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
    )
    try:
        while sum(records for _, records in _progress(progress)) < total:
            if daemon.returncode is not None:
                raise RuntimeError(f"shardwise run exited with {daemon.returncode}")
            if time.time() - started > plan.timeout_s:
                raise RuntimeError(f"not done within {plan.timeout_s:g} s")
            await asyncio.sleep(POLL_S)
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(daemon.wait(), 60)
        except TimeoutError:
            daemon.kill()
            await daemon.wait()
    cores = (_children_cpu_s() - cpu_before) / (time.time() - started)
    batches = _progress(progress)
    done = list(zip((t for t, _ in batches), accumulate(r for _, r in batches), strict=True))
    low_t, low = next((t, d) for t, d in done if d >= WINDOW[0] * total)
    high_t, high = next((t, d) for t, d in done if d >= WINDOW[1] * total)
    rate = (high - low) / (high_t - low_t) if high_t > low_t else float("nan")
    return _Run(processes, rate, done[0][0] - started, done[-1][0] - started, cores)


def _children_cpu_s() -> float:
    """CPU seconds of every descendant reaped so far: `shardwise run` once it has exited,
    with the worker processes it reaped itself."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


async def run(plan: ProcessesPlan, workdir: Path) -> CaseResult:
    result = CaseResult(
        "processes", f"CPU-bound handler ({plan.spin_us:g} us/record), worker.processes"
    )
    iterations = await asyncio.to_thread(calibrate, plan.spin_us)
    records = str(plan.records_per_shard)
    async with scratch_postgres() as pg_url:
        store = pg_url or f"sqlite+aiosqlite:///{workdir / 'processes.db'}"
        with streams_process("--shards", str(plan.shards), "--records", records) as server:
            runs = []
            for processes in plan.processes:
                config = _config(
                    plan,
                    workdir,
                    endpoint=server.endpoint_url,
                    arn=server.stream_arn,
                    store=store,
                    processes=processes,
                )
                runs.append(await _measure(plan, processes, config, iterations))
    one = runs[0]
    for measured in runs:
        name = f"{measured.processes} process{'es' if measured.processes > 1 else ''}"
        note = (
            f"start-up {measured.startup_s:.1f} s, all done at {measured.total_s:.1f} s, "
            f"{measured.cores:.2f} cores busy"
        )
        if measured is one:
            result.add(Figure(name, measured.rate, "records/s", note=note))
            continue
        baseline = Baseline(f"records/s with {one.processes} process", one.rate)
        target = Target("ratio", ">=", TARGET_RATIO) if measured is runs[-1] else None
        result.add(Figure(name, measured.rate, "records/s", baseline, target, note))
    result.notes.append(
        f"{plan.shards} shards x {plan.records_per_shard} records, batch {plan.batch_size}, "
        f"{iterations} loop iterations per record (~{plan.spin_us:g} us here); "
        f"`shardwise run` as a subprocess, lease_duration_seconds 3; "
        f"store {'PostgreSQL' if pg_url else 'SQLite'}; "
        f"rate between {WINDOW[0]:.0%} and {WINDOW[1]:.0%} of the records; "
        f"{os.cpu_count()} CPUs, the streams server in a process of its own beside them"
    )
    return result
