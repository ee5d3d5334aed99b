"""What the DynamoDB Streams and the Kinesis server tests share: a running ``StreamsServer``,
botocore without retries, reading a closed shard to its end, raw requests, and the server
run as its own process."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from typing import Any, Protocol

import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from shardwise.testing import StreamsServer

NO_RETRIES = Config(retries={"total_max_attempts": 1})
JSON_1_0 = "application/x-amz-json-1.0"  # DynamoDB Streams
JSON_1_1 = "application/x-amz-json-1.1"  # Kinesis


@pytest.fixture
def server() -> Iterator[StreamsServer]:
    with StreamsServer() as running:
        yield running


class ReadsRecords(Protocol):
    """A DynamoDB Streams or a Kinesis client, as far as ``read_to_end`` uses one."""

    def get_records(self, *, ShardIterator: str) -> Mapping[str, Any]: ...


def read_to_end(
    client: ReadsRecords, shard_iterator: str
) -> tuple[list[Mapping[str, Any]], Mapping[str, Any]]:
    """Every record of a closed shard, and its last page; fails if the shard never ends."""
    records: list[Mapping[str, Any]] = []
    for _ in range(1000):
        # The stubs type NextShardIterator as always present (read here as a plain
        # Mapping); a closed shard's last page has none, which is the point of this helper.
        page = client.get_records(ShardIterator=shard_iterator)
        records += page["Records"]
        next_iterator = page.get("NextShardIterator")
        if next_iterator is None:
            return records, page
        shard_iterator = next_iterator
    raise AssertionError("the shard never ended")


def error_code(info: pytest.ExceptionInfo[ClientError]) -> str:
    return info.value.response["Error"]["Code"]


def raw_call(
    server: StreamsServer, target: str, body: dict[str, Any], *, content_type: str
) -> tuple[int, str, Any]:
    """One unsigned request without botocore: status, Content-Type and the JSON sent back."""
    request = urllib.request.Request(
        server.endpoint_url + "/",
        data=json.dumps(body).encode(),
        headers={"X-Amz-Target": target, "Content-Type": content_type},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.headers["Content-Type"], json.loads(response.read())
    except urllib.error.HTTPError as error:
        try:
            return error.code, error.headers["Content-Type"], json.loads(error.read())
        finally:
            error.close()


@contextlib.contextmanager
def command_line_server(*args: str, lines: int) -> Iterator[dict[str, str]]:
    """``python -m shardwise.testing.streams_server *args`` as its own process: the first
    ``lines`` lines it prints, ``name=value`` each, as a dict. Once the block is done, the
    process is terminated, and must end with status 0 and nothing on stderr."""
    process = subprocess.Popen(
        [sys.executable, "-m", "shardwise.testing.streams_server", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        yield dict(process.stdout.readline().strip().split("=", 1) for _ in range(lines))
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=10)
    assert process.returncode == 0
    assert stderr == ""
