"""The lease statements on SQLite and PostgreSQL: every change is one compare-and-set."""

from __future__ import annotations

import asyncio

import pytest

from shardwise.errors import LeaseLostError, StoreError
from shardwise.leases.table import LeaseTable
from shardwise.records import Position, SequenceNumber, ShardId, StartingPosition
from shardwise.store import CheckpointStore, ShardRegistration
from shardwise.store.engine import open_engine
from tests.leases.conftest import ARN, PROCESSOR, Tables

S1, S2, S3 = ShardId("shard-1"), ShardId("shard-2"), ShardId("shard-3")


@pytest.fixture(autouse=True)
async def shards(store: CheckpointStore) -> None:
    """Shard 2 is shard 1's child; shard 3 is finished already."""
    await store.register_shards(
        PROCESSOR,
        ARN,
        [
            ShardRegistration(S1, None, StartingPosition.TRIM_HORIZON),
            ShardRegistration(S2, S1, StartingPosition.TRIM_HORIZON),
            ShardRegistration(S3, None, StartingPosition.LATEST, finished=True),
        ],
    )


async def lease_of(table: LeaseTable, shard_id: ShardId) -> tuple[str | None, int, str | None]:
    rows = {row.shard_id: row for row in (await table.snapshot()).leases}
    return rows[shard_id].owner, rows[shard_id].counter, rows[shard_id].handoff_to


class TestTake:
    """Taking is a CAS on the counter: of two racing takers exactly one wins."""

    async def test_take_a_free_lease(self, tables: Tables) -> None:
        a = await tables("a")
        taken = await a.take(S1, 0)
        assert taken is not None
        assert taken.counter == 1
        assert taken.position == Position(start=StartingPosition.TRIM_HORIZON)
        assert await lease_of(a, S1) == ("a", 1, None)

    async def test_take_returns_the_checkpoint(self, tables: Tables) -> None:
        a = await tables("a")
        taken = await a.take(S1, 0)
        assert taken is not None
        await a.save(S1, taken.counter, SequenceNumber("100"))
        await a.release({S1: taken.counter}, None)
        b = await tables("b")
        again = await b.take(S1, 2)
        assert again is not None
        assert again.position == Position.after_sequence("100")

    async def test_two_takers_race_one_wins(self, tables: Tables) -> None:
        workers = [await tables(name) for name in "abcd"]
        results = await asyncio.gather(*(worker.take(S1, 0) for worker in workers))
        winners = [w.worker_id for w, r in zip(workers, results, strict=True) if r is not None]
        assert len(winners) == 1
        assert await lease_of(workers[0], S1) == (winners[0], 1, None)

    async def test_stale_counter_takes_nothing(self, tables: Tables) -> None:
        a, b = await tables("a"), await tables("b")
        assert await a.take(S1, 0) is not None
        assert await b.take(S1, 0) is None
        assert await lease_of(a, S1) == ("a", 1, None)

    async def test_finished_shards_are_not_taken(self, tables: Tables) -> None:
        a = await tables("a")
        assert await a.take(S3, 0) is None


class TestRenew:
    """Renewing increments the counter of every lease still held, in one transaction."""

    async def test_renew_increments_and_beats(self, tables: Tables) -> None:
        a = await tables("a")
        assert await a.take(S1, 0) is not None
        renewal = await a.renew({S1: 1}, None)
        assert renewal.leases == {S1: (2, None)}
        assert await lease_of(a, S1) == ("a", 2, None)
        await a.renew({S1: 2}, None)
        assert (await a.snapshot()).workers == {"a": 2}

    async def test_renew_at_a_stale_counter_is_a_loss(self, tables: Tables) -> None:
        a, b = await tables("a"), await tables("b")
        assert await a.take(S1, 0) is not None
        assert await b.take(S1, 1) is not None
        renewal = await a.renew({S1: 1}, None)
        assert renewal.leases == {S1: None}
        assert await lease_of(a, S1) == ("b", 2, None)

    async def test_handoff_request_reaches_the_owner(self, tables: Tables) -> None:
        a, b = await tables("a"), await tables("b")
        assert await a.take(S1, 0) is not None
        assert await b.ask_handoff(S1, "a", 1)
        assert not await (await tables("c")).ask_handoff(S1, "a", 1)
        assert (await a.renew({S1: 1}, None)).leases == {S1: (2, "b")}
        await a.release({S1: 2}, None)
        assert await lease_of(a, S1) == (None, 3, "b")  # reserved for b
        assert await b.take(S1, 3) is not None
        assert await lease_of(a, S1) == ("b", 4, None)


class TestFencedWrites:
    """Checkpoints move only for the owner at its counter."""

    async def test_owner_checkpoints(self, tables: Tables, store: CheckpointStore) -> None:
        a = await tables("a")
        assert await a.take(S1, 0) is not None
        await a.save(S1, 1, SequenceNumber("42"))
        assert (await store.load(PROCESSOR, ARN))[S1].sequence_number == "42"

    async def test_stale_owner_is_refused(self, tables: Tables, store: CheckpointStore) -> None:
        a, b = await tables("a"), await tables("b")
        assert await a.take(S1, 0) is not None
        await a.save(S1, 1, SequenceNumber("42"))
        assert await b.take(S1, 1) is not None
        with pytest.raises(LeaseLostError, match="checkpoint refused") as caught:
            await a.save(S1, 1, SequenceNumber("43"))
        assert caught.value.shard_id == S1
        assert not caught.value.retriable
        with pytest.raises(LeaseLostError, match="finish refused"):
            await a.finish(S1, 1, SequenceNumber("43"))
        checkpoint = (await store.load(PROCESSOR, ARN))[S1]
        assert (checkpoint.sequence_number, checkpoint.finished) == ("42", False)

    async def test_finish_frees_the_lease(self, tables: Tables, store: CheckpointStore) -> None:
        a = await tables("a")
        assert await a.take(S1, 0) is not None
        await a.finish(S1, 1, SequenceNumber("99"))
        checkpoint = (await store.load(PROCESSOR, ARN))[S1]
        assert (checkpoint.sequence_number, checkpoint.finished) == ("99", True)
        assert await lease_of(a, S1) == (None, 2, None)


class TestRelease:
    """Release frees leases at once; a stale release changes nothing."""

    async def test_release_and_leave(self, tables: Tables) -> None:
        a = await tables("a")
        assert await a.take(S1, 0) is not None
        assert await a.take(S2, 0) is not None
        leader = await a.take_leader(None)
        assert leader == 1
        await a.renew({S1: 1, S2: 1}, leader)
        await a.release({S1: 2, S2: 2}, 2, leave=True)
        snapshot = await a.snapshot()
        assert {row.shard_id: row.owner for row in snapshot.leases} == {
            S1: None,
            S2: None,
            S3: None,
        }
        assert snapshot.workers == {}
        assert snapshot.leader == (None, 3)

    async def test_stale_release_changes_nothing(self, tables: Tables) -> None:
        a, b = await tables("a"), await tables("b")
        assert await a.take(S1, 0) is not None
        assert await b.take(S1, 1) is not None
        await a.release({S1: 1}, None)
        assert await lease_of(a, S1) == ("b", 2, None)


class TestLeader:
    """The sync leader lease: created by the first worker, then CAS like any lease."""

    async def test_first_workers_race_one_leads(self, tables: Tables) -> None:
        workers = [await tables(name) for name in "abc"]
        counters = await asyncio.gather(*(worker.take_leader(None) for worker in workers))
        assert sorted(counters, key=lambda c: c is None) == [1, None, None]
        leader = workers[counters.index(1)].worker_id
        assert (await workers[0].snapshot()).leader == (leader, 1)

    async def test_leader_renews_and_is_taken_over(self, tables: Tables) -> None:
        a, b = await tables("a"), await tables("b")
        assert await a.take_leader(None) == 1
        assert (await a.renew({}, 1)).leader == 2
        assert await b.take_leader(1) is None
        assert await b.take_leader(2) == 3
        assert (await a.renew({}, 2)).leader is None


class TestCollection:
    """Finished rows and dead workers are deleted only if unchanged."""

    async def test_collect_finished_row(self, tables: Tables, store: CheckpointStore) -> None:
        a = await tables("a")
        assert not await a.collect(S1, 0)  # not finished
        assert not await a.collect(S3, 5)  # changed since
        assert await a.collect(S3, 0)
        assert set(await store.load(PROCESSOR, ARN)) == {S1, S2}

    async def test_forget_worker(self, tables: Tables) -> None:
        a, b = await tables("a"), await tables("b")
        await b.renew({}, None)
        await b.renew({}, None)
        assert not await a.forget_worker("b", 1)
        assert await a.forget_worker("b", 2)
        assert (await a.snapshot()).workers == {}


class TestErrors:
    """Driver errors leave as StoreError naming the operation; the password never leaks."""

    async def test_unreachable_store(self) -> None:
        engine = open_engine("postgresql+asyncpg://shardwise:s3cret-pw@127.0.0.1:1/shardwise")
        try:
            table = LeaseTable(
                CheckpointStore(engine), processor=PROCESSOR, stream_arn=ARN, worker_id="a"
            )
            with pytest.raises(StoreError, match="reading leases failed") as caught:
                await table.snapshot()
            assert "s3cret-pw" not in str(caught.value)
            with pytest.raises(StoreError, match="take lease failed"):
                await table.take(S1, 0)
        finally:
            await engine.dispose()


class TestSameWorkerIdAgain:
    """A restarted worker process keeps its worker id (worker.processes): it takes its
    leases back with new counters, and what the dead process still had in flight, carrying
    the old counters, changes nothing."""

    async def test_the_dead_process_counters_are_refused(
        self, tables: Tables, store: CheckpointStore
    ) -> None:
        dead = await tables("box-p1")
        taken = await dead.take(S1, 0)
        assert taken is not None
        await dead.save(S1, taken.counter, SequenceNumber("10"))
        old = taken.counter
        # The process is killed; the slot starts a new one with the same worker id.
        restarted = await tables("box-p1")
        assert await lease_of(restarted, S1) == ("box-p1", old, None)
        again = await restarted.take(S1, old)
        assert again is not None
        assert again.counter > old
        assert again.position == Position.after_sequence("10")
        # Statements of the dead process that reach the store late are all refused.
        with pytest.raises(LeaseLostError):
            await dead.save(S1, old, SequenceNumber("999"))
        with pytest.raises(LeaseLostError):
            await dead.finish(S1, old, SequenceNumber("999"))
        assert (await dead.renew({S1: old}, None)).leases == {S1: None}
        await dead.release({S1: old}, None)
        assert await lease_of(restarted, S1) == ("box-p1", again.counter, None)
        await restarted.save(S1, again.counter, SequenceNumber("20"))
        checkpoint = (await store.load(PROCESSOR, ARN))[S1]
        assert (checkpoint.sequence_number, checkpoint.finished) == ("20", False)
