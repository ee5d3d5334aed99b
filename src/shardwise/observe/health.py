"""The HTTP endpoint: ``/metrics`` for Prometheus, ``/healthz`` and ``/readyz`` for probes.

Alive (``/healthz``) means *making progress*, not merely running:

* the event loop is responsive: a ticker measures how late it is woken; more than
  ``max_loop_lag_s`` late (or not run for that long) fails the check;
* no watched task (``watch``: the supervisor, its runners) has died;
* no shard has records pending (read, not checkpointed) while its checkpoint has not
  advanced for ``max_checkpoint_stall_s`` - a hung handler, or a batch retried forever.
  The 503 body names each such processor and shard.

Ready (``/readyz``) means: the config is loaded, the processors have started (and are not
stopping), and the checkpoint store answers ``ping()``.

Every answer is JSON. ``health_report`` is the pure part of the liveness rule.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Final, Protocol

import structlog
from aiohttp import web

from shardwise.config import HttpConfig, Settings
from shardwise.errors import ShardwiseError, StoreError
from shardwise.observe.metrics import build_registry, render
from shardwise.observe.progress import ProcessorProgress
from shardwise.tasks import TaskScope

__all__ = [
    "HealthReport",
    "ObserveServer",
    "Pingable",
    "StalledShard",
    "health_report",
    "listen",
]

log = structlog.get_logger("shardwise.observe")

LOOP_TICK_S: Final = 0.5
MAX_LOOP_LAG_S: Final = 5.0
PING_TIMEOUT_S: Final = 3.0


class Pingable(Protocol):
    """What readiness needs of the checkpoint store (``CheckpointStore`` is one)."""

    async def ping(self) -> None: ...


@dataclass(frozen=True, slots=True)
class StalledShard:
    """A shard with records pending whose checkpoint has not advanced for too long."""

    processor: str
    shard: str
    records_pending: int
    stalled_s: float
    checkpoint: str | None

    def describe(self, limit_s: float) -> str:
        return (
            f"processor {self.processor} shard {self.shard}: {self.records_pending} records "
            f"pending and no checkpoint for {self.stalled_s:.1f} s (limit {limit_s:g} s)"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "processor": self.processor,
            "shard": self.shard,
            "records_pending": self.records_pending,
            "stalled_seconds": round(self.stalled_s, 3),
            "checkpoint": self.checkpoint,
        }


@dataclass(frozen=True, slots=True)
class HealthReport:
    """The liveness verdict: healthy when nothing is stalled and nothing else is wrong."""

    max_stall_s: float
    stalled: tuple[StalledShard, ...] = ()
    problems: tuple[str, ...] = ()

    @property
    def healthy(self) -> bool:
        return not self.stalled and not self.problems

    def with_problems(self, *problems: str) -> HealthReport:
        return replace(self, problems=(*self.problems, *problems))

    def to_json(self) -> dict[str, Any]:
        return {
            "status": "ok" if self.healthy else "failing",
            "problems": [s.describe(self.max_stall_s) for s in self.stalled] + list(self.problems),
            "stalled_shards": [s.to_json() for s in self.stalled],
        }


def health_report(
    progress: Mapping[str, ProcessorProgress], now_monotonic: float, max_stall_s: float
) -> HealthReport:
    """Which shards have had records pending, checkpoint unmoved, for ``max_stall_s`` or more."""
    stalled = [
        StalledShard(name, shard.shard_id, shard.pending, stalled_s, shard.checkpoint)
        for name, processor in sorted(progress.items())
        for shard in sorted(processor.shards.values(), key=lambda s: s.shard_id)
        if (stalled_s := shard.stalled_s(now_monotonic)) >= max_stall_s and shard.pending
    ]
    return HealthReport(max_stall_s=max_stall_s, stalled=tuple(stalled))


class _State(enum.Enum):
    NEW = "new"
    SERVING = "serving"
    STOPPED = "stopped"


Route = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def listen(http: HttpConfig, routes: Mapping[str, Route]) -> web.AppRunner:
    """Serve ``routes`` (GET) on ``http.bind``; ``ShardwiseError`` if it cannot be bound."""
    app = web.Application()
    for path, handler in routes.items():
        app.router.add_get(path, handler)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        await web.TCPSite(runner, http.host, http.port).start()
    except BaseException as exc:
        await runner.cleanup()
        if isinstance(exc, OSError):  # address in use, not an address of this host, ...
            raise ShardwiseError(
                f"http.bind {http.bind}: cannot listen: {exc.strerror or exc}"
            ) from exc
        raise
    return runner


class ObserveServer:
    """Serves ``/metrics``, ``/healthz`` and ``/readyz`` for one supervisor.

    ``store`` may be the store itself or a function returning it (None while not connected
    yet); None skips the store check. Start with ``await start()`` (or ``async with``);
    ``bound_port`` is the port in use, also when ``http.bind`` asked for port 0.
    """

    def __init__(
        self,
        settings: Settings,
        progress: Mapping[str, ProcessorProgress],
        *,
        store: Pingable | Callable[[], Pingable | None] | None,
        started: asyncio.Event,
        max_checkpoint_stall_s: float,
        stopping: asyncio.Event | None = None,
        max_loop_lag_s: float = MAX_LOOP_LAG_S,
        loop_tick_s: float = LOOP_TICK_S,
        ping_timeout_s: float = PING_TIMEOUT_S,
        failed: Mapping[str, str] | None = None,
    ) -> None:
        self._settings = settings
        # Processors that failed on their own (started by a reload): name -> error.
        self._failed = failed if failed is not None else {}
        self._progress = progress
        self._store = store
        self._started = started
        self._stopping = stopping
        self._max_stall_s = max_checkpoint_stall_s
        self._max_loop_lag_s = max_loop_lag_s
        self._tick_s = loop_tick_s
        self._ping_timeout_s = ping_timeout_s
        self._watched: dict[str, asyncio.Task[Any]] = {}
        self._loop_lag_s = 0.0
        self._last_tick = time.monotonic()
        self._tasks = TaskScope()  # the ticker's, from start() to stop()
        self._runner: web.AppRunner | None = None
        self._was_healthy = True
        self._state = _State.NEW
        self.registry = build_registry(progress, loop_lag_s=lambda: self._loop_lag_s)

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Listen on ``http.bind``; ``ShardwiseError`` if the address cannot be bound."""
        if self._state is not _State.NEW:
            raise RuntimeError(f"ObserveServer is {self._state.value}; start it only once")
        self._runner = await listen(
            self._settings.http,
            {"/metrics": self._metrics, "/healthz": self._healthz, "/readyz": self._readyz},
        )
        self._last_tick = time.monotonic()
        await self._tasks.open()
        self._tasks.create_task(self._tick(), name="shardwise-observe-ticker")
        self._state = _State.SERVING
        log.info("http endpoint listening", host=self._settings.http.host, port=self.bound_port)

    async def stop(self) -> None:
        """Stop serving; harmless when not started or already stopped."""
        serving, self._state = self._state is _State.SERVING, _State.STOPPED
        if serving and self._runner is not None:
            await self._tasks.close()
            await self._runner.cleanup()

    async def __aenter__(self) -> ObserveServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @property
    def bound_port(self) -> int:
        if self._runner is None or self._state is not _State.SERVING:
            raise RuntimeError("ObserveServer is not serving")
        port: int = self._runner.addresses[0][1]
        return port

    def watch(self, name: str, task: asyncio.Task[Any]) -> None:
        """Fail liveness if ``task`` ends with an error (returning normally is stopping)."""
        self._watched[name] = task

    # -- the checks ------------------------------------------------------------------------

    def liveness(self) -> HealthReport:
        now = time.monotonic()
        report = health_report(self._progress, now, self._max_stall_s)
        # A ticker that has not run for a while is as telling as one that ran late.
        lag = max(self._loop_lag_s, now - self._last_tick - self._tick_s)
        if lag > self._max_loop_lag_s:
            report = report.with_problems(
                f"event loop lag {lag:.2f} s exceeds {self._max_loop_lag_s:g} s"
            )
        report = report.with_problems(*self._dead_tasks())
        if report.healthy != self._was_healthy:
            self._was_healthy = report.healthy
            if report.healthy:
                log.info("liveness check passing again")
            else:
                log.error("liveness check failing", problems=report.to_json()["problems"])
        return report

    async def readiness(self) -> tuple[bool, dict[str, Any]]:
        enabled = [p.name for p in self._settings.processors if p.enabled]
        checks = {"config": f"loaded ({len(enabled)} enabled processor(s))"}
        ready = True
        if self._stopping is not None and self._stopping.is_set():
            checks["processors"], ready = "stopping", False
        elif not self._started.is_set():
            checks["processors"], ready = "starting", False
        else:
            checks["processors"] = "started: " + ", ".join(enabled)
        if dead := self._dead_tasks():
            checks["tasks"], ready = "; ".join(dead), False
        store_ok, checks["store"] = await self._ping_store()
        ready = ready and store_ok
        return ready, {"status": "ready" if ready else "not ready", "checks": checks}

    def _dead_tasks(self) -> list[str]:
        dead = []
        for name, task in sorted(self._watched.items()):
            if not task.done():
                continue
            if task.cancelled():
                dead.append(f"task {name} was cancelled")
            elif (error := task.exception()) is not None:
                dead.append(f"task {name} died: {type(error).__name__}: {error}")
        dead.extend(
            f"processor {name} failed: {error}" for name, error in sorted(self._failed.items())
        )
        return dead

    async def _ping_store(self) -> tuple[bool, str]:
        store = self._store() if callable(self._store) else self._store
        if self._store is None:
            return True, "not checked"
        if store is None:
            return False, "not connected yet"
        try:
            async with asyncio.timeout(self._ping_timeout_s):
                await store.ping()
        except TimeoutError:
            return False, f"no answer within {self._ping_timeout_s:g} s"
        except (StoreError, RuntimeError) as exc:  # RuntimeError: the store was closed
            return False, f"unreachable: {exc}"
        return True, "ok"

    async def _tick(self) -> None:
        """Measure how late the loop wakes the ticker, on ``time.monotonic()``."""
        due = time.monotonic() + self._tick_s
        while True:
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            now = time.monotonic()
            self._loop_lag_s = max(0.0, now - due)
            self._last_tick = now
            due = now + self._tick_s

    # -- HTTP handlers ---------------------------------------------------------------------

    async def _metrics(self, request: web.Request) -> web.Response:
        body, content_type = render(self.registry, request.headers.get("Accept"))
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def _healthz(self, request: web.Request) -> web.Response:
        report = self.liveness()
        return web.json_response(report.to_json(), status=200 if report.healthy else 503)

    async def _readyz(self, request: web.Request) -> web.Response:
        ready, body = await self.readiness()
        return web.json_response(body, status=200 if ready else 503)
