"""Lambda's failure model end to end: poison records, partial failures, record age, destinations."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from shardwise.testing import ScriptedStream, StreamsServer
from tests.e2e import create_table, read_jsonl, running, settings_for, wait_until, write_module

# Fails every invocation that contains a record whose key is "poison"; with
# ReportBatchItemFailures it reports that record instead of raising.
POISON_HANDLER = """
import json, os
HERE = os.path.dirname(__file__)

def _key(record):
    keys = record["dynamodb"]["Keys"]
    return next(iter(next(iter(keys.values())).values()))

def handler(event, context):
    records = event["Records"]
    with open(os.path.join(HERE, "invocations.jsonl"), "a") as f:
        f.write(json.dumps([_key(r) for r in records]) + "\\n")
    poison_at = next((i for i, r in enumerate(records) if _key(r) == "poison"), None)
    if poison_at is not None and not {report}:
        raise ValueError("cannot process the poison record")
    done = records if poison_at is None else records[:poison_at]
    with open(os.path.join(HERE, "processed.jsonl"), "a") as f:
        for r in done:
            f.write(json.dumps(r) + "\\n")
    if poison_at is not None:
        failed = records[poison_at]["dynamodb"]["SequenceNumber"]
        return {{"batchItemFailures": [{{"itemIdentifier": failed}}]}}
    return {{"batchItemFailures": []}} if {report} else None
"""


@pytest.fixture
def server() -> Iterator[StreamsServer]:
    with StreamsServer() as streams:
        yield streams


def put_items(
    stream: ScriptedStream, shard: str, keys: list[str], created: float | None = None
) -> None:
    for key in keys:
        stream.put(
            shard,
            "INSERT",
            keys={"Id": {"S": key}},
            new_image={"Id": {"S": key}, "Payload": {"S": "x"}},
            created=created,
        )


def processed_keys(directory: Path) -> list[str]:
    return [r["dynamodb"]["Keys"]["Id"]["S"] for r in read_jsonl(directory / "processed.jsonl")]


def processor(
    arn: str,
    handler: str,
    extra: str,
    *,
    name: str = "p",
    key: str = "stream_arn",
) -> str:
    lines = "\n".join(f"  {line}" for line in extra.strip().splitlines())
    return f"""
- name: {name}
  source: {{dynamodb: {{{key}: "{arn}"}}}}
  handler: {handler}
  starting_position: TRIM_HORIZON
{lines}
"""


class TestPoisonRecord:
    """A poison record is isolated by bisection, retried, stored, and the shard moves on."""

    @pytest.mark.parametrize("report", [False, True])
    async def test_bisect_retry_then_file_destination(
        self, tmp_path: Path, server: StreamsServer, sqlite_url: str, report: bool
    ) -> None:
        stream = server.create_stream("Orders")
        [shard] = stream.shard_ids
        keys = [f"k{i:02d}" for i in range(16)]
        keys[11] = "poison"
        put_items(stream, shard, keys)
        module = write_module(tmp_path, f"poison_{report}", POISON_HANDLER.format(report=report))
        failures = tmp_path / "failures" / "orders.jsonl"
        extra = f"""
batch_size: 16
maximum_retry_attempts: 2
bisect_batch_on_function_error: true
destination_config: {{on_failure: {{destination: "file://{failures}"}}}}
"""
        if report:
            extra += "function_response_types: [ReportBatchItemFailures]\n"
        settings = settings_for(
            tmp_path,
            endpoint_url=server.endpoint_url,
            store_url=sqlite_url,
            processors=processor(stream.arn, f"{module}:handler", extra),
        )
        async with running(settings) as supervisor:
            await wait_until(lambda: len(read_jsonl(failures)) >= 1, what="the failure record")
            put_items(stream, shard, ["after-1", "after-2"])
            await wait_until(
                lambda: processed_keys(tmp_path)[-2:] == ["after-1", "after-2"],
                what="records after the poison one",
            )
            progress = supervisor.progress["p"]
            assert progress.records_sent_to_destination == 1
            assert progress.records_dropped == 0
        good = [k for k in keys if k != "poison"]
        assert sorted(processed_keys(tmp_path)) == sorted([*good, "after-1", "after-2"])
        assert len(processed_keys(tmp_path)) == len(set(processed_keys(tmp_path)))
        [failure] = read_jsonl(failures)
        poison_seq = stream.records(shard)[11]["dynamodb"]["SequenceNumber"]
        info = failure["DDBStreamBatchInfo"]
        assert failure["requestContext"]["condition"] == "RetryAttemptsExhausted"
        assert failure["requestContext"]["functionArn"].endswith(":function:p")
        assert failure["version"] == "1.0"
        assert (info["startSequenceNumber"], info["endSequenceNumber"]) == (poison_seq, poison_seq)
        assert info["batchSize"] == 1
        assert info["shardId"] == shard
        assert info["streamArn"] == stream.arn
        assert [r["dynamodb"]["Keys"]["Id"]["S"] for r in failure["payload"]["Records"]] == [
            "poison"
        ]
        invocations = [
            json.loads(line) for line in (tmp_path / "invocations.jsonl").read_text().splitlines()
        ]
        with_poison = [i for i in invocations if "poison" in i]
        # O(log n): 16 records -> at most 4 levels of halves, then the record's 3 attempts.
        assert len(with_poison) <= 4 + 3
        # Every invocation that carried the record counts, bisection steps included.
        assert failure["requestContext"]["approximateInvokeCount"] == len(with_poison)


class TestRecordAge:
    """Records older than maximum_record_age_in_seconds never reach the handler; with the
    default (-1, Lambda's infinite) age never decides."""

    async def test_default_delivers_records_days_old(
        self, tmp_path: Path, server: StreamsServer, sqlite_url: str
    ) -> None:
        """2,000 records written 30 hours and 3 days ago, still readable: all delivered."""
        stream = server.create_stream("Orders")
        [shard] = stream.shard_ids
        keys = [f"k{i:04d}" for i in range(2000)]
        put_items(stream, shard, keys[:1000], created=time.time() - 3 * 86400)
        put_items(stream, shard, keys[1000:], created=time.time() - 30 * 3600)
        write_module(tmp_path, "ok_handler", POISON_HANDLER.format(report=False))
        failures = tmp_path / "failures.jsonl"
        extra = f'destination_config: {{on_failure: {{destination: "file://{failures}"}}}}'
        settings = settings_for(
            tmp_path,
            endpoint_url=server.endpoint_url,
            store_url=sqlite_url,
            processors=processor(stream.arn, "ok_handler:handler", extra),
        )
        async with running(settings) as supervisor:
            await wait_until(lambda: len(processed_keys(tmp_path)) >= 2000, what="every record")
            assert supervisor.progress["p"].records_dropped == 0
        assert processed_keys(tmp_path) == keys
        assert not failures.exists()

    @pytest.mark.parametrize("age_s", [600, 3 * 86400])
    async def test_old_records_go_to_the_destination(
        self, tmp_path: Path, server: StreamsServer, sqlite_url: str, age_s: int
    ) -> None:
        stream = server.create_stream("Orders")
        [shard] = stream.shard_ids
        put_items(stream, shard, ["old-1", "old-2"], created=time.time() - age_s)
        put_items(stream, shard, ["new-1"])
        write_module(tmp_path, "ok_handler", POISON_HANDLER.format(report=False))
        failures = tmp_path / "failures.jsonl"
        extra = f"""
maximum_record_age_in_seconds: 60
destination_config: {{on_failure: {{destination: "file://{failures}"}}}}
"""
        settings = settings_for(
            tmp_path,
            endpoint_url=server.endpoint_url,
            store_url=sqlite_url,
            processors=processor(stream.arn, "ok_handler:handler", extra),
        )
        async with running(settings):
            await wait_until(lambda: processed_keys(tmp_path) == ["new-1"], what="the new record")
        [failure] = read_jsonl(failures)
        assert failure["requestContext"]["condition"] == "RecordAgeExceeded"
        assert failure["requestContext"]["approximateInvokeCount"] == 0
        assert [r["dynamodb"]["Keys"]["Id"]["S"] for r in failure["payload"]["Records"]] == [
            "old-1",
            "old-2",
        ]


class TestMalformedResponse:
    """A misspelled batchItemFailures key fails the batch loudly instead of silently passing."""

    async def test_misspelled_key_is_a_failure(
        self, tmp_path: Path, server: StreamsServer, sqlite_url: str
    ) -> None:
        stream = server.create_stream("Orders")
        [shard] = stream.shard_ids
        put_items(stream, shard, ["a", "b"])
        write_module(
            tmp_path,
            "misspelled",
            """
            def handler(event, context):
                first = event["Records"][0]["dynamodb"]["SequenceNumber"]
                return {"batchItemFailure": [{"itemIdentifier": first}]}
            """,
        )
        extra = "function_response_types: [ReportBatchItemFailures]\nmaximum_retry_attempts: 0\n"
        settings = settings_for(
            tmp_path,
            endpoint_url=server.endpoint_url,
            store_url=sqlite_url,
            processors=processor(stream.arn, "misspelled:handler", extra),
        )
        async with running(settings) as supervisor:
            await wait_until(
                lambda: supervisor.progress["p"].records_dropped == 2, what="the dropped batch"
            )
            assert supervisor.progress["p"].handler_failures == 1


class TestSqsDestination:
    """Against moto: a partial-failure handler and an SQS on-failure destination."""

    async def test_exhausted_record_reaches_sqs_without_payload(
        self, tmp_path: Path, moto_endpoint: str, sqlite_url: str
    ) -> None:
        sqs = boto3.client("sqs", endpoint_url=moto_endpoint, region_name="us-east-1")
        queue_url = sqs.create_queue(QueueName=f"failures-{tmp_path.name[-8:]}")["QueueUrl"]
        queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])[
            "Attributes"
        ]["QueueArn"]
        table, name = create_table(moto_endpoint)
        for key in ["a", "poison", "b"]:
            table.put_item(Item={"id": key})
        write_module(tmp_path, "report_handler", POISON_HANDLER.format(report=True))
        extra = f"""
function_response_types: [ReportBatchItemFailures]
maximum_retry_attempts: 1
destination_config: {{on_failure: {{destination: "{queue_arn}"}}}}
"""
        settings = settings_for(
            tmp_path,
            endpoint_url=moto_endpoint,
            store_url=sqlite_url,
            processors=processor(name, "report_handler:handler", extra, key="table"),
        )
        messages: list[dict[str, Any]] = []
        async with running(settings):
            await wait_until(lambda: _receive(sqs, queue_url, messages), what="the SQS message")
            table.put_item(Item={"id": "c"})
            await wait_until(lambda: "c" in processed_keys_moto(tmp_path), what="the next record")
        # Lambda's rule without bisection: the retry starts at the reported record, and the
        # records after it fail with it.
        assert processed_keys_moto(tmp_path) == {"a", "c"}
        [body] = [json.loads(m["Body"]) for m in messages]
        assert body["requestContext"]["condition"] == "RetryAttemptsExhausted"
        assert body["requestContext"]["approximateInvokeCount"] == 2
        assert body["DDBStreamBatchInfo"]["batchSize"] == 2  # the poison record and "b"
        assert "payload" not in body


def _receive(sqs: Any, queue_url: str, into: list[dict[str, Any]]) -> bool:
    into.extend(sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10).get("Messages", []))
    return bool(into)


def processed_keys_moto(directory: Path) -> set[str]:
    return {r["dynamodb"]["Keys"]["id"]["S"] for r in read_jsonl(directory / "processed.jsonl")}
