"""Handlers the benchmarks run, imported by reference like any user's (``bench.handlers:noop``)."""

from __future__ import annotations

import os
import time
from typing import Any

__all__ = [
    "CALLS",
    "LATENCIES_S",
    "SPIN_ITERATIONS",
    "SPIN_PROGRESS_DIR",
    "burn",
    "discard",
    "noop",
    "record_latency",
    "spin",
]

# (time.perf_counter(), records) per ``noop`` call: when a run's first and last batches
# reached the handler, without the bench polling the pipeline's progress. list.append is
# atomic, so the thread-pool invocations need no lock.
CALLS: list[tuple[float, int]] = []
# Seconds from write to handler, one per record seen by ``record_latency``.
LATENCIES_S: list[float] = []


def noop(event: dict[str, Any], context: Any) -> None:
    """A stock Lambda handler that does nothing but note when it ran."""
    CALLS.append((time.perf_counter(), len(event["Records"])))


def discard(event: dict[str, Any], context: Any) -> None:
    """A stock Lambda handler that does nothing and keeps nothing (the soak: no list grows)."""


def record_latency(event: dict[str, Any], context: Any) -> None:
    """Note ``now - t`` for every record whose new image carries its write time ``t``."""
    now = time.time()
    for record in event["Records"]:
        written = record["dynamodb"].get("NewImage", {}).get("t")
        if written is not None:
            LATENCIES_S.append(now - float(written["N"]))


# Loop iterations of ``burn`` per record in ``spin``: the processes case measures how many
# take its per-record cost on this machine and passes the number to the worker processes,
# and the directory where each process notes "<time.time()> <records>" per batch.
SPIN_ITERATIONS = int(os.environ.get("BENCH_SPIN_ITERATIONS", "5000"))
SPIN_PROGRESS_DIR = os.environ.get("BENCH_SPIN_PROGRESS_DIR")


def burn(iterations: int) -> int:
    """Pure-Python work holding the GIL throughout, as a CPU-heavy handler does."""
    total = 0
    for i in range(iterations):
        total += i * i
    return total


def spin(event: dict[str, Any], context: Any) -> None:
    """A CPU-bound stock Lambda handler: ``burn(SPIN_ITERATIONS)`` for every record."""
    for _ in event["Records"]:
        burn(SPIN_ITERATIONS)
    if SPIN_PROGRESS_DIR is not None:
        path = os.path.join(SPIN_PROGRESS_DIR, f"progress-{os.getpid()}.log")
        with open(path, "a") as progress:  # one short line per batch; the case reads them
            progress.write(f"{time.time()!r} {len(event['Records'])}\n")
