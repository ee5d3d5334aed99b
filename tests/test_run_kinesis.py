"""End to end against moto's Kinesis over HTTP: Lambda's Kinesis records, positions, resharding.

moto differs from the service in ways the source must survive: a closed shard's iterator
never ends (the listing's EndingSequenceNumber ends it), a merge copies both parents' records
into the child, and records put after a split or merge still land in the closed parents (so
no records are put after resharding here). Splits, and records written to children, are
tested against the project's streams server (tests/test_run_kinesis_server.py).
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import pytest

from shardwise.config import Settings
from shardwise.supervisor import Supervisor
from tests.e2e import (
    kinesis_worker_settings,
    read_jsonl,
    recording_handler,
    running,
    settings_for,
    wait_until,
)


def _kinesis(endpoint_url: str) -> Any:
    return boto3.client("kinesis", endpoint_url=endpoint_url, region_name="us-east-1")


def create_stream(endpoint_url: str, shards: int = 1) -> tuple[Any, str, str]:
    """A new stream on moto: (boto3 client, name, ARN)."""
    client = _kinesis(endpoint_url)
    name = f"s{uuid.uuid4().hex[:10]}"
    client.create_stream(StreamName=name, ShardCount=shards)
    arn = client.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"]["StreamARN"]
    return client, name, arn


def put(client: Any, name: str, key: str, value: Any) -> str:
    data = value if isinstance(value, bytes) else json.dumps(value).encode()
    reply = client.put_record(StreamName=name, Data=data, PartitionKey=key)
    return str(reply["SequenceNumber"])


def payloads(records: list[dict[str, Any]]) -> list[Any]:
    return [json.loads(base64.b64decode(r["kinesis"]["data"])) for r in records]


def _shards(client: Any, arn: str) -> list[dict[str, Any]]:
    return list(client.list_shards(StreamARN=arn)["Shards"])


class TestRecords:
    async def test_a_stock_handler_sees_lambdas_kinesis_records(
        self, tmp_path: Path, moto_endpoint: str
    ) -> None:
        client, name, arn = create_stream(moto_endpoint, shards=2)
        handler, out = recording_handler(tmp_path)
        settings = settings_for(
            tmp_path,
            endpoint_url=moto_endpoint,
            store_url=f"sqlite+aiosqlite:///{tmp_path / 'cp.db'}",
            processors=f"""
            - name: shape
              source:
                kinesis:
                  stream_name: {name}
                  invoke_identity_arn: "arn:aws:iam::123456789012:role/fn"
              handler: {handler}
              starting_position: TRIM_HORIZON
            """,
        )
        sent: dict[str, list[str]] = {
            f"k{i}": [] for i in range(6)
        }  # partition key -> sequence numbers, in order
        for i in range(30):
            key = f"k{i % 6}"
            sent[key].append(put(client, name, key, {"i": i}))
        binary = put(client, name, "bin", b"\x00\xff\x10")
        async with running(settings) as supervisor:
            await wait_until(lambda: len(read_jsonl(out)) >= 31, what="31 records")
            shards = supervisor.progress["shape"].shards.values()
            # MillisBehindLatest of the last page, per shard (the Kinesis gauge's source).
            assert all(shard.millis_behind_latest is not None for shard in shards)
        records = read_jsonl(out)
        assert len(records) == 31
        shard_ids = {s["ShardId"] for s in _shards(client, arn)}
        for record in records:
            assert set(record) == {
                "kinesis",
                "eventSource",
                "eventVersion",
                "eventID",
                "eventName",
                "invokeIdentityArn",
                "awsRegion",
                "eventSourceARN",
            }
            body = record["kinesis"]
            assert set(body) == {
                "kinesisSchemaVersion",
                "partitionKey",
                "sequenceNumber",
                "data",
                "approximateArrivalTimestamp",
            }
            assert body["kinesisSchemaVersion"] == "1.0"
            assert isinstance(body["approximateArrivalTimestamp"], float)
            assert abs(body["approximateArrivalTimestamp"] - time.time()) < 120
            assert record["eventSource"] == "aws:kinesis"
            assert record["eventVersion"] == "1.0"
            assert record["eventName"] == "aws:kinesis:record"
            assert record["awsRegion"] == "us-east-1"
            assert record["eventSourceARN"] == arn
            assert record["invokeIdentityArn"] == "arn:aws:iam::123456789012:role/fn"
            shard, _, sequence = record["eventID"].partition(":")
            assert shard in shard_ids and sequence == body["sequenceNumber"]
        # Per partition key, in the order written (a key maps to one shard).
        for key, sequences in sent.items():
            got = [
                r["kinesis"]["sequenceNumber"]
                for r in records
                if r["kinesis"]["partitionKey"] == key
            ]
            assert got == sequences
        [raw] = [r for r in records if r["kinesis"]["partitionKey"] == "bin"]
        assert raw["kinesis"]["sequenceNumber"] == binary
        assert base64.b64decode(raw["kinesis"]["data"]) == b"\x00\xff\x10"

    async def test_at_timestamp_starts_at_the_first_record_at_or_after_it(
        self, tmp_path: Path, moto_endpoint: str
    ) -> None:
        client, name, arn = create_stream(moto_endpoint)
        for i in range(5):
            put(client, name, "k", {"before": i})
        await asyncio.sleep(0.05)
        boundary = datetime.now(UTC)
        await asyncio.sleep(0.05)
        for i in range(5):
            put(client, name, "k", {"after": i})
        handler, out = recording_handler(tmp_path)
        settings = settings_for(
            tmp_path,
            endpoint_url=moto_endpoint,
            store_url=f"sqlite+aiosqlite:///{tmp_path / 'cp.db'}",
            processors=f"""
            - name: at
              source: {{kinesis: {{stream_arn: "{arn}"}}}}
              handler: {handler}
              starting_position: AT_TIMESTAMP
              starting_position_timestamp: "{boundary.isoformat()}"
            """,
        )
        async with running(settings):
            await wait_until(lambda: len(read_jsonl(out)) >= 5, what="5 records")
            put(client, name, "k", {"after": 5})
            await wait_until(lambda: len(read_jsonl(out)) >= 6, what="6 records")
        assert payloads(read_jsonl(out)) == [{"after": i} for i in range(6)]

    async def test_restart_resumes_after_the_checkpoint(
        self, tmp_path: Path, moto_endpoint: str
    ) -> None:
        client, name, _ = create_stream(moto_endpoint)
        handler, out = recording_handler(tmp_path)
        settings = settings_for(
            tmp_path,
            endpoint_url=moto_endpoint,
            store_url=f"sqlite+aiosqlite:///{tmp_path / 'cp.db'}",
            processors=f"""
            - name: resume
              source: {{kinesis: {{stream_name: {name}}}}}
              handler: {handler}
              starting_position: LATEST
            """,
        )
        async with running(settings) as supervisor:
            await wait_until(supervisor.started.is_set, what="start")
            await wait_until(
                lambda: bool(supervisor.progress["resume"].shards), what="the shard to be read"
            )
            for i in range(3):
                put(client, name, "k", {"n": i})
            await wait_until(lambda: len(read_jsonl(out)) >= 3, what="3 records")
        for i in range(3, 6):
            put(client, name, "k", {"n": i})
        async with running(settings):
            await wait_until(lambda: len(read_jsonl(out)) >= 6, what="6 records")
        assert payloads(read_jsonl(out)) == [{"n": i} for i in range(6)]


TIMED_HANDLER = """
import json, os, time
OUT = os.path.join(os.path.dirname(__file__), "timed.jsonl")

def handler(event, context):
    with open(OUT, "a") as f:
        for r in event["Records"]:
            shard = r["eventID"].partition(":")[0]
            row = {"shard": shard, "t": time.time(), "data": r["kinesis"]["data"]}
            f.write(json.dumps(row) + "\\n")
"""


@asynccontextmanager
async def workers(*settings: Settings) -> AsyncIterator[list[Supervisor]]:
    async with AsyncExitStack() as stack:
        yield [await stack.enter_async_context(running(s)) for s in settings]


class TestResharding:
    async def test_merge_child_waits_for_both_parents_on_two_workers(
        self, tmp_path: Path, moto_endpoint: str, postgres_url: str
    ) -> None:
        client, name, arn = create_stream(moto_endpoint, shards=2)
        (tmp_path / "timed_merge.py").write_text(TIMED_HANDLER)
        a, b = (
            kinesis_worker_settings(
                tmp_path,
                endpoint_url=moto_endpoint,
                store_url=postgres_url,
                arn=arn,
                handler="timed_merge:handler",
                worker=w,
                name="merge",
            )
            for w in ("wa", "wb")
        )
        out = tmp_path / "timed.jsonl"
        for i in range(20):
            put(client, name, f"k{i}", {"n": i})
        parents = [s["ShardId"] for s in _shards(client, arn)]
        async with workers(a, b) as (first, second):
            # Each worker holds one parent: the merge is followed across workers.
            await wait_until(
                lambda: (
                    len(first.progress["merge"].shards) == 1
                    and len(second.progress["merge"].shards) == 1
                ),
                timeout_s=30,
                what="one parent shard on each worker",
            )
            await wait_until(lambda: len(read_jsonl(out)) >= 20, what="20 records")
            client.merge_shards(
                StreamName=name, ShardToMerge=parents[0], AdjacentShardToMerge=parents[1]
            )
            # moto copies both parents' records into the child: 20 more deliveries.
            [child] = [s for s in _shards(client, arn) if s.get("AdjacentParentShardId")]
            await wait_until(
                lambda: sum(r["shard"] == child["ShardId"] for r in read_jsonl(out)) >= 20,
                timeout_s=30,
                what="the child read",
            )
            await wait_until(
                lambda: (
                    first.progress["merge"].shards_finished
                    + second.progress["merge"].shards_finished
                    >= 2
                ),
                what="both parents finished",
            )
        rows = read_jsonl(out)
        assert {child["ParentShardId"], child["AdjacentParentShardId"]} == set(parents)
        first_child = min(r["t"] for r in rows if r["shard"] == child["ShardId"])
        last_parent = max(r["t"] for r in rows if r["shard"] in parents)
        assert last_parent <= first_child
        for shard in (*parents, child["ShardId"]):
            delivered = {
                json.loads(base64.b64decode(r["data"]))["n"] for r in rows if r["shard"] == shard
            }
            assert delivered <= set(range(20)) and delivered, shard
        # Each parent was read to its end, on its own worker, before the child began.
        assert {
            json.loads(base64.b64decode(r["data"]))["n"] for r in rows if r["shard"] in parents
        } == set(range(20))


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (
            "{kinesis: {stream_name: s}, dynamodb: {table: Orders}}",
            "exactly one of dynamodb or kinesis",
        ),
        ("{kinesis: {}}", "exactly one of stream_name or stream_arn"),
        ("{kinesis: {stream_arn: 'arn:aws:kinesis:us-east-1:1:stream/x'}}", "Kinesis stream ARN"),
    ],
)
def test_source_config_errors_name_the_field(tmp_path: Path, source: str, message: str) -> None:
    from shardwise.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        settings_for(
            tmp_path,
            endpoint_url="http://127.0.0.1:1",
            store_url="sqlite+aiosqlite:///x.db",
            processors=f"""
            - name: bad
              source: {source}
              handler: a.b
              starting_position: TRIM_HORIZON
            """,
        )
