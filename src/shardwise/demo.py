"""``shardwise demo``: an embedded DynamoDB, orders written continuously, consumed live.

Everything runs in this process. moto's server, on a free local port, stands in for DynamoDB
and DynamoDB Streams (real HTTP, the same API calls as AWS). A writer inserts, updates and
deletes orders in a table ``Orders`` at a steady rate, and a ``Supervisor`` runs the stock
Lambda handler ``shardwise.examples.orders_view.handler`` (shipped in the package, so the demo
works from an installed wheel) on the table's stream, keeping a materialized view in SQLite.
Once a second a progress line shows what was written, processed and checkpointed.

Stopping: on Ctrl-C or SIGTERM writing stops and the supervisor drains at once; after
``--seconds`` writing stops and the processor gets a few seconds to catch up first. Then moto
stops and a summary is printed. Every run starts from an empty table, so the view and the
checkpoint files in the work directory are replaced.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import shutil
import sqlite3
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TextIO

from boto3.session import Session

from shardwise.clock import sleep_or_stop
from shardwise.config import Settings, parse_config
from shardwise.observe.logging import configure_logging
from shardwise.observe.progress import ProcessorProgress

if TYPE_CHECKING:
    from moto.server import ThreadedMotoServer
    from mypy_boto3_dynamodb.service_resource import Table

    from shardwise.supervisor import Supervisor

__all__ = ["OrderTraffic", "run_demo"]

EXIT_OK = 0
EXIT_INVALID = 2  # as the CLI: the demo cannot run as asked
TABLE = "Orders"
REGION = "us-east-1"
PROCESSOR = "orders-view"
HANDLER_MODULE = "shardwise.examples.orders_view"
HANDLER = f"{HANDLER_MODULE}.handler"  # Lambda's file.function notation
VIEW_DB = "orders_view.db"
VIEW_DB_ENV = "ORDERS_VIEW_DB"
CHECKPOINTS_DB = "demo-checkpoints.db"
DRAIN_S = 10.0
CATCH_UP_S = 5.0  # after --seconds: how long the processor may take to read the last writes
REPORT_INTERVAL_S = 1.0

CUSTOMERS = ("ada", "barbara", "dennis", "edsger", "grace", "ken", "margaret", "radia")
PRODUCTS = {
    "KB-101 keyboard": Decimal("49.00"),
    "MS-220 mouse": Decimal("19.90"),
    "HD-330 headset": Decimal("74.50"),
    "CB-440 usb-c cable": Decimal("9.99"),
    "MN-550 monitor": Decimal("189.00"),
    "DK-660 dock": Decimal("129.95"),
}
NEXT_STATUS = {"PENDING": "PAID", "PAID": "SHIPPED"}


def run_demo(seconds: float | None, writes_per_second: float, workdir: Path | None) -> int:
    """Run the demo until Ctrl-C / SIGTERM or for ``seconds``; 0 on a clean stop."""
    if writes_per_second <= 0 or (seconds is not None and seconds < 0):
        print("error: --writes-per-second must be > 0 and --seconds >= 0", file=sys.stderr)
        return EXIT_INVALID
    try:
        from moto.server import ThreadedMotoServer
    except ImportError:
        print(
            "error: the demo needs moto, an embedded DynamoDB: pip install 'shardwise[demo]'",
            file=sys.stderr,
        )
        return EXIT_INVALID
    workdir = _prepare_workdir(workdir)
    view_db = workdir / VIEW_DB
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's per-request lines
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        with _demo_environment(view_db):
            endpoint_url = _endpoint(server)
            table = create_orders_table(endpoint_url)
            settings = demo_settings(endpoint_url, workdir)
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


# --- setting the stage ----------------------------------------------------------------------


def _prepare_workdir(workdir: Path | None) -> Path:
    if workdir is None:
        return Path(tempfile.mkdtemp(prefix="shardwise-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    for name in (VIEW_DB, CHECKPOINTS_DB):
        for suffix in ("", "-journal", "-wal", "-shm"):
            (workdir / (name + suffix)).unlink(missing_ok=True)
    return workdir.resolve()


@contextmanager
def _demo_environment(view_db: Path) -> Iterator[None]:
    """The handler's view path and, when none are set, moto's dummy credentials; undone after."""
    updates = {VIEW_DB_ENV: str(view_db)}
    if not (os.environ.get("AWS_ACCESS_KEY_ID") or os.environ.get("AWS_SECRET_ACCESS_KEY")):
        updates |= {"AWS_ACCESS_KEY_ID": "demo", "AWS_SECRET_ACCESS_KEY": "demo"}
    saved = {name: os.environ.get(name) for name in updates}
    os.environ.update(updates)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _endpoint(server: ThreadedMotoServer) -> str:
    host, port = server.get_host_and_port()
    return f"http://{host}:{port}"


def create_orders_table(endpoint_url: str) -> Table:
    """The ``Orders`` table (hash key ``order_id``) with a NEW_AND_OLD_IMAGES stream."""
    session = Session(region_name=REGION)
    client = session.client("dynamodb", endpoint_url=endpoint_url)
    # moto keeps its tables per process, not per server: a second demo in one process
    # would find the first one's table.
    if TABLE in client.list_tables()["TableNames"]:
        client.delete_table(TableName=TABLE)
    client.create_table(
        TableName=TABLE,
        KeySchema=[{"AttributeName": "order_id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "order_id", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
        StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"},
    )
    return session.resource("dynamodb", endpoint_url=endpoint_url).Table(TABLE)


def demo_settings(endpoint_url: str, workdir: Path) -> Settings:
    """One processor running ``HANDLER`` on the demo table, checkpoints in SQLite."""
    store_url = f"sqlite+aiosqlite:///{workdir / CHECKPOINTS_DB}"
    text = f"""
aws:
  region: {REGION}
  endpoint_url: {endpoint_url}
store:
  url: {_yaml_text(store_url)}
log:
  level: WARNING
worker:
  shutdown_timeout_seconds: {DRAIN_S}
processors:
  - name: {PROCESSOR}
    source: {{dynamodb: {{table: {TABLE}}}}}
    handler: {HANDLER}
    starting_position: TRIM_HORIZON
    batch_size: 100
"""
    return parse_config(text, source="<shardwise demo>", config_dir=workdir)


def _yaml_text(value: str) -> str:
    """A double-quoted YAML scalar that ``${...}`` expansion leaves alone."""
    return json.dumps(value.replace("${", "$${"))


# --- writing orders ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Write:
    """One item write: a new order, a status change, or a cancellation (a delete)."""

    kind: Literal["insert", "update", "delete"]
    order_id: str
    status: str = "PENDING"
    item: dict[str, Any] = field(default_factory=dict)


class OrderTraffic:
    """What to write next: new orders, PENDING -> PAID -> SHIPPED, some orders cancelled.

    Only orders that exist are updated or deleted, so every write changes an item and puts
    exactly one record on the stream.
    """

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()
        self._open: dict[str, str] = {}  # order_id -> status, for orders not yet shipped
        self._issued = 0

    def next_write(self) -> Write:
        roll = self._rng.random()
        if len(self._open) < 5 or roll < 0.40:
            return self._new_order()
        order_id = self._rng.choice(tuple(self._open))
        if roll < 0.85:
            status = NEXT_STATUS[self._open[order_id]]
            if status in NEXT_STATUS:
                self._open[order_id] = status
            else:
                del self._open[order_id]
            return Write("update", order_id, status)
        del self._open[order_id]
        return Write("delete", order_id)

    def _new_order(self) -> Write:
        self._issued += 1
        order_id = f"ord-{self._issued:06d}"
        skus = self._rng.sample(sorted(PRODUCTS), k=self._rng.randint(1, 3))
        lines = [(sku, self._rng.randint(1, 3)) for sku in skus]
        now = _now()
        item = {
            "order_id": order_id,
            "customer": self._rng.choice(CUSTOMERS),
            "status": "PENDING",
            "amount": sum((qty * PRODUCTS[sku] for sku, qty in lines), Decimal(0)),
            "items": [{"sku": sku, "qty": qty, "price": PRODUCTS[sku]} for sku, qty in lines],
            "created_at": now,
            "updated_at": now,
        }
        self._open[order_id] = "PENDING"
        return Write("insert", order_id, item=item)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class OrderWriter:
    """Applies ``OrderTraffic`` to the table at a steady rate; boto3 runs in a thread."""

    def __init__(self, table: Table, traffic: OrderTraffic, writes_per_second: float) -> None:
        self._table = table
        self._traffic = traffic
        self._interval_s = 1.0 / writes_per_second
        self.written: Counter[str] = Counter()
        self.done = asyncio.Event()  # set once the last write has returned

    @property
    def total(self) -> int:
        return self.written.total()

    async def run(self, stop: asyncio.Event) -> None:
        """Write until ``stop`` is set; never more than a second behind schedule."""
        try:
            await self._write_until(stop)
        finally:
            self.done.set()

    async def _write_until(self, stop: asyncio.Event) -> None:
        start = time.monotonic()
        count = 0
        while True:
            due = start + count * self._interval_s
            now = time.monotonic()
            if due < now - 1.0:
                start, count, due = now, 0, now
            if await sleep_or_stop(stop, due - now):
                return
            write = self._traffic.next_write()
            await asyncio.to_thread(self._apply, write)
            self.written[write.kind] += 1
            count += 1

    def _apply(self, write: Write) -> None:
        key = {"order_id": write.order_id}
        if write.kind == "insert":
            self._table.put_item(Item=write.item)
        elif write.kind == "update":
            self._table.update_item(
                Key=key,
                UpdateExpression="SET #status = :status, updated_at = :now",
                ExpressionAttributeNames={"#status": "status"},
                ExpressionAttributeValues={":status": write.status, ":now": _now()},
            )
        else:
            self._table.delete_item(Key=key)


# --- running and reporting -------------------------------------------------------------------


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


class ProgressReporter:
    """One progress line a second: rewritten in place on a terminal, appended otherwise."""

    def __init__(
        self, supervisor: Supervisor, writer: OrderWriter, view_db: Path, out: TextIO
    ) -> None:
        self._supervisor = supervisor
        self._writer = writer
        self._view_db = view_db
        self._out = out
        self._tty = out.isatty()
        self._last = (time.monotonic(), 0)

    async def run(self, stop: asyncio.Event) -> None:
        start = time.monotonic()
        ticks = 0
        while True:
            ticks += 1
            if await sleep_or_stop(stop, start + ticks * REPORT_INTERVAL_S - time.monotonic()):
                break
            rows = await asyncio.to_thread(view_row_count, self._view_db)
            self._show(self._render(time.monotonic() - start, rows))
        if self._tty and ticks > 1:
            self._out.write("\n")
            self._out.flush()

    def _render(self, elapsed_s: float, view_rows: int | None) -> str:
        progress = self._supervisor.progress.get(PROCESSOR) or ProcessorProgress(PROCESSOR)
        now = time.monotonic()
        then, processed_then = self._last
        rate = (progress.records_processed - processed_then) / max(now - then, 1e-6)
        self._last = (now, progress.records_processed)
        lag = progress.iterator_age_s()
        return (
            f"{elapsed_s:4.0f}s | written {self._writer.total}"
            f" | processed {progress.records_processed} ({rate:.1f}/s)"
            f" | lag {'-' if lag is None else f'{max(lag, 0.0):.1f}s'}"
            f" | checkpoint {_short(last_checkpoint(progress))}"
            f" | view {'-' if view_rows is None else view_rows} rows"
            f" | failures {progress.handler_failures}"
        )

    def _show(self, text: str) -> None:
        if self._tty:  # a line wider than the terminal would wrap, and \r rewrites one row
            width = shutil.get_terminal_size().columns - 1
            self._out.write(f"\r{text[:width]}\x1b[K")
        else:
            self._out.write(f"{text}\n")
        self._out.flush()


def last_checkpoint(progress: ProcessorProgress) -> str | None:
    """The sequence number most recently checkpointed on any shard."""
    saved = [s for s in progress.shards.values() if s.checkpointed_at_monotonic is not None]
    if not saved:
        return None
    return max(saved, key=lambda s: s.checkpointed_at_monotonic or 0.0).checkpoint


def _short(sequence_number: str | None, keep: int = 8) -> str:
    if sequence_number is None:
        return "-"
    return sequence_number if len(sequence_number) <= keep else f"..{sequence_number[-keep:]}"


# --- reading the view -------------------------------------------------------------------------


def _query(view_db: Path, sql: str) -> list[tuple[Any, ...]] | None:
    """Rows of a read-only query on the view; None while the handler has not created it."""
    if not view_db.exists():
        return None
    try:
        with closing(sqlite3.connect(f"{view_db.as_uri()}?mode=ro", uri=True, timeout=5)) as db:
            return db.execute(sql).fetchall()
    except sqlite3.OperationalError:  # created but not yet holding its tables
        return None


def view_row_count(view_db: Path) -> int | None:
    rows = _query(view_db, "SELECT COUNT(*) FROM orders")
    return int(rows[0][0]) if rows else None


def summary(
    writer: OrderWriter, progress: ProcessorProgress, view_db: Path, workdir: Path, elapsed_s: float
) -> str:
    """What happened, for the terminal: written vs processed, the checkpoint, the view."""
    kinds = ", ".join(f"{writer.written[k]} {k}s" for k in ("insert", "update", "delete"))
    behind = writer.total - progress.records_processed
    lines = [
        f"shardwise demo: stopped after {elapsed_s:.1f} s",
        f"  written     {writer.total} item writes ({kinds})",
        f"  processed   {progress.records_processed} records in {progress.batches_processed}"
        f" batches, {progress.handler_failures} handler failures"
        + (f" ({behind} written but not processed before the stop)" if behind > 0 else ""),
        f"  checkpoint  {last_checkpoint(progress) or '-'}",
    ]
    counts = _query(view_db, "SELECT status, orders FROM order_status_counts ORDER BY status")
    recent = _query(
        view_db,
        "SELECT order_id, customer, status, amount, item_count FROM orders"
        " ORDER BY updated_at DESC, order_id DESC LIMIT 5",
    )
    by_status = ", ".join(f"{status} {n}" for status, n in counts or [])
    lines.append(f"  view        {view_row_count(view_db) or 0} orders ({by_status or 'empty'})")
    for order_id, customer, status, amount, item_count in recent or []:
        lines.append(f"    {order_id}  {customer:<9} {status:<8} {amount:>8}  {item_count} item(s)")
    lines += [
        f"  files       {workdir} ({VIEW_DB}, {CHECKPOINTS_DB})",
        f'  look        sqlite3 {view_db} "SELECT * FROM orders LIMIT 5"',
    ]
    return "\n".join(lines)
