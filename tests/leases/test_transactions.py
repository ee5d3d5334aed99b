"""A processor's writes and the shard's checkpoint in one fenced transaction (SQLite and
PostgreSQL): both commit, or neither - and a worker that lost the lease commits nothing."""

from __future__ import annotations

import asyncio
import contextlib
import json

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, select, text

from shardwise.errors import HandlerError, LeaseLostError
from shardwise.records import SequenceNumber, ShardId
from shardwise.store import CheckpointStore
from shardwise.store.models import applied
from tests.leases.conftest import ARN, DURATION, PROCESSOR, Workers
from tests.leases.test_coordinator import FakeClock, register, sid

SINK = MetaData()
totals = Table(
    "tx_test_totals",
    SINK,
    Column("customer", String(50), primary_key=True),
    Column("total", Integer, nullable=False),
)


@pytest.fixture
async def sink(store: CheckpointStore) -> CheckpointStore:
    async with store.engine.begin() as connection:
        await connection.run_sync(SINK.drop_all)
        await connection.run_sync(SINK.create_all)
    return store


async def total_rows(store: CheckpointStore) -> list[tuple[str, int]]:
    async with store.engine.connect() as connection:
        rows = (await connection.execute(select(totals).order_by(totals.c.customer))).all()
    return [(row.customer, row.total) for row in rows]


async def checkpoint_of(store: CheckpointStore, shard: ShardId) -> str | None:
    stored = await store.load(PROCESSOR, ARN)
    return stored[shard].sequence_number if shard in stored else None


def only_with_concurrent_writers(store_url: str) -> None:
    """On SQLite the transaction holds the file's write lock from its start, so no other
    writer (a renewal, another worker's take) runs until it ends: these interleavings
    exist on PostgreSQL only."""
    if store_url.startswith("sqlite"):
        pytest.skip("SQLite runs one writer at a time: no renewal or take inside a transaction")


class TestTransactions:
    async def test_writes_and_checkpoint_commit_together(
        self, workers: Workers, sink: CheckpointStore
    ) -> None:
        await register(sink, 1)
        a = await workers("a")
        [lease] = await a.take_once()
        checkpointer = a.checkpointer(lease)
        async with checkpointer.transaction(lease.shard_id) as tx:
            await tx.connection.execute(totals.insert().values(customer="c1", total=5))
            await tx.checkpoint(SequenceNumber("100"))
        assert await total_rows(sink) == [("c1", 5)]
        assert await checkpoint_of(sink, sid(0)) == "100"

    async def test_an_error_in_the_block_rolls_both_back(
        self, workers: Workers, sink: CheckpointStore
    ) -> None:
        await register(sink, 1)
        a = await workers("a")
        [lease] = await a.take_once()
        with pytest.raises(RuntimeError, match="handler failed"):
            async with a.checkpointer(lease).transaction(lease.shard_id) as tx:
                await tx.connection.execute(totals.insert().values(customer="c1", total=5))
                await tx.checkpoint(SequenceNumber("100"))
                raise RuntimeError("handler failed")
        assert await total_rows(sink) == []
        assert await checkpoint_of(sink, sid(0)) is None

    async def test_a_zombie_commits_nothing(
        self, workers: Workers, sink: CheckpointStore, store_url: str
    ) -> None:
        """The lease was taken over while the handler ran: its writes are rolled back."""
        only_with_concurrent_writers(store_url)
        await register(sink, 1)
        clock_a, clock_b = FakeClock(0.0), FakeClock(0.0)
        a = await workers("a", clock=clock_a)
        b = await workers("b", clock=clock_b)
        await a.renew_once()
        [lease] = await a.take_once()
        with pytest.raises(LeaseLostError):
            async with a.checkpointer(lease).transaction(lease.shard_id) as tx:
                await tx.connection.execute(totals.insert().values(customer="c1", total=5))
                # Meanwhile b sees a stand still for a full lease and takes the shard over;
                # a's clock has not caught up, so only the store can refuse a's commit.
                await b.renew_once()
                await b.take_once()
                clock_b.advance(DURATION + 1)
                assert len(await b.take_once()) == 1
                await tx.checkpoint(SequenceNumber("100"))
        assert await total_rows(sink) == []
        assert await checkpoint_of(sink, sid(0)) is None
        [taken] = b.held().values()
        async with b.checkpointer(taken).transaction(taken.shard_id) as tx:
            await tx.connection.execute(totals.insert().values(customer="c1", total=5))
            await tx.checkpoint(SequenceNumber("100"))
        assert await total_rows(sink) == [("c1", 5)]

    async def test_a_renewal_between_start_and_checkpoint_is_no_loss(
        self, workers: Workers, sink: CheckpointStore, store_url: str
    ) -> None:
        """Renewals move the counter; the checkpoint uses the counter as of its write."""
        only_with_concurrent_writers(store_url)
        await register(sink, 1)
        a = await workers("a")
        [lease] = await a.take_once()
        async with a.checkpointer(lease).transaction(lease.shard_id) as tx:
            await tx.connection.execute(totals.insert().values(customer="c1", total=1))
            await a.renew_once()
            await tx.checkpoint(SequenceNumber("7"))
        assert await checkpoint_of(sink, sid(0)) == "7"
        assert await total_rows(sink) == [("c1", 1)]

    async def test_a_lost_lease_refuses_to_begin(
        self, workers: Workers, sink: CheckpointStore
    ) -> None:
        await register(sink, 1)
        clock = FakeClock(0.0)
        a = await workers("a", clock=clock)
        [lease] = await a.take_once()
        clock.advance(DURATION + 1)
        with pytest.raises(LeaseLostError, match="transaction refused"):
            async with a.checkpointer(lease).transaction(lease.shard_id):
                pass


def seqs(*numbers: int | str) -> list[SequenceNumber]:
    return [SequenceNumber(str(n)) for n in numbers]


class TestAppliedInLanes:
    """parallelization_factor > 1: a lane's transaction records the records it applied,
    since the checkpoint cannot pass them while an earlier record is pending elsewhere."""

    async def test_recorded_with_the_writes_and_read_back_past_the_checkpoint(
        self, workers: Workers, sink: CheckpointStore
    ) -> None:
        await register(sink, 1)
        a = await workers("a")
        [lease] = await a.take_once()
        checkpointer = a.checkpointer(lease)
        async with checkpointer.transaction(lease.shard_id) as tx:
            await tx.connection.execute(totals.insert().values(customer="c1", total=5))
            await tx.applied(seqs(120, 140), None)
        with pytest.raises(RuntimeError, match="handler failed"):
            async with checkpointer.transaction(lease.shard_id) as tx:
                await tx.connection.execute(totals.insert().values(customer="c2", total=1))
                await tx.applied(seqs(150), None)
                raise RuntimeError("handler failed")  # rolled back: 150 is not applied
        # Sequence numbers of different lengths compare as numbers, not as text.
        async with checkpointer.transaction(lease.shard_id) as tx:
            await tx.applied(seqs(1000), None)
        assert await total_rows(sink) == [("c1", 5)]
        assert await checkpointer.applied(lease.shard_id, None) == set(seqs(120, 140, 1000))
        assert await checkpointer.applied(lease.shard_id, SequenceNumber("99")) == set(
            seqs(120, 140, 1000)
        )
        # The checkpoint passed 140: that row is done and deleted; 1000 stays.
        await checkpointer.save(lease.shard_id, SequenceNumber("200"))
        assert await checkpointer.applied(lease.shard_id, SequenceNumber("200")) == set(seqs(1000))
        async with sink.engine.connect() as connection:
            rows = (await connection.execute(select(applied.c.sequence_numbers))).all()
        assert [json.loads(row[0]) for row in rows] == [["1000"]]

    async def test_a_transaction_drops_rows_the_checkpoint_passed(
        self, workers: Workers, sink: CheckpointStore
    ) -> None:
        await register(sink, 1)
        a = await workers("a")
        [lease] = await a.take_once()
        checkpointer = a.checkpointer(lease)
        for numbers in ((10, 30), (20,), (40,)):
            async with checkpointer.transaction(lease.shard_id) as tx:
                await tx.applied(seqs(*numbers), SequenceNumber("20"))
        async with sink.engine.connect() as connection:
            rows = (await connection.execute(select(applied.c.sequence_numbers))).all()
        # (20,) was dropped by the third transaction (checkpoint 20); (10, 30) ends past it.
        assert sorted(json.loads(row[0]) for row in rows) == [["10", "30"], ["40"]]

    async def test_kpl_positions_order_by_sub_sequence(
        self, workers: Workers, sink: CheckpointStore
    ) -> None:
        await register(sink, 1)
        a = await workers("a")
        [lease] = await a.take_once()
        checkpointer = a.checkpointer(lease)
        async with checkpointer.transaction(lease.shard_id) as tx:
            await tx.applied(seqs("500:2"), None)
        async with checkpointer.transaction(lease.shard_id) as tx:
            await tx.applied(seqs("500:9"), None)
        assert await checkpointer.applied(lease.shard_id, SequenceNumber("500:3")) == {
            SequenceNumber("500:9")
        }

    async def test_a_zombie_records_nothing(
        self, workers: Workers, sink: CheckpointStore, store_url: str
    ) -> None:
        only_with_concurrent_writers(store_url)
        await register(sink, 1)
        clock_b = FakeClock(0.0)
        a = await workers("a", clock=FakeClock(0.0))
        b = await workers("b", clock=clock_b)
        await a.renew_once()
        [lease] = await a.take_once()
        with pytest.raises(LeaseLostError):
            async with a.checkpointer(lease).transaction(lease.shard_id) as tx:
                await tx.connection.execute(totals.insert().values(customer="c1", total=5))
                await b.renew_once()
                await b.take_once()
                clock_b.advance(DURATION + 1)
                assert len(await b.take_once()) == 1
                await tx.applied(seqs(100), None)
        assert await total_rows(sink) == []
        [taken] = b.held().values()
        assert await b.checkpointer(taken).applied(taken.shard_id, None) == frozenset()

    async def test_collecting_the_finished_shard_deletes_its_rows(
        self, workers: Workers, sink: CheckpointStore
    ) -> None:
        await register(sink, 1)
        a = await workers("a")
        [lease] = await a.take_once()
        checkpointer = a.checkpointer(lease)
        async with checkpointer.transaction(lease.shard_id) as tx:
            await tx.applied(seqs(100), None)
        counter = lease.counter
        await checkpointer.finish(lease.shard_id, SequenceNumber("100"))
        assert await a.table.collect(lease.shard_id, counter + 1)  # a finish takes one step
        async with sink.engine.connect() as connection:
            assert (await connection.execute(select(applied))).all() == []


async def test_a_renewal_during_a_transaction_succeeds(
    workers: Workers, sink: CheckpointStore
) -> None:
    """A renewal that comes while a transaction is open waits for it (SQLite: one writer)
    or runs beside it (PostgreSQL); either way it renews, and the transaction commits. On
    SQLite the renewal used to hold the lease's lock while waiting for the file, and the
    transaction's checkpoint waited for that lock: both stalled until the renewal failed."""
    await register(sink, 1)
    a = await workers("a")
    [lease] = await a.take_once()
    counter = lease.counter
    async with a.checkpointer(lease).transaction(lease.shard_id) as tx:
        await tx.connection.execute(totals.insert().values(customer="c1", total=1))
        renewal = asyncio.create_task(a.renew_once())
        await asyncio.sleep(0.1)  # the renewal is under way
        await tx.applied(seqs(5), None)
        await tx.checkpoint(SequenceNumber("7"))
    await renewal
    assert lease.counter > counter  # renewed, not failed
    assert await checkpoint_of(sink, sid(0)) == "7"
    assert await total_rows(sink) == [("c1", 1)]


class TestStoreTrouble:
    async def test_landed_tells_a_committed_transaction_from_a_rolled_back_one(
        self, workers: Workers, sink: CheckpointStore
    ) -> None:
        """What a COMMIT that broke off is looked up with (CommitUnknownError.landed)."""
        await register(sink, 1)
        a = await workers("a")
        [lease] = await a.take_once()
        checkpointer = a.checkpointer(lease)
        async with checkpointer.transaction(lease.shard_id) as tx:
            await tx.checkpoint(SequenceNumber("100"))
        committed = tx._transaction
        with pytest.raises(RuntimeError):
            async with checkpointer.transaction(lease.shard_id) as tx:
                await tx.checkpoint(SequenceNumber("200"))
                raise RuntimeError("rolled back")
        rolled_back = tx._transaction
        async with checkpointer.transaction(lease.shard_id) as tx:
            await tx.applied(seqs(300, 301), None)
        in_lanes = tx._transaction
        with pytest.raises(RuntimeError):
            async with checkpointer.transaction(lease.shard_id) as tx:
                await tx.applied(seqs(400), None)
                raise RuntimeError("rolled back")
        assert await committed.landed()
        assert not await rolled_back.landed()
        assert await in_lanes.landed()
        assert not await tx._transaction.landed()

    async def test_a_statement_the_handler_let_fail_fails_the_invocation(
        self, workers: Workers, sink: CheckpointStore, store_url: str
    ) -> None:
        """PostgreSQL aborts a transaction at its first failed statement: a handler that
        caught the error and went on cannot commit, and that is its failure, not the
        store's (which would run it again and again without counting)."""
        if store_url.startswith("sqlite"):
            pytest.skip("SQLite does not abort a transaction at a failed statement")
        await register(sink, 1)
        a = await workers("a")
        [lease] = await a.take_once()
        with pytest.raises(HandlerError, match="a statement of the processor failed earlier"):
            async with a.checkpointer(lease).transaction(lease.shard_id) as tx:
                with contextlib.suppress(Exception):
                    await tx.connection.execute(text("SELECT 1 / 0"))
                await tx.checkpoint(SequenceNumber("100"))
        assert await checkpoint_of(sink, sid(0)) is None


async def test_the_sink_may_live_in_another_schema(
    workers: Workers, sink: CheckpointStore, store_url: str
) -> None:
    """PostgreSQL: the processor's tables in a schema of their own, in the store's database,
    commit and roll back with the checkpoint like any other."""
    if store_url.startswith("sqlite"):
        pytest.skip("schemas are a PostgreSQL matter")
    async with sink.engine.begin() as connection:
        await connection.execute(text("DROP SCHEMA IF EXISTS analytics CASCADE"))
        await connection.execute(text("CREATE SCHEMA analytics"))
        await connection.execute(text("CREATE TABLE analytics.totals (n INTEGER NOT NULL)"))
    await register(sink, 1)
    a = await workers("a")
    [lease] = await a.take_once()
    checkpointer = a.checkpointer(lease)
    add = text("INSERT INTO analytics.totals (n) VALUES (1)")
    async with checkpointer.transaction(lease.shard_id) as tx:
        await tx.connection.execute(add)
        await tx.checkpoint(SequenceNumber("100"))
    with pytest.raises(RuntimeError):
        async with checkpointer.transaction(lease.shard_id) as tx:
            await tx.connection.execute(add)
            await tx.checkpoint(SequenceNumber("200"))
            raise RuntimeError("handler failed")
    async with sink.engine.connect() as connection:
        count = (await connection.execute(text("SELECT count(*) FROM analytics.totals"))).scalar()
        await connection.execute(text("DROP SCHEMA analytics CASCADE"))
        await connection.commit()
    assert count == 1
    assert await checkpoint_of(sink, sid(0)) == "100"
