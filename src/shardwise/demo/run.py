"""``shardwise demo`` from start to summary: the timeline that runs writer, supervisor, display."""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from shardwise.clock import sleep_or_stop
from shardwise.demo.display import ProgressReporter, summary
from shardwise.demo.dynamodb import TABLE, create_orders_table, endpoint, new_moto_server
from shardwise.demo.settings import (
    NODE_COMMAND,
    PROCESSOR,
    VIEW_DB,
    demo_environment,
    demo_settings,
    prepare_workdir,
)
from shardwise.demo.writer import OrderTraffic, OrderWriter
from shardwise.observe.logging import configure_logging
from shardwise.observe.progress import ProcessorProgress

if TYPE_CHECKING:
    from shardwise.config import Settings
    from shardwise.supervisor import Supervisor

__all__ = ["run_demo"]

EXIT_OK = 0
EXIT_INVALID = 2  # as the CLI: the demo cannot run as asked
CATCH_UP_S = 5.0  # after --seconds: how long the processor may take to read the last writes


def run_demo(
    seconds: float | None,
    writes_per_second: float,
    workdir: Path | None,
    node_dir: Path | None = None,
) -> int:
    """Run the demo until Ctrl-C / SIGTERM or for ``seconds``; 0 on a clean stop.

    With ``node_dir`` the records go to the Node.js function there (``index.handler``)
    through the Lambda Runtime API instead of the Python view.
    """
    if writes_per_second <= 0 or (seconds is not None and seconds < 0):
        print("error: --writes-per-second must be > 0 and --seconds >= 0", file=sys.stderr)
        return EXIT_INVALID
    if node_dir is not None:
        node_dir = node_dir.resolve()
        ric = node_dir / NODE_COMMAND[1]
        if not ric.is_file():
            print(
                f"error: --node {node_dir}: no {NODE_COMMAND[1]}; "
                f"run `npm install aws-lambda-ric` there (make demo-node does)",
                file=sys.stderr,
            )
            return EXIT_INVALID
    try:
        server = new_moto_server()
    except ImportError:
        print(
            "error: the demo needs moto, an embedded DynamoDB: pip install 'shardwise[demo]'",
            file=sys.stderr,
        )
        return EXIT_INVALID
    workdir = prepare_workdir(workdir)
    view_db = workdir / VIEW_DB
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's per-request lines
    server.start()
    try:
        with demo_environment(view_db):
            endpoint_url = endpoint(server)
            table = create_orders_table(endpoint_url)
            settings = demo_settings(endpoint_url, workdir, node_dir)
            configure_logging(settings.log.level, settings.log.format)
            print(
                f"shardwise demo: table {TABLE} on moto at {endpoint_url}, "
                f"{writes_per_second:g} writes/s, files in {workdir}",
                flush=True,
            )
            print(
                "press Ctrl-C to stop" if seconds is None else f"stopping after {seconds:g} s",
                flush=True,
            )
            writer = OrderWriter(table, OrderTraffic(), writes_per_second)
            started = time.monotonic()
            progress = asyncio.run(_run(settings, writer, view_db, seconds))
    finally:
        server.stop()
    print(summary(writer, progress, view_db, workdir, time.monotonic() - started), flush=True)
    return EXIT_OK


async def _run(
    settings: Settings, writer: OrderWriter, view_db: Path, seconds: float | None
) -> ProcessorProgress:
    """Write, process and report until stopped; returns the processor's final progress."""
    from shardwise.supervisor import Supervisor

    supervisor = Supervisor(settings)
    stop_writing = asyncio.Event()
    reporter = ProgressReporter(supervisor, writer, view_db, sys.stdout)
    in_main_thread = threading.current_thread() is threading.main_thread()
    async with asyncio.TaskGroup() as tasks:
        tasks.create_task(supervisor.run(install_signal_handlers=in_main_thread))
        tasks.create_task(writer.run(stop_writing))
        tasks.create_task(reporter.run(supervisor.stop_event))
        tasks.create_task(_timeline(supervisor, writer, stop_writing, seconds))
    return supervisor.progress.get(PROCESSOR) or ProcessorProgress(PROCESSOR)


async def _timeline(
    supervisor: Supervisor, writer: OrderWriter, stop_writing: asyncio.Event, seconds: float | None
) -> None:
    """After ``seconds``: stop writing, let the processor catch up, then drain.

    A signal sets the supervisor's stop event (its drain begins) and stops the writer at once.
    """
    stop = supervisor.stop_event
    if seconds is not None and not await sleep_or_stop(stop, seconds):
        stop_writing.set()
        await _catch_up(supervisor, writer)
        if not stop.is_set():  # else a signal came meanwhile and the drain has begun
            supervisor.request_stop()
    await stop.wait()
    stop_writing.set()


async def _catch_up(supervisor: Supervisor, writer: OrderWriter) -> None:
    """Wait up to ``CATCH_UP_S`` for every write to be processed; return early on a stop."""
    deadline = time.monotonic() + CATCH_UP_S
    while time.monotonic() < deadline and (
        not writer.done.is_set() or _processed(supervisor) < writer.total
    ):
        if await sleep_or_stop(supervisor.stop_event, 0.1):
            return


def _processed(supervisor: Supervisor) -> int:
    progress = supervisor.progress.get(PROCESSOR)
    return progress.records_processed if progress else 0
