"""worker.processes: auto - the affinity mask and the cgroup CPU quota, on fake cgroup trees."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from shardwise.workers.cpus import available_cpus, cgroup_cpu_quota, resolve_processes


def cgroup_v2(root: Path, cpu_max: dict[str, str], path: str = "/") -> Path:
    """A cgroup v2 tree: ``cpu_max`` maps a directory under ``root`` ("" is root) to its
    cpu.max; returns the /proc/self/cgroup file naming ``path`` as this process's cgroup."""
    root.mkdir(parents=True, exist_ok=True)
    for directory, value in cpu_max.items():
        target = root / directory
        target.mkdir(parents=True, exist_ok=True)
        (target / "cpu.max").write_text(value + "\n")
    proc = root.parent / "proc-self-cgroup"
    proc.write_text(f"0::{path}\n")
    return proc


def cgroup_v1(root: Path, quota: int, period: int = 100_000) -> None:
    directory = root / "cpu"
    directory.mkdir(parents=True)
    (directory / "cpu.cfs_quota_us").write_text(f"{quota}\n")
    (directory / "cpu.cfs_period_us").write_text(f"{period}\n")


class TestCgroupQuota:
    """cpu.max and cfs quota/period as CPUs; no limit is None."""

    def test_no_cgroup_files(self, tmp_path: Path) -> None:
        assert cgroup_cpu_quota(tmp_path / "cg", tmp_path / "missing") is None

    @pytest.mark.parametrize(
        ("cpu_max", "cpus"),
        [("max 100000", None), ("150000 100000", 1.5), ("400000 100000", 4.0), ("junk", None)],
    )
    def test_v2_root(self, tmp_path: Path, cpu_max: str, cpus: float | None) -> None:
        root = tmp_path / "cg"
        proc = cgroup_v2(root, {"": cpu_max})
        assert cgroup_cpu_quota(root, proc) == cpus

    def test_v2_tightest_of_own_cgroup_and_ancestors(self, tmp_path: Path) -> None:
        root = tmp_path / "cg"
        limits = {
            "kubepods/pod1": "200000 100000",  # the pod's limit: 2 CPUs
            "kubepods/pod1/ctr": "max 100000",  # the container's: none
        }
        proc = cgroup_v2(root, limits, path="/kubepods/pod1/ctr")
        assert cgroup_cpu_quota(root, proc) == 2.0

    @pytest.mark.parametrize(("quota", "cpus"), [(-1, None), (250_000, 2.5)])
    def test_v1(self, tmp_path: Path, quota: int, cpus: float | None) -> None:
        root = tmp_path / "cg"
        cgroup_v1(root, quota)
        assert cgroup_cpu_quota(root, tmp_path / "missing") == cpus


class TestAvailableCpus:
    """The smaller of affinity and the quota rounded up, never below 1."""

    @pytest.mark.parametrize(
        ("affinity", "cpu_max", "expected"),
        [
            (4, None, 4),
            (4, "200000 100000", 2),
            (4, "150000 100000", 2),  # 1.5 CPUs: two processes share them
            (4, "50000 100000", 1),
            (1, "400000 100000", 1),
            (8, "max 100000", 8),
        ],
    )
    def test_combined(
        self, tmp_path: Path, affinity: int, cpu_max: str | None, expected: int
    ) -> None:
        root = tmp_path / "cg"
        proc = cgroup_v2(root, {"": cpu_max} if cpu_max else {})
        found = available_cpus(cgroup_root=root, proc_cgroup=proc, affinity=lambda: affinity)
        assert found == expected

    def test_this_machine(self) -> None:
        found = available_cpus()
        assert 1 <= found <= len(os.sched_getaffinity(0))


class TestResolveProcesses:
    """A number stays as it is; auto is what available_cpus() says."""

    def test_number(self) -> None:
        assert resolve_processes(3) == 3

    def test_auto(self) -> None:
        assert resolve_processes("auto") == available_cpus()
