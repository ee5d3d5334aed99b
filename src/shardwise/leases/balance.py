"""What to take and what to ask for: lease balancing and lineage rules, as pure functions.

Each taker round reads the lease table and asks ``plan`` what to do. The rules:

* target = ceil(active shards / live workers), capped by ``max_leases``; a worker below
  its target takes free leases first (unowned, expired, or its own from an earlier life);
* then, while the most loaded other worker holds at least two more leases than this one,
  it asks that worker to hand one over - as many per round as it takes to reach the target
  or balance within one, so a new worker converges in one round instead of one lease per
  round. A lease being handed over counts for the worker that asked for it, so no worker
  asks twice and nobody asks for a lease that is already moving;
* a shard is takeable only once every parent is finished or gone (``eligible``), and a
  finished shard's row is collected once all its children have started (``collectable``).

Expiry is judged on this worker's own clock (``CounterWatch``): a lease, or a worker's
heartbeat, is expired when its counter has not changed for the lease duration since this
worker first saw that value. Workers never compare clocks with each other.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Collection, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from shardwise.records import Shard, ShardId

__all__ = [
    "Claim",
    "CounterWatch",
    "LeaseRow",
    "Plan",
    "claims",
    "collectable",
    "collected_ancestors",
    "eligible",
    "plan",
    "target",
]

K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True, slots=True)
class LeaseRow:
    """One shard's lease as read from the table."""

    shard_id: ShardId
    parent_shard_id: ShardId | None = None
    owner: str | None = None
    counter: int = 0
    handoff_to: str | None = None
    finished: bool = False
    # A checkpoint was written, or someone holds the lease: the shard has started.
    started: bool = False
    # A merge's second parent (Kinesis): the shard waits for both.
    adjacent_parent_shard_id: ShardId | None = None

    @property
    def parents(self) -> tuple[ShardId, ...]:
        return tuple(p for p in (self.parent_shard_id, self.adjacent_parent_shard_id) if p)


@dataclass(frozen=True, slots=True)
class Claim:
    """One active shard as the planner sees it.

    ``owner`` is the worker that holds the lease, or the one it is being handed to; None
    when the lease is free to take. ``moving`` marks a hand-off in progress.
    """

    shard_id: ShardId
    owner: str | None = None
    moving: bool = False


@dataclass(frozen=True, slots=True)
class Plan:
    """Leases to take now, and (shard, owner) pairs to ask to hand a lease over."""

    take: tuple[ShardId, ...] = ()
    steal: tuple[tuple[ShardId, str], ...] = ()


def target(active: int, workers: int) -> int:
    """How many leases each worker should hold: ceil(active / workers)."""
    return -(-active // max(1, workers))


def plan(
    me: str,
    claims: Sequence[Claim],
    workers: Collection[str],
    *,
    max_leases: int | None = None,
    rng: random.Random | None = None,
) -> Plan:
    """What worker ``me`` should take and ask for this round.

    ``workers`` are the live workers as ``me`` sees them; ``me`` and every owner in
    ``claims`` count as live too. ``rng`` spreads workers that plan at once over different
    leases (without it the choice is deterministic: lowest shard ids first).
    """
    live = {me, *workers, *(claim.owner for claim in claims if claim.owner is not None)}
    cap = target(len(claims), len(live))
    if max_leases is not None:
        cap = min(cap, max_leases)
    loads = Counter(claim.owner for claim in claims if claim.owner is not None)
    mine = loads[me]
    if mine >= cap:
        return Plan()
    free = sorted(claim.shard_id for claim in claims if claim.owner is None)
    if rng is not None:
        rng.shuffle(free)
    take = tuple(free[: cap - mine])
    mine += len(take)
    stealable: defaultdict[str, list[ShardId]] = defaultdict(list)
    for claim in sorted(claims, key=lambda c: c.shard_id, reverse=True):
        if claim.owner is not None and claim.owner != me and not claim.moving:
            stealable[claim.owner].append(claim.shard_id)
    if rng is not None:
        for shards in stealable.values():
            rng.shuffle(shards)
    steal: list[tuple[ShardId, str]] = []
    while mine < cap and stealable:
        victim = max(stealable, key=lambda owner: (loads[owner], owner))
        if loads[victim] - mine <= 1:
            break
        steal.append((stealable[victim].pop(), victim))
        if not stealable[victim]:
            del stealable[victim]
        loads[victim] -= 1
        mine += 1
    return Plan(take=take, steal=tuple(steal))


def eligible(rows: Sequence[LeaseRow]) -> set[ShardId]:
    """Unfinished shards whose parents (two after a merge) are each finished or not
    registered (gone, or collected)."""
    waiting = {row.shard_id for row in rows if not row.finished}
    return {
        row.shard_id
        for row in rows
        if not row.finished and not any(parent in waiting for parent in row.parents)
    }


def collectable(rows: Sequence[LeaseRow]) -> set[ShardId]:
    """Finished shards whose children (at least one) have all started: their rows may go."""
    children: defaultdict[ShardId, list[bool]] = defaultdict(list)
    for row in rows:
        for parent in row.parents:
            children[parent].append(row.started)
    return {
        row.shard_id for row in rows if row.finished and all(children.get(row.shard_id, [False]))
    }


def claims(
    rows: Sequence[LeaseRow],
    *,
    me: str,
    held: Collection[ShardId],
    expired: Collection[ShardId],
    ready: Collection[ShardId],
) -> list[Claim]:
    """The planner's view of the table: every active shard with its effective owner.

    A lease is free when nobody owns it, when its owner let it expire, or when the table
    says it is ``me``'s but ``me`` does not hold it (an earlier life of this worker, or a
    renewal that went through after its deadline: nobody else can write it, so it is ours
    to take back). A lease asked for counts for the worker that asked (``handoff_to``):
    once released it is free for that worker only, until it expires unclaimed. ``expired``
    are the shards whose counter (owned or reserved) stood still for the lease duration.
    Free shards count only when ``ready``.
    """
    result: list[Claim] = []
    for row in rows:
        if row.finished:
            continue
        if row.owner is None:
            free = row.handoff_to in (None, me) or row.shard_id in expired
        elif row.owner == me:
            free = row.shard_id not in held
        else:
            free = row.shard_id in expired
        if free:
            if row.shard_id in ready:
                result.append(Claim(row.shard_id))
            continue
        owner = row.handoff_to or row.owner
        result.append(Claim(row.shard_id, owner, moving=row.handoff_to is not None))
    return result


def collected_ancestors(shards: Sequence[Shard], registered: Collection[ShardId]) -> set[ShardId]:
    """Listed shards that are not registered but have a registered descendant.

    Their rows were collected after they finished: the shard sync must not register them
    again, or they would be read a second time.
    """
    parents_of = {shard.shard_id: shard.parents for shard in shards}
    ancestors: set[ShardId] = set()
    pending = [parent for shard_id in registered for parent in parents_of.get(shard_id, ())]
    while pending:
        parent = pending.pop()
        if parent in registered or parent in ancestors or parent not in parents_of:
            continue
        ancestors.add(parent)
        pending.extend(parents_of[parent])
    return ancestors


class CounterWatch(Generic[K]):
    """Expiry on the observer's clock: when this worker first saw each counter value."""

    def __init__(self, duration_s: float) -> None:
        self.duration_s = duration_s
        self._seen: dict[K, tuple[int, float]] = {}

    def observe(self, counters: Mapping[K, int], now: float) -> set[K]:
        """Record ``counters`` as read at ``now``; return the keys whose counter has not
        changed for ``duration_s``. Keys not in ``counters`` are forgotten."""
        seen: dict[K, tuple[int, float]] = {}
        for key, counter in counters.items():
            previous = self._seen.get(key)
            seen[key] = (
                previous
                if previous is not None and previous[0] == counter
                else (
                    counter,
                    now,
                )
            )
        self._seen = seen
        return {key for key, (_, since) in seen.items() if now - since >= self.duration_s}
