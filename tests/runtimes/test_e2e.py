"""Runtime processors end to end against moto over HTTP: functions in other processes.

Every test runs real functions (``tests/runtimes/functions``) through the Lambda Runtime API
that shardwise serves: Python's awslambdaric, Node.js' aws-lambda-ric and a bash + curl
``bootstrap``. The functions' behaviour is chosen by the records' keys (``slow*``, ``crash*``,
``poison*``, ``partial*``) and each invocation appends one line (request id, the process's
pid, the records) to ``RECORD_LOG``, which is what these tests read to see what ran where.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import textwrap
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from structlog.testing import capture_logs

from shardwise.store import CheckpointStore
from tests.e2e import (
    create_table,
    daemon,
    read_jsonl,
    running,
    settings_for,
    shardwise_cli,
    wait_for,
    wait_until,
)
from tests.runtimes import FUNCTIONS, NODE_EXAMPLE, NODE_RIC


@dataclass(frozen=True, slots=True)
class Runtime:
    """One of the test functions, as a ``runtime:`` setting starts it."""

    name: str
    command: tuple[str, ...]
    directory: Path


PYTHON = Runtime(
    "python", (sys.executable, "-m", "awslambdaric", "app.handler"), FUNCTIONS / "python"
)
NODE = Runtime(
    "node",
    ("node", str(NODE_RIC), "behaviours.handler"),
    FUNCTIONS / "node",
)
BOOTSTRAP = Runtime("bootstrap", ("./bootstrap",), FUNCTIONS / "bootstrap")

EVERY_RUNTIME = pytest.mark.parametrize("runtime", [PYTHON, NODE, BOOTSTRAP], ids=lambda r: r.name)
# The bootstrap has no partial* behaviour (it cannot pick a record's sequence number in bash).
PARTIAL_RUNTIMES = pytest.mark.parametrize("runtime", [PYTHON, NODE], ids=lambda r: r.name)


@pytest.fixture(autouse=True)
def node_functions() -> None:
    if not NODE_RIC.is_file():
        pytest.fail("the Node.js test functions are not installed: run `make node-functions`")


# -- the table, the stream, the store ----------------------------------------------------------


def pk_table(endpoint_url: str) -> tuple[Any, str]:
    """A table keyed by ``pk`` (what the test functions read) with a stream."""
    return create_table(endpoint_url, key="pk")


def put(table: Any, *keys: str) -> None:
    for key in keys:
        table.put_item(Item={"pk": key, "payload": f"value of {key}"})


@dataclass(frozen=True, slots=True)
class StreamRecord:
    key: str
    event_id: str
    sequence_number: str


def stream_records(endpoint_url: str, table: str) -> list[StreamRecord]:
    """Every record of the table's stream (moto: one shard), read with plain boto3."""
    dynamodb = boto3.client("dynamodb", endpoint_url=endpoint_url, region_name="us-east-1")
    arn = dynamodb.describe_table(TableName=table)["Table"]["LatestStreamArn"]
    streams = boto3.client("dynamodbstreams", endpoint_url=endpoint_url, region_name="us-east-1")
    [shard] = streams.describe_stream(StreamArn=arn)["StreamDescription"]["Shards"]
    iterator = streams.get_shard_iterator(
        StreamArn=arn, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
    )["ShardIterator"]
    records = streams.get_records(ShardIterator=iterator, Limit=1000)["Records"]
    return [
        StreamRecord(
            r["dynamodb"]["Keys"]["pk"]["S"], r["eventID"], r["dynamodb"]["SequenceNumber"]
        )
        for r in records
    ]


async def checkpoint(store_url: str, processor: str) -> str | None:
    """The sequence number checkpointed for the processor's one shard."""
    async with await CheckpointStore.connect(store_url) as store:
        [row] = await store.list(processor)
    return row.sequence_number


# -- what the functions did --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Invocation:
    """One line of a function's RECORD_LOG."""

    request_id: str
    pid: int
    keys: tuple[str, ...]
    event_ids: tuple[str, ...]


def invocations(path: Path) -> list[Invocation]:
    result = []
    for line in read_jsonl(path):
        if "event" in line:  # the bootstrap logs the event itself
            records = line["event"]["Records"]
            keys = tuple(r["dynamodb"]["Keys"]["pk"]["S"] for r in records)
            event_ids = tuple(r["eventID"] for r in records)
        else:
            keys, event_ids = tuple(line["keys"]), tuple(line["event_ids"])
        result.append(Invocation(line["request_id"], line["pid"], keys, event_ids))
    return result


def keys_invoked(path: Path) -> list[tuple[str, ...]]:
    return [i.keys for i in invocations(path)]


def delivered(path: Path) -> list[str]:
    """Every key the function received, in order, across invocations."""
    return [key for i in invocations(path) for key in i.keys]


def pids_with(marker: str) -> set[int]:
    """Processes of this user whose environment holds ``SHARDWISE_TEST_MARK=<marker>``: a
    runtime process of one test and anything it started (the children inherit it)."""
    found = set()
    wanted = f"SHARDWISE_TEST_MARK={marker}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue  # gone meanwhile, or not ours
        if wanted in environ.split(b"\0") and state != "Z":
            found.add(int(entry.name))
    return found


def _stat(pid: int) -> list[str]:
    """/proc/<pid>/stat after the command name: state, ppid, pgrp, ...; [] if it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return []


def alive(pid: int) -> bool:
    stat = _stat(pid)
    return bool(stat) and stat[0] != "Z"


def process_group(pid: int) -> int:
    """A runtime process leads its own group: what it started is in that group."""
    return int(_stat(pid)[2])


# -- configuration -----------------------------------------------------------------------------


@dataclass
class Function:
    """A runtime processor's setting for one test, and the files it writes."""

    runtime: Runtime
    table: str
    directory: Path
    name: str = "fn"
    environment: dict[str, str] | None = None
    extra: str = ""
    relative: bool = False  # working_directory relative to the config file's directory

    def __post_init__(self) -> None:
        self.marker = uuid.uuid4().hex
        self.log = self.directory / f"{self.name}-invocations.jsonl"
        self.failures = self.directory / "failures" / f"{self.name}.jsonl"

    def yaml(self) -> str:
        environment = {
            "RECORD_LOG": str(self.log),
            "SHARDWISE_TEST_MARK": self.marker,
            **(self.environment or {}),
        }
        working_directory = str(self.runtime.directory)
        if self.relative:
            working_directory = os.path.relpath(working_directory, self.directory)
        extra = textwrap.indent(textwrap.dedent(self.extra).strip(), "  ")
        return f"""
- name: {self.name}
  source: {{dynamodb: {{table: {self.table}}}}}
  starting_position: TRIM_HORIZON
  max_poll_interval_seconds: 0.25
  runtime:
    command: {json.dumps(list(self.runtime.command))}
    working_directory: {json.dumps(working_directory)}
    environment: {json.dumps(environment)}
    init_timeout_seconds: 10
    shutdown_grace_seconds: 2
{extra}
"""

    @property
    def destination(self) -> str:
        return f'destination_config: {{on_failure: {{destination: "file://{self.failures}"}}}}'


def settings(function: Function, endpoint_url: str, store_url: str) -> Any:
    return settings_for(
        function.directory,
        endpoint_url=endpoint_url,
        store_url=store_url,
        processors=function.yaml(),
    )


# -- delivery ----------------------------------------------------------------------------------


class TestDelivery:
    """Every record reaches the function once, in order, through one warm process."""

    @EVERY_RUNTIME
    async def test_in_order_and_checkpointed(
        self, tmp_path: Path, moto_endpoint: str, sqlite_url: str, runtime: Runtime
    ) -> None:
        table, name = pk_table(moto_endpoint)
        keys = [f"k{i:02d}" for i in range(7)]
        put(table, *keys)
        function = Function(runtime, name, tmp_path, extra="batch_size: 3")
        async with running(settings(function, moto_endpoint, sqlite_url)) as supervisor:
            await wait_until(lambda: len(delivered(function.log)) >= 7, what="7 records")
        records = stream_records(moto_endpoint, name)
        calls = invocations(function.log)
        assert delivered(function.log) == keys
        assert [e for call in calls for e in call.event_ids] == [r.event_id for r in records]
        assert all(1 <= len(call.keys) <= 3 for call in calls)
        assert len({call.request_id for call in calls}) == len(calls)
        # Initialised once, kept warm: every invocation ran in the same process.
        assert len({call.pid for call in calls}) == 1
        progress = supervisor.progress["fn"]
        assert progress.handler_failures == 0
        assert progress.records_processed == 7
        assert await checkpoint(sqlite_url, "fn") == records[-1].sequence_number
        assert not pids_with(function.marker), "a runtime process outlived the processor"

    async def test_aws_docs_node_handler_runs_unchanged(
        self, tmp_path: Path, moto_endpoint: str, sqlite_url: str
    ) -> None:
        """AWS's documented DynamoDB Streams handler (index.js, index.handler), unchanged; the
        working directory is relative to the config file's directory."""
        table, name = pk_table(moto_endpoint)
        put(table, "docs-1", "docs-2")
        table.delete_item(Key={"pk": "docs-1"})
        docs = Runtime(
            "node-docs",
            ("node", "node_modules/aws-lambda-ric/index.mjs", "index.handler"),
            NODE_EXAMPLE,
        )
        function = Function(
            docs,
            name,
            tmp_path,
            name="docs",
            relative=True,
        )
        with capture_logs() as logs:
            async with running(settings(function, moto_endpoint, sqlite_url)) as supervisor:
                progress = supervisor.progress["docs"]
                await wait_until(lambda: progress.records_processed >= 3, what="3 records")
        records = stream_records(moto_endpoint, name)
        assert progress.handler_failures == 0
        assert await checkpoint(sqlite_url, "docs") == records[-1].sequence_number
        # What the handler printed is in shardwise's log, tagged with the invocation.
        printed = [e for e in logs if e.get("processor") == "docs" and "request_id" in e]
        texts = [str(e["event"]) for e in printed]
        for record in records:
            assert record.event_id in texts
        assert texts.count("INSERT") == 2
        assert texts.count("REMOVE") == 1
        dumps = [t for t in texts if t.startswith("DynamoDB Record: ")]
        assert len(dumps) == 3
        first = json.loads(dumps[0].removeprefix("DynamoDB Record: "))
        assert first["Keys"] == {"pk": {"S": "docs-1"}}
        assert first["NewImage"]["payload"] == {"S": "value of docs-1"}


# -- Lambda's failure model ---------------------------------------------------------------------


class TestFunctionErrors:
    """A function error is retried, then given up on into the destination; the shard goes on."""

    @EVERY_RUNTIME
    async def test_thrown_error_retried_then_destination(
        self, tmp_path: Path, moto_endpoint: str, sqlite_url: str, runtime: Runtime
    ) -> None:
        table, name = pk_table(moto_endpoint)
        put(table, "ok-1", "poison-1", "ok-2")
        function = Function(runtime, name, tmp_path)
        function.extra = f"batch_size: 1\nmaximum_retry_attempts: 1\n{function.destination}"
        async with running(settings(function, moto_endpoint, sqlite_url)) as supervisor:
            await wait_until(
                lambda: "ok-2" in delivered(function.log), what="the record after the poison one"
            )
            put(table, "after-1")
            await wait_until(lambda: "after-1" in delivered(function.log), what="a later record")
            progress = supervisor.progress["fn"]
            assert progress.records_sent_to_destination == 1
            assert progress.records_dropped == 0
        records = {r.key: r for r in stream_records(moto_endpoint, name)}
        assert keys_invoked(function.log) == [
            ("ok-1",),
            ("poison-1",),  # the invocation
            ("poison-1",),  # its one retry
            ("ok-2",),
            ("after-1",),
        ]
        calls = invocations(function.log)
        assert calls[1].request_id != calls[2].request_id
        # An error the function reported is not a crash: the process stays warm.
        assert len({call.pid for call in calls}) == 1
        [failure] = read_jsonl(function.failures)
        assert failure["requestContext"]["condition"] == "RetryAttemptsExhausted"
        assert failure["requestContext"]["approximateInvokeCount"] == 2
        assert failure["responseContext"]["functionError"] == "Unhandled"
        info = failure["DDBStreamBatchInfo"]
        poison = records["poison-1"].sequence_number
        assert (info["startSequenceNumber"], info["endSequenceNumber"]) == (poison, poison)
        assert [r["dynamodb"]["Keys"]["pk"]["S"] for r in failure["payload"]["Records"]] == [
            "poison-1"
        ]
        assert "poison record poison-1" in failure["shardwise"]["error"]
        assert await checkpoint(sqlite_url, "fn") == records["after-1"].sequence_number

    @PARTIAL_RUNTIMES
    async def test_partial_failure_retries_from_the_reported_record(
        self, tmp_path: Path, moto_endpoint: str, sqlite_url: str, runtime: Runtime
    ) -> None:
        table, name = pk_table(moto_endpoint)
        put(table, "a-1", "a-2", "partial-1", "a-3")
        function = Function(runtime, name, tmp_path)
        function.extra = f"""
            batch_size: 4
            maximum_retry_attempts: 1
            function_response_types: [ReportBatchItemFailures]
            {function.destination}
            """
        async with running(settings(function, moto_endpoint, sqlite_url)) as supervisor:
            await wait_until(function.failures.exists, what="the failure record")
            put(table, "after-1")
            await wait_until(lambda: "after-1" in delivered(function.log), what="a later record")
            progress = supervisor.progress["fn"]
            assert progress.records_sent_to_destination == 2
        records = {r.key: r for r in stream_records(moto_endpoint, name)}
        assert keys_invoked(function.log) == [
            ("a-1", "a-2", "partial-1", "a-3"),
            ("partial-1", "a-3"),  # retried from the record the function reported
            ("after-1",),
        ]
        [failure] = read_jsonl(function.failures)
        assert failure["requestContext"]["condition"] == "RetryAttemptsExhausted"
        assert failure["requestContext"]["approximateInvokeCount"] == 2
        info = failure["DDBStreamBatchInfo"]
        assert info["startSequenceNumber"] == records["partial-1"].sequence_number
        assert info["endSequenceNumber"] == records["a-3"].sequence_number
        assert [r["dynamodb"]["Keys"]["pk"]["S"] for r in failure["payload"]["Records"]] == [
            "partial-1",
            "a-3",
        ]
        assert await checkpoint(sqlite_url, "fn") == records["after-1"].sequence_number


class TestProcessFailures:
    """A timeout or a crash loses the process: a new one serves the retry."""

    @EVERY_RUNTIME
    async def test_timeout_kills_and_reinitialises(
        self, tmp_path: Path, moto_endpoint: str, sqlite_url: str, runtime: Runtime
    ) -> None:
        table, name = pk_table(moto_endpoint)
        put(table, "ok-1", "slow-1", "ok-2")
        function = Function(runtime, name, tmp_path, environment={"SLOW_MS": "60000"})
        function.extra = f"""
            batch_size: 1
            timeout_seconds: 1
            maximum_retry_attempts: 1
            {function.destination}
            """
        started = time.monotonic()
        async with running(settings(function, moto_endpoint, sqlite_url)) as supervisor:
            await wait_until(
                lambda: "ok-2" in delivered(function.log), what="the record after the slow one"
            )
            progress = supervisor.progress["fn"]
            assert progress.records_sent_to_destination == 1
            live = pids_with(function.marker)
            # Only the process that ran ok-2 (and what it started) is left.
            assert {process_group(pid) for pid in live} == {invocations(function.log)[-1].pid}
        # Killed at the timeout, not left running out its 60 s.
        assert time.monotonic() - started < 30
        records = {r.key: r for r in stream_records(moto_endpoint, name)}
        calls = invocations(function.log)
        assert [call.keys for call in calls] == [("ok-1",), ("slow-1",), ("slow-1",), ("ok-2",)]
        first, timed_out, retried, after = (call.pid for call in calls)
        assert first == timed_out, "ok-1 and the first slow-1 attempt share the warm process"
        assert len({timed_out, retried, after}) == 3, "each timeout must start a new process"
        assert not alive(timed_out)
        assert not alive(retried)
        [failure] = read_jsonl(function.failures)
        assert failure["requestContext"]["condition"] == "RetryAttemptsExhausted"
        assert failure["requestContext"]["approximateInvokeCount"] == 2
        assert [r["dynamodb"]["Keys"]["pk"]["S"] for r in failure["payload"]["Records"]] == [
            "slow-1"
        ]
        assert "Task timed out after 1.00 seconds" in failure["shardwise"]["error"]
        assert await checkpoint(sqlite_url, "fn") == records["ok-2"].sequence_number

    @EVERY_RUNTIME
    async def test_crash_mid_batch_restarts_and_retries(
        self, tmp_path: Path, moto_endpoint: str, sqlite_url: str, runtime: Runtime
    ) -> None:
        table, name = pk_table(moto_endpoint)
        put(table, "ok-1", "crash-1", "ok-2")
        function = Function(runtime, name, tmp_path)
        function.extra = f"batch_size: 2\nmaximum_retry_attempts: 1\n{function.destination}"
        async with running(settings(function, moto_endpoint, sqlite_url)) as supervisor:
            await wait_until(
                lambda: "ok-2" in delivered(function.log), what="the record after the crash"
            )
            progress = supervisor.progress["fn"]
            assert progress.records_sent_to_destination == 2
            assert progress.handler_failures == 2
        records = {r.key: r for r in stream_records(moto_endpoint, name)}
        calls = invocations(function.log)
        assert [call.keys for call in calls] == [
            ("ok-1", "crash-1"),
            ("ok-1", "crash-1"),  # the retry, in a new process
            ("ok-2",),
        ]
        assert len({call.pid for call in calls}) == 3, "each crash must start a new process"
        assert not any(alive(call.pid) for call in calls)  # all stopped with the processor
        [failure] = read_jsonl(function.failures)
        assert failure["requestContext"]["condition"] == "RetryAttemptsExhausted"
        assert failure["requestContext"]["approximateInvokeCount"] == 2
        assert [r["dynamodb"]["Keys"]["pk"]["S"] for r in failure["payload"]["Records"]] == [
            "ok-1",
            "crash-1",
        ]
        assert "Runtime.ExitError" in failure["shardwise"]["error"]
        assert "exit status 3" in failure["shardwise"]["error"]
        assert await checkpoint(sqlite_url, "fn") == records["ok-2"].sequence_number


# -- the command line --------------------------------------------------------------------------


def write_config(directory: Path, endpoint_url: str, processors: str, extra: str = "") -> Path:
    config = directory / "shardwise.yaml"
    body = textwrap.indent(textwrap.dedent(processors).strip(), "  ")
    config.write_text(
        f"""
aws: {{region: us-east-1, endpoint_url: "{endpoint_url}"}}
store: {{url: "sqlite+aiosqlite:///{directory / "cp.db"}"}}
http: {{bind: "127.0.0.1:0"}}
worker: {{shutdown_timeout_seconds: 15, shard_sync_interval_seconds: 1}}
{extra}
processors:
{body}
"""
    )
    return config


class TestInitErrors:
    """A function that fails its init phase fails validate and run, naming the processor."""

    @EVERY_RUNTIME
    def test_validate_and_run_fail(
        self, tmp_path: Path, moto_endpoint: str, runtime: Runtime
    ) -> None:
        _, name = pk_table(moto_endpoint)
        good = Function(runtime, name, tmp_path, name="orders-good")
        bad = Function(runtime, name, tmp_path, name="orders-bad", environment={"INIT_FAIL": "1"})
        both = write_config(tmp_path, moto_endpoint, good.yaml() + bad.yaml())
        result = shardwise_cli("validate", "-c", str(both), cwd=tmp_path)
        assert result.returncode == 2, result.stderr
        assert str(both) in result.stderr
        [problem] = [line for line in result.stderr.splitlines() if "processors[" in line]
        assert problem.strip().startswith("processors[1].runtime: processor orders-bad")
        assert "init failed on purpose" in problem
        assert not pids_with(good.marker)
        assert not pids_with(bad.marker)

        only_bad = write_config(tmp_path, moto_endpoint, bad.yaml())
        output = tmp_path / "run.log"
        with daemon(only_bad, output) as process:
            code = process.wait(timeout=60)
        printed = output.read_text()
        assert code == 2, printed
        [error] = [line for line in printed.splitlines() if line.startswith("error: ")]
        assert "processor orders-bad" in error
        assert "runtime init failed" in error
        assert "init failed on purpose" in error
        assert not pids_with(bad.marker)


class TestDaemon:
    """``shardwise run`` with a Node.js runtime processor, stopped as a service manager does."""

    def test_sigterm_drains_and_leaves_no_runtime_process(
        self, tmp_path: Path, moto_endpoint: str
    ) -> None:
        table, name = pk_table(moto_endpoint)
        put(table, "k-1", "k-2", "slow-1", "k-3")
        function = Function(
            NODE,
            name,
            tmp_path,
            name="orders-node",
            environment={"SLOW_MS": "3000"},
            extra="batch_size: 1\ntimeout_seconds: 30",
            relative=True,
        )
        config = write_config(tmp_path, moto_endpoint, function.yaml(), "log: {level: INFO}")
        output = tmp_path / "run.log"
        with daemon(config, output) as process:
            wait_for(
                lambda: "slow-1" in delivered(function.log),
                process,
                output,
                "the slow record to be in flight",
            )
            [pid] = {call.pid for call in invocations(function.log)}
            running_pids = pids_with(function.marker)
            assert pid in running_pids
            process.send_signal(signal.SIGTERM)
            code = process.wait(timeout=30)
            # Stopped and reaped by shardwise before it exited, not left to notice on its own.
            left = pids_with(function.marker)
        assert not left, f"runtime processes outlived shardwise: {left}"
        printed = output.read_text()
        assert code == 0, printed
        # The in-flight batch finished and was checkpointed; nothing after it was started.
        assert delivered(function.log) == ["k-1", "k-2", "slow-1"]
        records = {r.key: r for r in stream_records(moto_endpoint, name)}
        store_url = f"sqlite+aiosqlite:///{tmp_path / 'cp.db'}"
        last = asyncio.run(checkpoint(store_url, "orders-node"))
        assert last == records["slow-1"].sequence_number
        assert not any(alive(p) for p in running_pids)
        assert "runtime processes stopped" in printed
