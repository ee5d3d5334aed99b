"""One runtime process, run by AWS's own clients: Python's awslambdaric, Node.js'
aws-lambda-ric and a bash + curl custom runtime (``functions/``), plus small functions
written for a test into ``tmp_path``.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from shardwise.errors import FunctionError, HandlerTimeoutError
from shardwise.runtimes.process import RuntimeInitError, RuntimeProcess, RuntimeSpec
from tests.runtimes import FUNCTIONS, NODE_RIC

ARN = "arn:aws:lambda:eu-west-1:111122223333:function:orders"


def python_spec(
    handler: str = "app.handler", directory: Path = FUNCTIONS / "python", **options: Any
) -> RuntimeSpec:
    command = (sys.executable, "-m", "awslambdaric", handler)
    return RuntimeSpec("orders-py", command, directory, handler, **options)


def node_spec(
    handler: str = "behaviours.handler", directory: Path = FUNCTIONS / "node", **options: Any
) -> RuntimeSpec:
    return RuntimeSpec("orders-node", ("node", str(NODE_RIC)), directory, handler, **options)


def bootstrap_spec(**options: Any) -> RuntimeSpec:
    directory = FUNCTIONS / "bootstrap"
    return RuntimeSpec("orders-sh", ("./bootstrap",), directory, "function.handler", **options)


def script_spec(directory: Path, script: str, **options: Any) -> RuntimeSpec:
    """A bash custom runtime written for one test."""
    path = directory / "bootstrap"
    path.write_text("#!/bin/bash\n" + script)
    path.chmod(0o755)
    return RuntimeSpec("orders-script", ("./bootstrap",), directory, "function.handler", **options)


CLIENTS: dict[str, Callable[..., RuntimeSpec]] = {
    "python": python_spec,
    "node": node_spec,
    "bootstrap": bootstrap_spec,
}


def event(*keys: str) -> bytes:
    records = [
        {"eventID": f"e{seq}", "dynamodb": {"Keys": {"pk": {"S": key}}, "SequenceNumber": str(seq)}}
        for seq, key in enumerate(keys, start=1)
    ]
    return json.dumps({"Records": records}).encode()


async def invoke(process: RuntimeProcess, payload: bytes, timeout_s: float = 10.0) -> Any:
    body = await process.invoke(payload, function_arn=ARN, timeout_s=timeout_s, shard_id="shard-7")
    return json.loads(body)


@asynccontextmanager
async def running(
    spec: RuntimeSpec, credentials: dict[str, str] | None = None
) -> AsyncIterator[RuntimeProcess]:
    process = RuntimeProcess(spec, credentials or {})
    await process.start()
    try:
        yield process
    finally:
        await process.kill()


def alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie is dead: it only waits to be reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in {"Z", "X"}


def process_group(pgid: int) -> set[int]:
    """Live processes in process group ``pgid``."""
    members = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(fields[2]) == pgid and fields[0] not in {"Z", "X"}:
            members.add(int(stat.parent.name))
    return members


async def eventually(condition: Callable[[], bool], within_s: float = 5.0) -> bool:
    """Whether ``condition()`` holds within ``within_s`` (polled: the state is the OS')."""
    deadline = time.monotonic() + within_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


async def gone(*pids: int) -> bool:
    """Whether every pid ends within 5 s (SIGKILL is delivered asynchronously)."""
    return await eventually(lambda: not any(alive(pid) for pid in pids))


async def group_gone(pgid: int) -> bool:
    """Whether process group ``pgid`` has no live member left within 5 s."""
    return await eventually(lambda: not process_group(pgid))


ENV_FUNCTION = """
import os

def handler(event, context):
    return dict(os.environ)
"""


class TestEnvironment:
    """The function sees Lambda's variables, its credentials and its own environment only."""

    async def test_lambda_variables(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("SHARDWISE_PRIVATE", "not for functions")
        (tmp_path / "envfn.py").write_text(ENV_FUNCTION)
        spec = python_spec(
            "envfn.handler",
            tmp_path,
            environment={"TABLE_NAME": "orders", "TZ": "Europe/Paris"},
            memory_mb=256,
            region="eu-west-1",
        )
        credentials = {
            "AWS_ACCESS_KEY_ID": "AKIAFUNCTION",
            "AWS_SECRET_ACCESS_KEY": "secret",
            "AWS_SESSION_TOKEN": "token",
        }
        async with running(spec, credentials) as process:
            env = await invoke(process, b"{}")
        # A loopback port of its own (the RIC found the API there: the invocation worked).
        assert re.fullmatch(r"127\.0\.0\.1:\d+", env["AWS_LAMBDA_RUNTIME_API"])
        assert env["_HANDLER"] == "envfn.handler"
        assert env["LAMBDA_TASK_ROOT"] == str(tmp_path)
        assert env["AWS_LAMBDA_FUNCTION_NAME"] == "orders-py"
        assert env["AWS_LAMBDA_FUNCTION_VERSION"] == "$LATEST"
        assert env["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"] == "256"
        assert env["AWS_LAMBDA_LOG_GROUP_NAME"].endswith("/orders-py")
        assert re.fullmatch(
            r"\d{4}/\d{2}/\d{2}/\[\$LATEST\][0-9a-f]{32}", env["AWS_LAMBDA_LOG_STREAM_NAME"]
        )
        assert env["AWS_REGION"] == env["AWS_DEFAULT_REGION"] == "eu-west-1"
        assert env["AWS_ACCESS_KEY_ID"] == "AKIAFUNCTION"
        assert env["AWS_SECRET_ACCESS_KEY"] == "secret"
        assert env["AWS_SESSION_TOKEN"] == "token"
        assert env["TABLE_NAME"] == "orders"
        assert env["TZ"] == "Europe/Paris"  # the function's own setting wins over Lambda's
        # The RIC sets the trace id of the invocation under way.
        assert env["_X_AMZN_TRACE_ID"].startswith("Root=1-")
        assert "SHARDWISE_PRIVATE" not in env
        assert env["PATH"]

    async def test_defaults_and_nothing_inherited(self, tmp_path: Path) -> None:
        """No region, no credentials: none leak in from shardwise's own environment."""
        (tmp_path / "envfn.py").write_text(ENV_FUNCTION)
        async with running(python_spec("envfn.handler", tmp_path)) as process:
            env = await invoke(process, b"{}")
        assert env["TZ"] == ":UTC"
        assert env["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"] == "128"
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
            assert name not in env  # the test session sets them for botocore
        assert "AWS_REGION" not in env
        assert "AWS_DEFAULT_REGION" not in env  # the test session sets it


class TestInvocations:
    """Results and function errors from each client; the process stays warm."""

    @pytest.mark.parametrize("client", ["python", "node"])
    async def test_result(self, client: str) -> None:
        async with running(CLIENTS[client]()) as process:
            pid = process.pid
            assert await invoke(process, event("a", "partial-1", "partial-2")) == {
                "batchItemFailures": [{"itemIdentifier": "2"}]
            }
            assert await invoke(process, event("b")) == {"batchItemFailures": []}
            assert process.alive
            assert process.pid == pid

    async def test_bootstrap_result(self) -> None:
        async with running(bootstrap_spec()) as process:
            assert await invoke(process, event("a", "b")) == {"batchItemFailures": []}
            assert await invoke(process, event("c")) == {"batchItemFailures": []}

    @pytest.mark.parametrize(
        ("client", "error_type", "stack"),
        [
            ("python", "RuntimeError", True),
            ("node", "Error", True),
            ("bootstrap", "PoisonRecord", False),
        ],
    )
    async def test_function_error(self, client: str, error_type: str, stack: bool) -> None:
        async with running(CLIENTS[client]()) as process:
            with pytest.raises(FunctionError) as caught:
                await invoke(process, event("a", "poison-9"))
            assert caught.value.error_type == error_type
            assert caught.value.error_message == "poison record poison-9"
            assert bool(caught.value.stack_trace) == stack
            # A reported error leaves the environment warm.
            assert process.alive
            assert await invoke(process, event("a")) == {"batchItemFailures": []}

    async def test_invoke_after_the_process_ended(self) -> None:
        async with running(python_spec()) as process:
            await process.stop()
            with pytest.raises(FunctionError) as caught:
                await invoke(process, event("a"))
            assert caught.value.error_type == "Runtime.ExitError"


class TestInit:
    """Init errors, exits and timeouts are RuntimeInitError, and leave nothing running."""

    @pytest.mark.parametrize("client", CLIENTS)
    async def test_init_error_from_each_client(self, client: str) -> None:
        process = RuntimeProcess(CLIENTS[client](environment={"INIT_FAIL": "1"}), {})
        with pytest.raises(RuntimeInitError, match="init failed on purpose"):
            await process.start()
        assert not process.alive
        assert process.pid is not None
        assert await gone(process.pid)

    async def test_missing_handler_module(self) -> None:
        process = RuntimeProcess(python_spec("missing.handler"), {})
        with pytest.raises(RuntimeInitError, match=r"Runtime\.ImportModuleError.*missing"):
            await process.start()

    async def test_init_log_lines_keep_their_level(self) -> None:
        """During init the RICs write no request id; the level is still read."""
        with capture_logs() as logs:
            process = RuntimeProcess(node_spec(environment={"INIT_FAIL": "1"}), {})
            with pytest.raises(RuntimeInitError):
                await process.start()
        init_error = [line for line in logs if line["event"].startswith("Init Error")]
        assert init_error
        assert init_error[0]["log_level"] == "error"

    async def test_exit_during_init(self, tmp_path: Path) -> None:
        spec = script_spec(tmp_path, "echo 'cannot find config' >&2\nexit 7\n")
        process = RuntimeProcess(spec, {})
        with capture_logs() as logs:
            with pytest.raises(RuntimeInitError, match="exited during init with status 7"):
                await process.start()
        assert not process.alive
        # What it wrote before it exited is logged.
        assert any(
            line["event"] == "cannot find config" and line["stream"] == "stderr" for line in logs
        )

    async def test_exit_during_init_while_a_child_holds_the_output(self, tmp_path: Path) -> None:
        """The exit is seen at once (not at the init timeout), and the child is killed."""
        spec = script_spec(tmp_path, "sleep 60 &\necho $! > child.pid\nexit 7\n")
        process = RuntimeProcess(spec, {})
        with pytest.raises(RuntimeInitError, match="exited during init with status 7"):
            await process.start()
        assert await gone(int((tmp_path / "child.pid").read_text()))

    async def test_command_not_found(self, tmp_path: Path) -> None:
        spec = RuntimeSpec("orders", ("./no-such-bootstrap",), tmp_path, "function.handler")
        with pytest.raises(RuntimeInitError, match="cannot start"):
            await RuntimeProcess(spec, {}).start()

    async def test_init_timeout(self, tmp_path: Path) -> None:
        spec = script_spec(tmp_path, "sleep 60 &\nwait\n", init_timeout_s=0.3)
        process = RuntimeProcess(spec, {})
        started = time.monotonic()
        with pytest.raises(RuntimeInitError, match="init timeout"):
            await process.start()
        assert time.monotonic() - started >= 0.3
        assert process.pid is not None
        assert not process.alive
        assert await gone(process.pid)
        assert await group_gone(process.pid)  # the sleep is gone too


class TestCrashesAndTimeouts:
    """An exit mid-invocation is Runtime.ExitError; a timeout kills the whole process group."""

    @pytest.mark.parametrize("client", ["python", "node"])
    async def test_crash_mid_invocation(self, client: str) -> None:
        async with running(CLIENTS[client]()) as process:
            with pytest.raises(FunctionError) as caught:
                await invoke(process, event("a", "crash-1"))
            assert caught.value.error_type == "Runtime.ExitError"
            assert "exit status 3" in caught.value.error_message
            assert not process.alive

    async def test_crash_leaves_nothing_behind(self, tmp_path: Path) -> None:
        """What the dead process started is killed, and its Runtime API port closed."""
        script = """
echo "$AWS_LAMBDA_RUNTIME_API" > api
curl -sS "http://${AWS_LAMBDA_RUNTIME_API}/2018-06-01/runtime/invocation/next" > /dev/null
sleep 60 &
echo $! > child.pid
exit 3
"""
        async with running(script_spec(tmp_path, script)) as process:
            with pytest.raises(FunctionError, match="exit status 3"):
                await invoke(process, b"{}")
            child = int((tmp_path / "child.pid").read_text())
            assert await gone(child)
            host, port = (tmp_path / "api").read_text().strip().split(":")
            with pytest.raises(ConnectionRefusedError):
                await asyncio.open_connection(host, int(port))

    @pytest.mark.parametrize("client", ["python", "node"])
    async def test_timeout_kills_the_process(self, client: str) -> None:
        async with running(CLIENTS[client](environment={"SLOW_MS": "30000"})) as process:
            pid = process.pid
            assert pid is not None
            started = time.monotonic()
            with pytest.raises(HandlerTimeoutError, match=r"Task timed out after 0\.50 seconds"):
                await invoke(process, event("slow-1"), timeout_s=0.5)
            assert time.monotonic() - started >= 0.5
            assert not process.alive
            assert await gone(pid)

    async def test_timeout_kills_the_children_too(self, tmp_path: Path) -> None:
        script = """
API="http://${AWS_LAMBDA_RUNTIME_API}/2018-06-01/runtime"
curl -sS "$API/invocation/next" > /dev/null
sleep 60 &
echo $! > child.pid
wait
"""
        async with running(script_spec(tmp_path, script)) as process:
            pid = process.pid
            assert pid is not None
            with pytest.raises(HandlerTimeoutError):
                await invoke(process, b"{}", timeout_s=0.5)
            child = int((tmp_path / "child.pid").read_text())
            assert await gone(pid, child)
            assert await group_gone(pid)

    async def test_cancelled_invocation_kills_the_process(self) -> None:
        """Cancelled mid-invocation (a shutdown deadline): the process cannot be reused."""
        async with running(python_spec(environment={"SLOW_MS": "30000"})) as process:
            pid = process.pid
            assert pid is not None
            task = asyncio.create_task(invoke(process, event("slow-1"), timeout_s=60))
            await asyncio.sleep(0.3)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert not process.alive
            assert await gone(pid)


class TestStop:
    """stop(): SIGTERM to the process group, SIGKILL after shutdown_grace_s."""

    async def test_sigterm(self, tmp_path: Path) -> None:
        script = """
trap 'echo TERM > signal; exit 0' TERM
API="http://${AWS_LAMBDA_RUNTIME_API}/2018-06-01/runtime"
while true; do curl -sS "$API/invocation/next" > /dev/null; done
"""
        spec = script_spec(tmp_path, script, shutdown_grace_s=30)
        async with running(spec) as process:
            pid = process.pid
            assert pid is not None
            with capture_logs() as logs:
                await process.stop()
            assert (tmp_path / "signal").read_text() == "TERM\n"
            assert not process.alive
            assert not any("ignored SIGTERM" in line["event"] for line in logs)
            assert await gone(pid)

    async def test_bootstrap_and_its_curl_stop(self) -> None:
        async with running(bootstrap_spec()) as process:
            pid = process.pid
            assert pid is not None
            await invoke(process, event("a"))
            # bash, and the curl waiting on /next
            assert await eventually(lambda: len(process_group(pid)) >= 2)
            group = process_group(pid)
            await process.stop()
            assert await gone(*group)

    async def test_sigterm_ignored_then_sigkill(self, tmp_path: Path) -> None:
        script = """
trap '' TERM
API="http://${AWS_LAMBDA_RUNTIME_API}/2018-06-01/runtime"
curl -sS "$API/invocation/next" > /dev/null
sleep 60
"""
        spec = script_spec(tmp_path, script, shutdown_grace_s=0.5)
        async with running(spec) as process:
            pid = process.pid
            assert pid is not None
            group = process_group(pid)
            started = time.monotonic()
            with capture_logs() as logs:
                await process.stop()
            assert time.monotonic() - started >= 0.5
            warnings = [line for line in logs if "ignored SIGTERM" in line["event"]]
            assert warnings
            assert warnings[0]["log_level"] == "warning"
            assert warnings[0]["pid"] == pid
            assert await gone(*group)


LOGGING_PY = """
import logging, sys

logger = logging.getLogger()
logger.setLevel(logging.INFO)
print("starting up")

def handler(event, context):
    print("hello from python")
    print("to stderr", file=sys.stderr)
    logger.warning("careful")
    logger.error("bad")
    return {}
"""

LOGGING_JS = """
exports.handler = async () => {
  console.log("hello from node");
  console.warn("careful");
  console.error("bad");
  return {};
};
"""


class TestOutput:
    """Output lines are log lines tagged with processor, stream, pid, request and shard."""

    @staticmethod
    def tagged(logs: Sequence[Mapping[str, Any]], text: str) -> Mapping[str, Any]:
        matching = [line for line in logs if line["event"] == text]
        assert len(matching) == 1, (text, logs)
        return matching[0]

    async def test_python(self, tmp_path: Path) -> None:
        (tmp_path / "logging_fn.py").write_text(LOGGING_PY)
        with capture_logs() as logs:
            async with running(python_spec("logging_fn.handler", tmp_path)) as process:
                await invoke(process, b"{}")
                await asyncio.sleep(0.1)
                pid = process.pid
        request_ids = {line.get("request_id") for line in logs if line.get("stream")} - {None}
        assert len(request_ids) == 1
        hello = self.tagged(logs, "hello from python")
        assert hello["processor"] == "orders-py"
        assert hello["stream"] == "stdout"
        assert hello["pid"] == pid
        assert hello["shard_id"] == "shard-7"
        assert hello["log_level"] == "info"
        assert hello["request_id"] in request_ids
        assert self.tagged(logs, "to stderr")["stream"] == "stderr"
        assert self.tagged(logs, "careful")["log_level"] == "warning"
        assert self.tagged(logs, "bad")["log_level"] == "error"
        assert self.tagged(logs, "bad")["request_id"] in request_ids
        starting = self.tagged(logs, "starting up")  # during init: no invocation
        assert "request_id" not in starting

    async def test_node(self, tmp_path: Path) -> None:
        (tmp_path / "logging_fn.js").write_text(LOGGING_JS)
        with capture_logs() as logs:
            async with running(node_spec("logging_fn.handler", tmp_path)) as process:
                await invoke(process, b"{}")
                await asyncio.sleep(0.1)
        hello = self.tagged(logs, "hello from node")
        assert hello["shard_id"] == "shard-7"
        assert hello["log_level"] == "info"
        assert self.tagged(logs, "careful")["log_level"] == "warning"
        assert self.tagged(logs, "bad")["log_level"] == "error"
        assert self.tagged(logs, "bad")["request_id"] == hello["request_id"]

    async def test_python_uncaught_error_is_one_line(self) -> None:
        with capture_logs() as logs:
            async with running(python_spec()) as process:
                with pytest.raises(FunctionError):
                    await invoke(process, event("poison-1"))
                await asyncio.sleep(0.1)
        errors = [line for line in logs if line["event"].startswith("RuntimeError")]
        assert len(errors) == 1
        assert errors[0]["log_level"] == "error"
        assert "Traceback" in errors[0]["event"]  # the traceback stays in the same line
        assert errors[0]["shard_id"] == "shard-7"

    async def test_a_line_over_the_limit_is_logged_in_pieces(self, tmp_path: Path) -> None:
        """A 600,000-byte line (a big event printed whole) is kept, and the output goes on."""
        script = """
API="http://${AWS_LAMBDA_RUNTIME_API}/2018-06-01/runtime"
while true; do
  curl -sS -D headers "$API/invocation/next" > /dev/null
  ID=$(grep -Fi Lambda-Runtime-Aws-Request-Id headers | tr -d '[:space:]' | cut -d: -f2)
  head -c 600000 /dev/zero | tr '\\0' x
  echo
  echo "after the long line"
  curl -sS -o /dev/null -X POST "$API/invocation/$ID/response" --data-binary '{}'
done
"""
        with capture_logs() as logs:
            async with running(script_spec(tmp_path, script)) as process:
                for _ in range(2):
                    assert await invoke(process, b"{}") == {}
                await asyncio.sleep(0.2)
        pieces = [line["event"] for line in logs if line["event"].startswith("x")]
        assert "".join(pieces) == "x" * 1_200_000
        assert all(len(piece) <= 256 * 1024 for piece in pieces)
        assert all(line.get("shard_id") == "shard-7" for line in logs if line["event"] in pieces)
        assert len([line for line in logs if line["event"] == "after the long line"]) == 2
