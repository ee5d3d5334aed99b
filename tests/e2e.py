"""Helpers for end-to-end tests: a handler that records what it received, a running daemon."""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import boto3
from mypy_boto3_dynamodb.literals import StreamViewTypeType

from shardwise.config import Settings, parse_config
from shardwise.supervisor import Supervisor
from shardwise.testing import ScriptedStream, StreamsServer

# A stock Lambda handler, as a user writes it: appends each record to a JSON-lines file.
RECORDING_HANDLER = """
import json, os

OUT = os.path.join(os.path.dirname(__file__), "{out}")

def handler(event, context):
    assert context.get_remaining_time_in_millis() > 0
    with open(OUT, "a") as f:
        for record in event["Records"]:
            f.write(json.dumps(record) + "\\n")
    return None
"""


def write_module(directory: Path, name: str, source: str) -> str:
    """Write ``source`` as ``<directory>/<name>.py`` and return the module name.

    A module of that name imported by an earlier in-process test is forgotten, so the
    handler imported next is this one.
    """
    (directory / f"{name}.py").write_text(textwrap.dedent(source))
    sys.modules.pop(name, None)
    importlib.invalidate_caches()
    return name


def recording_handler(directory: Path, out: str = "received.jsonl") -> tuple[str, Path]:
    """A unique recording handler module; returns (``module:handler``, output path)."""
    module = f"recorder_{uuid.uuid4().hex[:8]}"
    write_module(directory, module, RECORDING_HANDLER.format(out=out))
    return f"{module}:handler", directory / out


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Complete lines only: a handler may be writing the last one right now."""
    if not path.exists():
        return []
    complete = path.read_text().rpartition("\n")[0]
    return [json.loads(line) for line in complete.splitlines() if line]


def settings_for(
    tmp_path: Path,
    *,
    endpoint_url: str,
    store_url: str,
    processors: str,
    extra: str = "",
    transport: str = "raw",
) -> Settings:
    text = f"""
aws:
  region: us-east-1
  endpoint_url: {endpoint_url}
  transport: {transport}
store:
  url: {store_url}
worker:
  shutdown_timeout_seconds: 10
  shard_sync_interval_seconds: 1
{extra}
processors:
{textwrap.indent(textwrap.dedent(processors).strip(), "  ")}
"""
    return parse_config(text, source="test.yaml", config_dir=tmp_path)


def kinesis_worker_settings(
    tmp_path: Path,
    *,
    endpoint_url: str,
    store_url: str,
    arn: str,
    handler: str,
    worker: str,
    name: str,
    extra: str = "",
) -> Settings:
    """One worker (its own ``worker.id``, short leases) of processor ``name`` reading the
    Kinesis stream ``arn`` with ``handler``; ``extra`` adds processor keys."""
    text = f"""
aws: {{region: us-east-1, endpoint_url: "{endpoint_url}"}}
store: {{url: "{store_url}"}}
worker:
  id: {worker}
  lease_duration_seconds: 2
  shutdown_timeout_seconds: 10
  shard_sync_interval_seconds: 1
processors:
  - name: {name}
    source: {{kinesis: {{stream_arn: "{arn}"}}}}
    handler: {handler}
    starting_position: TRIM_HORIZON
{textwrap.indent(textwrap.dedent(extra).strip(), "    ")}
"""
    return parse_config(text, source=f"{worker}.yaml", config_dir=tmp_path)


@asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[Supervisor]:
    """Run a supervisor in the background; on exit drain it and re-raise its failure."""
    supervisor = Supervisor(settings)
    task = asyncio.create_task(supervisor.run(install_signal_handlers=False))
    try:
        yield supervisor
    finally:
        supervisor.request_stop()
        await asyncio.wait_for(task, timeout=30)


async def wait_until(
    predicate: Callable[[], bool], timeout_s: float = 20.0, what: str = "condition"
) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.05)


def create_table(
    endpoint_url: str, view_type: StreamViewTypeType = "NEW_AND_OLD_IMAGES", *, key: str = "id"
) -> tuple[Any, str]:
    """A table with a stream on the given endpoint, keyed by the string attribute ``key``;
    returns (boto3 table resource, name)."""
    name = f"t{uuid.uuid4().hex[:10]}"
    client = boto3.client("dynamodb", endpoint_url=endpoint_url, region_name="us-east-1")
    client.create_table(
        TableName=name,
        KeySchema=[{"AttributeName": key, "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": key, "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
        StreamSpecification={"StreamEnabled": True, "StreamViewType": view_type},
    )
    resource = boto3.resource("dynamodb", endpoint_url=endpoint_url, region_name="us-east-1")
    return resource.Table(name), name


@contextmanager
def command_running(
    command: Sequence[str], *, cwd: Path, env: dict[str, str]
) -> Iterator[subprocess.Popen[str]]:
    """A command as a user starts it (no stdin, output captured as text); killed if it is
    still running when the block ends, and its pipes drained."""
    process = subprocess.Popen(
        list(command),
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate()


def shardwise_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m shardwise ARGS`` to its end (no stdin, output captured as text)."""
    return subprocess.run(
        [sys.executable, "-m", "shardwise", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        timeout=60,
        check=False,
    )


@contextmanager
def daemon(config: Path, output: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``shardwise run`` as a user starts it, in the config's directory, its output appended
    to a file (no pipe to fill up); killed if still running when the block ends."""
    with output.open("ab") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "shardwise", "run", "-c", str(config)],
            cwd=config.parent,
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def wait_for(
    predicate: Callable[[], bool],
    process: subprocess.Popen[bytes],
    output: Path,
    what: str,
    timeout_s: float = 30.0,
) -> None:
    """Poll ``predicate`` while a daemon runs (no asyncio loop in a subprocess test); its
    output is in the failure message."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert process.poll() is None, f"shardwise exited waiting for {what}:\n{output.read_text()}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}:\n{output.read_text()}"
        time.sleep(0.05)


def one_shard_stream(
    server: StreamsServer, records: int, table: str = "Orders"
) -> tuple[ScriptedStream, str]:
    """A new stream of ``table`` with its one shard holding ``records`` records: the stream
    and the shard's id."""
    stream = server.create_stream(table)
    [shard] = stream.shard_ids
    stream.put_many(shard, records)
    return stream, shard
