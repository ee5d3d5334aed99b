"""Case: what the Lambda Runtime API costs per invocation (``runtime:`` processors).

The same stock handler (``bench.handlers.discard``, which does nothing) is invoked
sequentially through two processors: in process (``processors.FunctionProcessor``, what a
``handler:`` processor runs) - the baseline - and through AWS's Python Runtime Interface
Client (``awslambdaric``) in a runtime process (``runtimes.RuntimeProcessor``). The
difference is the round trip: encoding the event, the RIC's ``GET /next`` and
``POST /response`` over loopback HTTP, its JSON decoding and the response's. Node.js'
``aws-lambda-ric`` (``bench/functions/noop.js``) is measured too when ``make
node-functions`` has installed it. Events are DynamoDB stream records of ~300 bytes as
Lambda delivers them, one per event and ``batch_size`` per event. Each side runs
``rounds`` times and its fastest round counts, so one stall elsewhere does not decide.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.handlers import discard
from bench.report import Baseline, CaseResult, Figure, Target
from shardwise.processors import Processor, build_processor
from shardwise.runtimes import RuntimeProcessor, RuntimeSpec

__all__ = ["RuntimesPlan", "run"]

ROOT = Path(__file__).resolve().parent.parent
NODE_RIC = ROOT / "examples" / "node" / "node_modules" / "aws-lambda-ric" / "index.mjs"
STREAM_ARN = "arn:aws:dynamodb:us-east-1:123456789012:table/Bench/stream/2026-01-01T00:00:00.000"
FUNCTION_ARN = "arn:aws:lambda:us-east-1:123456789012:function:bench"
OVERHEAD_TARGET_MS = 1.0


@dataclass(frozen=True, slots=True)
class RuntimesPlan:
    invocations: int  # per round and side
    batch_sizes: tuple[int, ...]
    rounds: int = 3


def stream_record(n: int) -> dict[str, Any]:
    sequence = f"{n:021d}"
    return {
        "eventID": f"{n:032x}",
        "eventName": "INSERT",
        "eventVersion": "1.1",
        "eventSource": "aws:dynamodb",
        "awsRegion": "us-east-1",
        "eventSourceARN": STREAM_ARN,
        "dynamodb": {
            "ApproximateCreationDateTime": 1_780_000_000 + n,
            "Keys": {"pk": {"S": f"order-{n}"}},
            "NewImage": {
                "pk": {"S": f"order-{n}"},
                "customer": {"S": f"customer-{n % 97}"},
                "status": {"S": "PLACED"},
                "amount": {"N": "42.50"},
            },
            "SequenceNumber": sequence,
            "SizeBytes": 120,
            "StreamViewType": "NEW_IMAGE",
        },
    }


async def per_invocation_ms(
    processor: Processor, event: dict[str, Any], invocations: int, rounds: int
) -> float:
    """Milliseconds per sequential invocation: the fastest round's mean."""
    for _ in range(min(50, invocations)):  # warm up: imports, connections, JIT
        await processor.invoke_event(event, "shardId-bench")
    means = []
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(invocations):
            await processor.invoke_event(event, "shardId-bench")
        means.append((time.perf_counter() - started) / invocations * 1000)
    return min(means)


def _runtime(
    name: str, command: tuple[str, ...], directory: Path, handler: str
) -> RuntimeProcessor:
    spec = RuntimeSpec(name, command, directory, handler, region="us-east-1")
    return RuntimeProcessor(spec, function_arn=FUNCTION_ARN, timeout_s=60)


async def run(plan: RuntimesPlan, workdir: Path) -> CaseResult:
    result = CaseResult("runtimes", "per-invocation cost of the Lambda Runtime API round trip")
    started = time.monotonic()
    in_process = build_processor("bench-inproc", discard, stream_arn=STREAM_ARN, timeout_s=60)
    python_ric = _runtime(
        "bench-python-ric",
        (sys.executable, "-m", "awslambdaric", "bench.handlers.discard"),
        ROOT,
        "bench.handlers.discard",
    )
    runtimes: list[tuple[str, RuntimeProcessor]] = [("Python awslambdaric", python_ric)]
    if NODE_RIC.is_file():
        node = _runtime(
            "bench-node-ric", ("node", str(NODE_RIC)), ROOT / "bench" / "functions", "noop.handler"
        )
        runtimes.append(("Node.js aws-lambda-ric", node))
    else:
        result.notes.append(
            f"{NODE_RIC} is not installed (make node-functions): Node.js not measured"
        )
    processors: list[Processor] = [in_process, *(p for _, p in runtimes)]
    for processor in processors:
        await processor.start()
    try:
        for batch_size in plan.batch_sizes:
            event = {"Records": [stream_record(n) for n in range(batch_size)]}
            baseline_ms = await per_invocation_ms(in_process, event, plan.invocations, plan.rounds)
            baseline = Baseline("in-process handler", baseline_ms)
            for label, processor in runtimes:
                ms = await per_invocation_ms(processor, event, plan.invocations, plan.rounds)
                is_python = processor is python_ric
                result.add(
                    Figure(
                        f"{label}, batch_size {batch_size}",
                        ms,
                        "ms/invocation",
                        baseline,
                        None,
                        f"{plan.invocations} sequential invocations x {plan.rounds} rounds",
                    )
                )
                result.add(
                    Figure(
                        f"{label} overhead, batch_size {batch_size}",
                        ms - baseline_ms,
                        "ms/invocation",
                        None,
                        Target("value", "<", OVERHEAD_TARGET_MS) if is_python else None,
                        "the runtime's ms/invocation minus the in-process handler's",
                    )
                )
    finally:
        for processor in processors:
            await processor.stop()
    result.seconds = time.monotonic() - started
    size = len(json.dumps(stream_record(0)))
    result.notes.append(
        f"stream records of ~{size} bytes of JSON; the handler does nothing on both sides; "
        "one runtime process, invoked sequentially (one invocation at a time, as Lambda)"
    )
    return result
