"""Resharding end to end on the project's streams server, which reshards as Kinesis does.

Records stay in their closed parents, new ones go to the children, closed shards end with
``ChildShards`` and the 5 GetRecords calls/s per shard limit is on. Two workers share the
stream through PostgreSQL while ``UpdateShardCount`` splits every shard and then merges them
back: every record arrives, and per partition key in the order written.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from shardwise.config import Settings
from shardwise.testing import ScriptedKinesisStream, StreamsServer
from tests.e2e import kinesis_worker_settings, read_jsonl, wait_until, write_module
from tests.test_run_kinesis import workers

HANDLER = """
import base64, json, os, time
OUT = os.path.join(os.path.dirname(__file__), "reshard.jsonl")

def handler(event, context):
    with open(OUT, "a") as f:
        for r in event["Records"]:
            row = {"shard": r["eventID"].partition(":")[0], "t": time.time(),
                   "key": r["kinesis"]["partitionKey"],
                   "n": json.loads(base64.b64decode(r["kinesis"]["data"]))}
            f.write(json.dumps(row) + "\\n")
"""
KEYS = 12


@pytest.fixture
def server() -> Iterator[StreamsServer]:
    with StreamsServer() as streams:
        yield streams


def settings(tmp_path: Path, server: StreamsServer, arn: str, store: str, worker: str) -> Settings:
    return kinesis_worker_settings(
        tmp_path,
        endpoint_url=server.endpoint_url,
        store_url=store,
        arn=arn,
        handler="reshard_handler:handler",
        worker=worker,
        name="reshard",
        extra="batch_size: 7",
    )


def put(stream: ScriptedKinesisStream, numbers: range) -> None:
    for n in numbers:
        stream.put(json.dumps(n).encode(), partition_key=f"key-{n % KEYS}")


class TestReshardingAcrossWorkers:
    async def test_split_then_merge_keeps_every_key_in_order(
        self, tmp_path: Path, server: StreamsServer, postgres_url: str
    ) -> None:
        env = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"}
        with pytest.MonkeyPatch.context() as patch:
            for name, value in env.items():
                patch.setenv(name, value)
            write_module(tmp_path, "reshard_handler", HANDLER)
            stream = server.create_kinesis_stream("Reshard", shards=2)
            out = tmp_path / "reshard.jsonl"

            def numbers() -> set[int]:
                return {row["n"] for row in read_jsonl(out)}

            put(stream, range(60))
            a, b = (settings(tmp_path, server, stream.arn, postgres_url, w) for w in ("wa", "wb"))
            async with workers(a, b) as (first, second):
                await wait_until(lambda: numbers() >= set(range(60)), what="the first 60")
                split = stream.update_shard_count(4)
                put(stream, range(60, 120))
                await wait_until(
                    lambda: numbers() >= set(range(120)), timeout_s=40, what="120 after the split"
                )
                merged = stream.update_shard_count(2)
                put(stream, range(120, 180))
                await wait_until(
                    lambda: numbers() >= set(range(180)), timeout_s=40, what="180 after the merge"
                )
            processed = [w.progress["reshard"].records_processed for w in (first, second)]
        rows = read_jsonl(out)
        assert len(split) == 4 and len(merged) == 2
        assert all(processed), processed  # both workers read
        # Per key, first deliveries in the order written: parents before children.
        for key in range(KEYS):
            firsts = list(dict.fromkeys(r["n"] for r in rows if r["key"] == f"key-{key}"))
            assert firsts == sorted(firsts), key
        # The records after each reshard came from the new shards.
        assert {r["shard"] for r in rows if r["n"] >= 120} <= set(merged)
        assert {r["shard"] for r in rows if 60 <= r["n"] < 120} <= set(split)


class TestFaults:
    async def test_faults_cost_no_record_and_repeat_none(
        self, tmp_path: Path, server: StreamsServer, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Throttling (the shard's and KMS's), a 500 and expired iterators mid-stream: every
        record once, in order - the iterator is reopened after the last record read."""
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
        write_module(tmp_path, "reshard_handler", HANDLER)
        stream = server.create_kinesis_stream("Faults")
        [shard] = stream.shard_ids
        out = tmp_path / "reshard.jsonl"
        config = settings(
            tmp_path, server, stream.arn, f"sqlite+aiosqlite:///{tmp_path / 'cp.db'}", "w"
        )
        put(stream, range(40))
        for code in (
            "ProvisionedThroughputExceededException",
            "KMSThrottlingException",
            "InternalFailure",
            "ExpiredIteratorException",
        ):
            stream.fail("GetRecords", code, shard_id=shard, times=2)
        async with workers(config) as (supervisor,):
            await wait_until(lambda: len(read_jsonl(out)) >= 40, timeout_s=40, what="40 records")
            put(stream, range(40, 60))
            stream.fail("GetRecords", "ExpiredIteratorException", shard_id=shard, times=1)
            await wait_until(lambda: len(read_jsonl(out)) >= 60, timeout_s=40, what="60 records")
            errors = supervisor.progress["reshard"].api_errors
        assert [row["n"] for row in read_jsonl(out)] == list(range(60))
        assert errors["ProvisionedThroughputExceededException"] >= 2
        assert errors["KMSThrottlingException"] >= 2
        assert errors["InternalFailure"] >= 2
