"""Time: interruptible sleeps, jittered backoff and retry loops, on ``time.monotonic()``."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass

__all__ = ["Backoff", "Retries", "relay_first", "retries", "sleep_or_stop", "wait_first"]


async def sleep_or_stop(stop: asyncio.Event, delay_s: float) -> bool:
    """Sleep ``delay_s`` unless ``stop`` is set first; True when stopping."""
    if stop.is_set():
        return True
    if delay_s <= 0:
        return False
    try:
        async with asyncio.timeout(delay_s):
            await stop.wait()
    except TimeoutError:
        return False
    return True


async def wait_first(*events: asyncio.Event) -> None:
    """Return as soon as any of ``events`` is set."""
    if any(event.is_set() for event in events):
        return
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


async def relay_first(target: asyncio.Event, *sources: asyncio.Event) -> None:
    """Set ``target`` as soon as any of ``sources`` is set."""
    await wait_first(*sources)
    target.set()


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with "equal jitter": half the step fixed, half random.

    ``delay(1)`` is in ``[base/2, base]``, doubling per attempt up to ``cap_s``.
    """

    base_s: float
    cap_s: float

    def delay(self, attempt: int) -> float:
        # The exponent is capped too: 2.0 ** 1024 overflows (a record retried for ever).
        step = min(self.cap_s, self.base_s * 2.0 ** min(max(0, attempt - 1), 64))
        return step / 2 + random.uniform(0, step / 2)


# A failing handler: retried after ~0.5 s, 1 s, 2 s ... at most every 30 s.
HANDLER_BACKOFF = Backoff(base_s=0.5, cap_s=30.0)
# Throttling, 5xx and transport errors of the stream API.
API_BACKOFF = Backoff(base_s=0.2, cap_s=10.0)


class Retries:
    """The attempts of a call retried until it succeeds or the worker stops, for ``async for``.

    Yields the attempt number (1, 2, ...). The first attempt starts at once, even when
    ``stop`` is already set; before each later one the loop sleeps ``backoff.delay(n)``
    after attempt ``n``, and ends instead (no further attempt) if ``stop`` is set first.
    The caller leaves the loop (``return``/``break``) on success, so falling out of it
    means "stopped"::

        async for _ in retries(stop, API_BACKOFF):
            try:
                return await call()
            except SomeError as exc:
                log.warning("call failed; retrying", error=str(exc))
        return None  # stopping
    """

    __slots__ = ("_attempt", "_backoff", "_stop")

    def __init__(self, stop: asyncio.Event, backoff: Backoff) -> None:
        self._stop = stop
        self._backoff = backoff
        self._attempt = 0

    def __aiter__(self) -> Retries:
        return self

    async def __anext__(self) -> int:
        if self._attempt and await sleep_or_stop(self._stop, self._backoff.delay(self._attempt)):
            raise StopAsyncIteration
        self._attempt += 1
        return self._attempt


def retries(stop: asyncio.Event, backoff: Backoff) -> Retries:
    """``async for attempt in retries(stop, backoff)``: see ``Retries``."""
    return Retries(stop, backoff)
