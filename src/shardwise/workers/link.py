"""The channel between ``shardwise run`` and each worker process it starts: one socketpair.

The child gets its end as an inherited descriptor (``--parent-fd``) and writes JSON lines:
``{"port": N}`` once its own metrics and health endpoint listens on loopback, then
``{"started": true}`` once its processors have started - its signal handlers are installed
by then, so a forwarded SIGHUP reloads it instead of killing it. The parent writes nothing:
its end is the child's lifeline. When the parent dies, even by kill -9, the kernel closes
that end; the child reads end-of-file and drains as on SIGTERM, so no worker process
outlives its parent holding leases.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Final

import structlog

from shardwise.config import Settings
from shardwise.tasks import TaskScope

__all__ = ["ParentLink", "WorkerProcess", "messages"]

log = structlog.get_logger("shardwise.workers")

# The child's endpoint: loopback only, on a port the kernel picks; the parent learns it.
CHILD_BIND: Final = "127.0.0.1:0"
MAX_MESSAGE_BYTES: Final = 4096


@dataclass(frozen=True, slots=True)
class WorkerProcess:
    """Who a worker process is: its worker id and its end of the channel to the parent."""

    worker_id: str
    parent_fd: int

    def settings(self, settings: Settings) -> Settings:
        """``settings`` as this process runs them: its own worker id, one process, and its
        endpoint on loopback (the parent serves ``http.bind``). Applied to every reload too."""
        worker = settings.worker.model_copy(update={"id": self.worker_id, "processes": 1})
        http = settings.http.model_copy(update={"bind": CHILD_BIND})
        return settings.model_copy(update={"worker": worker, "http": http})

    def link(
        self, port: int, *, started: asyncio.Event, on_parent_gone: Callable[[], None]
    ) -> ParentLink:
        return ParentLink(self.parent_fd, port, started=started, on_parent_gone=on_parent_gone)


class ParentLink:
    """The child's side: report the port and "started"; call ``on_parent_gone`` on EOF."""

    def __init__(
        self,
        fd: int,
        port: int,
        *,
        started: asyncio.Event,
        on_parent_gone: Callable[[], None],
    ) -> None:
        self._fd = fd
        self._port = port
        self._started = started
        self._on_parent_gone = on_parent_gone
        self._writer: asyncio.StreamWriter | None = None
        self._tasks = TaskScope()  # the two below, from __aenter__ to __aexit__

    async def __aenter__(self) -> ParentLink:
        sock = socket.socket(fileno=self._fd)
        sock.set_inheritable(False)  # a handler's own subprocesses must not keep it open
        reader, self._writer = await asyncio.open_connection(sock=sock)
        await self._send({"port": self._port})
        await self._tasks.open()
        self._tasks.create_task(self._announce_started(), name="shardwise-link-started")
        self._tasks.create_task(self._watch_parent(reader), name="shardwise-link-parent")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._tasks.close()
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError):
                await self._writer.wait_closed()

    async def _send(self, message: dict[str, Any]) -> None:
        assert self._writer is not None
        self._writer.write(json.dumps(message).encode() + b"\n")
        with contextlib.suppress(OSError):  # the parent is gone: _watch_parent says so
            await self._writer.drain()

    async def _announce_started(self) -> None:
        await self._started.wait()
        await self._send({"started": True})

    async def _watch_parent(self, reader: asyncio.StreamReader) -> None:
        with contextlib.suppress(OSError):
            while await reader.read(MAX_MESSAGE_BYTES):
                pass  # the parent sends nothing; only its end closing matters
        log.warning("the parent process is gone; draining")
        self._on_parent_gone()


async def messages(reader: asyncio.StreamReader) -> AsyncIterator[dict[str, Any]]:
    """The parent's side: the child's messages until it closes its end or exits."""
    while True:
        try:
            line = await reader.readline()
        except (OSError, ValueError):  # reset, or a line past the stream's limit
            return
        if not line:
            return
        try:
            message = json.loads(line)
        except ValueError:
            log.warning(
                "unreadable message from a worker process", line=line[:200].decode(errors="replace")
            )
            continue
        if isinstance(message, dict):
            yield message
