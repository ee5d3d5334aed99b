"""The test kit's pytest plugin: registered by shardwise's ``pytest11`` entry point, its
fixtures start a streams server for the test and stop it after."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from importlib.metadata import entry_points
from pathlib import Path

import boto3
import pytest
from botocore.config import Config

from shardwise.testing import ScriptedKinesisStream, ScriptedStream, StreamsServer, pytest_plugin

NO_RETRIES = Config(retries={"total_max_attempts": 1})


def test_the_entry_point_names_the_plugin() -> None:
    [entry] = [e for e in entry_points(group="pytest11") if e.name == "shardwise"]
    assert entry.value == "shardwise.testing.pytest_plugin"
    assert entry.load() is pytest_plugin


def test_this_session_loaded_it(request: pytest.FixtureRequest) -> None:
    assert request.config.pluginmanager.get_plugin("shardwise") is pytest_plugin


def test_streams_server_is_running(streams_server: StreamsServer) -> None:
    assert streams_server.endpoint_url.startswith("http://127.0.0.1:")
    client = boto3.client(
        "dynamodbstreams",
        endpoint_url=streams_server.endpoint_url,
        region_name="us-east-1",
        config=NO_RETRIES,
    )
    assert client.list_streams()["Streams"] == []


def test_dynamodb_stream_is_on_the_server(
    streams_server: StreamsServer, dynamodb_stream: ScriptedStream
) -> None:
    assert streams_server.streams == [dynamodb_stream]
    assert dynamodb_stream.table == "test-table"
    shard = dynamodb_stream.shard_ids[0]
    dynamodb_stream.put(shard, keys={"Id": {"N": "1"}}, new_image={"Id": {"N": "1"}})
    client = boto3.client(
        "dynamodbstreams",
        endpoint_url=streams_server.endpoint_url,
        region_name="us-east-1",
        config=NO_RETRIES,
    )
    iterator = client.get_shard_iterator(
        StreamArn=dynamodb_stream.arn, ShardId=shard, ShardIteratorType="TRIM_HORIZON"
    )["ShardIterator"]
    [record] = client.get_records(ShardIterator=iterator)["Records"]
    assert record["dynamodb"]["Keys"] == {"Id": {"N": "1"}}


def test_kinesis_stream_is_on_the_server(
    streams_server: StreamsServer, kinesis_stream: ScriptedKinesisStream
) -> None:
    assert streams_server.kinesis_streams == [kinesis_stream]
    kinesis_stream.put(json.dumps({"n": 1}).encode(), partition_key="k")
    client = boto3.client(
        "kinesis",
        endpoint_url=streams_server.endpoint_url,
        region_name="us-east-1",
        config=NO_RETRIES,
    )
    shard = kinesis_stream.shard_ids[0]
    iterator = client.get_shard_iterator(
        StreamARN=kinesis_stream.arn, ShardId=shard, ShardIteratorType="TRIM_HORIZON"
    )["ShardIterator"]
    [record] = client.get_records(StreamARN=kinesis_stream.arn, ShardIterator=iterator)["Records"]
    assert json.loads(record["Data"]) == {"n": 1}


def _pytest(directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """pytest in a directory of its own: no project conftest, only installed plugins."""
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


USER_TEST = textwrap.dedent(
    """
    SEEN = []

    def test_uses_the_server(streams_server):
        SEEN.append(streams_server)
        assert streams_server.endpoint_url.startswith("http://127.0.0.1:")

    def test_the_server_was_stopped():
        [server] = SEEN
        try:
            server.endpoint_url
        except RuntimeError as exc:
            assert "stopped" in str(exc)
        else:
            raise AssertionError("still running")
    """
)


def test_a_users_session_gets_the_fixtures(tmp_path: Path) -> None:
    (tmp_path / "test_user.py").write_text(USER_TEST)
    done = _pytest(tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 passed" in done.stdout


def test_it_can_be_turned_off(tmp_path: Path) -> None:
    (tmp_path / "test_user.py").write_text(USER_TEST)
    done = _pytest(tmp_path, "-p", "no:shardwise")
    assert done.returncode != 0
    assert "fixture 'streams_server' not found" in done.stdout
