"""A processor whose function runs in runtime processes, as many as it has callers at once.

Lambda runs one invocation at a time per execution environment and starts another
environment when more invocations arrive at once; ``RuntimeProcessor`` does the same with
``RuntimeProcess`` objects: one is started (and must initialise) when the processor
starts, more are started lazily when shards or lanes invoke concurrently, and every one is
kept warm for the next invocation. A process that exits, times out or fails to initialise
is dropped and the invocation fails (it is retried by the failure model like any function
error). A crash or an init failure also delays the next start by a backoff that grows with
consecutive failures (0.1 s doubling to 30 s) and resets once an invocation completes; a
timeout does not (the function ran, it was only slow, and Lambda re-initialises at once).

Credentials reach a function as environment variables, as in Lambda, so a process keeps
the ones it started with. They are read from shardwise's own chain at most every
``credentials_check_s``; when they changed (a refreshed role session), idle processes are
replaced and busy ones are replaced after their invocation, so that no function runs on
expired credentials.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

import structlog

from shardwise.errors import FunctionError
from shardwise.records import Batch
from shardwise.runtimes.process import RuntimeInitError, RuntimeProcess, RuntimeSpec, encode_event

__all__ = ["CredentialSource", "RuntimeProcessor", "decode_response", "restart_delay"]

log = structlog.get_logger("shardwise.runtime")

# Returns the environment variables that carry credentials (empty: none are set).
CredentialSource = Callable[[], Awaitable[Mapping[str, str]]]

_FIRST_RESTART_DELAY_S: Final = 0.1
_MAX_RESTART_DELAY_S: Final = 30.0


def restart_delay(failures: int) -> float:
    """Seconds to wait before starting a process after ``failures`` failures in a row."""
    if failures <= 0:
        return 0.0
    return min(_FIRST_RESTART_DELAY_S * 2.0 ** (failures - 1), _MAX_RESTART_DELAY_S)


def decode_response(body: bytes) -> Any:
    """What the function returned: its JSON, or the text itself when it is not JSON.

    An empty body (a function that returned nothing) is ``None``, like JSON ``null``.
    """
    if not body.strip():
        return None
    try:
        return json.loads(body)
    except ValueError:
        return body.decode("utf-8", "replace")


class RuntimeProcessor:
    """``processors.Processor`` for a ``runtime:`` processor (see the module docstring)."""

    def __init__(
        self,
        spec: RuntimeSpec,
        *,
        function_arn: str,
        timeout_s: float,
        credentials: CredentialSource | None = None,
        credentials_check_s: float = 30.0,
    ) -> None:
        self.name = spec.function_name
        self.function_arn = function_arn
        self.spec = spec
        self._timeout_s = timeout_s
        self._credentials_source = credentials
        self._credentials_check_s = credentials_check_s
        self._credentials: dict[str, str] = {}
        self._credentials_checked = 0.0
        self._idle: list[RuntimeProcess] = []
        self._busy: set[RuntimeProcess] = set()
        self._failures = 0
        self._not_before = 0.0
        self._starting = asyncio.Lock()
        self._stopped = False

    @property
    def processes(self) -> int:
        """Runtime processes alive now (idle and busy)."""
        return len(self._idle) + len(self._busy)

    async def start(self) -> None:
        """Start the first process; ``RuntimeInitError`` when the function cannot initialise."""
        await self._refresh_credentials(force=True)
        self._idle.append(await self._spawn())

    async def invoke(self, batch: Batch) -> Any:
        return await self.invoke_event(batch.event(), batch.shard_id)

    async def invoke_event(self, event: dict[str, Any], shard_id: str) -> Any:
        payload = encode_event(event)
        process = await self._acquire(shard_id)
        completed = False
        try:
            body = await process.invoke(
                payload,
                function_arn=self.function_arn,
                timeout_s=self._timeout_s,
                shard_id=shard_id,
            )
            completed = True
            return decode_response(body)
        except FunctionError as exc:
            completed = process.alive  # an error the function reported, not a crash
            if not completed:
                self._failed(f"runtime process exited during an invocation: {exc}")
            raise
        finally:
            self._release(process, completed)

    async def stop(self) -> None:
        """Stop every process (SIGTERM, then SIGKILL after the grace period)."""
        self._stopped = True
        processes = [*self._idle, *self._busy]
        self._idle.clear()
        self._busy.clear()
        if processes:
            await asyncio.gather(*(p.stop() for p in processes))
            log.info("runtime processes stopped", processor=self.name, count=len(processes))

    # -- processes -------------------------------------------------------------------------

    async def _acquire(self, shard_id: str) -> RuntimeProcess:
        if self._stopped:
            raise FunctionError("Runtime.Stopped", f"processor {self.name} is stopping")
        await self._refresh_credentials()
        while self._idle:
            process = self._idle.pop()
            if process.alive and process.credentials == self._credentials:
                self._busy.add(process)
                return process
            if not process.alive:
                self._failed(f"idle runtime process {process.pid} exited")
            await process.stop()
        process = await self._spawn(shard_id)
        self._busy.add(process)
        return process

    def _release(self, process: RuntimeProcess, completed: bool) -> None:
        self._busy.discard(process)
        if completed:
            self._failures = 0
        if process.alive and not self._stopped:
            self._idle.append(process)

    async def _spawn(self, shard_id: str = "") -> RuntimeProcess:
        # One start at a time: a crash-looping function is not started by every caller at
        # once, and each start waits for the backoff of the failures before it.
        async with self._starting:
            delay = self._not_before - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            process = RuntimeProcess(self.spec, self._credentials)
            try:
                await process.start()
            except RuntimeInitError as exc:
                self._failed(str(exc), shard_id=shard_id)
                raise
            if self._stopped:  # stop() came while it was starting: no list holds it
                await process.stop()
                raise FunctionError("Runtime.Stopped", f"processor {self.name} is stopping")
            return process

    def _failed(self, reason: str, *, shard_id: str = "") -> None:
        self._failures += 1
        delay = restart_delay(self._failures)
        self._not_before = time.monotonic() + delay
        log.warning(
            "runtime process failed; the next one starts after a backoff",
            processor=self.name,
            shard_id=shard_id or None,
            reason=reason,
            failures_in_a_row=self._failures,
            backoff_s=delay,
        )

    async def _refresh_credentials(self, *, force: bool = False) -> None:
        source = self._credentials_source
        now = time.monotonic()
        if source is None:
            return
        if not force and now - self._credentials_checked < self._credentials_check_s:
            return
        self._credentials_checked = now
        try:
            fresh = dict(await source())
        except Exception as exc:
            if force:
                raise
            # Keep the processes (and the credentials they have) until the chain answers.
            log.warning("could not read AWS credentials", processor=self.name, error=str(exc))
            return
        if fresh != self._credentials:
            if self._credentials:
                log.info(
                    "AWS credentials changed; runtime processes are replaced with the new ones",
                    processor=self.name,
                )
            self._credentials = fresh
