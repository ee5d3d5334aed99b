"""``bench/`` cannot rot: its modules import, and ``python -m bench --quick`` runs every case
(the opt-in soak too, with ``--only soak``).

Nothing here looks at a timing: the run only has to produce the JSON ``make bench``
writes, every case with its figures, each figure with its baseline and ratio fields.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
MODULES = (
    "bench",
    "bench.__main__",
    "bench.checkpoints",
    "bench.cost",
    "bench.handlers",
    "bench.harness",
    "bench.kinesis",
    "bench.latency",
    "bench.load_server",
    "bench.pages",
    "bench.plans",
    "bench.processes",
    "bench.profiling",
    "bench.report",
    "bench.runtimes",
    "bench.scale",
    "bench.soak",
    "bench.throughput",
    "bench.transactional",
)
FIGURE_KEYS = {"name", "value", "unit", "baseline", "ratio", "target", "target_rule", "met", "note"}


class TestBenchSmoke:
    """The benchmark suite imports and runs end to end in its quick mode."""

    @pytest.mark.parametrize("module", MODULES)
    def test_imports(self, module: str) -> None:
        importlib.import_module(module)

    @pytest.mark.timeout(300)
    def test_quick_run_writes_the_report(self, tmp_path: Path) -> None:
        completed, cases = _quick_run(tmp_path)
        assert set(cases) == {
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
        }
        for case in cases.values():
            assert case["error"] is None
            assert case["figures"], case["case"]
            for figure in case["figures"]:
                assert set(figure) == FIGURE_KEYS
                if figure["baseline"] is not None:
                    assert {"name", "value", "measured"} <= figure["baseline"].keys()
        # The table is printed too, one block per case.
        for name in cases:
            assert f"== {name}:" in completed.stdout

    @pytest.mark.timeout(120)
    def test_quick_soak_runs_only_when_asked(self, tmp_path: Path) -> None:
        completed, cases = _quick_run(tmp_path, "--only", "soak")
        assert set(cases) == {"soak"}
        assert cases["soak"]["error"] is None
        names = [figure["name"] for figure in cases["soak"]["figures"]]
        assert "records handled" in names
        assert any(name.startswith("RSS, last") for name in names)
        assert "== soak:" in completed.stdout


def _quick_run(
    tmp_path: Path, *args: str
) -> tuple[subprocess.CompletedProcess[str], dict[str, dict[str, Any]]]:
    """``python -m bench --quick *args`` in a child; its output and its cases by name."""
    output = tmp_path / "quick.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    completed = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--output", str(output), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    report = json.loads(output.read_text())
    assert report["quick"] is True
    assert {"started_at", "duration_s", "machine", "cases"} <= report.keys()
    return completed, {case["case"]: case for case in report["cases"]}
