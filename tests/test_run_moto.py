"""End to end against moto's server over HTTP: a stock handler sees Lambda's exact records."""

from __future__ import annotations

import base64
import decimal
from pathlib import Path
from typing import Any

import boto3
import pytest

from shardwise.store import CheckpointStore
from tests.e2e import (
    create_table,
    read_jsonl,
    recording_handler,
    running,
    settings_for,
    wait_until,
    write_module,
)


class TestRecordShape:
    """INSERT/MODIFY/REMOVE reach a stock handler in exactly Lambda's record shape."""

    @pytest.mark.parametrize("transport", ["raw", "aiobotocore"])
    async def test_insert_modify_remove(
        self, tmp_path: Path, moto_endpoint: str, transport: str
    ) -> None:
        table, name = create_table(moto_endpoint)
        handler, out = recording_handler(tmp_path)
        settings = settings_for(
            tmp_path,
            endpoint_url=moto_endpoint,
            store_url=f"sqlite+aiosqlite:///{tmp_path / 'cp.db'}",
            transport=transport,
            processors=f"""
            - name: shape
              source: {{dynamodb: {{table: {name}}}}}
              handler: {handler}
              starting_position: TRIM_HORIZON
            """,
        )
        table.put_item(Item={"id": "a", "n": decimal.Decimal(1), "blob": b"\x00\x01"})
        table.update_item(
            Key={"id": "a"},
            UpdateExpression="SET n = :v",
            ExpressionAttributeValues={":v": decimal.Decimal(2)},
        )
        table.delete_item(Key={"id": "a"})
        async with running(settings):
            await wait_until(lambda: len(read_jsonl(out)) >= 3, what="3 records")
        records = read_jsonl(out)
        raw = _raw_records(moto_endpoint, records[0]["eventSourceARN"])
        assert [r["eventName"] for r in records] == ["INSERT", "MODIFY", "REMOVE"]
        # Passed through from GetRecords unchanged (moto says "1.0", AWS "1.1").
        assert [r["eventID"] for r in records] == [r["eventID"] for r in raw]
        assert [r["eventVersion"] for r in records] == [r["eventVersion"] for r in raw]
        stream_arn = records[0]["eventSourceARN"]
        assert stream_arn.startswith(
            f"arn:aws:dynamodb:us-east-1:123456789012:table/{name}/stream/"
        )
        for record in records:
            assert set(record) == {
                "eventID",
                "eventName",
                "eventVersion",
                "eventSource",
                "awsRegion",
                "eventSourceARN",
                "dynamodb",
            }
            assert isinstance(record["eventID"], str) and record["eventID"]
            assert record["eventVersion"] in {"1.0", "1.1"}
            assert record["eventSource"] == "aws:dynamodb"
            assert record["awsRegion"] == "us-east-1"
            assert record["eventSourceARN"] == stream_arn
            ddb = record["dynamodb"]
            assert isinstance(ddb["ApproximateCreationDateTime"], int | float)
            assert not isinstance(ddb["ApproximateCreationDateTime"], bool)
            assert ddb["ApproximateCreationDateTime"] > 1_600_000_000
            assert ddb["Keys"] == {"id": {"S": "a"}}
            assert isinstance(ddb["SequenceNumber"], str) and ddb["SequenceNumber"].isdigit()
            assert isinstance(ddb["SizeBytes"], int) and ddb["SizeBytes"] > 0
            assert ddb["StreamViewType"] == "NEW_AND_OLD_IMAGES"
        insert, modify, remove = (r["dynamodb"] for r in records)
        blob = base64.b64encode(b"\x00\x01").decode()
        assert insert["NewImage"] == {"id": {"S": "a"}, "n": {"N": "1"}, "blob": {"B": blob}}
        assert "OldImage" not in insert
        assert modify["OldImage"]["n"] == {"N": "1"}
        assert modify["NewImage"]["n"] == {"N": "2"}
        assert remove["OldImage"]["n"] == {"N": "2"}
        assert "NewImage" not in remove
        sequence = [int(r["dynamodb"]["SequenceNumber"]) for r in records]
        assert sequence == sorted(sequence)


def _raw_records(endpoint_url: str, stream_arn: str) -> list[dict[str, Any]]:
    """What GetRecords itself returns, read with plain boto3."""
    streams = boto3.client("dynamodbstreams", endpoint_url=endpoint_url, region_name="us-east-1")
    shard = streams.describe_stream(StreamArn=stream_arn)["StreamDescription"]["Shards"][0]
    iterator = streams.get_shard_iterator(
        StreamArn=stream_arn, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
    )["ShardIterator"]
    return [dict(r) for r in streams.get_records(ShardIterator=iterator)["Records"]]


class TestCheckpoints:
    """Restart resumes after the checkpoint: nothing re-delivered, nothing skipped."""

    async def test_restart_resumes_after_checkpoint(
        self, tmp_path: Path, moto_endpoint: str, store_url: str
    ) -> None:
        table, name = create_table(moto_endpoint)
        handler, out = recording_handler(tmp_path)
        settings = settings_for(
            tmp_path,
            endpoint_url=moto_endpoint,
            store_url=store_url,
            processors=f"""
            - name: resume
              source: {{dynamodb: {{table: {name}}}}}
              handler: {handler}
              starting_position: TRIM_HORIZON
              batch_size: 3
            """,
        )
        for i in range(10):
            table.put_item(Item={"id": f"first-{i}"})
        async with running(settings):
            await wait_until(lambda: len(read_jsonl(out)) >= 10, what="first 10 records")
        for i in range(5):
            table.put_item(Item={"id": f"second-{i}"})
        async with running(settings):
            await wait_until(lambda: len(read_jsonl(out)) >= 15, what="next 5 records")
        ids = [r["dynamodb"]["Keys"]["id"]["S"] for r in read_jsonl(out)]
        assert ids == [f"first-{i}" for i in range(10)] + [f"second-{i}" for i in range(5)]
        async with await CheckpointStore.connect(store_url) as store:
            [checkpoint] = await store.list("resume")
        last = read_jsonl(out)[-1]["dynamodb"]["SequenceNumber"]
        assert checkpoint.sequence_number == last

    async def test_latest_skips_existing_records(self, tmp_path: Path, moto_endpoint: str) -> None:
        table, name = create_table(moto_endpoint)
        handler, out = recording_handler(tmp_path)
        settings = settings_for(
            tmp_path,
            endpoint_url=moto_endpoint,
            store_url=f"sqlite+aiosqlite:///{tmp_path / 'cp.db'}",
            processors=f"""
            - name: latest
              source: {{dynamodb: {{table: {name}}}}}
              handler: {handler}
              starting_position: LATEST
            """,
        )
        table.put_item(Item={"id": "old"})
        async with running(settings) as supervisor:
            await wait_until(
                lambda: (
                    "latest" in supervisor.progress
                    and supervisor.progress["latest"].get_records_calls > 0
                ),
                what="the LATEST iterator in use",
            )
            table.put_item(Item={"id": "new"})
            await wait_until(lambda: len(read_jsonl(out)) >= 1, what="the new record")
        assert [r["dynamodb"]["Keys"]["id"]["S"] for r in read_jsonl(out)] == ["new"]


class TestHandlers:
    """Sync, async and class processors all work; sync ones do not block the loop."""

    async def test_async_and_class_handlers(self, tmp_path: Path, moto_endpoint: str) -> None:
        table, name = create_table(moto_endpoint)
        write_module(
            tmp_path,
            "async_and_class",
            """
            import asyncio, json, os
            HERE = os.path.dirname(__file__)

            async def handler(event, context):
                await asyncio.sleep(0)
                with open(os.path.join(HERE, "async.jsonl"), "a") as f:
                    for r in event["Records"]:
                        f.write(json.dumps(r) + "\\n")

            class View:
                def setup(self):
                    self.seen = []
                def process(self, event, context):
                    with open(os.path.join(HERE, "class.jsonl"), "a") as f:
                        for r in event["Records"]:
                            f.write(json.dumps(r) + "\\n")
                def teardown(self):
                    open(os.path.join(HERE, "teardown"), "w").close()
            """,
        )
        settings = settings_for(
            tmp_path,
            endpoint_url=moto_endpoint,
            store_url=f"sqlite+aiosqlite:///{tmp_path / 'cp.db'}",
            processors=f"""
            - name: async-fn
              source: {{dynamodb: {{table: {name}}}}}
              handler: async_and_class:handler
              starting_position: TRIM_HORIZON
            - name: class-proc
              source: {{dynamodb: {{table: {name}}}}}
              handler: async_and_class:View
              starting_position: TRIM_HORIZON
            """,
        )
        for i in range(4):
            table.put_item(Item={"id": str(i)})
        async with running(settings):
            await wait_until(
                lambda: (
                    len(read_jsonl(tmp_path / "async.jsonl")) >= 4
                    and len(read_jsonl(tmp_path / "class.jsonl")) >= 4
                ),
                what="both processors",
            )
        assert len(read_jsonl(tmp_path / "async.jsonl")) == 4
        assert len(read_jsonl(tmp_path / "class.jsonl")) == 4
        assert (tmp_path / "teardown").exists()
