"""Leases: which worker processes which shard, kept in the checkpoint store.

Every shard of every stream is read by exactly one worker at a time. A worker holds a
shard's lease by renewing it (incrementing its counter) well inside the lease duration;
the others call a lease expired only when its counter has stood still for the full
duration on their own clocks, and the owner stops processing before that can happen.
Checkpoints are written only while the lease is held (``LeaseLostError`` otherwise).

``LeaseCoordinator`` (``coordinator``) runs one worker's leases on one processor's stream;
``Lease`` and ``FencedCheckpointer`` (``lease``) are what a shard's consumer holds and writes
through; ``balance`` holds the pure rules (what to take, what to ask for, lineage, expiry);
``table`` the lease table as the coordinator reads and writes it, and ``admin`` as an
operator does; their SQL is in ``store.leases``, ``store.fenced_writes`` (checkpoints) and
``store.lease_admin``.
"""

from __future__ import annotations

from shardwise.leases.balance import collected_ancestors
from shardwise.leases.coordinator import LeaseCoordinator
from shardwise.leases.lease import FencedCheckpointer, Lease, LossReason

__all__ = [
    "FencedCheckpointer",
    "Lease",
    "LeaseCoordinator",
    "LossReason",
    "collected_ancestors",
]
