"""How many CPUs this process may use: what ``worker.processes: auto`` resolves to.

The smaller of two limits, never less than 1:

* the CPUs in this process's affinity mask (``os.sched_getaffinity``): a cpuset, ``taskset``
  or Kubernetes' static CPU manager show there; ``os.cpu_count()`` where there is no mask;
* the cgroup CPU quota, rounded up: cgroup v2 ``cpu.max`` ("150000 100000" is 1.5 CPUs,
  "max 100000" no limit) of this process's cgroup and of every cgroup above it (a pod's
  limit may sit above its container's), or cgroup v1 ``cpu.cfs_quota_us`` over
  ``cpu.cfs_period_us`` (-1: no limit).

Rounded up because a 1.5-CPU quota is used best by two processes sharing it: one would
leave half a CPU idle, and the kernel throttles the two no harder than one busy process.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Final, Literal

__all__ = ["available_cpus", "cgroup_cpu_quota", "resolve_processes"]

CGROUP_ROOT: Final = Path("/sys/fs/cgroup")
PROC_SELF_CGROUP: Final = Path("/proc/self/cgroup")


def resolve_processes(value: int | Literal["auto"]) -> int:
    """``worker.processes`` as a number: ``auto`` is ``available_cpus()``."""
    return available_cpus() if value == "auto" else value


def available_cpus(
    *,
    cgroup_root: Path = CGROUP_ROOT,
    proc_cgroup: Path = PROC_SELF_CGROUP,
    affinity: Callable[[], int] | None = None,
) -> int:
    """The CPUs this process may use: affinity mask and cgroup quota, at least 1."""
    count = (affinity or _affinity)()
    quota = cgroup_cpu_quota(cgroup_root, proc_cgroup)
    if quota is not None:
        count = min(count, math.ceil(quota))
    return max(1, count)


def _affinity() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # no affinity masks on this platform
        return os.cpu_count() or 1


def cgroup_cpu_quota(
    cgroup_root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_SELF_CGROUP
) -> float | None:
    """The tightest CPU quota over this process's cgroups, in CPUs; None when unlimited."""
    limits = [*_v2_limits(cgroup_root, proc_cgroup), *_v1_limits(cgroup_root)]
    return min(limits, default=None)


def _v2_limits(root: Path, proc_cgroup: Path) -> Iterator[float]:
    """``cpu.max`` of this process's cgroup and its ancestors, up to the mount's root.

    With a cgroup namespace (the usual container) /proc/self/cgroup says ``0::/`` and the
    mount's root is the container's own cgroup; without one it names the path under root.
    """
    here = root
    try:
        for line in proc_cgroup.read_text().splitlines():
            if line.startswith("0::"):
                here = root / line[3:].strip().lstrip("/")
    except OSError:
        pass
    for directory in (here, *here.parents):
        limit = _read_cpu_max(directory / "cpu.max")
        if limit is not None:
            yield limit
        if directory == root:
            break


def _read_cpu_max(path: Path) -> float | None:
    try:
        quota, period = path.read_text().split()
        if quota == "max":
            return None
        return _quota(int(quota), int(period))
    except (OSError, ValueError):  # absent, or not "<quota> <period>"
        return None


def _v1_limits(root: Path) -> Iterator[float]:
    for controller in ("cpu", "cpu,cpuacct"):
        directory = root / controller
        try:
            quota = int((directory / "cpu.cfs_quota_us").read_text())
            period = int((directory / "cpu.cfs_period_us").read_text())
        except (OSError, ValueError):
            continue
        limit = _quota(quota, period)
        if limit is not None:
            yield limit
        return


def _quota(quota: int, period: int) -> float | None:
    """Quota over period in CPUs; None for "no limit" (v1: -1) or nonsense."""
    if quota <= 0 or period <= 0:
        return None
    return quota / period
