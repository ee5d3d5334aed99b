"""One endpoint for a container of worker processes (``worker.processes`` > 1).

Each worker process serves its own ``/metrics``, ``/healthz`` and ``/readyz`` on a loopback
port its parent learns (``workers/link.py``); the parent answers on ``http.bind`` by asking
every child at request time, all at once, each within a timeout:

* ``/metrics``: every child's series with a ``worker`` label (the child's worker id, as in
  the lease table, ``shardwise status`` and the logs), merged family by family so that each
  family has one HELP and one TYPE line. Labelled rather than summed: per-shard gauges,
  histograms and ``process_*`` keep their meaning, and ``sum by (processor)`` gives the
  container's totals, as it would over separate replicas. The parent adds its own:
  ``shardwise_worker_processes``, ``shardwise_worker_process_up{worker}`` (the child
  answered this scrape) and ``shardwise_worker_process_restarts_total{worker}``.
* ``/healthz``: 200 only when every child answers 200, and no child is down waiting for its
  restart; a child still starting counts as healthy, as a single process does while it
  starts. The body lists each worker (pid, restarts, its own answer) and every problem,
  prefixed with the worker's id.
* ``/readyz``: 200 only when every child answers 200 and the parent is not stopping.

``merge_metrics`` is the pure part of ``/metrics``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final, Protocol

import aiohttp
import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from shardwise.config import Settings
from shardwise.observe.health import listen
from shardwise.observe.metrics import render

__all__ = ["AggregateServer", "WorkerView", "merge_metrics"]

log = structlog.get_logger("shardwise.observe")

WORKER_LABEL: Final = "worker"
SCRAPE_TIMEOUT_S: Final = 5.0
PROBE_TIMEOUT_S: Final = 3.0


class WorkerView(Protocol):
    """What the endpoint reads of each worker process (``workers.pool.Child`` is one)."""

    @property
    def worker_id(self) -> str: ...
    @property
    def pid(self) -> int | None: ...
    @property
    def port(self) -> int | None: ...
    @property
    def restarts(self) -> int: ...
    @property
    def problem(self) -> str | None: ...


def merge_metrics(texts: Mapping[str, str]) -> list[Metric]:
    """Prometheus text from each worker (worker id -> body) as one set of families, every
    sample labelled ``worker``. A family whose type differs from the first worker's (two
    shardwise versions side by side) is left out for that worker rather than mixed."""
    families: dict[str, Metric] = {}
    for worker, text in sorted(texts.items()):
        for family in text_string_to_metric_families(text):
            merged = families.get(family.name)
            if merged is None:
                merged = Metric(family.name, family.documentation, family.type, family.unit)
                families[family.name] = merged
            elif merged.type != family.type:
                continue
            merged.samples.extend(
                sample._replace(labels={**sample.labels, WORKER_LABEL: worker})
                for sample in family.samples
            )
    return list(families.values())


class _Families(Collector):
    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = list(families)

    def collect(self) -> Iterable[Metric]:
        return self._families


class AggregateServer:
    """The parent's ``/metrics``, ``/healthz`` and ``/readyz`` over ``workers``' endpoints."""

    def __init__(
        self,
        settings: Settings,
        workers: Sequence[WorkerView],
        *,
        stopping: asyncio.Event,
        scrape_timeout_s: float = SCRAPE_TIMEOUT_S,
        probe_timeout_s: float = PROBE_TIMEOUT_S,
    ) -> None:
        self._settings = settings
        self._workers = workers
        self._stopping = stopping
        self._scrape_timeout_s = scrape_timeout_s
        self._probe_timeout_s = probe_timeout_s
        self._runner: web.AppRunner | None = None
        self._client: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> AggregateServer:
        """Listen on ``http.bind``; ``ShardwiseError`` if the address cannot be bound."""
        http = self._settings.http
        self._runner = await listen(
            http, {"/metrics": self._metrics, "/healthz": self._healthz, "/readyz": self._readyz}
        )
        self._client = aiohttp.ClientSession()
        log.info("http endpoint listening", host=http.host, port=self.bound_port)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._client is not None:
            await self._client.close()
            self._client = None

    @property
    def bound_port(self) -> int:
        if self._runner is None:
            raise RuntimeError("AggregateServer is not serving")
        port: int = self._runner.addresses[0][1]
        return port

    # -- asking the workers ----------------------------------------------------------------

    async def _ask_all(self, path: str, timeout_s: float) -> dict[str, tuple[int, str] | str]:
        """Each listening worker's answer to ``GET path``: (status, body), or why none came."""
        listening = [w for w in self._workers if w.port is not None and w.problem is None]
        answers = await asyncio.gather(*(self._ask(w, path, timeout_s) for w in listening))
        return {w.worker_id: answer for w, answer in zip(listening, answers, strict=True)}

    async def _ask(self, worker: WorkerView, path: str, timeout_s: float) -> tuple[int, str] | str:
        assert self._client is not None
        url = f"http://127.0.0.1:{worker.port}{path}"
        try:
            async with (
                asyncio.timeout(timeout_s),
                self._client.get(url, headers={"Accept": "text/plain"}) as response,
            ):
                return response.status, await response.text()
        except TimeoutError:
            return f"no answer to {path} within {timeout_s:g} s"
        except aiohttp.ClientError as exc:
            return f"no answer to {path}: {exc}"

    # -- HTTP handlers ---------------------------------------------------------------------

    async def _metrics(self, request: web.Request) -> web.Response:
        answers = await self._ask_all("/metrics", self._scrape_timeout_s)
        texts = {
            worker: answer[1]
            for worker, answer in answers.items()
            if isinstance(answer, tuple) and answer[0] == 200
        }
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Families([*merge_metrics(texts), *self._own_metrics(set(texts))]))
        body, content_type = render(registry, request.headers.get("Accept"))
        return web.Response(body=body, headers={"Content-Type": content_type})

    def _own_metrics(self, answered: set[str]) -> list[Metric]:
        count = GaugeMetricFamily(
            "shardwise_worker_processes",
            "Worker processes this container runs (worker.processes).",
            value=len(self._workers),
        )
        up = GaugeMetricFamily(
            "shardwise_worker_process_up",
            "1 when the worker process answered this scrape.",
            labels=[WORKER_LABEL],
        )
        restarts = CounterMetricFamily(
            "shardwise_worker_process_restarts",
            "Times the worker process was started again after it exited on its own.",
            labels=[WORKER_LABEL],
        )
        for worker in self._workers:
            up.add_metric([worker.worker_id], 1 if worker.worker_id in answered else 0)
            restarts.add_metric([worker.worker_id], worker.restarts)
        return [count, up, restarts]

    async def _healthz(self, request: web.Request) -> web.Response:
        answers = await self._ask_all("/healthz", self._probe_timeout_s)
        problems: list[str] = []
        workers: dict[str, dict[str, Any]] = {}
        for worker in self._workers:
            state, entry = _state(worker, answers.get(worker.worker_id))
            workers[worker.worker_id] = entry
            if state in ("not running", "no answer"):
                found = [f"{state}: {entry['problem']}"]
            elif state == "failing":
                named = entry["answer"].get("problems")
                found = [str(p) for p in named] if isinstance(named, list) and named else [state]
            else:
                found = []
            problems += [f"worker {worker.worker_id}: {problem}" for problem in found]
        body = {"status": "failing" if problems else "ok", "problems": problems}
        return web.json_response({**body, "workers": workers}, status=503 if problems else 200)

    async def _readyz(self, request: web.Request) -> web.Response:
        answers = await self._ask_all("/readyz", self._probe_timeout_s)
        workers = {w.worker_id: _state(w, answers.get(w.worker_id))[1] for w in self._workers}
        ready = sum(entry["state"] == "ok" for entry in workers.values())
        checks = {"workers": f"{ready} of {len(workers)} ready"}
        if self._stopping.is_set():
            checks["processes"] = "stopping"
        ok = ready == len(workers) and not self._stopping.is_set()
        body = {"status": "ready" if ok else "not ready", "checks": checks, "workers": workers}
        return web.json_response(body, status=200 if ok else 503)


def _state(worker: WorkerView, answer: tuple[int, str] | str | None) -> tuple[str, dict[str, Any]]:
    """A worker's state in a probe, and its entry in the probe's body.

    ``ok`` (it answered 200) or ``failing`` (another status; ``answer`` is its JSON body),
    ``no answer``, ``starting`` (no endpoint yet) or ``not running`` (waiting for a restart;
    ``problem`` says why).
    """
    entry: dict[str, Any] = {"pid": worker.pid, "restarts": worker.restarts}
    if worker.problem is not None:
        state, entry["problem"] = "not running", worker.problem
    elif answer is None:
        state = "starting"
    elif isinstance(answer, str):
        state, entry["problem"] = "no answer", answer
    else:
        status, text = answer
        state = "ok" if status == 200 else "failing"
        try:
            reply = json.loads(text)
        except ValueError:
            reply = None
        entry["answer"] = reply if isinstance(reply, dict) else {"status": status}
    entry["state"] = state
    return state, entry
