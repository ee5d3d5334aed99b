"""The parent of ``worker.processes`` > 1: N worker processes, kept running, drained together.

Slot k runs ``shardwise run`` again as a child with worker id ``<worker.id>-p<k>``: a full
worker of its own (supervisor, leases, store connections) that shares the shards with its
siblings, and with other containers' workers, through the lease table exactly as a separate
replica would. The parent holds no lease and reads no stream. It

* prepares the store once: schema at head, and for SQLite a check that the file is in WAL
  mode, which is what lets several processes share it (``prepare_store``);
* serves the container's one endpoint on ``http.bind`` (``observe/aggregate.py``);
* restarts a child that exits on its own after 1 s, 2 s, 4 s ... at most 30 s, back to 1 s
  once a run lasted a minute. A child that found the configuration invalid (exit 2) is not
  restarted: that cannot heal, so the parent drains the others and exits 2;
* forwards SIGTERM / SIGINT (drain; a second one cancels in-flight work) and SIGHUP
  (reload) to every child, and kills what still runs ``worker.shutdown_timeout_seconds``
  plus ``DRAIN_MARGIN_S`` after the stop. It exits 0 when every child's last run ended in
  a clean drain, 1 otherwise.

Children run in sessions of their own, so a terminal's Ctrl-C reaches the parent alone and
each child is told once; the channel of ``link.py`` stops them should the parent die.

A restarted child keeps its slot's worker id. That is safe because every lease write is a
compare-and-set on the lease counter (``store/leases.py``), never on the owner alone: the
new process holds no counter, it takes its predecessor's leases back (its "earlier life",
``balance.claims``) with takes that increment each counter, and any statement the dead
process had in flight carries an older counter and is refused. A slot is started again
only after its process was reaped, so two processes with one worker id never run at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import structlog

from shardwise.clock import sleep_or_stop
from shardwise.config import Settings, load_config
from shardwise.errors import ConfigError
from shardwise.observe.aggregate import AggregateServer
from shardwise.store import CheckpointStore, redact_url
from shardwise.store.engine import map_store_errors
from shardwise.workers.link import messages

__all__ = ["Child", "RestartBackoff", "WorkerPool", "describe_exit", "prepare_store"]

log = structlog.get_logger("shardwise.workers")

# Beyond the children's own drain grace: time for them to release leases and exit.
DRAIN_MARGIN_S: Final = 5.0
# How `shardwise` exits on an invalid configuration or handler (cli/exit_codes.py).
EXIT_INVALID: Final = 2
_STOPPED_EARLY: Final = (-signal.SIGTERM, -signal.SIGINT)


@dataclass(slots=True)
class RestartBackoff:
    """Waits between restarts of one slot: doubling from ``first_s`` up to ``max_s``, and
    back to ``first_s`` once a run lasted ``stable_s``."""

    first_s: float = 1.0
    max_s: float = 30.0
    stable_s: float = 60.0
    _next_s: float | None = field(default=None, init=False, repr=False)

    def after(self, ran_s: float) -> float:
        """The wait before the next start, for a run that lasted ``ran_s``."""
        if self._next_s is None or ran_s >= self.stable_s:
            self._next_s = self.first_s
        delay = self._next_s
        self._next_s = min(self._next_s * 2, self.max_s)
        return delay


@dataclass(slots=True)
class Child:
    """One slot of the pool, and the process running in it now, if any."""

    slot: int
    worker_id: str
    pid: int | None = None
    port: int | None = None  # its endpoint on loopback, once it listens
    started: bool = False  # its processors have started (its signal handlers are set)
    restarts: int = 0
    problem: str | None = None  # why no process runs in the slot now
    clean: bool = True  # its last run ended in a clean drain (or it never ran)
    reload_pending: bool = False  # a SIGHUP came while it was starting
    process: asyncio.subprocess.Process | None = field(default=None, repr=False)

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the process in the slot, if one runs."""
        if self.process is not None and self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signum)


def describe_exit(code: int) -> str:
    """``exit code 1``, ``killed by SIGKILL``."""
    if code >= 0:
        return f"exit code {code}"
    try:
        return f"killed by {signal.Signals(-code).name}"
    except ValueError:
        return f"killed by signal {-code}"


class WorkerPool:
    """Runs ``processes`` worker processes of the config at ``config_path`` until stopped."""

    def __init__(self, settings: Settings, *, config_path: Path, processes: int) -> None:
        self.settings = settings
        self.config_path = config_path
        self.children = [Child(k, f"{settings.worker.id}-p{k}") for k in range(processes)]
        self.stop_event = asyncio.Event()
        self._signals = 0
        self._invalid = False

    async def run(self) -> int:
        """Serve, prepare the store, run the children until stopped; the exit code."""
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.request_stop, signum)
        loop.add_signal_handler(signal.SIGHUP, self.request_reload)
        try:
            async with AggregateServer(self.settings, self.children, stopping=self.stop_event):
                await prepare_store(self.settings, len(self.children))
                log.info(
                    "starting worker processes",
                    workers=[child.worker_id for child in self.children],
                )
                async with asyncio.TaskGroup() as tasks:
                    runs = [tasks.create_task(self._keep_running(c)) for c in self.children]
                    tasks.create_task(self._drain_deadline(runs))
        finally:
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(signum)
        if self._invalid:
            code = EXIT_INVALID
        else:
            code = 0 if all(child.clean for child in self.children) else 1
        log.info("stopped", exit_code=code)
        return code

    def request_stop(self, signum: int = signal.SIGTERM) -> None:
        """Drain every child (forward ``signum``); a second request cancels their work."""
        self._signals += 1
        if self._signals == 1:
            grace_s = self.settings.worker.shutdown_timeout_seconds
            log.info("stop requested; draining the worker processes", grace_s=grace_s)
            self.stop_event.set()
        else:
            log.warning("second stop request; the worker processes cancel in-flight work")
        for child in self.children:
            child.signal(signum)

    def request_reload(self) -> None:
        """Forward SIGHUP; a child still starting gets it once its handlers are installed."""
        if self.stop_event.is_set():
            return
        self._warn_about_restart_only_changes()
        for child in self.children:
            if child.started:
                child.signal(signal.SIGHUP)
            elif child.process is not None:
                child.reload_pending = True
        log.info("reload forwarded to the worker processes")

    def _warn_about_restart_only_changes(self) -> None:
        try:
            new = load_config(self.config_path)
        except ConfigError:
            return  # every worker process logs the problems and keeps its configuration
        old = self.settings
        changed = [
            name
            for name, before, after in (
                ("worker.processes", old.worker.processes, new.worker.processes),
                ("http", old.http, new.http),
            )
            if before != after
        ]
        if changed:
            log.warning("these settings change only on restart; not applied", settings=changed)

    async def _keep_running(self, child: Child) -> None:
        backoff = RestartBackoff()
        while not self.stop_event.is_set():
            began = time.monotonic()
            was_started, code = await self._run_once(child)
            if self.stop_event.is_set():
                # Stopped by the forwarded signal before its handlers were set: it held nothing.
                child.clean = code == 0 or (code in _STOPPED_EARLY and not was_started)
                if not child.clean:
                    log.error(
                        "worker process failed", worker=child.worker_id, exit=describe_exit(code)
                    )
                return
            child.clean = False
            if code == EXIT_INVALID:
                child.problem = "invalid configuration or handler (exit code 2); not restarted"
                log.error(
                    "worker process refused the configuration; stopping", worker=child.worker_id
                )
                self._invalid = True
                self.request_stop()
                return
            delay = backoff.after(time.monotonic() - began)
            child.problem = f"{describe_exit(code)}; restarting in {delay:g} s"
            log.error(
                "worker process exited; restarting",
                worker=child.worker_id,
                exit=describe_exit(code),
                restart_in_s=delay,
            )
            if await sleep_or_stop(self.stop_event, delay):
                return
            child.restarts += 1

    async def _run_once(self, child: Child) -> tuple[bool, int]:
        """Start a process in the slot and wait for it: (whether it started, exit code)."""
        ours, theirs = socket.socketpair()
        reader, writer = await asyncio.open_connection(sock=ours)
        try:
            try:
                process = await asyncio.create_subprocess_exec(
                    *self._command(child, theirs.fileno()),
                    stdin=subprocess.DEVNULL,
                    pass_fds=(theirs.fileno(),),
                    start_new_session=True,
                )
            finally:
                theirs.close()
            return await self._watch(child, process, reader)
        finally:
            writer.close()

    def _command(self, child: Child, fd: int) -> list[str]:
        return [
            *(sys.executable, "-m", "shardwise", "run", "-c", str(self.config_path)),
            *("--as-worker-process", child.worker_id, "--parent-fd", str(fd)),
        ]

    async def _watch(
        self, child: Child, process: asyncio.subprocess.Process, reader: asyncio.StreamReader
    ) -> tuple[bool, int]:
        child.process, child.pid, child.problem = process, process.pid, None
        child.reload_pending = False  # a new process reads the config file as it is now
        log.info("worker process started", worker=child.worker_id, pid=process.pid)
        if self.stop_event.is_set():  # the stop came while it was being started
            child.signal(signal.SIGTERM)
        try:
            async with asyncio.TaskGroup() as tasks:
                listening = tasks.create_task(self._listen(child, reader))
                await process.wait()
                listening.cancel()
        finally:
            if process.returncode is None:  # cancelled: never leave a worker process behind
                process.kill()
                await process.wait()
            was_started = child.started
            child.process, child.pid, child.port, child.started = None, None, None, False
        assert process.returncode is not None
        return was_started, process.returncode

    async def _listen(self, child: Child, reader: asyncio.StreamReader) -> None:
        async for message in messages(reader):
            port = message.get("port")
            if isinstance(port, int):
                child.port = port
            if message.get("started") is True:
                child.started = True
                if child.reload_pending:
                    child.reload_pending = False
                    child.signal(signal.SIGHUP)

    async def _drain_deadline(self, runs: list[asyncio.Task[None]]) -> None:
        await self.stop_event.wait()
        grace_s = self.settings.worker.shutdown_timeout_seconds + DRAIN_MARGIN_S
        _, pending = await asyncio.wait(runs, timeout=grace_s)
        if not pending:
            return
        for child in self.children:
            if child.process is not None and child.process.returncode is None:
                log.warning("worker process still running; killing it", worker=child.worker_id)
                child.signal(signal.SIGKILL)


async def prepare_store(settings: Settings, processes: int) -> None:
    """Bring the schema to head once, before the children start; with SQLite, check that
    the file is in WAL mode (readers never block the writer, and the processes' writes
    queue on the busy timeout), else refuse with an error naming the two settings."""
    store = await CheckpointStore.connect(settings.store.url)
    try:
        engine = store.engine
        if engine.dialect.name != "sqlite":
            return
        with map_store_errors("reading the SQLite journal mode", engine.url):
            async with engine.connect() as connection:
                result = await connection.exec_driver_sql("PRAGMA journal_mode")
                mode = str(result.scalar()).lower()
    finally:
        await store.close()
    if mode != "wal":
        raise ConfigError(
            [
                f"worker.processes: {processes} processes cannot share store.url "
                f"{redact_url(settings.store.url)}: its file system keeps SQLite in journal "
                f"mode {mode!r}, not 'wal' (a network file system?); use a local disk, "
                "worker.processes: 1, or PostgreSQL"
            ]
        )
