"""When a shard is polled next: at once, ~4 polls/s, or backed off on an idle shard's grid."""

from __future__ import annotations

import asyncio
import math
import random
import time
from typing import Protocol

from shardwise.dispatch.protocols import MAX_RECORDS_PER_CALL

__all__ = [
    "IDLE_POLLS_AT_FULL_SPEED",
    "IDLE_POLL_GRID_S",
    "PollCadence",
    "idle_poll_interval",
    "on_poll_grid",
]

# Empty polls at full speed before an idle shard starts to back off (about one second).
IDLE_POLLS_AT_FULL_SPEED = 4

# Backed-off shards wake on a shared grid of this step (the event loop's clock), so the
# polls of many idle shards go out, and their replies come back, in one turn of the loop
# instead of a turn each: a third less CPU for 1000 idle shards (bench/README.md), for at
# most this much more delay on a shard that is idle anyway.
IDLE_POLL_GRID_S = 0.1


def idle_poll_interval(empty_polls: int, base_s: float, max_s: float) -> float:
    """Seconds between polls after ``empty_polls`` empty pages in a row: ``base_s`` at
    first, then doubling up to ``max_s``, with +-10% jitter so idle shards do not poll in
    lockstep."""
    if empty_polls <= IDLE_POLLS_AT_FULL_SPEED:
        return base_s
    steps = min(empty_polls - IDLE_POLLS_AT_FULL_SPEED, 16)
    interval = min(max_s, base_s * 2.0**steps)
    return interval * random.uniform(0.9, 1.1)


def on_poll_grid(delay_s: float, now: float, grid_s: float = IDLE_POLL_GRID_S) -> float:
    """``delay_s`` stretched by less than ``grid_s`` so that it ends on a grid line."""
    return math.ceil((now + delay_s) / grid_s) * grid_s - now


class Batching(Protocol):
    """Records waiting to be batched (the batcher, or the lanes)."""

    def seconds_until_due(self, now: float) -> float | None:
        """Seconds until a batching window closes; None when nothing waits."""
        ...


class PollCadence:
    """The pause before one shard's next poll, from the pages its last polls returned.

    Lambda polls each shard about 4 times per second; so does shardwise while a shard has
    data. An idle shard is polled less and less often, down to one call per ``max_s``
    (GetRecords outside Lambda is billed per request).
    """

    __slots__ = ("_base_s", "_empty_polls", "_full_page", "_max_s")

    def __init__(self, base_s: float, max_s: float, full_page: int = MAX_RECORDS_PER_CALL) -> None:
        self._base_s = base_s
        self._max_s = max_s
        self._full_page = full_page  # a page this long means a backlog: poll again at once
        self._empty_polls = 0

    def pause_s(self, started: float, records: int, batching: Batching) -> float:
        """Poll again at once after a full page, ~4 polls/s while records flow, and back off
        on an idle shard (drift-free: the time the work took since ``started`` is
        subtracted). A batching window that closes sooner keeps its deadline."""
        if records >= self._full_page:
            self._empty_polls = 0
            return 0.0
        self._empty_polls = 0 if records else self._empty_polls + 1
        interval = idle_poll_interval(self._empty_polls, self._base_s, self._max_s)
        delay = max(0.0, interval - (time.monotonic() - started))
        due = batching.seconds_until_due(time.monotonic())
        if due is not None and due <= delay:
            return max(0.0, due)  # a batching window closes first: keep its deadline
        if self._empty_polls > IDLE_POLLS_AT_FULL_SPEED:
            delay = on_poll_grid(delay, asyncio.get_running_loop().time())
        return delay
