"""Every on-failure target against a real service: moto over HTTP, SQLite and PostgreSQL, files."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Literal

import boto3
import pytest

import shardwise.destinations
from shardwise.config import Settings, parse_config
from shardwise.destinations import (
    DestinationError,
    FailureCondition,
    FileDestination,
    S3Destination,
    SqlDestination,
    SqsDestination,
    esm_uuid,
    open_destination,
    target_kind,
)
from shardwise.destinations._aws import aws_client
from shardwise.destinations.file import read_failures
from shardwise.destinations.s3 import object_key, parse_object_key, parse_s3_target
from shardwise.errors import StoreError
from shardwise.store import CheckpointStore
from shardwise.store.engine import open_engine
from shardwise.store.failures import FailureStore
from tests.conftest import free_port
from tests.destinations import SHARD, STREAM_ARN, assert_lambda_record, failed_batch

ACCOUNT = "123456789012"


def settings(endpoint_url: str, store_url: str = "sqlite+aiosqlite:///unused.db") -> Settings:
    return parse_config(
        f"""
        aws: {{region: us-east-1, endpoint_url: "{endpoint_url}"}}
        store: {{url: "{store_url}"}}
        processors:
          - name: orders
            source: {{dynamodb: {{stream_arn: "{STREAM_ARN}"}}}}
            handler: app:handler
            starting_position: TRIM_HORIZON
        """
    )


def boto(service: Literal["sqs", "sns", "s3"], endpoint_url: str) -> Any:
    """A plain boto3 client, to set up and inspect what a target wrote."""
    return boto3.client(service, endpoint_url=endpoint_url, region_name="us-east-1")


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def create_queue(endpoint_url: str) -> tuple[str, str]:
    """A new queue; returns (its ARN, its URL)."""
    sqs = boto("sqs", endpoint_url)
    url = sqs.create_queue(QueueName=unique("failures"))["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]
    return arn["QueueArn"], url


def receive(endpoint_url: str, queue_url: str, count: int) -> list[str]:
    sqs = boto("sqs", endpoint_url)
    bodies: list[str] = []
    for _ in range(10):
        response = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10)
        bodies.extend(m["Body"] for m in response.get("Messages", []))
        if len(bodies) >= count:
            break
    return bodies


def create_bucket(endpoint_url: str) -> str:
    name = unique("failures")
    boto("s3", endpoint_url).create_bucket(Bucket=name)
    return name


def s3_objects(endpoint_url: str, bucket: str) -> dict[str, dict[str, Any]]:
    """Every object in the bucket: key -> {"record": parsed body, "content_type": ...}."""
    s3 = boto("s3", endpoint_url)
    found: dict[str, dict[str, Any]] = {}
    for item in s3.list_objects_v2(Bucket=bucket).get("Contents", []):
        response = s3.get_object(Bucket=bucket, Key=item["Key"])
        found[item["Key"]] = {
            "record": json.loads(response["Body"].read()),
            "content_type": response["ContentType"],
        }
    return found


class TestTargets:
    """target_kind reads the configured string; the package exports a sorted __all__."""

    @pytest.mark.parametrize(
        ("target", "kind"),
        [
            (f"arn:aws:sqs:us-east-1:{ACCOUNT}:q", "sqs"),
            (f"arn:aws:sns:eu-west-1:{ACCOUNT}:t", "sns"),
            ("arn:aws:s3:::bucket", "s3"),
            ("s3://bucket/some/prefix", "s3"),
            ("sql", "sql"),
            ("file:///var/lib/failures.jsonl", "file"),
        ],
    )
    def test_kinds(self, target: str, kind: str) -> None:
        assert target_kind(target) == kind

    def test_unknown_target(self) -> None:
        with pytest.raises(ValueError, match="unsupported on-failure destination"):
            target_kind(f"arn:aws:lambda:us-east-1:{ACCOUNT}:function:f")

    def test_exports_are_sorted(self) -> None:
        names = shardwise.destinations.__all__
        assert names == sorted(names)
        assert all(hasattr(shardwise.destinations, name) for name in names)


class TestSqs:
    """SQS gets Lambda's record without the records, at the URL GetQueueUrl returns."""

    async def test_metadata_only_record(self, moto_endpoint: str) -> None:
        arn, url = create_queue(moto_endpoint)
        failed = failed_batch()
        destination = await open_destination(
            arn, settings=settings(moto_endpoint), store=None, processor="orders"
        )
        try:
            assert destination.target == arn
            await destination.send(failed)
        finally:
            await destination.close()
        [body] = receive(moto_endpoint, url, 1)
        record = json.loads(body)
        assert_lambda_record(record, failed, payload=False)
        assert "payload" not in record

    async def test_queue_url_is_looked_up_once(self, moto_endpoint: str) -> None:
        arn, url = create_queue(moto_endpoint)
        lookups: list[str] = []
        async with aws_client("sqs", settings(moto_endpoint)) as client:
            client.meta.events.register(
                "before-call.sqs.GetQueueUrl", lambda **_: lookups.append("GetQueueUrl")
            )
            destination = SqsDestination(client, arn)
            await destination.send(failed_batch(first=1))
            await destination.send(failed_batch(first=3))
        assert lookups == ["GetQueueUrl"]
        assert len(receive(moto_endpoint, url, 2)) == 2

    async def test_fifo_queue(self, moto_endpoint: str) -> None:
        sqs = boto("sqs", moto_endpoint)
        url = sqs.create_queue(
            QueueName=unique("failures") + ".fifo", Attributes={"FifoQueue": "true"}
        )["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
        failed = failed_batch()
        destination = await open_destination(
            arn["Attributes"]["QueueArn"],
            settings=settings(moto_endpoint),
            store=None,
            processor="orders",
        )
        try:
            await destination.send(failed)
            await destination.send(failed)  # a retry: deduplicated by the request id
        finally:
            await destination.close()
        response = sqs.receive_message(
            QueueUrl=url, MaxNumberOfMessages=10, MessageSystemAttributeNames=["All"]
        )
        [message] = response["Messages"]
        assert message["Attributes"]["MessageGroupId"] == SHARD
        assert message["Attributes"]["MessageDeduplicationId"] == failed.request_id
        assert_lambda_record(json.loads(message["Body"]), failed, payload=False)

    async def test_missing_queue_is_a_destination_error(self, moto_endpoint: str) -> None:
        arn = f"arn:aws:sqs:us-east-1:{ACCOUNT}:{unique('nope')}"
        destination = await open_destination(
            arn, settings=settings(moto_endpoint), store=None, processor="orders"
        )
        try:
            with pytest.raises(DestinationError) as caught:
                await destination.send(failed_batch())
        finally:
            await destination.close()
        assert arn in str(caught.value)
        assert SHARD in str(caught.value)
        assert caught.value.retriable

    async def test_unreachable_endpoint_is_a_destination_error(self) -> None:
        endpoint = f"http://127.0.0.1:{free_port()}"
        arn = f"arn:aws:sqs:us-east-1:{ACCOUNT}:failures"
        destination = await open_destination(
            arn, settings=settings(endpoint), store=None, processor="orders"
        )
        try:
            with pytest.raises(DestinationError, match=r"EndpointConnectionError") as caught:
                await destination.send(failed_batch())
        finally:
            await destination.close()
        assert arn in str(caught.value)
        assert "testing" not in str(caught.value)  # the credentials conftest sets


class TestSns:
    """SNS publishes the same metadata-only record (read here through an SQS subscription)."""

    async def test_published_record(self, moto_endpoint: str) -> None:
        sns = boto("sns", moto_endpoint)
        topic = sns.create_topic(Name=unique("failures"))["TopicArn"]
        queue_arn, queue_url = create_queue(moto_endpoint)
        sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn)
        failed = failed_batch(condition=FailureCondition.RECORD_AGE_EXCEEDED)
        destination = await open_destination(
            topic, settings=settings(moto_endpoint), store=None, processor="orders"
        )
        try:
            await destination.send(failed)
        finally:
            await destination.close()
        [body] = receive(moto_endpoint, queue_url, 1)
        envelope = json.loads(body)
        assert envelope["TopicArn"] == topic
        record = json.loads(envelope["Message"])
        assert_lambda_record(record, failed, payload=False)
        assert record["requestContext"]["condition"] == "RecordAgeExceeded"

    async def test_missing_topic_is_a_destination_error(self, moto_endpoint: str) -> None:
        topic = f"arn:aws:sns:us-east-1:{ACCOUNT}:{unique('nope')}"
        destination = await open_destination(
            topic, settings=settings(moto_endpoint), store=None, processor="orders"
        )
        try:
            with pytest.raises(DestinationError, match=re.escape(topic)):
                await destination.send(failed_batch())
        finally:
            await destination.close()


class TestS3:
    """S3 stores the record with its payload under Lambda's key layout."""

    @pytest.mark.parametrize("form", ["arn", "s3 url", "s3 url with prefix"])
    async def test_object_with_payload(self, moto_endpoint: str, form: str) -> None:
        bucket = create_bucket(moto_endpoint)
        target, prefix = {
            "arn": (f"arn:aws:s3:::{bucket}", ""),
            "s3 url": (f"s3://{bucket}", ""),
            "s3 url with prefix": (f"s3://{bucket}/team/failed/", "team/failed/"),
        }[form]
        batches = [failed_batch(first=1), failed_batch(first=1)]  # same second, same records
        destination = await open_destination(
            target, settings=settings(moto_endpoint), store=None, processor="orders"
        )
        try:
            for batch in batches:
                await destination.send(batch)
            await destination.send(batches[0])  # a retry overwrites: no third object
        finally:
            await destination.close()
        objects = s3_objects(moto_endpoint, bucket)
        layout = re.compile(
            re.escape(f"{prefix}aws/lambda/{esm_uuid('orders')}/{SHARD}/2024/05/06/")
            + r"2024-05-06T07\.08\.09-[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}"
        )
        assert len(objects) == 2
        for batch in batches:
            [key] = [k for k in objects if k.endswith(batch.request_id)]
            assert layout.fullmatch(key), key
            assert objects[key]["content_type"] == "application/json"
            assert_lambda_record(objects[key]["record"], batch, payload=True)

    @pytest.mark.parametrize("target", ["s3://bucket", "s3://bucket/team/failed/"])
    def test_key_parts_read_back(self, target: str) -> None:
        """Listing needs no body: the key gives the shard, the second and the request id."""
        location = parse_s3_target(target)
        failed = failed_batch()
        parts = parse_object_key(location, "orders", object_key(location, failed))
        assert parts is not None
        assert parts.shard_id == SHARD
        assert parts.failed_at == failed.failed_at.replace(microsecond=0)
        assert parts.request_id == failed.request_id
        for foreign in (
            object_key(location, failed).replace("/2024/", "/x/"),
            object_key(location, failed_batch("invoices")),
            f"{location.prefix}aws/lambda/{esm_uuid('orders')}/notes.txt",
        ):
            assert parse_object_key(location, "orders", foreign) is None

    async def test_key_uses_utc(self, moto_endpoint: str) -> None:
        bucket = create_bucket(moto_endpoint)
        # 01:30 on the 1st at UTC+02:00 is 23:30 on the 31st in UTC, which the key must use.
        local = datetime(2024, 12, 31, 23, 30, tzinfo=UTC).astimezone(timezone(timedelta(hours=2)))
        async with aws_client("s3", settings(moto_endpoint)) as client:
            await S3Destination(client, f"s3://{bucket}").send(failed_batch(failed_at=local))
        [key] = s3_objects(moto_endpoint, bucket)
        assert f"/{SHARD}/2024/12/31/2024-12-31T23.30.00-" in key

    async def test_missing_bucket_is_a_destination_error(self, moto_endpoint: str) -> None:
        target = f"s3://{unique('nope')}/prefix"
        destination = await open_destination(
            target, settings=settings(moto_endpoint), store=None, processor="orders"
        )
        try:
            with pytest.raises(DestinationError, match=r"NoSuchBucket") as caught:
                await destination.send(failed_batch())
        finally:
            await destination.close()
        assert target in str(caught.value)
        assert SHARD in str(caught.value)


class LosesFirstAcknowledgement(FailureStore):
    """Commits the first write, then fails as a connection dropped before the reply would."""

    lost = False

    async def add(self, **fields: Any) -> int:
        added = await super().add(**fields)
        if not self.lost:
            self.lost = True
            raise StoreError("connection closed before the commit was acknowledged")
        return added


class TestSql:
    """sql keeps one row per batch in the store, on SQLite and PostgreSQL."""

    async def test_row_per_batch(self, store: CheckpointStore, store_url: str) -> None:
        destination = await open_destination(
            "sql", settings=settings("http://unused", store_url), store=store, processor="orders"
        )
        assert isinstance(destination, SqlDestination)
        first = failed_batch(first=100, size=2)
        second = failed_batch(first=7, size=1, failed_at=first.failed_at + timedelta(seconds=1))
        await destination.send(second)  # stored first, but failed later
        await destination.send(first)
        await destination.close()
        rows = await FailureStore(store.engine).list("orders")
        assert [row.start_sequence_number for row in rows] == ["100", "7"]
        row = rows[0]
        assert (row.processor, row.stream_arn, row.shard_id) == ("orders", STREAM_ARN, SHARD)
        assert row.condition == "RetryAttemptsExhausted"
        assert (row.end_sequence_number, row.batch_size) == ("101", 2)
        assert row.failed_at == first.failed_at
        assert row.failed_at.tzinfo is not None
        assert row.replayed_at is None
        assert_lambda_record(row.record, first, payload=True)
        assert await FailureStore(store.engine).list("other") == []

    async def test_mark_replayed(self, store: CheckpointStore) -> None:
        failures = FailureStore(store.engine)
        await SqlDestination(failures).send(failed_batch())
        [row] = await failures.list("orders")
        assert await failures.mark_replayed("other", [row.id]) == 0
        assert await failures.mark_replayed("orders", [row.id]) == 1
        [marked] = await failures.list("orders", [row.id])
        assert marked.replayed_at is not None
        assert marked.replayed_at.tzinfo is not None

    async def test_a_retry_after_a_lost_acknowledgement_stores_once(
        self, store: CheckpointStore
    ) -> None:
        """The commit succeeded but its reply never came: dispatch sends the batch again."""
        failures = LosesFirstAcknowledgement(store.engine)
        destination = SqlDestination(failures)
        failed = failed_batch()
        with pytest.raises(DestinationError, match="before the commit was acknowledged"):
            await destination.send(failed)
        await destination.send(failed)  # hand_over's retry: the same FailedBatch
        await destination.send(failed)
        [row] = await failures.list("orders")
        assert row.request_id == failed.request_id
        assert row.record["requestContext"]["requestId"] == failed.request_id
        assert_lambda_record(row.record, failed, payload=True)

    async def test_add_returns_the_stored_row_for_a_repeated_request(
        self, store: CheckpointStore
    ) -> None:
        failures = FailureStore(store.engine)
        failed = failed_batch()
        fields: dict[str, Any] = {
            "processor": "orders",
            "stream_arn": STREAM_ARN,
            "shard_id": SHARD,
            "condition": failed.condition.value,
            "start_sequence_number": failed.start_sequence_number,
            "end_sequence_number": failed.end_sequence_number,
            "batch_size": len(failed.records),
            "record": failed.invocation_record(include_payload=True),
            "failed_at": failed.failed_at,
        }
        first = await failures.add(request_id="r-1", **fields)
        assert await failures.add(request_id="r-1", **fields) == first
        other = await failures.add(request_id="r-2", **fields)  # same records, new failure
        assert other != first
        assert [row.id for row in await failures.list("orders")] == [first, other]

    async def test_without_store(self) -> None:
        with pytest.raises(ValueError, match="needs the store"):
            await open_destination(
                "sql", settings=settings("http://unused"), store=None, processor="orders"
            )

    async def test_unreachable_database_is_a_destination_error(self) -> None:
        url = f"postgresql+asyncpg://shardwise:s3cret-pw@127.0.0.1:{free_port()}/shardwise"
        engine = open_engine(url)
        try:
            with pytest.raises(DestinationError) as caught:
                await SqlDestination(FailureStore(engine)).send(failed_batch())
        finally:
            await engine.dispose()
        message = str(caught.value)
        assert message.startswith(f"cannot store the failed batch of shard {SHARD!r} in sql")
        assert "s3cret-pw" not in message
        assert ":***@" in message


class TestFile:
    """file:/// appends one durable JSON line per batch, with its records."""

    async def test_lines_with_payload(self, tmp_path: Path) -> None:
        path = tmp_path / "new" / "dir" / "failures.jsonl"
        destination = await open_destination(
            f"file://{path}", settings=settings("http://unused"), store=None, processor="orders"
        )
        assert isinstance(destination, FileDestination)
        batches = [failed_batch(first=1), failed_batch(first=10, size=1)]
        for batch in batches:
            await destination.send(batch)
        await destination.close()
        lines = path.read_text().splitlines()
        assert len(lines) == 2
        for line, batch in zip(lines, batches, strict=True):
            assert_lambda_record(json.loads(line), batch, payload=True)

    async def test_concurrent_sends_keep_lines_whole(self, tmp_path: Path) -> None:
        path = tmp_path / "failures.jsonl"
        destination = FileDestination(f"file://{path}")
        await asyncio.gather(*(destination.send(failed_batch(first=i * 10)) for i in range(20)))
        records, unreadable = read_failures(path)
        assert unreadable == []
        assert sorted(r["DDBStreamBatchInfo"]["startSequenceNumber"] for _, r in records) == sorted(
            str(i * 10) for i in range(20)
        )

    async def test_torn_last_line_is_closed_off(self, tmp_path: Path) -> None:
        path = tmp_path / "failures.jsonl"
        path.write_text('{"requestContext": {"requestId": "x"')  # a crash mid-write
        batch = failed_batch()
        await FileDestination(f"file://{path}").send(batch)
        records, unreadable = read_failures(path)
        assert unreadable == [1]
        [(number, record)] = records
        assert number == 2
        assert_lambda_record(record, batch, payload=True)

    async def test_unwritable_path_is_a_destination_error(self, tmp_path: Path) -> None:
        (tmp_path / "a-file").write_text("")
        target = f"file://{tmp_path}/a-file/failures.jsonl"
        with pytest.raises(DestinationError) as caught:
            await FileDestination(target).send(failed_batch())
        assert str(caught.value).startswith(
            f"cannot store the failed batch of shard {SHARD!r} in {target}: "
        )
