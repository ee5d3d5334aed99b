"""LeaseCoordinator on SQLite and PostgreSQL: several workers in one process, fake clocks.

Rounds are driven by hand (``renew_once`` / ``take_once``) with injected clocks wherever
time matters; the last tests run the real loops with a short lease duration.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Sequence

import pytest
from sqlalchemy import text

from shardwise.errors import LeaseLostError
from shardwise.leases import Lease, LeaseCoordinator, LossReason
from shardwise.records import SequenceNumber, ShardId, StartingPosition
from shardwise.store import CheckpointStore, ShardRegistration
from shardwise.store.engine import writer
from tests.leases.conftest import ARN, DURATION, PROCESSOR, Workers


class FakeClock:
    """A monotonic clock that moves only when told to."""

    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def sid(n: int) -> ShardId:
    return ShardId(f"shard-{n:03d}")


async def register(store: CheckpointStore, count: int, *, parents: bool = False) -> None:
    """``count`` shards; with ``parents`` each odd shard is the child of the one before."""
    await store.register_shards(
        PROCESSOR,
        ARN,
        [
            ShardRegistration(
                sid(n), sid(n - 1) if parents and n % 2 else None, StartingPosition.TRIM_HORIZON
            )
            for n in range(count)
        ],
    )


async def settle(coordinators: Sequence[LeaseCoordinator], rounds: int = 1) -> None:
    """What running workers do, in lockstep: renew, give up leases asked for, take."""
    for _ in range(rounds):
        for coordinator in coordinators:
            await coordinator.renew_once()
            for lease in list(coordinator.held().values()):
                if lease.reason is LossReason.HANDOFF:
                    await coordinator.release(lease)
        for coordinator in coordinators:
            await coordinator.take_once()


def counts(coordinators: Sequence[LeaseCoordinator]) -> list[int]:
    return [len(coordinator.held()) for coordinator in coordinators]


class TestTaking:
    """Free leases are taken at once; others' leases only after expiry on our own clock."""

    async def test_single_worker_takes_everything(
        self, workers: Workers, store: CheckpointStore
    ) -> None:
        await register(store, 5)
        a = await workers("a")
        acquired: list[Lease] = []
        taken = await a.take_once(acquired.append)
        assert sorted(lease.shard_id for lease in taken) == [sid(n) for n in range(5)]
        assert acquired == taken
        assert all(lease.counter == 1 and not lease.lost.is_set() for lease in taken)

    async def test_expiry_is_judged_on_the_observers_clock(
        self, workers: Workers, store: CheckpointStore
    ) -> None:
        await register(store, 2)
        clock_a, clock_b = FakeClock(5.0), FakeClock(1_000_000.0)  # clocks need not agree
        a = await workers("a", clock=clock_a)
        b = await workers("b", clock=clock_b)
        await a.renew_once()
        assert len(await a.take_once()) == 2
        await b.renew_once()
        assert await b.take_once() == []  # first sight: wait a full duration
        clock_b.advance(DURATION - 0.1)
        assert await b.take_once() == []
        clock_a.advance(DURATION / 3)
        await a.renew_once()  # the counters move: b starts waiting again
        clock_b.advance(1.0)
        assert await b.take_once() == []
        clock_b.advance(DURATION - 0.5)
        assert await b.take_once() == []
        clock_b.advance(0.5)  # a stood still for a full duration on b's clock
        assert len(await b.take_once()) == 2
        # a cannot renew them any more: its leases are lost, its checkpoints refused.
        leases = list(a.held().values())
        await a.renew_once()
        assert a.held() == {}
        assert all(lease.reason is LossReason.TAKEN and lease.lost.is_set() for lease in leases)
        with pytest.raises(LeaseLostError):
            await a.checkpointer(leases[0]).save(leases[0].shard_id, SequenceNumber("1"))

    async def test_release_makes_leases_takeable_at_once(
        self, workers: Workers, store: CheckpointStore
    ) -> None:
        await register(store, 4)
        a, b = await workers("a", clock=FakeClock()), await workers("b", clock=FakeClock())
        leases = await a.take_once()
        await b.renew_once()
        assert await b.take_once() == []
        await a.release_all()
        assert all(lease.reason is LossReason.RELEASED for lease in leases)
        assert len(await b.take_once()) == 4
        await a.release_all()  # idempotent

    async def test_a_restarted_worker_takes_its_leases_back(
        self, workers: Workers, store: CheckpointStore
    ) -> None:
        await register(store, 3)
        first = await workers("a", clock=FakeClock())
        assert len(await first.take_once()) == 3
        again = await workers("a", clock=FakeClock())
        assert len(await again.take_once()) == 3

    async def test_nothing_is_taken_once_stopping(
        self, workers: Workers, store: CheckpointStore
    ) -> None:
        await register(store, 2)
        a = await workers("a", clock=FakeClock())
        stop = asyncio.Event()
        stop.set()
        assert await a.take_once(stop=stop) == []
        assert len(await a.take_once()) == 2

    async def test_max_leases_is_respected(self, workers: Workers, store: CheckpointStore) -> None:
        await register(store, 10)
        a = await workers("a", clock=FakeClock(), max_leases=4)
        b = await workers("b", clock=FakeClock(), max_leases=3)
        await settle([a, b], rounds=3)
        assert counts([a, b]) == [4, 3]


class TestBalance:
    """Workers converge on ceil(shards / workers) each, newcomers by hand-off."""

    async def test_three_workers_then_a_fourth(
        self, workers: Workers, store: CheckpointStore
    ) -> None:
        await register(store, 30)
        trio = [await workers(name, clock=FakeClock()) for name in "abc"]
        for coordinator in trio:
            await coordinator.renew_once()  # heartbeats: everyone sees three workers
        await settle(trio)
        assert counts(trio) == [10, 10, 10]
        d = await workers("d", clock=FakeClock())
        await d.renew_once()
        await settle([*trio, d], rounds=2)
        quartet = counts([*trio, d])
        assert sum(quartet) == 30
        assert max(quartet) - min(quartet) <= 1
        assert len(d.held()) >= 7

    async def test_handed_over_lease_still_checkpoints_until_released(
        self, workers: Workers, store: CheckpointStore
    ) -> None:
        await register(store, 4)
        a, b = await workers("a", clock=FakeClock()), await workers("b", clock=FakeClock())
        await a.take_once()
        await b.renew_once()
        await b.take_once()  # b asks a for two leases
        await a.renew_once()
        moving = [lease for lease in a.held().values() if lease.reason is LossReason.HANDOFF]
        assert len(moving) == 2
        assert all(lease.lost.is_set() for lease in moving)
        await a.checkpointer(moving[0]).save(moving[0].shard_id, SequenceNumber("7"))
        await a.release(moving[0])
        with pytest.raises(LeaseLostError):
            await a.checkpointer(moving[0]).save(moving[0].shard_id, SequenceNumber("8"))
        await a.release(moving[1])
        taken = await b.take_once()
        assert sorted(lease.shard_id for lease in taken) == sorted(m.shard_id for m in moving)
        position = {lease.shard_id: lease.position for lease in taken}[moving[0].shard_id]
        assert position.after == "7"


class TestLineage:
    """Children wait for their parents; finished parents are collected by the leader."""

    async def test_children_wait_for_finished_parents(
        self, workers: Workers, store: CheckpointStore
    ) -> None:
        await register(store, 4, parents=True)  # 0 <- 1, 2 <- 3
        a = await workers("a", clock=FakeClock())
        taken = {lease.shard_id: lease for lease in await a.take_once()}
        assert set(taken) == {sid(0), sid(2)}
        await a.checkpointer(taken[sid(0)]).finish(sid(0), SequenceNumber("5"))
        assert sid(0) not in a.held()
        assert not taken[sid(0)].lost.is_set()
        assert [lease.shard_id for lease in await a.take_once()] == [sid(1)]
        # shard 0 finished and its child started: the leader collects its row.
        assert a.is_sync_leader()
        await a.take_once()
        assert set(await store.load(PROCESSOR, ARN)) == {sid(1), sid(2), sid(3)}

    async def test_eligible_narrows_what_is_taken(
        self, workers: Workers, store: CheckpointStore
    ) -> None:
        await register(store, 4)
        a = await workers("a", clock=FakeClock())
        taken = await a.take_once(eligible=lambda: {sid(1), sid(3)})
        assert sorted(lease.shard_id for lease in taken) == [sid(1), sid(3)]

    async def test_checkpointer_is_bound_to_its_shard(
        self, workers: Workers, store: CheckpointStore
    ) -> None:
        await register(store, 2)
        a = await workers("a", clock=FakeClock())
        lease = (await a.take_once())[0]
        other = sid(1) if lease.shard_id == sid(0) else sid(0)
        with pytest.raises(ValueError, match="through <Lease"):
            await a.checkpointer(lease).save(other, SequenceNumber("1"))


class TestLeader:
    """One shard-sync leader at a time; a new one once the old one's lease expires."""

    async def test_one_leader_then_a_new_one(
        self, workers: Workers, store: CheckpointStore
    ) -> None:
        clocks = [FakeClock(), FakeClock()]
        a, b = [await workers(n, clock=c) for n, c in zip("ab", clocks, strict=True)]
        await asyncio.gather(a.take_once(), b.take_once())
        assert [a.is_sync_leader(), b.is_sync_leader()].count(True) == 1
        leader, other = (a, b) if a.is_sync_leader() else (b, a)
        leader_clock, other_clock = clocks if leader is a else clocks[::-1]
        other_clock.advance(DURATION / 2)
        await other.take_once()
        assert not other.is_sync_leader()
        other_clock.advance(DURATION)  # the leader stopped renewing
        leader_clock.advance(DURATION)
        assert not leader.is_sync_leader()  # its own deadline passed first
        await other.take_once()
        assert other.is_sync_leader()
        await leader.renew_once()
        await leader.take_once()
        assert not leader.is_sync_leader()

    async def test_leader_forgets_dead_workers(
        self, workers: Workers, store: CheckpointStore
    ) -> None:
        clock = FakeClock()
        a, b = await workers("a", clock=clock), await workers("b", clock=FakeClock())
        await a.renew_once()
        await b.renew_once()
        await a.take_once()
        for _ in range(3):  # b beats no more; a keeps its leadership
            clock.advance(DURATION / 3)
            await a.renew_once()
        await a.take_once()
        assert a.is_sync_leader()
        assert set((await a.table.snapshot()).workers) == {"a"}


class TestLosing:
    """A worker that cannot renew stops before its lease can expire for anyone else."""

    async def test_past_its_deadline_a_lease_writes_nothing(
        self, workers: Workers, store: CheckpointStore
    ) -> None:
        await register(store, 1)
        clock = FakeClock()
        a = await workers("a", clock=clock)
        [lease] = await a.take_once()
        await a.checkpointer(lease).save(lease.shard_id, SequenceNumber("1"))
        clock.advance(DURATION * 0.75)
        with pytest.raises(LeaseLostError, match="expired"):
            await a.checkpointer(lease).save(lease.shard_id, SequenceNumber("2"))
        assert lease.reason is LossReason.EXPIRED
        assert lease.lost.is_set()
        assert a.held() == {}
        assert (await store.load(PROCESSOR, ARN))[lease.shard_id].sequence_number == "1"

    async def test_store_outage_loses_leases_before_expiry(
        self, workers: Workers, store: CheckpointStore
    ) -> None:
        await register(store, 2)
        duration = 0.8
        a = await workers("a", lease_duration_s=duration)
        leases = await a.take_once()
        renewed_before = time.monotonic()
        await a.renew_once()
        lost_at: float | None = None
        async with writer(store.engine).begin() as blocker:  # SQLite: holds the write lock
            if store.engine.dialect.name == "postgresql":
                await blocker.execute(text("SELECT * FROM shardwise_checkpoints FOR UPDATE"))
            async with asyncio.TaskGroup() as tasks:
                renewing = tasks.create_task(a.renew_once())  # hangs in the store
                async with asyncio.timeout(duration):
                    await leases[0].lost.wait()
                    lost_at = time.monotonic()
                assert not renewing.done()
                await blocker.rollback()
        # Others could call it expired no earlier than one duration after the renewal was sent.
        assert lost_at - renewed_before < duration
        assert all(lease.reason is LossReason.EXPIRED for lease in leases)
        assert a.held() == {}
        with pytest.raises(LeaseLostError):
            await a.checkpointer(leases[1]).save(leases[1].shard_id, SequenceNumber("1"))


class TestRunning:
    """The real loops: convergence, graceful release, release on cancellation."""

    async def test_two_workers_share_and_hand_over(
        self, workers: Workers, store: CheckpointStore
    ) -> None:
        await register(store, 6)
        a = await workers("a", lease_duration_s=0.6)
        b = await workers("b", lease_duration_s=0.6)

        async def worker(coordinator: LeaseCoordinator) -> None:
            async def consume(lease: Lease) -> None:
                await lease.lost.wait()  # the runner: stop, then give the lease up
                await coordinator.release(lease)

            async with asyncio.TaskGroup() as tasks:
                await coordinator.run(lambda lease: tasks.create_task(consume(lease)))

        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(worker(a))
            await wait_for(lambda: counts([a]) == [6])
            tasks.create_task(worker(b))
            await wait_for(lambda: counts([a, b]) == [3, 3])
            await a.release_all()
            await wait_for(lambda: counts([b]) == [6])
            run_b = tasks.create_task(b.release_all())
        assert run_b.done()
        owners = Counter(row.owner for row in (await b.table.snapshot()).leases)
        assert owners == {None: 6}

    async def test_cancelled_run_releases_everything(
        self, workers: Workers, store: CheckpointStore
    ) -> None:
        await register(store, 3)
        a = await workers("a", lease_duration_s=0.6)
        running = asyncio.create_task(a.run(lambda lease: None))
        await wait_for(lambda: counts([a]) == [3])
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running
        snapshot = await a.table.snapshot()
        assert {row.owner for row in snapshot.leases} == {None}
        assert snapshot.workers == {}
        with pytest.raises(RuntimeError, match="already released"):
            await a.run(lambda lease: None)


async def wait_for(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    async with asyncio.timeout(timeout_s):
        # held() has no event to wait on: poll it, as the runner's status view would.
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.02)
