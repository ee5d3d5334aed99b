"""CheckpointStore on SQLite and PostgreSQL: every test here runs against both.

Checkpoints are written as the daemon writes them, through a lease (``take_leases``).
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shardwise.errors import LeaseLostError, StoreError, StoreSchemaError
from shardwise.leases.table import LeaseTable
from shardwise.records import Position, SequenceNumber, ShardId, StartingPosition
from shardwise.store import CheckpointStore, ShardRegistration, redact_url
from shardwise.store.engine import open_engine
from tests.store.conftest import ARN, TakeLeases

OTHER_ARN = ARN.replace("orders", "invoices")
LONG_SEQ = SequenceNumber("1234567890123456789012345678901234567890")


def shard(
    shard_id: str,
    parent: str | None = None,
    start: StartingPosition = StartingPosition.TRIM_HORIZON,
    *,
    finished: bool = False,
) -> ShardRegistration:
    return ShardRegistration(
        ShardId(shard_id), None if parent is None else ShardId(parent), start, finished
    )


@dataclass(frozen=True, slots=True)
class Leased:
    """One registered shard whose lease this worker holds: its checkpoints, fenced."""

    table: LeaseTable
    shard_id: ShardId
    counter: int

    async def save(self, sequence_number: str) -> None:
        await self.table.save(self.shard_id, self.counter, SequenceNumber(sequence_number))

    async def finish(self, sequence_number: str | None = None) -> None:
        last = None if sequence_number is None else SequenceNumber(sequence_number)
        await self.table.finish(self.shard_id, self.counter, last)


@pytest.fixture
async def s1(store: CheckpointStore, take_leases: TakeLeases) -> Leased:
    """Shard s-1 of processor "orders", registered and leased."""
    await store.register_shards("orders", ARN, [shard("s-1")])
    table, counters = await take_leases([ShardId("s-1")])
    return Leased(table, ShardId("s-1"), counters[ShardId("s-1")])


class TestConnect:
    """Opening a store: schema handling, bad URLs and unreachable servers."""

    async def test_connect_migrates_and_pings(self, store_url: str) -> None:
        async with await CheckpointStore.connect(store_url) as store:
            await store.ping()
            assert await store.list() == []

    async def test_connect_without_migrate_on_empty_database(self, store_url: str) -> None:
        with pytest.raises(StoreSchemaError, match="run `shardwise db upgrade`") as caught:
            await CheckpointStore.connect(store_url, migrate=False)
        assert redact_url(store_url) in str(caught.value)

    async def test_connect_without_migrate_after_upgrade(self, store_url: str) -> None:
        await (await CheckpointStore.connect(store_url)).close()
        async with await CheckpointStore.connect(store_url, migrate=False) as store:
            await store.ping()

    async def test_closed_store_refuses_work(self, store_url: str) -> None:
        store = await CheckpointStore.connect(store_url)
        await store.close()
        await store.close()
        with pytest.raises(RuntimeError, match="closed"):
            await store.load("orders", ARN)

    @pytest.mark.parametrize(
        "url",
        [
            "sqlite+aiosqlite://",
            "sqlite+aiosqlite:///:memory:",
            "sqlite:///file::memory:?cache=shared&uri=true",
        ],
    )
    async def test_in_memory_sqlite_is_refused(self, url: str) -> None:
        with pytest.raises(ValueError, match="in-memory SQLite"):
            await CheckpointStore.connect(url)

    async def test_unsupported_database_is_refused(self) -> None:
        with pytest.raises(ValueError, match="unsupported checkpoint store") as caught:
            await CheckpointStore.connect("mysql+aiomysql://app:hunter2@db/app")
        assert "hunter2" not in str(caught.value)

    async def test_unreachable_postgres_names_redacted_url(self) -> None:
        url = "postgresql+asyncpg://shardwise:s3cret-pw@127.0.0.1:1/shardwise"
        with pytest.raises(StoreError) as caught:
            await CheckpointStore.connect(url)
        message = str(caught.value)
        assert "s3cret-pw" not in message
        assert "postgresql+asyncpg://shardwise:***@127.0.0.1:1/shardwise" in message
        assert "connection refused" in message
        assert caught.value.retriable

    async def test_missing_postgres_database_is_explained(self, postgres_url: str) -> None:
        url = postgres_url.rsplit("/", 1)[0] + "/shardwise_no_such_db"
        with pytest.raises(StoreError, match='database "shardwise_no_such_db" does not exist'):
            await CheckpointStore.connect(url)

    async def test_sqlite_is_durable_and_waits_for_locks(self, sqlite_url: str) -> None:
        await (await CheckpointStore.connect(sqlite_url)).close()
        engine = open_engine(sqlite_url)
        try:
            async with engine.connect() as connection:
                pragma = connection.exec_driver_sql
                assert (await pragma("PRAGMA journal_mode")).scalar() == "wal"
                assert (await pragma("PRAGMA synchronous")).scalar() == 2  # FULL
                assert (await pragma("PRAGMA busy_timeout")).scalar() == 10_000
        finally:
            await engine.dispose()


class TestRedactUrl:
    """redact_url hides passwords wherever a URL carries one."""

    @pytest.mark.parametrize(
        ("url", "redacted"),
        [
            (
                "postgresql+asyncpg://app:p%40ss@db:5432/cp",
                "postgresql+asyncpg://app:***@db:5432/cp",
            ),
            ("postgresql://app@db/cp?password=hunter2", "postgresql://app@db/cp?password=***"),
            ("sqlite+aiosqlite:////var/lib/sw.db", "sqlite+aiosqlite:////var/lib/sw.db"),
            ("nonsense://app:hunter2@db:port/x", "nonsense://app:***@db:port/x"),
        ],
    )
    def test_redact(self, url: str, redacted: str) -> None:
        assert redact_url(url) == redacted


class TestRegisterShards:
    """Registration inserts missing shards once and never touches existing rows."""

    async def test_register_returns_rows_inserted(self, store: CheckpointStore) -> None:
        inserted = await store.register_shards(
            "orders", ARN, [shard("s-1"), shard("s-2", parent="s-1", finished=True)]
        )
        assert inserted == 2
        loaded = await store.load("orders", ARN)
        assert loaded[ShardId("s-2")].parent_shard_id == "s-1"
        assert loaded[ShardId("s-2")].finished
        assert loaded[ShardId("s-1")].sequence_number is None
        assert loaded[ShardId("s-1")].position == Position(start=StartingPosition.TRIM_HORIZON)

    async def test_a_merged_shard_keeps_both_parents(self, store: CheckpointStore) -> None:
        merged = ShardRegistration(
            ShardId("s-3"),
            ShardId("s-1"),
            StartingPosition.TRIM_HORIZON,
            adjacent_parent_shard_id=ShardId("s-2"),
        )
        await store.register_shards("orders", ARN, [shard("s-1"), shard("s-2"), merged])
        loaded = await store.load("orders", ARN)
        assert loaded[ShardId("s-3")].parent_shard_id == "s-1"
        assert loaded[ShardId("s-3")].adjacent_parent_shard_id == "s-2"
        assert loaded[ShardId("s-2")].adjacent_parent_shard_id is None

    async def test_register_is_idempotent_and_keeps_checkpoints(
        self, store: CheckpointStore, s1: Leased
    ) -> None:
        await s1.save(LONG_SEQ)
        again = await store.register_shards(
            "orders", ARN, [shard("s-1", parent="s-0", start=StartingPosition.LATEST)]
        )
        assert again == 0
        saved = (await store.load("orders", ARN))[ShardId("s-1")]
        assert saved.sequence_number == LONG_SEQ
        assert saved.parent_shard_id is None
        assert saved.start_position is StartingPosition.TRIM_HORIZON

    async def test_duplicates_in_one_call_count_once(self, store: CheckpointStore) -> None:
        assert await store.register_shards("orders", ARN, [shard("s-1"), shard("s-1")]) == 1

    async def test_nothing_to_register_sends_nothing(self, store: CheckpointStore) -> None:
        before = store.statements
        assert await store.register_shards("orders", ARN, []) == 0
        assert store.statements == before

    async def test_concurrent_registration_inserts_each_row_once(self, store_url: str) -> None:
        shards = [shard(f"shardId-{i:05d}") for i in range(300)]
        async with (
            await CheckpointStore.connect(store_url) as first,
            await CheckpointStore.connect(store_url) as second,
        ):
            counts = await asyncio.gather(
                first.register_shards("orders", ARN, shards),
                second.register_shards("orders", ARN, list(reversed(shards))),
            )
            assert sum(counts) == len(shards)
            assert len(await first.load("orders", ARN)) == len(shards)

    async def test_thousands_of_shards_in_few_statements(self, store: CheckpointStore) -> None:
        shards = [shard(f"shardId-{i:05d}", parent=f"shardId-{i - 1:05d}") for i in range(2000)]
        before = store.statements
        assert await store.register_shards("orders", ARN, shards) == 2000
        assert store.statements - before <= 4
        assert await store.register_shards("orders", ARN, shards) == 0
        assert len(await store.load("orders", ARN)) == 2000


class TestSaveAndLoad:
    """Checkpoints written through a lease round-trip exactly, one statement per save."""

    async def test_long_sequence_number_round_trips(
        self, store: CheckpointStore, s1: Leased
    ) -> None:
        await s1.save(LONG_SEQ)
        saved = (await store.load("orders", ARN))[ShardId("s-1")]
        assert saved.sequence_number == LONG_SEQ
        assert saved.position == Position.after_sequence(LONG_SEQ)

    async def test_shorter_number_after_longer_is_stored_as_given(
        self, store: CheckpointStore, s1: Leased
    ) -> None:
        await s1.save("900")
        await s1.save("1000")
        assert (await store.load("orders", ARN))[ShardId("s-1")].sequence_number == "1000"

    async def test_load_is_scoped_to_processor_and_stream(self, store: CheckpointStore) -> None:
        await store.register_shards("orders", ARN, [shard("s-1")])
        await store.register_shards("orders", OTHER_ARN, [shard("s-2")])
        await store.register_shards("audit", ARN, [shard("s-3")])
        assert list(await store.load("orders", ARN)) == ["s-1"]
        assert await store.load("nobody", ARN) == {}

    async def test_save_counts_one_statement(self, store: CheckpointStore, s1: Leased) -> None:
        before = store.statements
        for number in range(1, 11):
            await s1.save(str(number))
        assert store.statements - before == 10

    async def test_save_updates_timestamp_in_utc(self, store: CheckpointStore, s1: Leased) -> None:
        registered = (await store.load("orders", ARN))[ShardId("s-1")].updated_at
        await s1.save("5")
        saved = (await store.load("orders", ARN))[ShardId("s-1")].updated_at
        assert saved.tzinfo is UTC
        assert registered <= saved <= datetime.now(UTC)

    async def test_save_unknown_shard_names_it(self, take_leases: TakeLeases) -> None:
        table, _ = await take_leases([])
        with pytest.raises(
            LeaseLostError,
            match=r"^checkpoint refused \(processor 'orders', shard 's-9'\): worker 'w' no longer",
        ):
            await table.save(ShardId("s-9"), 1, SequenceNumber("1"))

    async def test_checkpoints_survive_reconnect(
        self, store_url: str, store: CheckpointStore, s1: Leased
    ) -> None:
        await s1.save(LONG_SEQ)
        await store.close()
        async with await CheckpointStore.connect(store_url, migrate=False) as reopened:
            saved = (await reopened.load("orders", ARN))[ShardId("s-1")]
        assert saved.sequence_number == LONG_SEQ

    async def test_cancelled_save_returns_its_connection(
        self, store: CheckpointStore, s1: Leased
    ) -> None:
        for _ in range(5):
            task = asyncio.create_task(s1.save("7"))
            await asyncio.sleep(0)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        # Every connection is back: the pool can still hand out all of them at once.
        await asyncio.wait_for(asyncio.gather(*(store.ping() for _ in range(10))), timeout=10)
        await s1.save("8")
        assert (await store.load("orders", ARN))[ShardId("s-1")].sequence_number == "8"


class TestFinish:
    """finish marks a shard done, with or without a last sequence number."""

    async def test_finish_keeps_checkpoint(self, store: CheckpointStore, s1: Leased) -> None:
        await s1.save("41")
        await s1.finish()
        done = (await store.load("orders", ARN))[ShardId("s-1")]
        assert done.finished
        assert done.sequence_number == "41"

    async def test_finish_with_sequence_number(self, store: CheckpointStore, s1: Leased) -> None:
        await s1.finish(LONG_SEQ)
        done = (await store.load("orders", ARN))[ShardId("s-1")]
        assert (done.finished, done.sequence_number) == (True, LONG_SEQ)

    async def test_finish_unknown_shard_names_it(self, take_leases: TakeLeases) -> None:
        table, _ = await take_leases([])
        with pytest.raises(
            LeaseLostError, match=r"^finish refused \(processor 'orders', shard 's-9'\)"
        ):
            await table.finish(ShardId("s-9"), 1, None)


class TestList:
    """list orders by processor, stream and shard, optionally for one processor."""

    async def test_list_order_and_filter(self, store: CheckpointStore) -> None:
        await store.register_shards("orders", OTHER_ARN, [shard("s-2")])
        await store.register_shards("orders", ARN, [shard("s-3"), shard("s-1")])
        await store.register_shards("audit", ARN, [shard("s-9")])
        everything = [(c.processor, c.stream_arn, c.shard_id) for c in await store.list()]
        assert everything == [
            ("audit", ARN, "s-9"),
            ("orders", OTHER_ARN, "s-2"),
            ("orders", ARN, "s-1"),
            ("orders", ARN, "s-3"),
        ]
        assert [c.shard_id for c in await store.list("audit")] == ["s-9"]
        assert await store.list("nobody") == []

    async def test_list_orders_by_code_point_on_every_backend(self, store: CheckpointStore) -> None:
        names = ["ab", "a-b", "B", "a", "a_b", "Ab"]
        for name in names:
            await store.register_shards(name, ARN, [shard("s-1")])
        assert [c.processor for c in await store.list()] == sorted(names)


class TestErrors:
    """Database failures surface as StoreError naming the operation and redacted URL."""

    async def test_missing_table_is_a_store_error(self, store_url: str) -> None:
        await (await CheckpointStore.connect(store_url)).close()
        engine = open_engine(store_url)
        try:
            async with engine.begin() as connection:
                await connection.exec_driver_sql("DROP TABLE shardwise_checkpoints")
        finally:
            await engine.dispose()
        async with await CheckpointStore.connect(store_url, migrate=False) as store:
            with pytest.raises(
                StoreError, match=r"^load failed \(processor 'orders'\) on "
            ) as caught:
                await store.load("orders", ARN)
        assert redact_url(store_url) in str(caught.value)
        assert "shardwise_checkpoints" in str(caught.value)


@st.composite
def increasing_saves(draw: st.DrawFn) -> dict[str, list[SequenceNumber]]:
    """Per shard, a strictly increasing run of sequence numbers up to 40 digits."""
    shard_ids = draw(st.lists(st.sampled_from(["s-1", "s-2", "s-3"]), min_size=1, unique=True))
    runs: dict[str, list[SequenceNumber]] = {}
    for shard_id in shard_ids:
        numbers = draw(st.lists(st.integers(1, 10**40 - 1), min_size=1, max_size=12, unique=True))
        runs[shard_id] = [SequenceNumber(str(n)) for n in sorted(numbers)]
    return runs


class TestCheckpointProperties:
    """Whatever the saves, load returns the last sequence number saved per shard."""

    @settings(
        max_examples=25,
        deadline=None,
        # The store is shared by all examples on purpose; each example uses a new processor.
        suppress_health_check=[HealthCheck.function_scoped_fixture],
    )
    @given(runs=increasing_saves())
    async def test_load_returns_last_save(
        self,
        store: CheckpointStore,
        take_leases: TakeLeases,
        runs: dict[str, list[SequenceNumber]],
    ) -> None:
        processor = f"p-{uuid.uuid4().hex[:8]}"
        await store.register_shards(processor, ARN, [shard(shard_id) for shard_id in runs])
        table, counters = await take_leases(map(ShardId, runs), processor=processor)
        for shard_id, numbers in runs.items():
            for number in numbers:
                await table.save(ShardId(shard_id), counters[ShardId(shard_id)], number)
        loaded = await store.load(processor, ARN)
        assert {k: v.sequence_number for k, v in loaded.items()} == {
            shard_id: numbers[-1] for shard_id, numbers in runs.items()
        }
