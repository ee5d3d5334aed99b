"""``shardwise demo`` end to end, and the example handler it runs, unit by unit."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any, cast

import pytest
import structlog

from shardwise import demo
from shardwise.config import load_config
from shardwise.demo import OrderTraffic, OrderWriter, run_demo
from shardwise.examples import orders_view
from shardwise.observe.progress import ProcessorProgress
from shardwise.processors import import_handler, search_paths
from shardwise.store import CheckpointStore
from shardwise.supervisor import Supervisor
from tests.e2e import command_running

REPO = Path(__file__).resolve().parents[1]
PROGRESS_LINE = re.compile(r"^\s*\d+s \| written \d+ \| processed \d+ ", re.MULTILINE)


@pytest.fixture
def isolated_process_state() -> Iterator[None]:
    """Undo what an in-process demo changes for the whole process: logging, sys.path."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    werkzeug_level = logging.getLogger("werkzeug").level
    structlog_config = structlog.get_config()
    path = sys.path[:]
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        logging.getLogger("werkzeug").setLevel(werkzeug_level)
        structlog.configure(**structlog_config)
        sys.path[:] = path


def query(db: Path, sql: str) -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(db)) as connection:
        return connection.execute(sql).fetchall()


def number(pattern: str, text: str) -> int:
    found = re.search(pattern, text)
    assert found, f"{pattern!r} not in {text!r}"
    return int(found[1])


class TestRunDemo:
    """run_demo in this process: orders are written, processed, checkpointed and viewed."""

    def test_writes_reach_the_view_and_the_checkpoint(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str], isolated_process_state: None
    ) -> None:
        assert run_demo(seconds=6, writes_per_second=30, workdir=tmp_path) == 0

        view = tmp_path / demo.VIEW_DB
        [(orders,)] = query(view, "SELECT COUNT(*) FROM orders")
        [(counted,)] = query(view, "SELECT SUM(orders) FROM order_status_counts")
        assert orders > 0
        assert counted == orders
        statuses = {s for (s,) in query(view, "SELECT DISTINCT status FROM orders")}
        assert statuses <= {"PENDING", "PAID", "SHIPPED"}

        async def saved() -> list[str | None]:
            url = f"sqlite+aiosqlite:///{tmp_path / demo.CHECKPOINTS_DB}"
            async with await CheckpointStore.connect(url, migrate=False) as store:
                return [c.sequence_number for c in await store.list(demo.PROCESSOR)]

        [checkpoint] = asyncio.run(saved())
        assert checkpoint is not None and checkpoint.isdigit()

        out = capsys.readouterr().out
        assert len(PROGRESS_LINE.findall(out)) >= 3
        written = number(r"written\s+(\d+) item writes", out)
        processed = number(r"processed\s+(\d+) records", out)
        assert written >= 100
        assert processed == written  # after --seconds the processor catches up before draining
        assert f"checkpoint  {checkpoint}" in out
        assert demo.VIEW_DB_ENV not in os.environ

    def test_node_function_through_the_runtime_api(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str], isolated_process_state: None
    ) -> None:
        """--node: AWS's documented Node.js handler (examples/node) gets every write, in batches
        through aws-lambda-ric, and the checkpoint moves as it does for the Python view."""
        node = REPO / "examples" / "node"
        if not (node / "node_modules" / "aws-lambda-ric" / "index.mjs").is_file():
            pytest.fail("examples/node is not installed: run `make node-functions`")
        assert run_demo(seconds=4, writes_per_second=25, workdir=tmp_path, node_dir=node) == 0

        out = capsys.readouterr().out
        written = number(r"written\s+(\d+) item writes", out)
        processed = number(r"processed\s+(\d+) records", out)
        assert written >= 50
        assert processed == written
        assert number(r"batches, (\d+) handler failures", out) == 0
        assert re.search(r"checkpoint  \d+", out)

    def test_reuses_a_workdir_from_a_clean_slate(
        self, tmp_path: Path, isolated_process_state: None
    ) -> None:
        stale = b"left over from an earlier run"
        (tmp_path / demo.VIEW_DB).write_bytes(stale)
        assert run_demo(seconds=0, writes_per_second=10, workdir=tmp_path) == 0
        view = tmp_path / demo.VIEW_DB
        assert not view.exists() or view.read_bytes() != stale


class TestUnavailable:
    """Missing pieces exit 2 with a message saying what to do."""

    def test_without_moto(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        monkeypatch.setitem(sys.modules, "moto.server", None)
        assert run_demo(seconds=1, writes_per_second=10, workdir=tmp_path) == 2
        assert "pip install 'shardwise[demo]'" in capsys.readouterr().err

    def test_node_dir_without_the_runtime_client(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert run_demo(seconds=1, writes_per_second=10, workdir=tmp_path, node_dir=tmp_path) == 2
        err = capsys.readouterr().err
        assert f"--node {tmp_path}" in err and "npm install aws-lambda-ric" in err

    def test_bad_rate(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        assert run_demo(seconds=1, writes_per_second=0, workdir=tmp_path) == 2
        assert "--writes-per-second" in capsys.readouterr().err


class TestOrderTraffic:
    """The write mix only touches orders that exist, moving them PENDING -> PAID -> SHIPPED."""

    def test_every_write_changes_an_existing_order(self) -> None:
        import random

        traffic = OrderTraffic(random.Random(7))
        status: dict[str, str] = {}
        kinds = set()
        for _ in range(2_000):
            write = traffic.next_write()
            kinds.add(write.kind)
            if write.kind == "insert":
                assert write.order_id not in status
                assert write.item["status"] == "PENDING"
                assert write.item["amount"] == sum(
                    line["qty"] * line["price"] for line in write.item["items"]
                )
                status[write.order_id] = "PENDING"
            elif write.kind == "update":
                assert demo.NEXT_STATUS[status[write.order_id]] == write.status
                status[write.order_id] = write.status
            else:
                assert status.pop(write.order_id) in {"PENDING", "PAID"}
        assert kinds == {"insert", "update", "delete"}


class TestTimeline:
    """After --seconds: writing stops, the processor catches up, then exactly one drain."""

    def supervisor(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Supervisor:
        settings = demo.demo_settings("http://127.0.0.1:9", tmp_path)
        supervisor = Supervisor(settings)
        request_stop = supervisor.request_stop
        self.stop_requests = 0

        def counted() -> None:
            self.stop_requests += 1
            request_stop()

        monkeypatch.setattr(supervisor, "request_stop", counted)
        return supervisor

    def writer(self, written: int) -> OrderWriter:
        writer = OrderWriter(cast(Any, None), OrderTraffic(), writes_per_second=10)
        writer.written["insert"] = written
        writer.done.set()
        return writer

    async def test_drains_once_caught_up(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        supervisor = self.supervisor(tmp_path, monkeypatch)
        supervisor.progress[demo.PROCESSOR] = ProcessorProgress(demo.PROCESSOR)
        stop_writing = asyncio.Event()
        timeline = asyncio.create_task(
            demo._timeline(supervisor, self.writer(3), stop_writing, seconds=0)
        )
        await asyncio.sleep(0.3)
        assert stop_writing.is_set() and not supervisor.stop_event.is_set()
        supervisor.progress[demo.PROCESSOR].records_processed = 3
        await asyncio.wait_for(timeline, timeout=2)
        assert supervisor.stop_event.is_set() and self.stop_requests == 1

    async def test_a_signal_while_catching_up_is_not_a_second_stop(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        supervisor = self.supervisor(tmp_path, monkeypatch)
        timeline = asyncio.create_task(
            demo._timeline(supervisor, self.writer(3), asyncio.Event(), seconds=0)
        )
        await asyncio.sleep(0.3)
        supervisor.request_stop()  # what the SIGINT handler calls
        await asyncio.wait_for(timeline, timeout=2)
        assert self.stop_requests == 1  # a second one would cancel in-flight batches


# --- the example handler, with events as Lambda delivers them --------------------------------


def order_image(order_id: str, status: str, amount: str = "61.40") -> dict[str, Any]:
    """An Orders item in DynamoDB JSON, as it appears in NewImage / OldImage."""
    return {
        "order_id": {"S": order_id},
        "customer": {"S": "grace"},
        "status": {"S": status},
        "amount": {"N": amount},
        "items": {
            "L": [
                {"M": {"sku": {"S": "KB-101"}, "qty": {"N": "1"}, "price": {"N": "49.00"}}},
                {"M": {"sku": {"S": "CB-440"}, "qty": {"N": "1"}, "price": {"N": "12.40"}}},
            ]
        },
        "created_at": {"S": "2026-01-01T12:00:00.000+00:00"},
        "updated_at": {"S": "2026-01-01T12:00:00.000+00:00"},
        "gift": {"BOOL": False},
        "note": {"NULL": True},
    }


def record(
    event_name: str,
    order_id: str,
    *,
    new: dict[str, Any] | None = None,
    old: dict[str, Any] | None = None,
) -> dict[str, Any]:
    dynamodb: dict[str, Any] = {
        "ApproximateCreationDateTime": 1767268800,
        "Keys": {"order_id": {"S": order_id}},
        "SequenceNumber": "1100000000017454423009",
        "SizeBytes": 120,
        "StreamViewType": "NEW_AND_OLD_IMAGES",
    }
    if new is not None:
        dynamodb["NewImage"] = new
    if old is not None:
        dynamodb["OldImage"] = old
    return {
        "eventID": "c4ca4238a0b923820dcc509a6f75849b",
        "eventName": event_name,
        "eventVersion": "1.1",
        "eventSource": "aws:dynamodb",
        "awsRegion": "us-east-1",
        "dynamodb": dynamodb,
        "eventSourceARN": "arn:aws:dynamodb:us-east-1:123456789012:table/Orders/stream/x",
    }


@pytest.fixture
def view(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "view.db"
    monkeypatch.setenv(orders_view.DB_PATH_ENV, str(path))
    return path


def state(view: Path) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    orders = query(view, "SELECT order_id, customer, status, amount, item_count FROM orders")
    counts = query(view, "SELECT status, orders FROM order_status_counts WHERE orders > 0")
    return sorted(orders), sorted(counts)


class TestOrdersView:
    """The example handler keeps the view right for INSERT, MODIFY, REMOVE and redelivery."""

    def test_insert(self, view: Path) -> None:
        orders_view.handler(
            {"Records": [record("INSERT", "o1", new=order_image("o1", "PENDING"))]}, None
        )
        assert state(view) == ([("o1", "grace", "PENDING", "61.40", 2)], [("PENDING", 1)])

    def test_modify_moves_the_count(self, view: Path) -> None:
        pending, paid = order_image("o1", "PENDING"), order_image("o1", "PAID")
        orders_view.handler({"Records": [record("INSERT", "o1", new=pending)]}, None)
        orders_view.handler({"Records": [record("MODIFY", "o1", new=paid, old=pending)]}, None)
        assert state(view) == ([("o1", "grace", "PAID", "61.40", 2)], [("PAID", 1)])

    def test_remove(self, view: Path) -> None:
        pending = order_image("o1", "PENDING")
        orders_view.handler(
            {
                "Records": [
                    record("INSERT", "o1", new=pending),
                    record("INSERT", "o2", new=order_image("o2", "PENDING", "9.99")),
                    record("REMOVE", "o1", old=pending),
                ]
            },
            None,
        )
        assert state(view) == ([("o2", "grace", "PENDING", "9.99", 2)], [("PENDING", 1)])

    def test_redelivered_batch_changes_nothing(self, view: Path) -> None:
        pending, paid = order_image("o1", "PENDING"), order_image("o1", "PAID")
        batch = {
            "Records": [
                record("INSERT", "o1", new=pending),
                record("MODIFY", "o1", new=paid, old=pending),
                record("INSERT", "o2", new=order_image("o2", "PENDING")),
                record("REMOVE", "o2", old=order_image("o2", "PENDING")),
                record("INSERT", "o3", new=order_image("o3", "PENDING")),
            ]
        }
        orders_view.handler(batch, None)
        once = state(view)
        orders_view.handler(batch, None)
        orders_view.handler({"Records": batch["Records"][2:]}, None)  # a retried tail
        assert state(view) == once
        assert once[1] == [("PAID", 1), ("PENDING", 1)]

    def test_a_failing_batch_leaves_no_trace(self, view: Path) -> None:
        keys_only = record("INSERT", "o2")  # no NewImage: a KEYS_ONLY stream
        batch = {"Records": [record("INSERT", "o1", new=order_image("o1", "PENDING")), keys_only]}
        with pytest.raises(ValueError, match="NEW_IMAGE"):
            orders_view.handler(batch, None)
        assert state(view) == ([], [])


class TestExampleConfig:
    """examples/shardwise.yaml is valid and its handler imports."""

    def test_loads_and_imports(self, isolated_process_state: None) -> None:
        settings = load_config(REPO / "examples" / "shardwise.yaml", env={})
        [processor] = settings.processors
        assert processor.source.dynamodb is not None
        assert processor.source.dynamodb.table == "Orders"
        assert processor.handler == "orders_view.handler"  # Lambda's notation, unchanged
        paths = search_paths(settings.config_dir)
        assert import_handler(processor.handler, paths) is orders_view.handler


class TestShippedHandler:
    """The demo's handler is in the package, so the demo needs no source checkout."""

    def test_the_demo_imports_it_from_the_package(self, tmp_path: Path) -> None:
        [processor] = demo.demo_settings("http://127.0.0.1:9", tmp_path).processors
        assert processor.handler == "shardwise.examples.orders_view.handler"
        assert import_handler(processor.handler) is orders_view.handler
        package = Path(demo.__file__).parents[1]  # shardwise/, which holds demo/ and examples/
        assert Path(orders_view.__file__).is_relative_to(package)

    def test_examples_dir_names_the_same_handler(self) -> None:
        """examples/orders_view.py is the readable place, not a second copy."""
        from examples import orders_view as readable

        assert readable.handler is orders_view.handler
        assert readable.DB_PATH_ENV == orders_view.DB_PATH_ENV


# --- the real command ---------------------------------------------------------------------


@contextmanager
def demo_process(*args: str) -> Iterator[subprocess.Popen[str]]:
    """``python -m shardwise demo`` from the repository root, with no AWS credentials set."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["PYTHONUNBUFFERED"] = "1"
    with command_running(
        [sys.executable, "-m", "shardwise", "demo", *args], cwd=REPO, env=env
    ) as process:
        yield process


class TestDemoCommand:
    """`shardwise demo` as a user runs it: progress lines, a clean stop, a summary."""

    def test_runs_for_seconds(self, tmp_path: Path) -> None:
        with demo_process("--seconds", "5", "--workdir", str(tmp_path)) as process:
            out, err = process.communicate(timeout=60)
        assert process.returncode == 0, err
        assert len(PROGRESS_LINE.findall(out)) >= 3
        assert "shardwise demo: stopped after" in out
        assert re.search(r"view\s+\d+ orders \(", out)
        assert "Traceback" not in err
        assert "HTTP/1.1" not in err  # moto's request log stays quiet

    def test_sigint_drains_and_summarizes(self, tmp_path: Path) -> None:
        with demo_process("--workdir", str(tmp_path)) as process:
            assert process.stdout is not None
            seen: list[str] = []
            while not PROGRESS_LINE.search(line := process.stdout.readline()):
                assert line, f"exited before any progress: {''.join(seen)}"
                seen.append(line)
            process.send_signal(signal.SIGINT)
            started = time.monotonic()
            out, err = process.communicate(timeout=demo.DRAIN_S + 10)
            drained_s = time.monotonic() - started
        assert process.returncode == 0, err
        assert drained_s < demo.DRAIN_S
        assert "shardwise demo: stopped after" in out
        assert re.search(r"written\s+\d+ item writes", out)
        assert "Traceback" not in err
