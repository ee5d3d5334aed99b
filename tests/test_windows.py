"""Tumbling windows: Lambda's window fields, state carried and persisted, final invocations."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from shardwise.store import CheckpointStore
from shardwise.testing import ScriptedStream, StreamsServer
from tests.e2e import read_jsonl, running, settings_for, wait_until, write_module

COUNTER = """
import json, os
HERE = os.path.dirname(__file__)

def handler(event, context):
    path = "finals.jsonl" if event["isFinalInvokeForWindow"] else "calls.jsonl"
    with open(os.path.join(HERE, path), "a") as f:
        f.write(json.dumps({k: v for k, v in event.items() if k != "Records"}
                           | {"records": len(event["Records"])}) + "\\n")
    count = event["state"].get("count", 0) + len(event["Records"])
    return {"state": {"count": count}}
"""


@pytest.fixture
def server() -> Iterator[StreamsServer]:
    with StreamsServer() as streams:
        yield streams


def put(stream: ScriptedStream, shard: str, key: str, created: float) -> None:
    stream.put(
        shard, "INSERT", keys={"Id": {"S": key}}, new_image={"Id": {"S": key}}, created=created
    )


def windowed(arn: str, size: int) -> str:
    return f"""
    - name: w
      source: {{dynamodb: {{stream_arn: "{arn}"}}}}
      handler: counter:handler
      starting_position: TRIM_HORIZON
      tumbling_window_in_seconds: {size}
    """


class TestTumblingWindows:
    """Windows by creation time, aligned to the clock; state carried, persisted, finalised."""

    async def test_state_and_final_invocations(
        self, tmp_path: Path, server: StreamsServer, sqlite_url: str
    ) -> None:
        stream = server.create_stream("Orders")
        [shard] = stream.shard_ids
        base = int(time.time()) // 60 * 60 - 180
        for i, created in enumerate([base + 1, base + 2, base + 3, base + 61, base + 62]):
            put(stream, shard, f"old-{i}", created)
        # An open window that cannot end on the clock while the test runs.
        later = base + 3600
        put(stream, shard, "later-0", later)
        write_module(tmp_path, "counter", COUNTER)
        settings = settings_for(
            tmp_path,
            endpoint_url=server.endpoint_url,
            store_url=sqlite_url,
            processors=windowed(stream.arn, 60),
        )
        finals = tmp_path / "finals.jsonl"
        async with running(settings):
            await wait_until(lambda: len(read_jsonl(finals)) >= 2, what="two closed windows")
            await wait_until(lambda: len(read_jsonl(tmp_path / "calls.jsonl")) >= 3, what="calls")
        first, second = read_jsonl(finals)[:2]
        start = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(base))
        assert first["window"] == {
            "start": start,
            "end": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(base + 60)),
        }
        assert first["state"] == {"count": 3}
        assert second["state"] == {"count": 2}
        assert first["records"] == 0 and first["isWindowTerminatedEarly"] is False
        assert first["shardId"] == shard and first["eventSourceARN"] == stream.arn
        # The open window's state is stored with the checkpoint ...
        async with await CheckpointStore.connect(sqlite_url) as store:
            [row] = await store.list("w")
        assert row.sequence_number == stream.records(shard)[-1]["dynamodb"]["SequenceNumber"]
        # ... so a restart carries it on.
        put(stream, shard, "now-1", time.time())
        async with running(settings):
            await wait_until(
                lambda: len(read_jsonl(tmp_path / "calls.jsonl")) >= 4, what="after restart"
            )
        last = read_jsonl(tmp_path / "calls.jsonl")[-1]
        if last["window"]["start"] == read_jsonl(tmp_path / "calls.jsonl")[-2]["window"]["start"]:
            assert last["state"] == {"count": 1}

    async def test_window_closes_on_the_clock(
        self, tmp_path: Path, server: StreamsServer, sqlite_url: str
    ) -> None:
        stream = server.create_stream("Orders")
        [shard] = stream.shard_ids
        put(stream, shard, "a", time.time())
        write_module(tmp_path, "counter", COUNTER)
        settings = settings_for(
            tmp_path,
            endpoint_url=server.endpoint_url,
            store_url=sqlite_url,
            processors=windowed(stream.arn, 1),
        )
        async with running(settings):
            await wait_until(lambda: len(read_jsonl(tmp_path / "finals.jsonl")) >= 1, what="final")
        [final] = read_jsonl(tmp_path / "finals.jsonl")
        assert final["state"] == {"count": 1}
        assert final["isFinalInvokeForWindow"] is True

    async def test_missing_state_is_a_failure(
        self, tmp_path: Path, server: StreamsServer, sqlite_url: str
    ) -> None:
        stream = server.create_stream("Orders")
        [shard] = stream.shard_ids
        put(stream, shard, "a", time.time())
        write_module(tmp_path, "counter", "def handler(event, context):\n    return None\n")
        failures = tmp_path / "failed.jsonl"
        settings = settings_for(
            tmp_path,
            endpoint_url=server.endpoint_url,
            store_url=sqlite_url,
            processors=windowed(stream.arn, 60)
            + "  maximum_retry_attempts: 0\n"
            + f'      destination_config: {{on_failure: {{destination: "file://{failures}"}}}}\n',
        )
        async with running(settings):
            await wait_until(lambda: len(read_jsonl(failures)) >= 1, what="the failure record")
        [failure] = read_jsonl(failures)
        assert "state" in json.dumps(failure["shardwise"])

    async def test_state_over_1_mb_terminates_the_window_early(
        self, tmp_path: Path, server: StreamsServer, sqlite_url: str
    ) -> None:
        stream = server.create_stream("Orders")
        [shard] = stream.shard_ids
        later = time.time() + 3600
        put(stream, shard, "a", later)
        write_module(
            tmp_path,
            "counter",
            """
            import json, os
            HERE = os.path.dirname(__file__)

            def handler(event, context):
                if event["isFinalInvokeForWindow"]:
                    with open(os.path.join(HERE, "finals.jsonl"), "a") as f:
                        f.write(json.dumps({"early": event["isWindowTerminatedEarly"],
                                            "size": len(event["state"].get("blob", ""))}) + "\\n")
                    return None
                return {"state": {"blob": "x" * (1024 * 1024 + 1)}}
            """,
        )
        settings = settings_for(
            tmp_path,
            endpoint_url=server.endpoint_url,
            store_url=sqlite_url,
            processors=windowed(stream.arn, 900),
        )
        async with running(settings):
            await wait_until(lambda: len(read_jsonl(tmp_path / "finals.jsonl")) >= 1, what="final")
        [final] = read_jsonl(tmp_path / "finals.jsonl")
        assert final == {"early": True, "size": 1024 * 1024 + 1}
