"""Handlers the benchmarks run, imported by reference like any user's (``bench.handlers:noop``)."""

from __future__ import annotations

import time
from typing import Any

__all__ = ["CALLS", "LATENCIES_S", "noop", "record_latency"]

# (time.perf_counter(), records) per ``noop`` call: when a run's first and last batches
# reached the handler, without the bench polling the pipeline's progress. list.append is
# atomic, so the thread-pool invocations need no lock.
CALLS: list[tuple[float, int]] = []
# Seconds from write to handler, one per record seen by ``record_latency``.
LATENCIES_S: list[float] = []


def noop(event: dict[str, Any], context: Any) -> None:
    """A stock Lambda handler that does nothing but note when it ran."""
    CALLS.append((time.perf_counter(), len(event["Records"])))


def record_latency(event: dict[str, Any], context: Any) -> None:
    """Note ``now - t`` for every record whose new image carries its write time ``t``."""
    now = time.time()
    for record in event["Records"]:
        written = record["dynamodb"].get("NewImage", {}).get("t")
        if written is not None:
            LATENCIES_S.append(now - float(written["N"]))
