"""Coalesced fenced checkpoints on SQLite and PostgreSQL: one statement for every shard
waiting, each row still its own compare-and-set, writes of one shard in order."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import text

from shardwise.errors import LeaseLostError, StoreError
from shardwise.leases.table import LeaseTable
from shardwise.records import SequenceNumber, ShardId, StartingPosition
from shardwise.store import CheckpointStore, ShardRegistration
from tests.store.conftest import ARN, PROCESSOR, Holding, TakeLeases

SHARDS = [ShardId(f"shard-{i:03d}") for i in range(40)]


@pytest.fixture(autouse=True)
async def shards(store: CheckpointStore) -> None:
    """Forty shards, registered and free."""
    registrations = [ShardRegistration(s, None, StartingPosition.TRIM_HORIZON) for s in SHARDS]
    await store.register_shards(PROCESSOR, ARN, registrations)


@pytest.fixture
async def owned(take_leases: TakeLeases) -> Holding:
    """Worker "w" holding every shard's lease."""
    return await take_leases(SHARDS)


async def checkpoints(store: CheckpointStore) -> dict[str, str | None]:
    return {s: c.sequence_number for s, c in (await store.load(PROCESSOR, ARN)).items()}


async def test_concurrent_checkpoints_share_statements(
    store: CheckpointStore, owned: Holding
) -> None:
    table, counters = owned
    writer = store.checkpoint_writer
    before = writer.writes
    await asyncio.gather(
        *(table.save(s, counters[s], SequenceNumber(f"{100 + i}")) for i, s in enumerate(SHARDS))
    )
    assert await checkpoints(store) == {s: f"{100 + i}" for i, s in enumerate(SHARDS)}
    # The first save goes alone; the 39 that queued behind it go in one statement.
    assert writer.writes - before <= 2


async def test_each_row_is_fenced_on_its_own(store: CheckpointStore, owned: Holding) -> None:
    table, counters = owned
    stale = SHARDS[3]
    results = await asyncio.gather(
        *(table.save(s, counters[s] - (s == stale), SequenceNumber("500")) for s in SHARDS[:8]),
        return_exceptions=True,
    )
    assert isinstance(results[3], LeaseLostError)
    assert "shard-003" in str(results[3]) and "no longer holds the lease" in str(results[3])
    assert [r for i, r in enumerate(results) if i != 3] == [None] * 7
    stored = await checkpoints(store)
    assert stored[stale] is None
    assert all(stored[s] == "500" for s in SHARDS[:8] if s != stale)


async def test_another_workers_lease_is_never_written(
    store: CheckpointStore, owned: Holding
) -> None:
    _, counters = owned
    theirs = LeaseTable(store, processor=PROCESSOR, stream_arn=ARN, worker_id="other")
    with pytest.raises(LeaseLostError):
        await theirs.save(SHARDS[0], counters[SHARDS[0]], SequenceNumber("9"))
    assert (await checkpoints(store))[SHARDS[0]] is None


async def test_one_shards_writes_stay_in_order(store: CheckpointStore, owned: Holding) -> None:
    table, counters = owned
    shard = SHARDS[0]
    await asyncio.gather(
        *(table.save(shard, counters[shard], SequenceNumber(str(n))) for n in range(1, 21))
    )
    assert (await checkpoints(store))[shard] == "20"


async def test_close_writes_what_is_queued(
    store_url: str, store: CheckpointStore, owned: Holding
) -> None:
    table, counters = owned
    saves = [
        asyncio.ensure_future(table.save(s, counters[s], SequenceNumber("77"))) for s in SHARDS
    ]
    await asyncio.sleep(0)
    await store.close()
    await asyncio.gather(*saves)
    async with await CheckpointStore.connect(store_url) as again:
        assert set((await checkpoints(again)).values()) == {"77"}
    with pytest.raises(StoreError, match="store is closed"):
        await table.save(SHARDS[0], counters[SHARDS[0]], SequenceNumber("78"))


async def save_retrying(table: LeaseTable, shard: ShardId, counter: int, sequence: str) -> int:
    """Save as the consumer does (a StoreError is retried); how many attempts failed."""
    failures = 0
    while True:
        try:
            await table.save(shard, counter, SequenceNumber(sequence))
        except StoreError as exc:
            assert "checkpoint failed" in str(exc)
            failures += 1
            assert failures < 3, "the writer did not recover"
        else:
            return failures


async def test_a_broken_connection_is_replaced(store: CheckpointStore, owned: Holding) -> None:
    table, counters = owned
    shard = SHARDS[0]
    await table.save(shard, counters[shard], SequenceNumber("1"))
    writer = store.checkpoint_writer
    driver = writer._driver  # the test breaks the writer's own connection
    assert driver is not None
    await driver.close()
    # Seen closed before use (PostgreSQL), or one failed attempt (SQLite), never more.
    assert await save_retrying(table, shard, counters[shard], "2") <= 1
    assert writer._driver is not driver
    assert (await checkpoints(store))[shard] == "2"


async def test_postgres_restart_of_the_backend(
    store: CheckpointStore, store_url: str, owned: Holding
) -> None:
    if not store_url.startswith("postgresql"):
        pytest.skip("a server-side disconnect is a PostgreSQL matter")
    table, counters = owned
    shard = SHARDS[1]
    await table.save(shard, counters[shard], SequenceNumber("1"))
    async with store.engine.connect() as admin:
        await admin.execute(
            text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        )
        await admin.commit()
    # The dead connection is noticed at once or costs one failed attempt, never more.
    assert await save_retrying(table, shard, counters[shard], "2") <= 1
    assert (await checkpoints(store))[shard] == "2"
