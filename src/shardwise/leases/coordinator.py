"""One worker's leases on one processor's stream: a renewer loop and a taker loop.

The renewer (every duration / 3) renews the leases, the sync leader lease and the heartbeat
in one transaction. A lease it cannot renew is lost at once on a counter mismatch, else at
its deadline (3/4 of the duration after the last renewal was *sent*; a watchdog timer fires
even while the store hangs). Others call a lease expired only after its counter stood still
for a full duration on their clocks, so its owner has always stopped first. The taker (every
duration / 2) takes and asks for leases as ``balance.plan`` says and, as sync leader,
collects finished rows and dead workers. ``release_all()`` frees everything at shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import TypeAlias

import structlog

from shardwise.clock import sleep_or_stop
from shardwise.errors import StoreError
from shardwise.leases import balance
from shardwise.leases.lease import FencedCheckpointer, LeaderLease, Lease, LossReason
from shardwise.leases.table import LeaseTable, Snapshot
from shardwise.records import ShardId
from shardwise.store import CheckpointStore
from shardwise.tasks import to_completion

__all__ = ["LeaseCoordinator"]

# Narrows which free shards may be taken, on top of the parent-before-child rule.
Eligible: TypeAlias = Callable[[], Collection[ShardId]] | None

log = structlog.get_logger("shardwise.leases")


class LeaseCoordinator:
    """Takes, renews, balances and releases one worker's leases on one processor's stream."""

    def __init__(
        self,
        store: CheckpointStore,
        *,
        processor: str,
        stream_arn: str,
        worker_id: str,
        lease_duration_s: float = 10.0,
        max_leases: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        if lease_duration_s <= 0:
            raise ValueError(f"lease_duration_s must be positive, not {lease_duration_s}")
        if max_leases is not None and max_leases < 1:
            raise ValueError(f"max_leases must be at least 1, not {max_leases}")
        self.table = LeaseTable(
            store, processor=processor, stream_arn=stream_arn, worker_id=worker_id
        )
        self.worker_id = worker_id
        self.lease_duration_s = lease_duration_s
        self.max_leases = max_leases
        self.clock = clock
        # How long after a renewal was sent this worker may still act on a lease: a quarter
        # of the duration is the margin for a slow store and unequal clock rates.
        self._lifetime_s = lease_duration_s * 0.75
        self._rng = rng if rng is not None else random.Random()
        self._leases: dict[ShardId, Lease] = {}
        self._leader: LeaderLease | None = None
        self._watch_leases = balance.CounterWatch[ShardId](lease_duration_s)
        self._watch_workers = balance.CounterWatch[str](lease_duration_s)
        self._watch_leader = balance.CounterWatch[str](lease_duration_s)
        self._closing = asyncio.Event()
        self._round = asyncio.Lock()  # one taker round at a time; release_all waits for it
        self._renewal = asyncio.Lock()  # likewise for renewal rounds
        self._watchdog: asyncio.TimerHandle | None = None

    # -- what the runner reads -------------------------------------------------------------

    def held(self) -> Mapping[ShardId, Lease]:
        """The leases this worker holds now (including ones being handed over)."""
        return MappingProxyType(dict(self._leases))

    def is_sync_leader(self) -> bool:
        """Whether this worker should list the stream's shards and register new ones."""
        return self._leader is not None and self.clock() < self._leader.deadline

    def checkpointer(self, lease: Lease) -> FencedCheckpointer:
        """Fenced checkpoints for ``lease``'s consumer; writes raise ``LeaseLostError`` once
        the lease is no longer this worker's."""
        return FencedCheckpointer(self.table, lease, clock=self.clock, gone=self._forget)

    # -- the loops -------------------------------------------------------------------------

    async def run(
        self,
        on_acquired: Callable[[Lease], object],
        *,
        stop: asyncio.Event | None = None,
        eligible: Eligible = None,
    ) -> None:
        """Renew and take until ``release_all()`` (then return) or cancellation (then release
        everything and re-raise). Once ``stop`` is set nothing more is taken, but held leases
        are still renewed, so consumers can drain; call ``release_all()`` when they have."""
        if self._closing.is_set():
            raise RuntimeError(f"lease coordinator of {self.worker_id} was already released")
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._every(self.lease_duration_s / 3, self.renew_once))
                tasks.create_task(
                    self._every(
                        self.lease_duration_s / 2,
                        lambda: self.take_once(on_acquired, stop=stop, eligible=eligible),
                    )
                )
        finally:
            await self.release_all()

    async def renew_once(self) -> None:
        """One renewer pass; store errors are logged (the deadlines decide what is lost)."""
        async with self._renewal, contextlib.AsyncExitStack() as locks:
            self._expire_overdue()
            leases = sorted(self._leases.values(), key=lambda lease: lease.shard_id)
            for lease in leases:
                await locks.enter_async_context(lease.lock)
            if not self._closing.is_set():
                held = [lease for lease in leases if self._leases.get(lease.shard_id) is lease]
                await to_completion(self._renew(held, self._leader))
        self._arm_watchdog()

    async def _renew(self, leases: list[Lease], leader: LeaderLease | None) -> None:
        """Renew and record the outcome; never cut in half by a cancel, so that the counters
        this worker keeps are the store's."""
        sent = self.clock()
        counters = {lease.shard_id: lease.counter for lease in leases}
        try:
            async with asyncio.timeout(self.lease_duration_s):
                renewal = await self.table.renew(counters, leader.counter if leader else None)
        except (StoreError, TimeoutError) as exc:
            log.warning("lease renewal failed", error=str(exc), held=len(leases))
            return
        deadline = sent + self._lifetime_s
        for lease in leases:
            self._renewed(lease, renewal.leases.get(lease.shard_id), deadline)
        if leader is not None:
            self._renewed_leader(leader, renewal.leader, deadline)

    async def take_once(
        self,
        on_acquired: Callable[[Lease], object] | None = None,
        *,
        stop: asyncio.Event | None = None,
        eligible: Eligible = None,
    ) -> list[Lease]:
        """One taker pass: the leases it took (each also handed to ``on_acquired``)."""
        async with self._round:
            if self._closing.is_set() or (stop is not None and stop.is_set()):
                return []
            taken: list[Lease] = []
            try:
                snapshot = await self.table.snapshot()
                now = self.clock()
                rows = {row.shard_id: row for row in snapshot.leases}
                dead = self._watch_workers.observe(snapshot.workers, now)
                claims = self._claims(snapshot.leases, now, eligible)
                live = set(snapshot.workers) - dead
                plan = balance.plan(
                    self.worker_id, claims, live, max_leases=self.max_leases, rng=self._rng
                )
                for shard_id in plan.take:
                    lease = await self._take(rows[shard_id])
                    if lease is not None:
                        taken.append(lease)
                        if on_acquired is not None:
                            on_acquired(lease)
                for shard_id, owner in plan.steal:
                    if await self.table.ask_handoff(shard_id, owner, rows[shard_id].counter):
                        log.info("hand-off requested", shard=shard_id, owner=owner)
                await self._lead(snapshot, now, dead)
            except StoreError as exc:
                log.warning("lease taking failed", error=str(exc))
            self._arm_watchdog()
            return taken

    async def release(self, lease: Lease) -> None:
        """Free ``lease`` now (call it once its consumer has stopped, e.g. after a hand-off);
        harmless when the lease was already taken, finished or released."""
        await to_completion(self._write_release(self._let_go([lease]), None, leave=False))

    async def release_all(self) -> None:
        """Stop taking, set every lease's ``lost`` at once, and free them and the leader lease
        in the store, even if the caller is cancelled meanwhile; idempotent."""
        if self._closing.is_set():
            return
        self._closing.set()
        await to_completion(self._release_everything(self._let_go(self._leases.values())))

    async def _release_everything(self, owned: list[Lease]) -> None:
        try:
            # A renewal or take round in flight finishes first, so counters are current.
            async with asyncio.timeout(self.lease_duration_s), self._round, self._renewal:
                owned += self._let_go(self._leases.values())
                leader, self._leader = self._leader, None
                self._arm_watchdog()
                await self._write_release(owned, leader, leave=True)
        except TimeoutError:
            log.warning("releasing leases timed out; they expire instead", held=len(owned))

    def _let_go(self, leases: Iterable[Lease]) -> list[Lease]:
        """Mark ``leases`` released (consumers stop now); return those still ours in the store."""
        leases = list(leases)
        gone = (LossReason.TAKEN, LossReason.RELEASED)
        owned = [lease for lease in leases if not lease.finished and lease.reason not in gone]
        for lease in leases:
            self._drop(lease, LossReason.RELEASED)
        return owned

    async def _write_release(
        self, leases: Sequence[Lease], leader: LeaderLease | None, *, leave: bool
    ) -> None:
        if not leases and leader is None and not leave:
            return
        try:
            async with asyncio.timeout(self.lease_duration_s), contextlib.AsyncExitStack() as locks:
                for lease in sorted(leases, key=lambda lease: lease.shard_id):
                    await locks.enter_async_context(lease.lock)
                counters = {lease.shard_id: lease.counter for lease in leases}
                await self.table.release(
                    counters, None if leader is None else leader.counter, leave=leave
                )
        except (StoreError, TimeoutError) as exc:
            log.warning("releasing leases failed; they expire instead", error=str(exc))
        else:
            log.info("leases released", shards=len(leases), leader=leader is not None)

    def _claims(
        self, rows: Sequence[balance.LeaseRow], now: float, eligible: Eligible
    ) -> list[balance.Claim]:
        taken = {row.shard_id: row.counter for row in rows if row.owner or row.handoff_to}
        expired = self._watch_leases.observe(taken, now)
        ready = balance.eligible(rows)
        if eligible is not None:
            ready &= set(eligible())
        return balance.claims(
            rows, me=self.worker_id, held=self._leases.keys(), expired=expired, ready=ready
        )

    async def _take(self, row: balance.LeaseRow) -> Lease | None:
        """Take and record the lease; never cut in half (``release_all`` must know of it)."""
        sent = self.clock()
        taken = await to_completion(self.table.take(row.shard_id, row.counter))
        if taken is None:
            return None
        lease = Lease(row.shard_id, taken.counter, taken.position, sent + self._lifetime_s)
        self._leases[row.shard_id] = lease
        log.info("lease taken", shard=row.shard_id, counter=taken.counter, previous=row.owner)
        return lease

    async def _lead(self, snapshot: Snapshot, now: float, dead: set[str]) -> None:
        """Become sync leader when the post is free; as leader, collect finished rows."""
        leader = snapshot.leader
        expired = self._watch_leader.observe({} if leader is None else {"": leader[1]}, now)
        if self._leader is None and (
            leader is None or leader[0] in (None, self.worker_id) or expired
        ):
            sent = self.clock()
            counter = await self.table.take_leader(None if leader is None else leader[1])
            if counter is not None:
                self._leader = LeaderLease(counter, sent + self._lifetime_s)
                log.info("became shard sync leader", worker=self.worker_id)
        if not self.is_sync_leader():
            return
        rows = {row.shard_id: row for row in snapshot.leases}
        for shard_id in sorted(balance.collectable(snapshot.leases)):
            if await self.table.collect(shard_id, rows[shard_id].counter):
                log.info("finished lease collected", shard=shard_id)
        for worker_id in sorted(dead - {self.worker_id}):
            await self.table.forget_worker(worker_id, snapshot.workers[worker_id])

    def _renewed(
        self, lease: Lease, renewed: tuple[int, str | None] | None, deadline: float
    ) -> None:
        held = self._leases.get(lease.shard_id) is lease
        if renewed is None:
            if held:
                log.warning("lease lost: another worker changed it", shard=lease.shard_id)
            self._drop(lease, LossReason.TAKEN)
            return
        lease.counter = renewed[0]  # the store's truth, even for a lease let go meanwhile
        if not held:
            return  # the watchdog (or a release) came first: a late renewal changes nothing
        lease.deadline = deadline
        if renewed[1] is not None and lease.reason is None:
            log.info("handing lease over", shard=lease.shard_id, to=renewed[1])
            lease.lose(LossReason.HANDOFF)

    def _renewed_leader(self, leader: LeaderLease, counter: int | None, deadline: float) -> None:
        if counter is not None:
            leader.counter = counter
            if self._leader is leader:
                leader.deadline = deadline
        elif self._leader is leader:
            log.warning("lost shard sync leadership", worker=self.worker_id)
            self._leader = None

    def _drop(self, lease: Lease, reason: LossReason) -> None:
        lease.lose(reason)
        self._forget(lease)

    def _forget(self, lease: Lease) -> None:
        if self._leases.get(lease.shard_id) is lease:
            del self._leases[lease.shard_id]

    def _expire_overdue(self) -> None:
        now = self.clock()
        for lease in list(self._leases.values()):
            if now >= lease.deadline:
                log.warning("lease lost: not renewed in time", shard=lease.shard_id)
                self._drop(lease, LossReason.EXPIRED)
        if self._leader is not None and now >= self._leader.deadline:
            log.warning("lost shard sync leadership: not renewed in time")
            self._leader = None

    def _arm_watchdog(self) -> None:
        """Lose what is overdue, then wake again at the earliest deadline - a timer, so it
        fires even while a renewal hangs in the store."""
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        self._expire_overdue()
        deadlines = [lease.deadline for lease in self._leases.values()]
        if self._leader is not None:
            deadlines.append(self._leader.deadline)
        if deadlines and not self._closing.is_set():
            delay = max(0.0, min(deadlines) - self.clock())
            self._watchdog = asyncio.get_running_loop().call_later(delay, self._arm_watchdog)

    async def _every(self, interval_s: float, step: Callable[[], Awaitable[object]]) -> None:
        """Run ``step`` every ``interval_s`` without drift until released."""
        due = time.monotonic()
        while not self._closing.is_set():
            await step()
            due += interval_s
            now = time.monotonic()
            due = max(due, now)  # an overrun is skipped, never made up in a burst
            if await sleep_or_stop(self._closing, due - now):
                return
