"""Shard lineage: parents are read to their end before their children start.

Pure functions over a listing; no I/O. A parent that is no longer listed (it aged out of the
24-hour retention) counts as done.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from shardwise.records import Shard, ShardId

__all__ = ["parent_first", "ready_shards"]


def parent_first(shards: Sequence[Shard]) -> list[Shard]:
    """The shards ordered so every listed parent precedes its children (stable otherwise)."""
    by_id = {shard.shard_id: shard for shard in shards}
    ordered: list[Shard] = []
    placed: set[ShardId] = set()
    for shard in shards:
        chain: list[Shard] = []
        current: Shard | None = shard
        while current is not None and current.shard_id not in placed:
            chain.append(current)
            placed.add(current.shard_id)
            parent = current.parent_shard_id
            current = by_id.get(parent) if parent is not None else None
        ordered.extend(reversed(chain))
    return ordered


def ready_shards(shards: Sequence[Shard], finished: Collection[ShardId]) -> list[Shard]:
    """Unfinished shards whose parent is finished or absent, parents first."""
    listed = {shard.shard_id for shard in shards}
    return [
        shard
        for shard in parent_first(shards)
        if shard.shard_id not in finished
        and (
            shard.parent_shard_id is None
            or shard.parent_shard_id not in listed
            or shard.parent_shard_id in finished
        )
    ]
