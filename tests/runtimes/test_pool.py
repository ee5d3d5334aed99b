"""RuntimeProcessor: one process per concurrent caller, kept warm, replaced when it fails or
its credentials change, restarted with a growing backoff; decode_response.

The function is a small Python handler (run by awslambdaric) written into ``tmp_path``.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from shardwise.errors import FunctionError, HandlerTimeoutError
from shardwise.records import Batch, ShardId
from shardwise.runtimes.pool import RuntimeProcessor, decode_response, restart_delay
from shardwise.runtimes.process import RuntimeInitError, RuntimeSpec
from tests.runtimes.test_process import alive, eventually, gone

ARN = "arn:aws:lambda:eu-west-1:111122223333:function:orders"
STREAM_ARN = "arn:aws:dynamodb:eu-west-1:111122223333:table/T/stream/2026-01-01T00:00:00.000"

FUNCTION = """
import os, time

if os.path.exists(os.environ.get("INIT_FAIL_FLAG", "/nonexistent")):
    raise RuntimeError("init failed: flag present")
time.sleep(float(os.environ.get("INIT_SLEEP", "0")))

def handler(event, context):
    time.sleep(event.get("sleep", 0))
    if event.get("crash"):
        os._exit(3)
    if event.get("fail"):
        raise ValueError("failed on purpose")
    return {
        "pid": os.getpid(),
        "key": os.environ.get("AWS_ACCESS_KEY_ID"),
        "records": event.get("Records"),
    }
"""


class Credentials:
    """A credential source whose answer a test changes; counts how often it is read."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.reads = 0
        self.broken = False

    async def __call__(self) -> Mapping[str, str]:
        self.reads += 1
        if self.broken:
            raise RuntimeError("the credential chain is down")
        return {"AWS_ACCESS_KEY_ID": self.key, "AWS_SECRET_ACCESS_KEY": "secret"}


def spec(directory: Path, **environment: str) -> RuntimeSpec:
    (directory / "fn.py").write_text(FUNCTION)
    # A mark in every process' environment, to find them all (and any left behind).
    environment.setdefault("SHARDWISE_TEST_MARK", uuid.uuid4().hex)
    return RuntimeSpec(
        "orders",
        (sys.executable, "-m", "awslambdaric", "fn.handler"),
        directory,
        "fn.handler",
        environment=environment,
        shutdown_grace_s=2.0,
    )


def marked(runtime: RuntimeSpec) -> set[int]:
    """Live processes whose environment carries the spec's mark."""
    wanted = f"SHARDWISE_TEST_MARK={runtime.environment['SHARDWISE_TEST_MARK']}".encode()
    pids = set()
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if wanted in environ.read_bytes().split(b"\0"):
                pid = int(environ.parent.name)
                if alive(pid):
                    pids.add(pid)
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return pids


def reaped(pid: int) -> bool:
    return not Path(f"/proc/{pid}").exists()


@pytest.fixture
async def processor(tmp_path: Path) -> AsyncIterator[RuntimeProcessor]:
    runtime = RuntimeProcessor(spec(tmp_path), function_arn=ARN, timeout_s=10)
    await runtime.start()
    yield runtime
    await runtime.stop()


async def call(processor: RuntimeProcessor, **event: Any) -> Any:
    return await processor.invoke_event(event, "shard-1")


class TestProcesses:
    """One process at start; one more per concurrent caller; all kept warm."""

    async def test_one_process_at_start(self, processor: RuntimeProcessor) -> None:
        assert processor.processes == 1
        marks = marked(processor.spec)
        assert len(marks) == 1
        assert (await call(processor))["pid"] in marks

    async def test_sequential_invocations_reuse_one_process(
        self, processor: RuntimeProcessor
    ) -> None:
        pids = {(await call(processor))["pid"] for _ in range(5)}
        assert len(pids) == 1
        assert processor.processes == 1

    async def test_concurrent_callers_get_processes_of_their_own(
        self, processor: RuntimeProcessor
    ) -> None:
        results = await asyncio.gather(*(call(processor, sleep=0.3) for _ in range(3)))
        pids = {result["pid"] for result in results}
        assert len(pids) == 3
        assert processor.processes == 3
        # Kept warm: later callers, one at a time or together, reuse them.
        again = await asyncio.gather(*(call(processor, sleep=0.1) for _ in range(3)))
        assert {result["pid"] for result in again} == pids
        assert {(await call(processor))["pid"] for _ in range(3)} <= pids
        assert processor.processes == 3
        assert marked(processor.spec) == pids

    async def test_batch_event_and_shard(self, processor: RuntimeProcessor) -> None:
        records = [{"eventID": "1", "dynamodb": {"SequenceNumber": "1"}}]
        result = await processor.invoke(Batch(STREAM_ARN, ShardId("shardId-9"), records))
        assert result["records"] == records


class TestFailures:
    """A dead process is dropped and replaced; a reported error keeps it warm."""

    async def test_function_error_keeps_the_process(self, processor: RuntimeProcessor) -> None:
        pid = (await call(processor))["pid"]
        with pytest.raises(FunctionError) as caught:
            await call(processor, fail=True)
        assert caught.value.error_type == "ValueError"
        assert (await call(processor))["pid"] == pid

    async def test_crash_replaces_the_process(self, processor: RuntimeProcessor) -> None:
        pid = (await call(processor))["pid"]
        with pytest.raises(FunctionError) as caught:
            await call(processor, crash=True)
        assert caught.value.error_type == "Runtime.ExitError"
        assert processor.processes == 0
        replacement = (await call(processor))["pid"]
        assert replacement != pid
        assert processor.processes == 1
        assert marked(processor.spec) == {replacement}

    async def test_timeout_replaces_the_process(self, tmp_path: Path) -> None:
        runtime = RuntimeProcessor(spec(tmp_path), function_arn=ARN, timeout_s=0.5)
        await runtime.start()
        try:
            pid = (await call(runtime))["pid"]
            with pytest.raises(HandlerTimeoutError):
                await call(runtime, sleep=30)
            assert runtime.processes == 0
            assert await gone(pid)
            assert (await call(runtime))["pid"] != pid
        finally:
            await runtime.stop()

    async def test_idle_process_that_exited_is_replaced(self, processor: RuntimeProcessor) -> None:
        (pid,) = marked(processor.spec)
        os.kill(pid, 9)
        assert await eventually(lambda: reaped(pid))  # by the event loop's child watcher
        await asyncio.sleep(0.05)
        with capture_logs() as logs:
            result = await call(processor)
        assert any("idle runtime process" in str(line.get("reason")) for line in logs)
        assert result["pid"] != pid
        assert processor.processes == 1

    def test_restart_delay(self) -> None:
        assert restart_delay(0) == 0.0
        assert [restart_delay(n) for n in (1, 2, 3, 4)] == [0.1, 0.2, 0.4, 0.8]
        assert restart_delay(9) == 25.6
        assert restart_delay(10) == restart_delay(100) == 30.0

    async def test_backoff_grows_with_init_failures_and_resets(self, tmp_path: Path) -> None:
        flag = tmp_path / "fail-init"
        flag.touch()
        runtime = RuntimeProcessor(
            spec(tmp_path, INIT_FAIL_FLAG=str(flag)), function_arn=ARN, timeout_s=10
        )
        durations: list[float] = []
        with capture_logs() as logs:
            with pytest.raises(RuntimeInitError, match="flag present"):
                await runtime.start()
            for _ in range(3):
                started = time.monotonic()
                with pytest.raises(RuntimeInitError, match="flag present"):
                    await call(runtime)
                durations.append(time.monotonic() - started)
                assert runtime.processes == 0
            flag.unlink()
            started = time.monotonic()
            await call(runtime)  # waits out the fourth backoff, then initialises
            durations.append(time.monotonic() - started)
            with pytest.raises(FunctionError):
                await call(runtime, crash=True)
        await runtime.stop()
        failures = [line for line in logs if line["event"].startswith("runtime process failed")]
        assert [line["failures_in_a_row"] for line in failures] == [1, 2, 3, 4, 1]
        assert [line["backoff_s"] for line in failures] == [0.1, 0.2, 0.4, 0.8, 0.1]
        # Each start waited for the backoff of the failure before it (a little slack for the
        # time between the failure and the next call).
        for waited, backoff in zip(durations, [0.1, 0.2, 0.4, 0.8], strict=True):
            assert waited >= backoff * 0.9


@asynccontextmanager
async def with_credentials(
    tmp_path: Path, credentials: Credentials, *, check_s: float
) -> AsyncIterator[RuntimeProcessor]:
    """A started processor that reads ``credentials`` at most every ``check_s``."""
    runtime = RuntimeProcessor(
        spec(tmp_path),
        function_arn=ARN,
        timeout_s=10,
        credentials=credentials,
        credentials_check_s=check_s,
    )
    await runtime.start()
    try:
        yield runtime
    finally:
        await runtime.stop()


class TestCredentials:
    """Credentials reach the function as environment; a change replaces the processes."""

    async def test_change_replaces_processes(self, tmp_path: Path) -> None:
        credentials = Credentials("AKIAFIRST")
        async with with_credentials(tmp_path, credentials, check_s=0) as runtime:
            first = await asyncio.gather(*(call(runtime, sleep=0.2) for _ in range(2)))
            assert {result["key"] for result in first} == {"AKIAFIRST"}
            old_pids = {result["pid"] for result in first}
            credentials.key = "AKIASECOND"
            second = await asyncio.gather(*(call(runtime, sleep=0.2) for _ in range(2)))
            assert {result["key"] for result in second} == {"AKIASECOND"}
            assert not old_pids & {result["pid"] for result in second}
            assert await gone(*old_pids)
            assert runtime.processes == 2

    async def test_read_at_most_every_check_interval(self, tmp_path: Path) -> None:
        credentials = Credentials("AKIAFIRST")
        async with with_credentials(tmp_path, credentials, check_s=3600) as runtime:
            credentials.key = "AKIASECOND"
            for _ in range(3):
                assert (await call(runtime))["key"] == "AKIAFIRST"
            assert credentials.reads == 1

    async def test_chain_down_keeps_the_processes(self, tmp_path: Path) -> None:
        credentials = Credentials("AKIAFIRST")
        async with with_credentials(tmp_path, credentials, check_s=0) as runtime:
            pid = (await call(runtime))["pid"]
            credentials.broken = True
            with capture_logs() as logs:
                result = await call(runtime)
            assert (result["pid"], result["key"]) == (pid, "AKIAFIRST")
            assert any(line["event"] == "could not read AWS credentials" for line in logs)

    async def test_chain_down_at_start_fails_the_start(self, tmp_path: Path) -> None:
        credentials = Credentials("AKIAFIRST")
        credentials.broken = True
        runtime = RuntimeProcessor(
            spec(tmp_path), function_arn=ARN, timeout_s=10, credentials=credentials
        )
        with pytest.raises(RuntimeError, match="chain is down"):
            await runtime.start()
        assert runtime.processes == 0


class TestStop:
    """stop() ends every process, idle or busy, and later calls are refused."""

    async def test_stop_idle_and_busy(self, processor: RuntimeProcessor) -> None:
        await asyncio.gather(*(call(processor, sleep=0.2) for _ in range(2)))
        busy = asyncio.create_task(call(processor, sleep=30))
        await asyncio.sleep(0.3)
        pids = marked(processor.spec)
        assert len(pids) == 2
        await processor.stop()
        with pytest.raises(FunctionError) as caught:
            await busy
        assert caught.value.error_type == "Runtime.ExitError"
        assert processor.processes == 0
        assert await gone(*pids)
        with pytest.raises(FunctionError) as refused:
            await call(processor)
        assert refused.value.error_type == "Runtime.Stopped"

    async def test_process_starting_during_stop_is_stopped(self, tmp_path: Path) -> None:
        """A caller whose process was still initialising when stop() came leaves nothing."""
        runtime_spec = spec(tmp_path, INIT_SLEEP="0.5")
        runtime = RuntimeProcessor(runtime_spec, function_arn=ARN, timeout_s=10)
        await runtime.start()
        busy = asyncio.create_task(call(runtime, sleep=1))
        await asyncio.sleep(0.1)
        starting = asyncio.create_task(call(runtime))  # starts a second process
        await asyncio.sleep(0.2)
        await runtime.stop()
        results = await asyncio.gather(busy, starting, return_exceptions=True)
        assert all(isinstance(result, FunctionError) for result in results), results
        await asyncio.sleep(0.1)
        assert not marked(runtime_spec), "a runtime process outlived stop()"
        assert runtime.processes == 0


class TestDecodeResponse:
    """What the function returned, from the response body."""

    @pytest.mark.parametrize(
        ("body", "value"),
        [
            (b"", None),
            (b" \n", None),
            (b"null", None),
            (
                b'{"batchItemFailures": [{"itemIdentifier": "1"}]}',
                {"batchItemFailures": [{"itemIdentifier": "1"}]},
            ),
            (b"[1, 2]", [1, 2]),
            (b"42", 42),
            (b'"Successfully processed 2 records."', "Successfully processed 2 records."),
            (b"plain text, not JSON", "plain text, not JSON"),
            ("caf\u00e9".encode(), "caf\u00e9"),
            (b"\xff\xfe oops", "\ufffd\ufffd oops"),
        ],
    )
    def test_cases(self, body: bytes, value: Any) -> None:
        assert decode_response(body) == value
