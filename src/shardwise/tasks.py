"""Task lifetimes: work run to its end under cancellation, and a start/stop component's tasks.

Both leases/ and dispatch/ use ``to_completion`` for the writes a cancel must not cut in half
(checkpoints, on-failure destination writes, lease renewals and releases). ``TaskScope`` is
the TaskGroup of an object that lives from ``start()`` to ``stop()`` (the health endpoint's
ticker, the worker process's link to its parent) instead of inside one ``async with`` block.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from contextlib import AsyncExitStack
from typing import Any, TypeVar

__all__ = ["TaskScope", "to_completion"]

T = TypeVar("T")


async def to_completion(work: Coroutine[Any, Any, T]) -> T:
    """Run ``work`` to the end even if the caller is cancelled meanwhile; the cancellation is
    re-raised once it is done (and its result is lost to the caller)."""
    task = asyncio.ensure_future(work)
    interrupted: asyncio.CancelledError | None = None
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError as exc:
            if task.done():
                raise
            interrupted = exc
    if interrupted is not None:
        raise interrupted
    return task.result()


class TaskScope:
    """A TaskGroup entered by ``open()`` and left by ``close()``, which cancels its tasks and
    waits for them. Open and close it from the same task (an ``__aenter__``/``__aexit__``
    pair, as its users do): as in any TaskGroup, a task that fails cancels the task that
    opened it."""

    def __init__(self) -> None:
        self._stack = AsyncExitStack()
        self._group: asyncio.TaskGroup | None = None
        self._tasks: list[asyncio.Task[Any]] = []

    async def open(self) -> None:
        if self._group is not None:
            raise RuntimeError("TaskScope is already open")
        self._group = await self._stack.enter_async_context(asyncio.TaskGroup())

    def create_task(self, work: Coroutine[Any, Any, T], *, name: str | None = None) -> None:
        if self._group is None:
            raise RuntimeError("TaskScope is not open")
        self._tasks.append(self._group.create_task(work, name=name))

    async def close(self) -> None:
        """Cancel the tasks and wait for them; harmless when not open."""
        if self._group is None:
            return
        self._group = None
        for task in self._tasks:
            task.cancel()
        self._tasks.clear()
        await self._stack.aclose()
