"""One runtime process: a Lambda execution environment on this machine.

A ``RuntimeProcess`` starts the function's command with Lambda's environment and its own
Runtime API (``api.RuntimeApi``) on a loopback port, waits until the runtime first asks for
an event (the end of Lambda's init phase), then runs one invocation at a time. Its output
becomes structured log lines tagged with the processor, the shard and the request id of the
invocation under way. The process runs in its own process group, so that ``stop`` and
``kill`` reach what it started (``npx`` starts ``node``, a ``bootstrap`` script starts
``curl``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import orjson
import structlog

from shardwise.errors import (
    FunctionError,
    HandlerError,
    HandlerImportError,
    HandlerTimeoutError,
)
from shardwise.runtimes.api import Invocation, RuntimeApi

__all__ = [
    "RESERVED_ENVIRONMENT",
    "RuntimeInitError",
    "RuntimeProcess",
    "RuntimeSpec",
    "lambda_environment",
]

log = structlog.get_logger("shardwise.runtime")

# Lambda's reserved variables: set by the runtime, refused in a function's configuration.
RESERVED_ENVIRONMENT: Final = frozenset(
    {
        "_HANDLER",
        "_X_AMZN_TRACE_ID",
        "AWS_ACCESS_KEY",
        "AWS_ACCESS_KEY_ID",
        "AWS_DEFAULT_REGION",
        "AWS_EXECUTION_ENV",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
        "AWS_LAMBDA_FUNCTION_NAME",
        "AWS_LAMBDA_FUNCTION_VERSION",
        "AWS_LAMBDA_INITIALIZATION_TYPE",
        "AWS_LAMBDA_LOG_GROUP_NAME",
        "AWS_LAMBDA_LOG_STREAM_NAME",
        "AWS_LAMBDA_RUNTIME_API",
        "AWS_REGION",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "LAMBDA_RUNTIME_DIR",
        "LAMBDA_TASK_ROOT",
    }
)
# Taken from shardwise's own environment so the command can be found and run.
_INHERITED: Final = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR")
# How often a runtime process is checked for an exit.
_EXIT_POLL_S: Final = 0.05
# Longest output line kept whole; a longer one is logged in pieces of this size.
_LINE_LIMIT: Final = 256 * 1024
# The Node.js RIC writes "<timestamp>\t<request id>\t<LEVEL>\t<message>" for console.*,
# the Python RIC "[<LEVEL>]\t<timestamp>\t<request id>\t<message>" for logging and
# "[<LEVEL>] <message>" for an uncaught error (its traceback joined by carriage returns).
# Outside an invocation (during init) the request id is "-" (Node.js) or empty (Python).
_LEVEL_NAMES: Final = "TRACE|DEBUG|INFO|WARN|WARNING|ERROR|FATAL|CRITICAL"
_RIC_LINES: Final = (
    re.compile(rf"^\S+\t(?:[0-9a-fA-F-]{{36}}|-)\t({_LEVEL_NAMES})\t(.*)$", re.S),
    re.compile(rf"^\[({_LEVEL_NAMES})\]\t\S+\t(?:[0-9a-fA-F-]{{36}})?\t(.*)$", re.S),
    re.compile(rf"^\[({_LEVEL_NAMES})\] (.*)$", re.S),
)


class RuntimeInitError(HandlerImportError):
    """The runtime did not initialise: it reported an init error, exited, or took too long."""


@dataclass(frozen=True, slots=True)
class RuntimeSpec:
    """How to start one processor's runtime processes (from its ``runtime:`` setting)."""

    function_name: str
    command: tuple[str, ...]
    working_directory: Path
    handler: str
    environment: Mapping[str, str] = field(default_factory=dict)
    memory_mb: int = 128
    region: str = ""
    init_timeout_s: float = 10.0
    shutdown_grace_s: float = 2.0


def lambda_environment(
    spec: RuntimeSpec, api_address: str, credentials: Mapping[str, str]
) -> dict[str, str]:
    """The environment Lambda gives a function, with ``spec.environment`` on top."""
    env = {name: os.environ[name] for name in _INHERITED if name in os.environ}
    env.setdefault("LANG", "C.UTF-8")
    today = time.strftime("%Y/%m/%d", time.gmtime())
    env.update(
        {
            "TZ": ":UTC",
            "AWS_LAMBDA_RUNTIME_API": api_address,
            "_HANDLER": spec.handler,
            "LAMBDA_TASK_ROOT": str(spec.working_directory),
            "AWS_LAMBDA_FUNCTION_NAME": spec.function_name,
            "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(spec.memory_mb),
            "AWS_LAMBDA_INITIALIZATION_TYPE": "on-demand",
            "AWS_LAMBDA_LOG_GROUP_NAME": f"/shardwise/{spec.function_name}",
            "AWS_LAMBDA_LOG_STREAM_NAME": f"{today}/[$LATEST]{uuid.uuid4().hex}",
        }
    )
    if spec.region:
        env["AWS_REGION"] = env["AWS_DEFAULT_REGION"] = spec.region
    env.update(credentials)
    env.update(spec.environment)
    return env


class RuntimeProcess:
    """One execution environment: a child process and the Runtime API it talks to."""

    def __init__(self, spec: RuntimeSpec, credentials: Mapping[str, str]) -> None:
        self.spec = spec
        self.credentials = dict(credentials)
        self._api = RuntimeApi()
        self._process: asyncio.subprocess.Process | None = None
        self._exited: asyncio.Task[int] | None = None
        self._pumps: list[asyncio.Task[None]] = []
        self._invocation: Invocation | None = None
        self._shard_id = ""
        self.started_at = 0.0

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def alive(self) -> bool:
        return self._exited is not None and not self._exited.done()

    async def start(self) -> None:
        """Start the process and wait for the end of its init phase.

        ``RuntimeInitError`` (the process is gone by then) when the runtime reported an init
        error, exited, or did not ask for an event within ``init_timeout_s``.
        """
        spec = self.spec
        await self._api.start()
        env = lambda_environment(spec, self._api.address, self.credentials)
        self.started_at = time.monotonic()
        try:
            self._process = await asyncio.create_subprocess_exec(
                *spec.command,
                cwd=spec.working_directory,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
                limit=_LINE_LIMIT,
            )
        except OSError as exc:
            await self._api.close()
            raise RuntimeInitError(
                f"processor {spec.function_name}: cannot start {spec.command[0]!r} "
                f"in {spec.working_directory}: {exc.strerror or exc}"
            ) from exc
        process = self._process
        assert process.stdout is not None and process.stderr is not None
        self._pumps = [
            asyncio.create_task(self._pump(process.stdout, "stdout")),
            asyncio.create_task(self._pump(process.stderr, "stderr")),
        ]
        self._exited = asyncio.create_task(_exit_status(process))
        log.info(
            "runtime process started",
            processor=spec.function_name,
            pid=process.pid,
            runtime_api=self._api.address,
        )
        await self._await_init()

    async def _await_init(self) -> None:
        assert self._exited is not None
        waits = {
            asyncio.ensure_future(self._api.initialised.wait()),
            asyncio.ensure_future(self._api.init_failed.wait()),
            self._exited,
        }
        done, _ = await asyncio.wait(
            waits, timeout=self.spec.init_timeout_s, return_when=asyncio.FIRST_COMPLETED
        )
        for waiter in waits - {self._exited}:
            waiter.cancel()
        name = self.spec.function_name
        if self._api.init_error is not None:
            error = self._api.init_error
            await self.kill()
            raise RuntimeInitError(f"processor {name}: runtime init failed: {error}")
        if self._api.initialised.is_set():
            log.info(
                "runtime process ready",
                processor=name,
                pid=self.pid,
                init_ms=round((time.monotonic() - self.started_at) * 1000, 1),
            )
            return
        if self._exited in done:
            await self.kill()  # what it started, and its Runtime API
            raise RuntimeInitError(
                f"processor {name}: runtime exited during init with status "
                f"{self._exited.result()} (command {list(self.spec.command)})"
            )
        await self.kill()
        raise RuntimeInitError(
            f"processor {name}: runtime did not ask for an event within "
            f"{self.spec.init_timeout_s:g} s of starting (init timeout)"
        )

    async def invoke(
        self,
        payload: bytes,
        *,
        function_arn: str,
        timeout_s: float,
        shard_id: str = "",
        client_context: str | None = None,
        cognito_identity: str | None = None,
    ) -> bytes:
        """Run one invocation; the response body, or ``FunctionError`` / ``HandlerTimeoutError``.

        On a timeout the process is killed (Lambda's behaviour); on an exit the invocation
        fails with ``Runtime.ExitError``. Either way ``alive`` is false afterwards.
        """
        if not self.alive:
            raise FunctionError("Runtime.ExitError", "the runtime process is not running")
        assert self._exited is not None
        invocation = Invocation(
            payload=payload,
            deadline_ms=int((time.time() + timeout_s) * 1000),
            function_arn=function_arn,
            client_context=client_context,
            cognito_identity=cognito_identity,
        )
        self._invocation, self._shard_id = invocation, shard_id
        self._api.offer(invocation)
        try:
            waits: set[asyncio.Future[Any]] = {invocation.outcome, self._exited}
            done, _ = await asyncio.wait(
                waits,
                timeout=timeout_s,
                return_when=asyncio.FIRST_COMPLETED,
            )
            if invocation.outcome in done:
                return invocation.outcome.result()
            error: HandlerError
            if self._exited in done:
                # What it started may outlive it; its Runtime API is closed with it.
                await self.kill()
                status = self._exited.result()
                error = FunctionError(
                    "Runtime.ExitError",
                    f"RequestId: {invocation.request_id} Error: Runtime exited with error: "
                    f"exit status {status}",
                )
            else:
                error = HandlerTimeoutError(
                    f"processor {self.spec.function_name}: Task timed out after "
                    f"{timeout_s:.2f} seconds (request {invocation.request_id}); "
                    "the runtime process was killed"
                )
                await self.kill()
            self._api.abandon(invocation, error)
            return invocation.outcome.result()  # raises error
        except asyncio.CancelledError:
            # Cancelled mid-invocation (shutdown deadline): the process may still be
            # working on it, so it cannot take another invocation.
            self._api.abandon(invocation, FunctionError("Runtime.Cancelled", "cancelled"))
            await asyncio.shield(self.kill())
            raise
        finally:
            self._invocation, self._shard_id = None, ""

    async def stop(self) -> None:
        """SIGTERM the process group; SIGKILL what is left after ``shutdown_grace_s``."""
        if self.alive:
            assert self._exited is not None
            self._signal(signal.SIGTERM)
            done, _ = await asyncio.wait({self._exited}, timeout=self.spec.shutdown_grace_s)
            if not done:
                log.warning(
                    "runtime process ignored SIGTERM; killing it",
                    processor=self.spec.function_name,
                    pid=self.pid,
                    grace_s=self.spec.shutdown_grace_s,
                )
        await self.kill()

    async def kill(self) -> None:
        """SIGKILL the process group and wait for the process; close its Runtime API."""
        self._signal(signal.SIGKILL)
        if self._exited is not None:
            await asyncio.wait({self._exited})
        await self._drain_output()
        await self._api.close()

    def _signal(self, sig: signal.Signals) -> None:
        if self._process is None or self._process.returncode is not None:
            if self._process is not None:  # the leader is gone; its group may not be
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self._process.pid, sig)
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._process.pid, sig)

    async def _drain_output(self) -> None:
        """Let the output pumps log what the process wrote before it ended."""
        if self._pumps:
            await asyncio.wait(self._pumps, timeout=1.0)
            for pump in self._pumps:
                pump.cancel()

    async def _pump(self, stream: asyncio.StreamReader, name: str) -> None:
        while True:
            try:
                line = await stream.readuntil(b"\n")
            except asyncio.IncompleteReadError as exc:  # the end of the output
                line = exc.partial
            except asyncio.LimitOverrunError:  # a line over the limit: log it in pieces
                line = await stream.read(_LINE_LIMIT)
            if not line:
                return
            self._log_line(line.decode("utf-8", "replace").rstrip("\r\n"), name)

    def _log_line(self, text: str, stream: str) -> None:
        level = "info"
        for pattern in _RIC_LINES:
            if match := pattern.match(text):
                ric_level, text = match.groups()
                level = _LEVELS[ric_level]
                break
        text = text.replace("\r", "\n")
        invocation = self._invocation
        fields: dict[str, object] = {
            "processor": self.spec.function_name,
            "stream": stream,
            "pid": self.pid,
        }
        if invocation is not None:
            fields["request_id"] = invocation.request_id
            fields["shard_id"] = self._shard_id
        getattr(log, level)(text, **fields)


async def _exit_status(process: asyncio.subprocess.Process) -> int:
    """The process' exit status, as soon as it has exited.

    Not ``process.wait()``: that also waits for the output pipes to close, which never
    happens while something the process started (and that holds them) still runs.
    """
    while process.returncode is None:  # noqa: ASYNC110 - asyncio has no event for the exit alone
        await asyncio.sleep(_EXIT_POLL_S)
    return process.returncode


_LEVELS: Final = {
    "TRACE": "debug",
    "DEBUG": "debug",
    "INFO": "info",
    "WARN": "warning",
    "WARNING": "warning",
    "ERROR": "error",
    "FATAL": "critical",
    "CRITICAL": "critical",
}


def encode_event(event: object) -> bytes:
    """The JSON a runtime receives (compact, UTF-8, as Lambda sends it): orjson, about ten
    times faster than ``json`` on a batch; ``json`` for what orjson refuses (an integer
    beyond 64 bits, a non-string key)."""
    try:
        return orjson.dumps(event)
    except TypeError:
        return json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode()
