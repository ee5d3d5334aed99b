"""``python -m bench`` (``make bench``): run every case, print the table, write the JSON.

Each case runs in a child process of its own (``python -m bench --run-case NAME``) so its
CPU time and RSS are its own and a crash costs one case, not the run. The cost case only
waits for a minute, so it runs beside the checkpoint and scale cases.

    python -m bench                  # the full run, ~5 minutes on 2 cores
    python -m bench --quick          # every case, tiny sizes, seconds (the smoke test's)
    python -m bench --only latency   # some cases
    python -m bench --only soak      # memory over 10 minutes (make bench-soak), not in the above
    python -m bench --profile        # one throughput run under pyinstrument
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from bench.plans import FULL, QUICK, Plan
from bench.report import CaseResult, render_table, to_json

CASES: Final = (
    "throughput",
    "pages",
    "latency",
    "checkpoints",
    "scale",
    "processes",
    "runtimes",
    "kinesis",
    "transactional",
    "cost",
)
BACKGROUND: Final = frozenset({"cost"})  # waits more than it works: runs beside the others
OPT_IN: Final = ("soak",)  # only with --only: the full soak runs for 10 minutes
RESULTS: Final = Path(__file__).parent / "results"
CASE_TIMEOUT_S: Final = 420.0
TIMEOUT_S: Final = {"soak": 900.0}  # cases that run longer than CASE_TIMEOUT_S


def _environment() -> None:
    """Every endpoint is on this machine: botocore gets dummy credentials, never real ones."""
    os.environ.update(
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_DEFAULT_REGION="us-east-1",
    )
    os.environ.pop("AWS_SESSION_TOKEN", None)
    os.environ.pop("AWS_PROFILE", None)


def _case(name: str, plan: Plan, workdir: Path) -> Coroutine[Any, Any, CaseResult]:
    from bench import (
        checkpoints,
        cost,
        kinesis,
        latency,
        pages,
        processes,
        profiling,
        runtimes,
        scale,
        soak,
        throughput,
        transactional,
    )

    runners: dict[str, Callable[[], Coroutine[Any, Any, CaseResult]]] = {
        "throughput": lambda: throughput.run(plan.throughput, workdir),
        "latency": lambda: latency.run(plan.latency, workdir),
        "pages": lambda: pages.run(plan.pages, workdir),
        "checkpoints": lambda: checkpoints.run(plan.checkpoints, workdir),
        "scale": lambda: scale.run(plan.scale, workdir),
        "cost": lambda: cost.run(plan.cost, workdir),
        "processes": lambda: processes.run(plan.processes, workdir),
        "runtimes": lambda: runtimes.run(plan.runtimes, workdir),
        "kinesis": lambda: kinesis.run(plan.kinesis, workdir),
        "transactional": lambda: transactional.run(plan.transactional, workdir),
        "profile": lambda: profiling.run(plan.throughput[0], workdir, RESULTS),
        "soak": lambda: soak.run(plan.soak, workdir),
    }
    return runners[name]()


def run_case_here(name: str, *, quick: bool, result_path: Path) -> int:
    """The child's side: run one case in this process and write its result as JSON."""
    from shardwise.observe.logging import configure_logging

    _environment()
    configure_logging("WARNING", "console")
    plan = QUICK if quick else FULL
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=f"bench-{name}-") as workdir:
        result = asyncio.run(_case(name, plan, Path(workdir)))
    result.seconds = time.monotonic() - started
    result_path.write_text(json.dumps(result.as_dict()))
    return 0


def _start(name: str, *, quick: bool, result_path: Path) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "bench", "--run-case", name, "--result", str(result_path)]
    return subprocess.Popen([*command, *(["--quick"] if quick else [])])


def _collect(
    name: str, child: subprocess.Popen[bytes], result_path: Path, started: float
) -> CaseResult:
    timeout_s = TIMEOUT_S.get(name, CASE_TIMEOUT_S)
    try:
        code = child.wait(timeout=max(1.0, started + timeout_s - time.monotonic()))
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()
        return CaseResult(name, "", error=f"did not finish within {timeout_s:g} s")
    if code != 0 or not result_path.exists():
        return CaseResult(name, "", error=f"exited with code {code}; see its output above")
    return CaseResult.from_dict(json.loads(result_path.read_text()))


def run_all(cases: Sequence[str], *, quick: bool, output: Path) -> int:
    _environment()
    started_at = datetime.now(UTC)
    started = time.monotonic()
    results: list[CaseResult] = []
    with tempfile.TemporaryDirectory(prefix="bench-results-") as scratch:
        background: list[tuple[str, subprocess.Popen[bytes], Path, float]] = []
        for name in cases:
            result_path = Path(scratch) / f"{name}.json"
            if name in BACKGROUND and len(cases) > 1:
                child = _start(name, quick=quick, result_path=result_path)
                background.append((name, child, result_path, time.monotonic()))
                continue
            case_started = time.monotonic()
            child = _start(name, quick=quick, result_path=result_path)
            result = _collect(name, child, result_path, case_started)
            print(render_table([result]), flush=True)
            results.append(result)
        for name, child, result_path, case_started in background:
            result = _collect(name, child, result_path, case_started)
            result.notes.append("ran beside the checkpoints and scale cases")
            print(render_table([result]), flush=True)
            results.append(result)
    duration = time.monotonic() - started
    report = to_json(
        results,
        started_at=started_at.isoformat(timespec="seconds"),
        duration_s=round(duration, 1),
        quick=quick,
        machine={
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        commit=_commit(),
    )
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"== {len(results)} cases in {duration:.0f} s; results in {output}")
    return 1 if any(r.error for r in results) else 0


def _commit() -> str | None:
    try:
        found = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).parent,
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return found.stdout.strip() or None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: seconds, not minutes")
    parser.add_argument("--only", nargs="+", choices=(*CASES, *OPT_IN), help="run these cases only")
    parser.add_argument("--output", type=Path, default=RESULTS / "latest.json")
    parser.add_argument("--profile", action="store_true", help="profile one throughput run")
    parser.add_argument("--run-case", help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.run_case:
        return run_case_here(args.run_case, quick=args.quick, result_path=args.result)
    if args.profile:
        output = args.output if args.output != RESULTS / "latest.json" else RESULTS / "profile.json"
        return run_all(["profile"], quick=args.quick, output=output)
    cases = [c for c in (*CASES, *OPT_IN) if c in (args.only or CASES)]
    return run_all(cases, quick=args.quick, output=args.output)


if __name__ == "__main__":
    raise SystemExit(main())
