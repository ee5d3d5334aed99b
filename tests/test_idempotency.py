"""``shardwise.idempotency``: ``@idempotent`` and Powertools' ``SqlPersistenceLayer``.

Every test runs on SQLite and on PostgreSQL (``store_url``). Side effects are counted in
lists; a repeat must leave them as they were. Handlers run the way shardwise runs them
(``build_processor``: sync ones in its thread pool, async ones on the loop), and the
Powertools handler also under a running shardwise against moto's DynamoDB stream.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aws_lambda_powertools.utilities.data_classes.dynamo_db_stream_event import DynamoDBRecord
from aws_lambda_powertools.utilities.idempotency import IdempotencyConfig, idempotent_function
from aws_lambda_powertools.utilities.idempotency import idempotent as powertools_idempotent
from aws_lambda_powertools.utilities.idempotency.exceptions import (
    IdempotencyAlreadyInProgressError,
    IdempotencyItemAlreadyExistsError,
    IdempotencyItemNotFoundError,
    IdempotencyValidationError,
)
from aws_lambda_powertools.utilities.idempotency.persistence.datarecord import DataRecord
from structlog.testing import capture_logs

from shardwise.errors import StoreError
from shardwise.idempotency import (
    Idempotency,
    IdempotencyInProgressError,
    IdempotencyKeyError,
    IdempotencyResultError,
    configure_idempotency,
    decorator,
    idempotent,
    record_key,
)
from shardwise.idempotency.powertools import SqlPersistenceLayer
from shardwise.processors import LambdaContext, build_processor
from shardwise.records import Batch, ShardId
from shardwise.store import CheckpointStore
from shardwise.store.idempotency import IdempotencyStatus, IdempotencyStore
from tests.e2e import create_table, read_jsonl, running, settings_for, wait_until, write_module

ARN = "arn:aws:dynamodb:us-east-1:123456789012:table/Orders/stream/2026-01-01T00:00:00.000"
KINESIS_ARN = "arn:aws:kinesis:us-east-1:123456789012:stream/orders"
NS = "receipts"
REPO = Path(__file__).resolve().parents[1]


def ddb_record(event_id: str, order: str = "o-1", sequence: str = "100") -> dict[str, Any]:
    """A DynamoDB Streams record as Lambda delivers it."""
    return {
        "eventID": event_id,
        "eventName": "INSERT",
        "eventVersion": "1.1",
        "eventSource": "aws:dynamodb",
        "awsRegion": "us-east-1",
        "eventSourceARN": ARN,
        "dynamodb": {
            "ApproximateCreationDateTime": 1_767_225_600,
            "Keys": {"order_id": {"S": order}},
            "NewImage": {"order_id": {"S": order}},
            "SequenceNumber": sequence,
            "SizeBytes": 26,
            "StreamViewType": "NEW_AND_OLD_IMAGES",
        },
    }


def kinesis_record(sequence: str, sub: int | None = None) -> dict[str, Any]:
    """A Kinesis record as Lambda delivers it; with ``sub``, a KPL user record as shardwise
    splits it out of its aggregate (sources/kpl.py: the aggregate's eventID is kept)."""
    body: dict[str, Any] = {
        "kinesisSchemaVersion": "1.0",
        "partitionKey": "k",
        "sequenceNumber": sequence,
        "data": "e30=",
        "approximateArrivalTimestamp": 1_767_225_600.0,
    }
    if sub is not None:
        body["subSequenceNumber"] = sub
    return {
        "eventSource": "aws:kinesis",
        "eventVersion": "1.0",
        "eventID": f"shardId-000000000000:{sequence}",
        "eventName": "aws:kinesis:record",
        "awsRegion": "us-east-1",
        "eventSourceARN": KINESIS_ARN,
        "kinesis": body,
    }


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Idempotency]:
    opened = Idempotency(store_url)
    yield opened
    await opened.aclose()


@pytest.fixture
async def rows(store_url: str) -> AsyncIterator[IdempotencyStore]:
    """The same database, read directly."""
    async with await IdempotencyStore.connect(store_url) as opened:
        yield opened


class TestKeys:
    def test_dynamodb_records_are_keyed_by_event_id(self) -> None:
        assert record_key(ddb_record("c4ca4238a0b923820dcc509a6f75849b")) == (
            "c4ca4238a0b923820dcc509a6f75849b"
        )

    def test_kinesis_records_are_keyed_by_shard_and_sequence(self) -> None:
        assert record_key(kinesis_record("4954")) == "shardId-000000000000:4954"

    def test_kpl_user_records_of_one_aggregate_have_keys_of_their_own(self) -> None:
        keys = [record_key(kinesis_record("4954", sub)) for sub in range(3)]
        assert keys == [f"shardId-000000000000:4954:{sub}" for sub in range(3)]

    def test_a_powertools_record_is_keyed_as_its_raw_event(self) -> None:
        raw = ddb_record("e-1")
        assert record_key(DynamoDBRecord(raw)) == "e-1"

    def test_a_record_without_event_id(self) -> None:
        raw = ddb_record("")
        with pytest.raises(IdempotencyKeyError, match=r"no eventID .* pass key="):
            record_key(raw)
        with pytest.raises(IdempotencyKeyError, match="not a stream record: int"):
            record_key(42)


class TestAsyncFunctions:
    async def test_a_repeat_returns_the_stored_result(self, store: Idempotency) -> None:
        sent: list[str] = []

        @idempotent(using=store, namespace=NS)
        async def send(record: dict[str, Any], channel: str) -> dict[str, Any]:
            sent.append(record["eventID"])
            return {"sent": record["eventID"], "channel": channel, "ids": (1, 2)}

        first = await send(ddb_record("e-1"), "email")
        assert first == {"sent": "e-1", "channel": "email", "ids": (1, 2)}
        # The repeat is the stored JSON: the tuple comes back a list.
        again = await send(ddb_record("e-1"), channel="sms")
        assert again == {"sent": "e-1", "channel": "email", "ids": [1, 2]}
        assert await send(ddb_record("e-2"), "email") == {
            "sent": "e-2",
            "channel": "email",
            "ids": (1, 2),
        }
        assert sent == ["e-1", "e-2"]

    async def test_a_failed_call_is_released_and_runs_again(
        self, store: Idempotency, rows: IdempotencyStore
    ) -> None:
        calls: list[int] = []

        @idempotent(using=store, namespace=NS)
        async def flaky(record: dict[str, Any]) -> int:
            calls.append(1)
            if len(calls) == 1:
                raise ConnectionError("mail server down")
            return len(calls)

        with pytest.raises(ConnectionError, match="mail server down"):
            await flaky(ddb_record("e-1"))
        assert await rows.get(NS, "e-1") is None
        assert await flaky(ddb_record("e-1")) == 2
        assert await flaky(ddb_record("e-1")) == 2
        assert len(calls) == 2

    async def test_a_call_in_progress_holds_the_key(self, store: Idempotency) -> None:
        started, finish = asyncio.Event(), asyncio.Event()
        calls: list[int] = []

        @idempotent(using=store, namespace=NS)
        async def slow(record: dict[str, Any]) -> str:
            calls.append(1)
            started.set()
            await finish.wait()
            return "done"

        first = asyncio.create_task(slow(ddb_record("e-1")))
        await started.wait()
        with pytest.raises(IdempotencyInProgressError) as caught:
            await slow(ddb_record("e-1"))
        assert caught.value.key == "e-1"
        assert caught.value.namespace == NS
        assert caught.value.retriable
        assert "'e-1' in 'receipts' is held by a call in progress" in str(caught.value)
        finish.set()
        assert await first == "done"
        assert await slow(ddb_record("e-1")) == "done"
        assert len(calls) == 1

    async def test_a_crashed_calls_marker_lapses(
        self, store_url: str, rows: IdempotencyStore
    ) -> None:
        """A call that died holding the key (its process killed): the marker it left lapses
        after in_progress_expires_after_seconds, and the next call runs."""
        short = Idempotency(store_url, in_progress_expires_after_seconds=0.5)
        now = datetime.now(UTC)
        crashed = await rows.try_begin(
            NS,
            "e-1",
            token="crashed",
            expires_at=now + timedelta(hours=1),
            in_progress_expires_at=now + timedelta(seconds=0.5),
        )
        assert crashed is None
        calls: list[int] = []

        @idempotent(using=short, namespace=NS)
        async def send(record: dict[str, Any]) -> str:
            calls.append(1)
            return "sent"

        try:
            with pytest.raises(IdempotencyInProgressError):
                await send(ddb_record("e-1"))
            await asyncio.sleep(0.6)
            assert await send(ddb_record("e-1")) == "sent"
            assert await send(ddb_record("e-1")) == "sent"
        finally:
            await short.aclose()
        assert len(calls) == 1
        done = await rows.get(NS, "e-1")
        assert done is not None and done.status is IdempotencyStatus.COMPLETED

    async def test_an_expired_result_runs_again(self, store_url: str) -> None:
        brief = Idempotency(store_url, expires_after_seconds=0.3)
        calls: list[int] = []

        @idempotent(using=brief, namespace=NS)
        async def send(record: dict[str, Any]) -> int:
            calls.append(1)
            return len(calls)

        try:
            assert await send(ddb_record("e-1")) == 1
            assert await send(ddb_record("e-1")) == 1
            await asyncio.sleep(0.4)
            assert await send(ddb_record("e-1")) == 2
        finally:
            await brief.aclose()

    async def test_a_cancelled_call_is_released(
        self, store: Idempotency, rows: IdempotencyStore
    ) -> None:
        """The handler's timeout cancels an async call: its marker goes, the retry runs."""
        calls: list[int] = []

        @idempotent(using=store, namespace=NS)
        async def hangs_once(record: dict[str, Any]) -> str:
            calls.append(1)
            if len(calls) == 1:
                await asyncio.Event().wait()
            return "sent"

        with pytest.raises(TimeoutError):
            await asyncio.wait_for(hangs_once(ddb_record("e-1")), timeout=0.5)
        for _ in range(100):
            if await rows.get(NS, "e-1") is None:
                break
            await asyncio.sleep(0.02)
        assert await hangs_once(ddb_record("e-1")) == "sent"
        assert len(calls) == 2

    async def test_a_result_json_cannot_hold(
        self, store: Idempotency, rows: IdempotencyStore
    ) -> None:
        calls: list[int] = []

        @idempotent(using=store, namespace=NS)
        async def returns_a_set(record: dict[str, Any]) -> Any:
            calls.append(1)
            return {1, 2} if len(calls) == 1 else [1, 2]

        with pytest.raises(IdempotencyResultError, match=r"key 'e-1' in 'receipts'.*JSON") as e:
            await returns_a_set(ddb_record("e-1"))
        assert isinstance(e.value, TypeError)
        assert await rows.get(NS, "e-1") is None  # released: fixed code runs it again
        assert await returns_a_set(ddb_record("e-1")) == [1, 2]


class TestSyncFunctions:
    """Sync functions run in threads (shardwise's pool) and reach the store from there."""

    async def test_a_repeat_returns_the_stored_result(self, store: Idempotency) -> None:
        sent: list[str] = []
        loop_threads: set[int] = set()

        @idempotent(using=store, namespace=NS)
        def send(record: dict[str, Any]) -> dict[str, str]:
            loop_threads.add(threading.get_ident())
            sent.append(record["eventID"])
            return {"sent": record["eventID"]}

        assert await asyncio.to_thread(send, ddb_record("e-1")) == {"sent": "e-1"}
        assert await asyncio.to_thread(send, ddb_record("e-1")) == {"sent": "e-1"}
        assert sent == ["e-1"]
        assert threading.get_ident() not in loop_threads

    async def test_a_failed_call_is_released_and_runs_again(self, store: Idempotency) -> None:
        calls: list[int] = []

        @idempotent(using=store, namespace=NS)
        def flaky(record: dict[str, Any]) -> int:
            calls.append(1)
            if len(calls) == 1:
                raise ConnectionError("mail server down")
            return len(calls)

        with pytest.raises(ConnectionError):
            await asyncio.to_thread(flaky, ddb_record("e-1"))
        assert await asyncio.to_thread(flaky, ddb_record("e-1")) == 2
        assert await asyncio.to_thread(flaky, ddb_record("e-1")) == 2

    async def test_a_result_json_cannot_hold(self, store: Idempotency) -> None:
        @idempotent(using=store, namespace=NS)
        def returns_bytes(record: dict[str, Any]) -> bytes:
            return b"receipt"

        with pytest.raises(IdempotencyResultError, match="key 'e-1' in 'receipts'"):
            await asyncio.to_thread(returns_bytes, ddb_record("e-1"))

    def test_usable_from_one_event_loop_after_another(self, sqlite_url: str) -> None:
        """Built before any loop, used by two loops in turn and by a plain thread: the store
        lives on its own loop, so none of theirs owns its connections."""
        store = Idempotency(sqlite_url)
        calls: list[str] = []

        @idempotent(using=store, namespace=NS)
        async def send(record: dict[str, Any]) -> str:
            calls.append(record["eventID"])
            return str(record["eventID"])

        @idempotent(using=store, namespace="sync")
        def send_sync(record: dict[str, Any]) -> str:
            calls.append(record["eventID"])
            return str(record["eventID"])

        try:
            assert asyncio.run(send(ddb_record("e-1"))) == "e-1"
            assert asyncio.run(send(ddb_record("e-1"))) == "e-1"
            assert asyncio.run(send(ddb_record("e-2"))) == "e-2"
            assert send_sync(ddb_record("e-3")) == "e-3"
            assert send_sync(ddb_record("e-3")) == "e-3"
        finally:
            store.close()
        assert calls == ["e-1", "e-2", "e-3"]
        # Closed, then used again: it opens again.
        try:
            assert send_sync(ddb_record("e-3")) == "e-3"
        finally:
            store.close()
        assert calls == ["e-1", "e-2", "e-3"]


class TestOptions:
    async def test_a_key_function(self, store: Idempotency) -> None:
        """Keyed by the order: a second event for the same order is a repeat."""
        sent: list[str] = []

        def order_of(record: dict[str, Any]) -> str:
            return str(record["dynamodb"]["Keys"]["order_id"]["S"])

        @idempotent(using=store, key=order_of)
        async def confirm(record: dict[str, Any]) -> str:
            sent.append(record["eventID"])
            return str(record["eventID"])

        assert await confirm(ddb_record("e-1", order="o-1")) == "e-1"
        assert await confirm(ddb_record("e-2", order="o-1")) == "e-1"
        assert await confirm(ddb_record("e-3", order="o-2")) == "e-3"
        assert sent == ["e-1", "e-3"]

    async def test_a_key_function_must_return_a_string(self, store: Idempotency) -> None:
        @idempotent(using=store, key=lambda record: 7)  # type: ignore[arg-type, return-value]
        async def send(record: dict[str, Any]) -> None:
            raise AssertionError("not called")

        with pytest.raises(IdempotencyKeyError, match="returned 7; it must return a non-empty"):
            await send(ddb_record("e-1"))

    async def test_functions_have_namespaces_of_their_own(
        self, store: Idempotency, rows: IdempotencyStore
    ) -> None:
        calls: list[str] = []

        @idempotent(using=store)
        async def email(record: dict[str, Any]) -> str:
            calls.append("email")
            return "email"

        @idempotent(using=store)
        async def sms(record: dict[str, Any]) -> str:
            calls.append("sms")
            return "sms"

        record = ddb_record("e-1")
        assert [await email(record), await sms(record), await email(record)] == [
            "email",
            "sms",
            "email",
        ]
        assert calls == ["email", "sms"]
        namespace = f"{__name__}.TestOptions.test_functions_have_namespaces_of_their_own"
        stored = await rows.get(f"{namespace}.<locals>.sms", "e-1")
        assert stored is not None and stored.result == '"sms"'

    async def test_the_configured_default_is_found_at_call_time(
        self, store_url: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(decorator, "_default", None)
        calls: list[int] = []

        @idempotent
        async def send(record: dict[str, Any]) -> int:
            calls.append(1)
            return len(calls)

        with pytest.raises(RuntimeError, match="configure_idempotency"):
            await send(ddb_record("e-1"))
        first = configure_idempotency(store_url)
        second = configure_idempotency(store_url)  # replaces (and closes) the first
        try:
            assert await send(ddb_record("e-1")) == 1
            assert await send(ddb_record("e-1")) == 1
            assert decorator._default is second
            assert first.store_thread._running is None
        finally:
            await second.aclose()
        assert calls == [1]

    def test_bad_settings(self, sqlite_url: str) -> None:
        with pytest.raises(ValueError, match="in_progress_expires_after_seconds must be positive"):
            Idempotency(sqlite_url, in_progress_expires_after_seconds=0)
        with pytest.raises(ValueError, match="in-memory SQLite"):
            Idempotency("sqlite+aiosqlite:///:memory:")
        with pytest.raises(ValueError, match="at most 200 fit: pass namespace="):
            idempotent(namespace="n" * 201)(lambda record: None)

    async def test_purge_and_forget(self, store_url: str, rows: IdempotencyStore) -> None:
        brief = Idempotency(store_url, expires_after_seconds=0.2)
        calls: list[int] = []

        @idempotent(using=brief, namespace=NS)
        async def send(record: dict[str, Any]) -> int:
            calls.append(1)
            return len(calls)

        try:
            await send(ddb_record("e-1"))
            await send(ddb_record("e-2"))
            assert await brief.forget("e-2", namespace=NS)
            await asyncio.sleep(0.3)
            assert await brief.purge_expired(namespace=NS) == 1
            assert await rows.get(NS, "e-1") is None
        finally:
            await brief.aclose()


class TestStoreTrouble:
    async def test_an_unreachable_store_fails_before_the_call(self) -> None:
        down = Idempotency("postgresql+asyncpg://shardwise:pw-1234@127.0.0.1:1/shardwise")
        calls: list[int] = []

        @idempotent(using=down, namespace=NS)
        async def send(record: dict[str, Any]) -> None:
            calls.append(1)

        try:
            with pytest.raises(StoreError, match="connection refused") as caught:
                await send(ddb_record("e-1"))
        finally:
            await down.aclose()
        assert "pw-1234" not in str(caught.value)
        assert calls == []

    async def test_a_failed_release_is_noted_on_the_error(
        self, store: Idempotency, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        async def release_fails(self: IdempotencyStore, *args: Any, **kwargs: Any) -> bool:
            raise StoreError("release failed: database gone")

        monkeypatch.setattr(IdempotencyStore, "release", release_fails)

        @idempotent(using=store, namespace=NS)
        def send(record: dict[str, Any]) -> None:
            raise ConnectionError("mail server down")

        with pytest.raises(ConnectionError, match="mail server down") as caught:
            await asyncio.to_thread(send, ddb_record("e-1"))
        [note] = caught.value.__notes__
        assert "'e-1' in 'receipts' could not be released (release failed: database gone)" in note

    async def test_a_result_that_cannot_be_stored_is_still_returned(
        self, store: Idempotency, rows: IdempotencyStore, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The side effect happened: failing the batch would only repeat it."""

        async def complete_fails(self: IdempotencyStore, *args: Any, **kwargs: Any) -> bool:
            raise StoreError("complete failed: database gone")

        monkeypatch.setattr(IdempotencyStore, "complete", complete_fails)

        @idempotent(using=store, namespace=NS)
        async def send(record: dict[str, Any]) -> str:
            return "sent"

        with capture_logs() as logs:
            assert await send(ddb_record("e-1")) == "sent"
        [warning] = [entry for entry in logs if entry["log_level"] == "warning"]
        assert warning["key"] == "e-1"
        assert warning["error"] == "complete failed: database gone"
        marker = await rows.get(NS, "e-1")
        assert marker is not None and marker.status is IdempotencyStatus.IN_PROGRESS


class TestUnderShardwise:
    """Lambda handlers calling idempotent functions, invoked the way shardwise invokes them."""

    @pytest.mark.parametrize("kind", ["sync", "async"])
    async def test_a_redelivered_batch_repeats_no_side_effect(
        self, store: Idempotency, kind: str
    ) -> None:
        sent: list[str] = []
        invocations: list[Any] = []

        @idempotent(using=store, namespace=NS)
        def send_sync(record: dict[str, Any]) -> str:
            sent.append(record["eventID"])
            return f"receipt-{record['eventID']}"

        @idempotent(using=store, namespace=NS)
        async def send_async(record: dict[str, Any]) -> str:
            sent.append(record["eventID"])
            return f"receipt-{record['eventID']}"

        def handler(event: dict[str, Any], context: LambdaContext) -> None:
            invocations.append([send_sync(record) for record in event["Records"]])

        async def async_handler(event: dict[str, Any], context: LambdaContext) -> None:
            invocations.append([await send_async(record) for record in event["Records"]])

        target = handler if kind == "sync" else async_handler
        processor = build_processor("receipts", target, stream_arn=ARN, timeout_s=30)
        batch = Batch(ARN, ShardId("shardId-1"), [ddb_record(f"e-{i}") for i in range(5)])
        try:
            await processor.invoke(batch)
            await processor.invoke(batch)  # delivered again, as after a crash
        finally:
            await processor.stop()
        assert sent == [f"e-{i}" for i in range(5)]
        assert invocations[0] == invocations[1] == [f"receipt-e-{i}" for i in range(5)]

    async def test_a_worker_purges_expired_rows(
        self, tmp_path: Path, moto_endpoint: str, store_url: str, rows: IdempotencyStore
    ) -> None:
        """store.idempotency_purge_interval_seconds: each worker deletes expired rows."""
        now = datetime.now(UTC)
        for key, expires in (
            ("old", now - timedelta(minutes=1)),
            ("live", now + timedelta(hours=1)),
        ):
            await rows.try_begin(
                NS, key, token="t", expires_at=expires, in_progress_expires_at=None
            )
        _, table = create_table(moto_endpoint)
        write_module(tmp_path, "noop_handler", "def handler(event, context):\n    return None\n")
        settings = settings_for(
            tmp_path,
            endpoint_url=moto_endpoint,
            store_url=store_url,
            processors=f"""
            - name: p
              source: {{dynamodb: {{table: {table}}}}}
              handler: noop_handler.handler
              starting_position: LATEST
            """,
        )
        store = settings.store.model_copy(update={"idempotency_purge_interval_seconds": 0.2})
        async with running(settings.model_copy(update={"store": store})):
            deadline = time.monotonic() + 20
            while await rows.get(NS, "old") is not None:
                assert time.monotonic() < deadline, "the expired row was not purged"
                await asyncio.sleep(0.1)
        assert await rows.get(NS, "live") is not None


# --- Powertools -----------------------------------------------------------------------


@pytest.fixture
def layer(store_url: str) -> Iterator[SqlPersistenceLayer]:
    opened = SqlPersistenceLayer(store_url)
    opened.configure(IdempotencyConfig(), function_name="f")
    yield opened
    opened.close()


def _epoch(delta: timedelta) -> int:
    return int((datetime.now(UTC) + delta).timestamp())


def _epoch_ms(delta: timedelta) -> int:
    return int((datetime.now(UTC) + delta).timestamp() * 1000)


def in_progress(key: str, *, lapses_in: timedelta | None = timedelta(minutes=1)) -> DataRecord:
    return DataRecord(
        idempotency_key=key,
        status="INPROGRESS",
        expiry_timestamp=_epoch(timedelta(hours=1)),
        in_progress_expiry_timestamp=None if lapses_in is None else _epoch_ms(lapses_in),
    )


def completed(key: str, response: str) -> DataRecord:
    return DataRecord(
        idempotency_key=key,
        status="COMPLETED",
        expiry_timestamp=_epoch(timedelta(hours=1)),
        response_data=response,
    )


class TestPowertoolsLayer:
    """BasePersistenceLayer's contract, as the DynamoDB layer keeps it."""

    async def test_put_get_update_delete(self, layer: SqlPersistenceLayer) -> None:
        record = in_progress("f#abc")
        layer._put_record(record)
        stored = layer._get_record("f#abc")
        assert (stored.idempotency_key, stored.status) == ("f#abc", "INPROGRESS")
        assert stored.expiry_timestamp == record.expiry_timestamp
        assert stored.in_progress_expiry_timestamp == record.in_progress_expiry_timestamp
        layer._update_record(completed("f#abc", '{"ok": true}'))
        done = layer._get_record("f#abc")
        assert done.status == "COMPLETED"
        assert done.response_json_as_dict() == {"ok": True}
        assert done.in_progress_expiry_timestamp is None
        with pytest.raises(IdempotencyItemAlreadyExistsError) as caught:
            layer._put_record(in_progress("f#abc"))
        assert caught.value.old_data_record is not None
        assert caught.value.old_data_record.response_data == '{"ok": true}'
        layer._delete_record(DataRecord("f#abc"))  # a completed record stays
        assert layer._get_record("f#abc").status == "COMPLETED"

    async def test_a_live_in_progress_record_exists(self, layer: SqlPersistenceLayer) -> None:
        layer._put_record(in_progress("f#abc"))
        with pytest.raises(IdempotencyItemAlreadyExistsError) as caught:
            layer._put_record(in_progress("f#abc"))
        old = caught.value.old_data_record
        assert old is not None and old.status == "INPROGRESS"
        layer._delete_record(DataRecord("f#abc"))
        with pytest.raises(IdempotencyItemNotFoundError):
            layer._get_record("f#abc")
        layer._put_record(in_progress("f#abc"))

    async def test_expired_records_are_replaced(self, layer: SqlPersistenceLayer) -> None:
        # In progress past its in-progress expiry (the Lambda timed out) ...
        layer._put_record(in_progress("f#a", lapses_in=timedelta(seconds=-1)))
        layer._put_record(in_progress("f#a"))
        # ... or past its expiry, whatever its status.
        layer._put_record(in_progress("f#b"))
        layer._update_record(
            DataRecord("f#b", "COMPLETED", _epoch(timedelta(seconds=-2)), response_data="1")
        )
        layer._put_record(in_progress("f#b"))
        assert layer._get_record("f#b").status == "INPROGRESS"

    async def test_without_in_progress_expiry_the_record_holds(
        self, layer: SqlPersistenceLayer
    ) -> None:
        layer._put_record(in_progress("f#a", lapses_in=None))
        with pytest.raises(IdempotencyItemAlreadyExistsError):
            layer._put_record(in_progress("f#a"))

    async def test_payload_validation(self, store_url: str) -> None:
        validating = SqlPersistenceLayer(store_url)
        validating.configure(IdempotencyConfig(payload_validation_jmespath="amount"), "f")
        try:
            record = in_progress("f#a")
            record.payload_hash = "hash-1"
            validating._put_record(record)
            assert validating._get_record("f#a").payload_hash == "hash-1"
            other = in_progress("f#a")
            other.payload_hash = "hash-2"
            with pytest.raises(IdempotencyValidationError):
                validating._put_record(other)
        finally:
            validating.close()

    async def test_a_taken_over_record_is_not_completed_by_the_old_call(
        self, layer: SqlPersistenceLayer
    ) -> None:
        """A call whose record lapsed and was taken over (by another thread, as by another
        worker) can neither complete nor delete the new holder's record."""
        loop = asyncio.get_running_loop()

        def old_call_returns() -> None:
            layer._update_record(completed("f#a", '"late"'))

        def old_call_raises() -> None:
            layer._delete_record(DataRecord("f#a"))

        ends: list[Callable[[], None]] = [old_call_returns, old_call_raises]
        for old_call_ends in ends:
            # The new holder runs in a thread of its own, as Powertools runs a call.
            with ThreadPoolExecutor(max_workers=1) as new_holder:
                layer._put_record(in_progress("f#a", lapses_in=timedelta(seconds=-1)))
                await loop.run_in_executor(new_holder, layer._put_record, in_progress("f#a"))
                old_call_ends()
                assert layer._get_record("f#a").status == "INPROGRESS"
                new_result = completed("f#a", '"new"')
                await loop.run_in_executor(new_holder, layer._update_record, new_result)
            assert layer._get_record("f#a").response_data == '"new"'
            layer._store.call(lambda store: store.delete("powertools", "f#a"))

    async def test_shares_an_idempotency_store(self, store: Idempotency) -> None:
        shared = SqlPersistenceLayer(store, namespace="pt")
        shared.configure(IdempotencyConfig(), "f")
        shared._put_record(in_progress("f#a"))
        shared.close()  # not its store: still open
        assert shared._get_record("f#a").status == "INPROGRESS"


class TestPowertoolsDecorators:
    """Powertools' own decorators, unchanged, on the SQL layer."""

    async def test_idempotent_function(self, layer: SqlPersistenceLayer) -> None:
        config = IdempotencyConfig(event_key_jmespath="eventID")
        sent: list[str] = []

        @idempotent_function(  # type: ignore[untyped-decorator]  # Powertools' returns Any
            data_keyword_argument="record", config=config, persistence_store=layer
        )
        def send(record: dict[str, Any]) -> dict[str, Any]:
            sent.append(record["eventID"])
            if record["eventID"] == "boom" and sent.count("boom") == 1:
                raise ConnectionError("mail server down")
            return {"sent": record["eventID"]}

        def call(record: dict[str, Any]) -> Any:
            config.register_lambda_context(_context())  # type: ignore[arg-type]
            return send(record=record)

        assert await asyncio.to_thread(call, ddb_record("e-1")) == {"sent": "e-1"}
        assert await asyncio.to_thread(call, ddb_record("e-1")) == {"sent": "e-1"}
        with pytest.raises(ConnectionError):
            await asyncio.to_thread(call, ddb_record("boom"))
        assert await asyncio.to_thread(call, ddb_record("boom")) == {"sent": "boom"}
        assert sent == ["e-1", "boom", "boom"]

    async def test_a_call_in_progress(self, layer: SqlPersistenceLayer) -> None:
        config = IdempotencyConfig(event_key_jmespath="eventID")
        started, finish = threading.Event(), threading.Event()

        @idempotent_function(  # type: ignore[untyped-decorator]  # Powertools' returns Any
            data_keyword_argument="record", config=config, persistence_store=layer
        )
        def slow(record: dict[str, Any]) -> str:
            started.set()
            finish.wait(10)
            return "done"

        def call() -> Any:
            config.register_lambda_context(_context())  # type: ignore[arg-type]
            return slow(record=ddb_record("e-1"))

        first = asyncio.create_task(asyncio.to_thread(call))
        await asyncio.to_thread(started.wait, 10)
        with pytest.raises(IdempotencyAlreadyInProgressError):
            await asyncio.to_thread(call)
        finish.set()
        assert await first == "done"
        assert await asyncio.to_thread(call) == "done"

    async def test_the_handler_decorator_under_shardwise(self, layer: SqlPersistenceLayer) -> None:
        """``@idempotent`` on the whole handler: a redelivered batch returns the stored
        response and the handler body does not run again."""
        runs: list[int] = []

        @powertools_idempotent(
            config=IdempotencyConfig(event_key_jmespath="Records[*].eventID"),
            persistence_store=layer,
        )
        def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
            runs.append(1)
            return {"processed": len(event["Records"])}

        processor = build_processor("pt", handler, stream_arn=ARN, timeout_s=30)
        batch = Batch(ARN, ShardId("shardId-1"), [ddb_record(f"e-{i}") for i in range(3)])
        try:
            assert await processor.invoke(batch) == {"processed": 3}
            assert await processor.invoke(batch) == {"processed": 3}
        finally:
            await processor.stop()
        assert runs == [1]


def _context() -> LambdaContext:
    """What shardwise hands a handler: 60 s left."""
    return LambdaContext(
        function_name="pt",
        invoked_function_arn="arn:aws:lambda:us-east-1:123456789012:function:pt",
        aws_request_id="r-1",
        deadline_monotonic=time.monotonic() + 60,
    )


# A Powertools handler, unchanged from Lambda but for its persistence layer. It fails its
# first invocation after the side effects, so that shardwise retries the batch.
POWERTOOLS_HANDLER = """
import json, os

from aws_lambda_powertools.utilities.idempotency import IdempotencyConfig, idempotent_function

from shardwise.idempotency.powertools import SqlPersistenceLayer

HERE = os.path.dirname(__file__)
persistence = SqlPersistenceLayer({store_url!r})
config = IdempotencyConfig(event_key_jmespath="eventID")


@idempotent_function(data_keyword_argument="record", config=config, persistence_store=persistence)
def notify(record):
    with open(os.path.join(HERE, "notified.txt"), "a") as out:
        out.write(record["eventID"] + "\\n")
    return {{"order": record["dynamodb"]["Keys"]["id"]["S"]}}


def handler(event, context):
    config.register_lambda_context(context)
    results = [notify(record=record) for record in event["Records"]]
    with open(os.path.join(HERE, "invocations.jsonl"), "a") as out:
        out.write(json.dumps(results) + "\\n")
    failed_once = os.path.join(HERE, "failed-once")
    if not os.path.exists(failed_once):
        open(failed_once, "w").close()
        raise RuntimeError("failing after the side effects, once")
"""


class TestPowertoolsUnderShardwise:
    async def test_repeated_records_repeat_no_side_effect(
        self, tmp_path: Path, moto_endpoint: str, store_url: str
    ) -> None:
        """A retried batch and a full redelivery (a new checkpoint store: every record
        again) call the handler again; the side effect ran once per record."""
        module = write_module(
            tmp_path, "powertools_orders", POWERTOOLS_HANDLER.format(store_url=store_url)
        )
        table, name = create_table(moto_endpoint)
        for i in range(6):
            table.put_item(Item={"id": f"o-{i}"})
        notified, invocations = tmp_path / "notified.txt", tmp_path / "invocations.jsonl"

        def settings(checkpoints: str) -> Any:
            return settings_for(
                tmp_path,
                endpoint_url=moto_endpoint,
                store_url=f"sqlite+aiosqlite:///{tmp_path / checkpoints}",
                processors=f"""
                - name: notify
                  source: {{dynamodb: {{table: {name}}}}}
                  handler: {module}.handler
                  starting_position: TRIM_HORIZON
                """,
            )

        def orders() -> list[str]:
            """The orders of every invocation's results (one JSON list a line)."""
            if not invocations.exists():
                return []
            lines = invocations.read_text().rpartition("\n")[0].splitlines()
            return [result["order"] for line in lines for result in json.loads(line)]

        try:
            async with running(settings("first.db")):
                # The failed invocation and its retry, each over all six records.
                await wait_until(lambda: len(set(orders())) == 6 and len(orders()) >= 12)
            async with running(settings("second.db")):
                await wait_until(lambda: len(orders()) >= 18, what="the redelivery")
        finally:
            sys.modules[module].persistence.close()
        event_ids = notified.read_text().split()
        assert len(event_ids) == len(set(event_ids)) == 6
        assert sorted(orders()) == sorted(f"o-{i}" for i in range(6) for _ in range(3))


class TestExample:
    async def test_the_powertools_example_notifies_once(
        self,
        tmp_path: Path,
        moto_endpoint: str,
        store_url: str,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """examples/powertools_idempotency.py under shardwise: the stream delivered twice
        over (a new checkpoint store), each order notified once."""
        out = tmp_path / "notifications.jsonl"
        monkeypatch.setenv("IDEMPOTENCY_STORE_URL", store_url)
        monkeypatch.setenv("NOTIFICATIONS_OUT", str(out))
        monkeypatch.syspath_prepend(str(REPO))
        monkeypatch.delitem(sys.modules, "examples.powertools_idempotency", raising=False)
        table, name = create_table(moto_endpoint)
        for i in range(4):
            table.put_item(Item={"id": f"o-{i}"})

        def settings(checkpoints: str) -> Any:
            return settings_for(
                tmp_path,
                endpoint_url=moto_endpoint,
                store_url=f"sqlite+aiosqlite:///{tmp_path / checkpoints}",
                processors=f"""
                - name: notify
                  source: {{dynamodb: {{table: {name}}}}}
                  handler: examples.powertools_idempotency.lambda_handler
                  starting_position: TRIM_HORIZON
                """,
            )

        try:
            async with running(settings("first.db")):
                await wait_until(lambda: len(read_jsonl(out)) >= 4, what="4 notifications")
            last = await _checkpoint(tmp_path / "first.db")
            async with running(settings("second.db")):
                # The second run notifies nobody: wait for its checkpoint to reach the end.
                for _ in range(400):
                    if await _checkpoint(tmp_path / "second.db") == last:
                        break
                    await asyncio.sleep(0.05)
            assert await _checkpoint(tmp_path / "second.db") == last
        finally:
            example = sys.modules.get("examples.powertools_idempotency")
            if example is not None:
                example.persistence.close()
        notifications = read_jsonl(out)
        assert sorted(n["order"] for n in notifications) == [f"o-{i}" for i in range(4)]


async def _checkpoint(path: Path) -> str | None:
    """The sequence number processor "notify" has checkpointed in the store at ``path``."""
    if not await asyncio.to_thread(path.exists):
        return None
    async with await CheckpointStore.connect(f"sqlite+aiosqlite:///{path}") as checkpoints:
        found = await checkpoints.list("notify")
    return found[0].sequence_number if found else None
