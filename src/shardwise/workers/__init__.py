"""Several worker processes in one container: ``worker.processes``.

A Python worker runs its handlers on one core at a time (the GIL). With ``worker.processes:
N`` (or ``auto``: the CPUs this process may use) ``shardwise run`` becomes a parent that
starts N worker processes; each is a worker in the lease table of its own, so they share
the shards as separate replicas would, and the parent serves one endpoint for all of them.

* ``cpus.py``: what ``auto`` resolves to (affinity mask, cgroup CPU quota).
* ``pool.py``: the parent: starts, restarts with backoff, forwards signals, drains.
* ``link.py``: the channel between the parent and each child (port, "started", lifeline).

The parent's aggregated ``/metrics``, ``/healthz`` and ``/readyz`` are in
``observe/aggregate.py``.
"""

from shardwise.workers.cpus import available_cpus, resolve_processes
from shardwise.workers.link import WorkerProcess
from shardwise.workers.pool import WorkerPool

__all__ = ["WorkerPool", "WorkerProcess", "available_cpus", "resolve_processes"]
