"""An ``IdempotencyStore`` on an event loop of its own, reachable from any thread or loop.

Why a loop of its own: the store is async (SQLAlchemy's asyncio engine; asyncpg connections
belong to the loop that opened them), while its callers are of two kinds:

* sync functions - what Powertools' decorators wrap, and what shardwise runs in its thread
  pool (``processors._Runner``): their thread has no loop, and must not run one of its own
  per call (a pool per call) nor block shardwise's loop waiting for it;
* async functions, on whatever loop runs them: shardwise's, or a test's (pytest-asyncio
  gives every test a new one, while a handler module's objects live for the process).

A store bound to the first loop that used it would serve one of these and break the others
(connections of a closed test loop; a sync caller with no loop to reach). So the store gets
its own loop, on a daemon thread started at the first call: sync callers hand it their work
with ``asyncio.run_coroutine_threadsafe`` and wait in their own thread; async callers await
the same future (``asyncio.wrap_future``) and their loop runs on meanwhile. Nobody's loop is
ever blocked, and the cost is one hand-over between threads per SQL round trip.

The store is opened (and, unless told otherwise, migrated) by the first call, not at
construction, so a handler module can build it at import time before any loop exists; a
failed open (database down) is tried again by the next call. ``close()`` disposes of the
connections and stops the thread; a later call starts both again. A child process forked
after the thread started starts its own. At interpreter exit, open ones are closed.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import os
import threading
import weakref
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

from shardwise.store.engine import parse_store_url, redact_url
from shardwise.store.idempotency import IdempotencyStore

__all__ = ["StoreThread", "StoreWork"]

T = TypeVar("T")

# What callers hand over: a coroutine function given the open store.
StoreWork = Callable[[IdempotencyStore], Coroutine[Any, Any, T]]

# How long close() waits for the connections to close and the thread to end.
CLOSE_TIMEOUT_S: Final = 10.0


@dataclass(slots=True)
class _Running:
    """One started loop thread and the store opened on it (once a call opened it)."""

    loop: asyncio.AbstractEventLoop
    thread: threading.Thread
    pid: int
    opening: asyncio.Lock = field(default_factory=asyncio.Lock)
    store: IdempotencyStore | None = None


class StoreThread:
    """An ``IdempotencyStore`` at ``url`` on its own event loop (see the module docstring)."""

    def __init__(self, url: str, *, migrate: bool = True) -> None:
        parse_store_url(url)  # a URL that cannot be a store fails here, at import time
        self._url = url
        self._migrate = migrate
        self._lock = threading.Lock()
        self._running: _Running | None = None
        _OPEN.add(self)

    @property
    def url(self) -> str:
        """The database URL with its password replaced by ``***``."""
        return redact_url(self._url)

    def __repr__(self) -> str:
        state = "running" if self._running is not None else "idle"
        return f"<StoreThread {self.url} {state}>"

    def submit(self, work: StoreWork[T]) -> concurrent.futures.Future[T]:
        """Run ``work(store)`` on the store's loop; its future, from any thread."""
        running = self._start()
        return asyncio.run_coroutine_threadsafe(self._run(running, work), running.loop)

    def call(self, work: StoreWork[T]) -> T:
        """``work(store)``'s result, waited for in this thread (which must not be the store's).

        For threads without a loop (shardwise's pool, Powertools' sync decorators): called on
        a thread that runs a loop, it holds that loop for the round trip; await ``acall``
        there instead.
        """
        running = self._start()
        if threading.current_thread() is running.thread:
            raise RuntimeError("StoreThread.call from the store's own loop would wait forever")
        return asyncio.run_coroutine_threadsafe(self._run(running, work), running.loop).result()

    async def acall(self, work: StoreWork[T]) -> T:
        """``work(store)``'s result, awaited on the caller's loop. Cancelling the caller does
        not cancel the work: a write that was sent completes (the caller decides what to
        undo, see ``submit``)."""
        return await asyncio.shield(asyncio.wrap_future(self.submit(work)))

    def close(self, timeout_s: float = CLOSE_TIMEOUT_S) -> None:
        """Close the store's connections and stop its thread; harmless when not started.

        Calls still running on the thread are cancelled: close when none are.
        """
        with self._lock:
            running, self._running = self._running, None
        if running is None or running.pid != os.getpid():
            return
        if threading.current_thread() is running.thread:
            raise RuntimeError("StoreThread.close from the store's own loop")
        try:
            disposed = asyncio.run_coroutine_threadsafe(self._dispose(running), running.loop)
            disposed.result(timeout_s)
        finally:
            running.loop.call_soon_threadsafe(running.loop.stop)
            running.thread.join(timeout_s)

    async def aclose(self) -> None:
        """``close()`` without blocking the caller's loop."""
        await asyncio.to_thread(self.close)

    def _start(self) -> _Running:
        with self._lock:
            running = self._running
            if running is None or running.pid != os.getpid():
                loop = asyncio.new_event_loop()
                thread = threading.Thread(
                    target=_serve, args=(loop,), name="shardwise-idempotency", daemon=True
                )
                running = _Running(loop, thread, os.getpid())
                thread.start()
                self._running = running
            return running

    async def _run(self, running: _Running, work: StoreWork[T]) -> T:
        if running.store is None:
            async with running.opening:
                if running.store is None:
                    running.store = await IdempotencyStore.connect(self._url, migrate=self._migrate)
        return await work(running.store)

    @staticmethod
    async def _dispose(running: _Running) -> None:
        async with running.opening:
            store, running.store = running.store, None
        if store is not None:
            await store.close()


def _serve(loop: asyncio.AbstractEventLoop) -> None:
    """The thread: run ``loop`` until stopped, then cancel what is left and close it."""
    asyncio.set_event_loop(loop)
    try:
        loop.run_forever()
        left = asyncio.all_tasks(loop)
        for task in left:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*left, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
    finally:
        loop.close()


_OPEN: weakref.WeakSet[StoreThread] = weakref.WeakSet()


@atexit.register
def _close_open() -> None:
    """Close the connections of every store still open at exit (PostgreSQL then sees the
    sessions end instead of dropped sockets)."""
    for store_thread in list(_OPEN):
        # At exit a database that does not answer must not turn into a traceback.
        with contextlib.suppress(Exception):
            store_thread.close(timeout_s=2.0)
