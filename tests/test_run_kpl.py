"""KPL aggregates end to end on moto's Kinesis: as Lambda (whole) and deaggregated.

Aggregates are made by AWS's own aggregator (the ``aws-kinesis-agg`` package), put with
PutRecord as the KPL puts them. Deaggregated, every user record reaches the handler with
its own partition key and a ``subSequenceNumber``; a failure, a retry or a restart inside
an aggregate resumes at the next user record - siblings neither re-delivered nor skipped.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

from aws_kinesis_agg.aggregator import RecordAggregator  # type: ignore[import-untyped]

from shardwise.records import ShardId
from tests.e2e import read_jsonl, running, settings_for, wait_until, write_module
from tests.test_run_kinesis import create_stream

SHARD = ShardId("shardId-000000000000")

HANDLER = """
import base64, json, os, time
OUT = os.path.join(os.path.dirname(__file__), "{out}")

def handler(event, context):
    time.sleep({pause})
    for record in event["Records"]:
        body = record["kinesis"]
        payload = json.loads(base64.b64decode(body["data"]))
        if payload.get("poison"):
            position = body["sequenceNumber"]
            if "subSequenceNumber" in body:
                position += ":" + str(body["subSequenceNumber"])
            return {{"batchItemFailures": [{{"itemIdentifier": position}}]}}
        with open(OUT, "a") as f:
            row = {{"key": body["partitionKey"], "payload": payload,
                   "sub": body.get("subSequenceNumber"), "seq": body["sequenceNumber"]}}
            f.write(json.dumps(row) + "\\n")
    return {{"batchItemFailures": []}}
"""


def put_aggregate(client: Any, name: str, users: list[tuple[str, dict[str, Any]]]) -> str:
    """One KPL aggregate of ``users`` (partition key, JSON payload); its sequence number."""
    aggregator = RecordAggregator()
    for key, payload in users:
        assert aggregator.add_user_record(key, json.dumps(payload).encode()) is None
    partition_key, _, data = aggregator.clear_and_get().get_contents()
    reply = client.put_record(StreamName=name, Data=data, PartitionKey=partition_key)
    return str(reply["SequenceNumber"])


def _settings(
    tmp_path: Path,
    endpoint: str,
    arn: str,
    *,
    deaggregate: bool,
    extra: str = "",
    pause: float = 0.0,
) -> Any:
    module = f"kpl_{tmp_path.name.replace('-', '_')}"
    write_module(tmp_path, module, HANDLER.format(out="out.jsonl", pause=pause))
    return settings_for(
        tmp_path,
        endpoint_url=endpoint,
        store_url=f"sqlite+aiosqlite:///{tmp_path / 'cp.db'}",
        processors=f"""
        - name: kpl
          source: {{kinesis: {{stream_arn: "{arn}", deaggregate: {str(deaggregate).lower()}}}}}
          handler: {module}:handler
          starting_position: TRIM_HORIZON
          function_response_types: [ReportBatchItemFailures]
          {extra}
        """,
    )


def users(start: int, count: int) -> list[tuple[str, dict[str, Any]]]:
    return [(f"user-{n % 3}", {"n": n}) for n in range(start, start + count)]


class TestAsLambda:
    async def test_an_aggregate_reaches_the_handler_whole(
        self, tmp_path: Path, moto_endpoint: str
    ) -> None:
        client, name, arn = create_stream(moto_endpoint)
        put_aggregate(client, name, users(0, 5))
        received = tmp_path / "raw.jsonl"
        write_module(
            tmp_path,
            "kpl_raw",
            f"""
import json
def handler(event, context):
    with open({str(received)!r}, "a") as f:
        for r in event["Records"]:
            f.write(json.dumps(r) + "\\n")
""",
        )
        settings = settings_for(
            tmp_path,
            endpoint_url=moto_endpoint,
            store_url=f"sqlite+aiosqlite:///{tmp_path / 'cp.db'}",
            processors=f"""
            - name: raw
              source: {{kinesis: {{stream_arn: "{arn}"}}}}
              handler: kpl_raw:handler
              starting_position: TRIM_HORIZON
            """,
        )
        async with running(settings):
            await wait_until(lambda: len(read_jsonl(received)) >= 1, what="the aggregate")
        [record] = read_jsonl(received)
        assert base64.b64decode(record["kinesis"]["data"])[:4] == b"\xf3\x89\x9a\xc2"
        assert "subSequenceNumber" not in record["kinesis"]


class TestDeaggregated:
    async def test_user_records_in_order_with_their_own_keys(
        self, tmp_path: Path, moto_endpoint: str
    ) -> None:
        client, name, arn = create_stream(moto_endpoint)
        first = put_aggregate(client, name, users(0, 4))
        second = put_aggregate(client, name, users(4, 3))
        client.put_record(StreamName=name, Data=json.dumps({"n": 7}).encode(), PartitionKey="p")
        out = tmp_path / "out.jsonl"
        async with running(_settings(tmp_path, moto_endpoint, arn, deaggregate=True)):
            await wait_until(lambda: len(read_jsonl(out)) >= 8, what="8 user records")
        rows = read_jsonl(out)
        assert [r["payload"]["n"] for r in rows] == list(range(8))
        assert [r["key"] for r in rows[:7]] == [f"user-{n % 3}" for n in range(7)]
        assert [(r["seq"], r["sub"]) for r in rows[:7]] == [
            *((first, sub) for sub in range(4)),
            *((second, sub) for sub in range(3)),
        ]
        assert rows[7]["sub"] is None and rows[7]["key"] == "p"

    async def test_a_poison_user_record_fails_alone(
        self, tmp_path: Path, moto_endpoint: str
    ) -> None:
        """ReportBatchItemFailures names the poison sibling: the retries start at it, so its
        earlier siblings are not delivered again; given up, the batch retried from it goes to
        the destination (Lambda's rule), named by user-record positions."""
        client, name, arn = create_stream(moto_endpoint)
        batch = users(0, 6)
        batch[3] = ("user-0", {"n": 3, "poison": True})
        sequence = put_aggregate(client, name, batch)
        failures = tmp_path / "failures.jsonl"
        extra = (
            "maximum_retry_attempts: 2\n"
            f'          destination_config: {{on_failure: {{destination: "file://{failures}"}}}}'
        )
        settings = _settings(tmp_path, moto_endpoint, arn, deaggregate=True, extra=extra)
        out = tmp_path / "out.jsonl"
        async with running(settings) as supervisor:
            shard = supervisor.progress["kpl"].shard(SHARD)
            await wait_until(lambda: shard.checkpoint == f"{sequence}:5", what="the last sibling")
        delivered = [r["payload"]["n"] for r in read_jsonl(out)]
        assert delivered == [0, 1, 2]  # each once, across three retries
        [failure] = read_jsonl(failures)
        info = failure["KinesisBatchInfo"]
        assert info["startSequenceNumber"] == f"{sequence}:3"
        assert info["endSequenceNumber"] == f"{sequence}:5"
        assert info["batchSize"] == 3

    async def test_a_restart_inside_an_aggregate_resumes_at_the_next_user_record(
        self, tmp_path: Path, moto_endpoint: str
    ) -> None:
        client, name, arn = create_stream(moto_endpoint)
        sequence = put_aggregate(client, name, users(0, 10))
        out = tmp_path / "out.jsonl"
        settings = _settings(
            tmp_path, moto_endpoint, arn, deaggregate=True, extra="batch_size: 2", pause=0.3
        )
        async with running(settings) as supervisor:
            await wait_until(lambda: len(read_jsonl(out)) >= 2, what="a first batch")
            shard = supervisor.progress["kpl"].shard(SHARD)
        stopped_at = shard.checkpoint
        assert stopped_at is not None and stopped_at.startswith(f"{sequence}:")
        assert stopped_at != f"{sequence}:9"  # stopped inside the aggregate
        async with running(settings):
            await wait_until(lambda: len(read_jsonl(out)) >= 10, what="every user record")
        delivered = [r["payload"]["n"] for r in read_jsonl(out)]
        assert delivered == list(range(10))  # a clean stop: nothing twice, nothing skipped
