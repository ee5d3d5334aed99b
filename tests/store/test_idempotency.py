"""IdempotencyStore on SQLite and PostgreSQL: every test here runs against both.

Times are passed explicitly (``now``), so expiry is tested without sleeping: ``T0`` is when
a call begins, and the expiries are relative to it.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from shardwise.errors import StoreError
from shardwise.store import CheckpointStore
from shardwise.store import idempotency as store_module
from shardwise.store.engine import open_engine
from shardwise.store.idempotency import IdempotencyRecord, IdempotencyStatus, IdempotencyStore

NS = "orders.send_receipt"
T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)
MINUTE = timedelta(minutes=1)

IN_PROGRESS = IdempotencyStatus.IN_PROGRESS
COMPLETED = IdempotencyStatus.COMPLETED


@pytest.fixture
async def idem(store_url: str) -> AsyncIterator[IdempotencyStore]:
    async with await IdempotencyStore.connect(store_url) as opened:
        yield opened


async def begin(
    store: IdempotencyStore,
    key: str,
    token: str,
    *,
    at: datetime = T0,
    expires_after: timedelta = HOUR,
    in_progress_after: timedelta | None = MINUTE,
    namespace: str = NS,
) -> IdempotencyRecord | None:
    """try_begin at ``at``, with expiries relative to it."""
    return await store.try_begin(
        namespace,
        key,
        token=token,
        expires_at=at + expires_after,
        in_progress_expires_at=None if in_progress_after is None else at + in_progress_after,
        now=at,
    )


async def complete(
    store: IdempotencyStore, key: str, token: str | None, result: str, *, at: datetime = T0
) -> bool:
    return await store.complete(NS, key, token=token, result=result, expires_at=at + HOUR, now=at)


async def row(store: IdempotencyStore, key: str, namespace: str = NS) -> IdempotencyRecord:
    found = await store.get(namespace, key)
    assert found is not None, f"no row for {key!r}"
    return found


class TestBegin:
    """try_begin: the first call holds the key; a live row is returned untouched."""

    async def test_first_begin_holds_the_key(self, idem: IdempotencyStore) -> None:
        assert await begin(idem, "e-1", "a") is None
        held = await row(idem, "e-1")
        assert (held.namespace, held.key, held.status, held.token) == (NS, "e-1", IN_PROGRESS, "a")
        assert held.result is None
        assert held.expires_at == T0 + HOUR
        assert held.in_progress_expires_at == T0 + MINUTE
        assert held.created_at == held.updated_at == T0

    async def test_complete_then_repeat_returns_the_result(self, idem: IdempotencyStore) -> None:
        await begin(idem, "e-1", "a")
        assert await complete(idem, "e-1", "a", '{"sent": 1}', at=T0 + MINUTE / 2)
        repeat = await begin(idem, "e-1", "b", at=T0 + 2 * MINUTE)
        assert repeat is not None
        assert (repeat.status, repeat.result, repeat.token) == (COMPLETED, '{"sent": 1}', "a")
        # Completed rows count from completion and never lapse as "in progress".
        assert repeat.expires_at == T0 + MINUTE / 2 + HOUR
        assert repeat.in_progress_expires_at is None
        assert await row(idem, "e-1") == repeat

    async def test_in_progress_conflict(self, idem: IdempotencyStore) -> None:
        await begin(idem, "e-1", "a")
        before = await row(idem, "e-1")
        other = await begin(idem, "e-1", "b", at=T0 + MINUTE / 2)
        assert other == before  # the holder's row, untouched
        assert other.status is IN_PROGRESS
        assert other.token == "a"

    async def test_lapsed_in_progress_marker_is_taken_over(self, idem: IdempotencyStore) -> None:
        await begin(idem, "e-1", "crashed")
        later = T0 + MINUTE + timedelta(microseconds=1)
        assert await begin(idem, "e-1", "b", at=later) is None
        taken = await row(idem, "e-1")
        assert (taken.status, taken.token, taken.created_at) == (IN_PROGRESS, "b", later)
        assert taken.in_progress_expires_at == later + MINUTE
        # The crashed call, should it come back, can neither complete nor release it.
        assert not await complete(idem, "e-1", "crashed", '"late"', at=later)
        assert not await idem.release(NS, "e-1", token="crashed")
        assert await row(idem, "e-1") == taken

    async def test_marker_at_its_in_progress_expiry_is_still_live(
        self, idem: IdempotencyStore
    ) -> None:
        """Expiries are exclusive, as in Powertools: lapsed only when ``expiry < now``."""
        await begin(idem, "e-1", "a")
        existing = await begin(idem, "e-1", "b", at=T0 + MINUTE)
        assert existing is not None and existing.token == "a"

    async def test_marker_without_in_progress_expiry_lapses_only_at_expiry(
        self, idem: IdempotencyStore
    ) -> None:
        await begin(idem, "e-1", "a", in_progress_after=None)
        assert await begin(idem, "e-1", "b", at=T0 + HOUR) is not None
        assert await begin(idem, "e-1", "b", at=T0 + HOUR + timedelta(seconds=1)) is None
        assert (await row(idem, "e-1")).token == "b"

    async def test_expired_completed_row_runs_again(self, idem: IdempotencyStore) -> None:
        await begin(idem, "e-1", "a")
        await complete(idem, "e-1", "a", "1")
        # Past the in-progress expiry a completed row is still live ...
        assert await begin(idem, "e-1", "b", at=T0 + 2 * MINUTE) is not None
        # ... until its own expiry.
        after = T0 + HOUR + timedelta(seconds=1)
        assert await begin(idem, "e-1", "b", at=after) is None
        again = await row(idem, "e-1")
        assert (again.status, again.token, again.result) == (IN_PROGRESS, "b", None)
        assert again.expires_at == after + HOUR

    async def test_namespaces_are_separate(self, idem: IdempotencyStore) -> None:
        assert await begin(idem, "e-1", "a") is None
        assert await begin(idem, "e-1", "b", namespace="other") is None
        assert (await row(idem, "e-1")).token == "a"
        assert (await row(idem, "e-1", "other")).token == "b"

    async def test_payload_hash_is_kept(self, idem: IdempotencyStore) -> None:
        await idem.try_begin(
            NS,
            "e-1",
            token="a",
            expires_at=T0 + HOUR,
            in_progress_expires_at=None,
            payload_hash="h1",
            now=T0,
        )
        assert (await row(idem, "e-1")).payload_hash == "h1"
        await idem.complete(NS, "e-1", token="a", result="1", expires_at=T0 + HOUR)
        assert (await row(idem, "e-1")).payload_hash == "h1"  # None leaves it
        await idem.complete(
            NS, "e-1", token="a", result="1", expires_at=T0 + HOUR, payload_hash="h2"
        )
        assert (await row(idem, "e-1")).payload_hash == "h2"

    @pytest.mark.parametrize(
        ("status", "expires", "in_progress"),
        list(itertools.product(["in_progress", "completed"], [-1, 0, 1], [-1, 0, 1, None])),
    )
    async def test_lapsed_in_python_is_lapsed_in_sql(
        self, idem: IdempotencyStore, status: str, expires: int, in_progress: int | None
    ) -> None:
        """``IdempotencyRecord.lapsed`` says what try_begin does with a row, in every state
        (expiries a second before, at, or a second after ``now``)."""
        second, now = timedelta(seconds=1), T0 + 2 * HOUR
        await idem.try_begin(
            NS,
            "k",
            token="a",
            expires_at=now + expires * second,
            in_progress_expires_at=None if in_progress is None else now + in_progress * second,
            now=T0,
        )
        if status == "completed":  # which clears the in-progress expiry
            await idem.complete(NS, "k", token="a", result="1", expires_at=now + expires * second)
        stored = await row(idem, "k")
        assert stored.status.value == status
        taken = await begin(idem, "k", "b", at=now) is None
        assert taken == stored.lapsed(now)
        assert taken == (
            expires < 0 or (status == "in_progress" and in_progress is not None and in_progress < 0)
        )


class TestCompleteAndRelease:
    """Only the holder completes or releases; release never deletes a result."""

    async def test_complete_needs_the_holders_token(self, idem: IdempotencyStore) -> None:
        await begin(idem, "e-1", "a")
        assert not await complete(idem, "e-1", "b", "1")
        assert (await row(idem, "e-1")).status is IN_PROGRESS
        assert await complete(idem, "e-1", None, "1")  # None: whoever holds it
        assert (await row(idem, "e-1")).status is COMPLETED

    async def test_complete_without_a_row(self, idem: IdempotencyStore) -> None:
        assert not await complete(idem, "missing", "a", "1")
        assert await idem.get(NS, "missing") is None

    async def test_release_lets_the_next_call_run(self, idem: IdempotencyStore) -> None:
        await begin(idem, "e-1", "a")
        assert not await idem.release(NS, "e-1", token="b")
        assert await idem.release(NS, "e-1", token="a")
        assert await idem.get(NS, "e-1") is None
        assert await begin(idem, "e-1", "b") is None

    async def test_release_keeps_a_completed_row(self, idem: IdempotencyStore) -> None:
        await begin(idem, "e-1", "a")
        await complete(idem, "e-1", "a", "1")
        assert not await idem.release(NS, "e-1", token="a")
        assert not await idem.release(NS, "e-1", token=None)
        assert (await row(idem, "e-1")).result == "1"

    async def test_delete_removes_any_row(self, idem: IdempotencyStore) -> None:
        await begin(idem, "e-1", "a")
        await complete(idem, "e-1", "a", "1")
        assert await idem.delete(NS, "e-1")
        assert not await idem.delete(NS, "e-1")
        assert await idem.get(NS, "e-1") is None


class TestPurge:
    async def test_purge_deletes_expired_rows_only(self, idem: IdempotencyStore) -> None:
        await begin(idem, "old", "a", expires_after=MINUTE)
        await begin(idem, "old-other", "a", expires_after=MINUTE, namespace="other")
        await begin(idem, "young", "a", expires_after=HOUR)
        # An in-progress marker lapsed but not expired: the next call takes it over.
        await begin(idem, "crashed", "a", in_progress_after=timedelta(seconds=1))
        now = T0 + 2 * MINUTE
        assert await idem.purge_expired(namespace=NS, now=now) == 1
        assert await idem.get(NS, "old") is None
        assert await idem.get("other", "old-other") is not None
        assert await idem.purge_expired(now=now) == 1
        assert {r.key for r in [await row(idem, "young"), await row(idem, "crashed")]} == {
            "young",
            "crashed",
        }
        assert await idem.purge_expired(now=now) == 0

    async def test_purge_in_chunks(
        self, idem: IdempotencyStore, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(store_module, "PURGE_CHUNK", 3)
        for i in range(7):
            await begin(idem, f"k{i}", "a", expires_after=MINUTE)
        await begin(idem, "young", "a")
        assert await idem.purge_expired(now=T0 + 2 * MINUTE) == 7
        assert await idem.get(NS, "young") is not None


class TestConcurrency:
    """Many callers, one key: exactly one holds it, whatever the interleaving."""

    async def test_one_of_many_concurrent_begins_wins(self, store_url: str) -> None:
        # Separate engines: separate connections (and pools), as separate workers have.
        stores = [await IdempotencyStore.connect(store_url) for _ in range(4)]
        try:
            for round_ in range(5):
                key = f"race-{round_}"
                tokens = [f"t{i}" for i in range(24)]
                results = await asyncio.gather(
                    *(begin(stores[i % len(stores)], key, t) for i, t in enumerate(tokens))
                )
                winners = [t for t, r in zip(tokens, results, strict=True) if r is None]
                assert len(winners) == 1, winners
                held = await row(stores[0], key)
                assert held.token == winners[0]
                # Every loser saw the winner's row.
                assert {r.token for r in results if r is not None} == {winners[0]}
        finally:
            for store in stores:
                await store.close()

    async def test_one_of_many_concurrent_takeovers_wins(self, store_url: str) -> None:
        stores = [await IdempotencyStore.connect(store_url) for _ in range(4)]
        try:
            await begin(stores[0], "lapsed", "crashed")
            later = T0 + 2 * MINUTE
            tokens = [f"t{i}" for i in range(24)]
            results = await asyncio.gather(
                *(begin(stores[i % 4], "lapsed", t, at=later) for i, t in enumerate(tokens))
            )
            winners = [t for t, r in zip(tokens, results, strict=True) if r is None]
            assert len(winners) == 1, winners
            assert (await row(stores[0], "lapsed")).token == winners[0]
        finally:
            for store in stores:
                await store.close()


class TestBoundaries:
    async def test_bad_keys_are_refused_before_any_sql(self, idem: IdempotencyStore) -> None:
        with pytest.raises(ValueError, match="key must not be empty"):
            await begin(idem, "", "a")
        with pytest.raises(ValueError, match="1025 characters long; at most 1024 fit"):
            await begin(idem, "k" * 1025, "a")
        with pytest.raises(ValueError, match=r"namespace .* at most 200 fit"):
            await begin(idem, "k", "a", namespace="n" * 201)
        with pytest.raises(ValueError, match="expires_at must be a timezone-aware"):
            await idem.try_begin(
                NS,
                "k",
                token="a",
                expires_at=datetime(2030, 1, 1),  # noqa: DTZ001 - naive on purpose
                in_progress_expires_at=None,
            )
        assert await begin(idem, "k" * 1024, "a") is None  # the longest key fits, on both

    async def test_shares_a_checkpoint_stores_engine(self, store_url: str) -> None:
        async with await CheckpointStore.connect(store_url) as checkpoints:
            shared = IdempotencyStore(checkpoints.engine)
            assert await begin(shared, "e-1", "a") is None
            await shared.close()  # not its engine: still usable afterwards
            assert (await row(shared, "e-1")).token == "a"
            await checkpoints.ping()

    async def test_errors_name_the_key_and_hide_the_password(self) -> None:
        url = "postgresql+asyncpg://shardwise:s3cret-pw@127.0.0.1:1/shardwise"
        async with IdempotencyStore(open_engine(url), owns_engine=True) as store:
            with pytest.raises(StoreError) as caught:
                await begin(store, "e-1", "a")
        message = str(caught.value)
        assert message.startswith("idempotency begin of key 'e-1' in namespace ")
        assert "shardwise:***@127.0.0.1:1" in message
        assert "s3cret" not in message
        assert caught.value.retriable
