"""The garbage collector's policy for this process: thresholds, frozen start-up, pause times.

A worker decodes pages of up to 1000 records (a dozen containers each) many times a second,
and keeps several pages alive at once (read-ahead, the batch in the handler, the lanes).
Python's default thresholds (700, 10, 10) run a young collection every 700 container
allocations and a full one whenever the survivors have grown by a quarter: every record
alive is scanned again and again, and profiling showed the decoding path spending about
half its time in the collector. Records are freed by reference counting, not by the
collector (they hold no cycles), so collecting far less often loses nothing; the few
cycles a daemon makes (exceptions with tracebacks, asyncio futures) are still collected.

``GcPolicy.apply`` runs once start-up is over: a full collection, then ``gc.freeze()`` so
that the modules, configuration and handler globals made at start-up move to a permanent
generation no collection scans, then the thresholds. ``restore`` undoes it (the embedding
process or a test gets its collector back). ``PauseClock`` times every collection through
``gc.callbacks``; it keeps plain numbers only (no locks: a collection can start inside any
allocation, a lock taken there could be the one already held).
"""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass, field
from typing import Any

import structlog

from shardwise.config import GcConfig
from shardwise.observe.progress import Histogram

__all__ = ["GC_PAUSE_BOUNDS_S", "GcPolicy", "PauseClock", "pause_clock"]

log = structlog.get_logger("shardwise.gc")

# 50 us .. 1 s: young collections take tens of microseconds, full ones can take 100s of ms.
GC_PAUSE_BOUNDS_S: tuple[float, ...] = (
    *(0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005),
    *(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
)


@dataclass(slots=True)
class PauseClock:
    """Pause time per generation, from ``gc.callbacks``; read at scrape time."""

    pauses: dict[int, Histogram] = field(
        default_factory=lambda: {g: Histogram(GC_PAUSE_BOUNDS_S) for g in range(3)}
    )
    _started: float = 0.0
    _installed: bool = False

    def install(self) -> None:
        if not self._installed:
            gc.callbacks.append(self._callback)
            self._installed = True

    def uninstall(self) -> None:
        if self._installed:
            gc.callbacks.remove(self._callback)
            self._installed = False

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        # Collections never nest (the interpreter refuses to start one inside another), so
        # one start time is enough.
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.pauses[info["generation"]].observe(time.perf_counter() - self._started)


_CLOCK = PauseClock()


def pause_clock() -> PauseClock:
    """The process's one pause clock (installed by the first ``GcPolicy.apply``)."""
    return _CLOCK


@dataclass(slots=True)
class GcPolicy:
    """Applies a ``GcConfig`` to this process and can undo it."""

    config: GcConfig
    _previous: tuple[int, int, int] | None = None
    _froze: bool = False

    def apply(self) -> None:
        pause_clock().install()
        self._previous = gc.get_threshold()
        if self.config.freeze_after_start:
            gc.collect()  # start-up garbage is freed, not frozen forever
            gc.freeze()
            self._froze = True
        if self.config.thresholds != "python":
            gc.set_threshold(*self.config.thresholds)
        log.info(
            "garbage collector tuned",
            thresholds=gc.get_threshold(),
            frozen_objects=gc.get_freeze_count(),
        )

    def restore(self) -> None:
        if self._previous is not None:
            gc.set_threshold(*self._previous)
            self._previous = None
        if self._froze:
            gc.unfreeze()
            self._froze = False
