"""The handler contract: Lambda's context, sync and async handlers, class processors."""

from __future__ import annotations

import asyncio
import importlib
import re
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from shardwise.errors import HandlerImportError, HandlerTimeoutError
from shardwise.processors import LambdaContext, build_processor, import_handler, split_handler
from shardwise.records import Batch, ShardId
from tests.e2e import write_module

ARN = "arn:aws:dynamodb:eu-west-1:111122223333:table/T/stream/2026-01-01T00:00:00.000"
BATCH = Batch(ARN, ShardId("shardId-1"), [{"dynamodb": {"SequenceNumber": "1"}}])


class TestContext:
    """The context carries Lambda's attributes."""

    async def test_attributes(self) -> None:
        seen: list[LambdaContext] = []

        def handler(event: dict[str, Any], context: LambdaContext) -> None:
            seen.append(context)

        processor = build_processor("orders", handler, stream_arn=ARN, timeout_s=30)
        await processor.invoke(BATCH)
        await processor.invoke(BATCH)
        await processor.stop()
        first, second = seen
        assert first.function_name == "orders"
        assert first.function_version == "$LATEST"
        assert first.invoked_function_arn == "arn:aws:lambda:eu-west-1:111122223333:function:orders"
        assert first.aws_request_id != second.aws_request_id
        assert 29_000 < first.get_remaining_time_in_millis() <= 30_000
        assert first.log_stream_name == "shardId-1"
        assert isinstance(first.memory_limit_in_mb, str)


class TestSyncAndAsync:
    """Sync handlers run in threads and never block the event loop; timeouts fail batches."""

    async def test_sync_handler_does_not_block_the_loop(self) -> None:
        def slow(event: dict[str, Any], context: LambdaContext) -> str:
            time.sleep(0.5)
            return "done"

        processor = build_processor("slow", slow, stream_arn=ARN, timeout_s=10)
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        task = asyncio.create_task(ticker())
        assert await processor.invoke(BATCH) == "done"
        task.cancel()
        await processor.stop()
        assert ticks > 20  # the loop kept running while the handler slept

    async def test_async_handler_timeout_is_cancelled(self) -> None:
        cancelled = asyncio.Event()

        async def hangs(event: dict[str, Any], context: LambdaContext) -> None:
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                cancelled.set()
                raise

        processor = build_processor("hangs", hangs, stream_arn=ARN, timeout_s=0.2)
        with pytest.raises(HandlerTimeoutError, match=r"within 0\.2 s"):
            await processor.invoke(BATCH)
        assert cancelled.is_set()

    async def test_sync_handler_timeout_is_abandoned(self) -> None:
        def sleeps(event: dict[str, Any], context: LambdaContext) -> None:
            time.sleep(0.6)

        processor = build_processor("sleeps", sleeps, stream_arn=ARN, timeout_s=0.1)
        started = time.monotonic()
        with pytest.raises(HandlerTimeoutError):
            await processor.invoke(BATCH)
        assert time.monotonic() - started < 0.5
        await processor.stop()


class TestClassProcessor:
    """setup / process / teardown, each sync or async."""

    async def test_lifecycle(self, tmp_path: Path) -> None:
        write_module(
            tmp_path,
            "lifecycle",
            """
            calls = []

            class View:
                async def setup(self):
                    calls.append("setup")
                def process(self, event, context):
                    calls.append(("process", len(event["Records"])))
                    return {"ok": True}
                def teardown(self):
                    calls.append("teardown")
            """,
        )
        cls = import_handler("lifecycle:View", [tmp_path])
        processor = build_processor("view", cls, stream_arn=ARN, timeout_s=5)
        await processor.start()
        assert await processor.invoke(BATCH) == {"ok": True}
        await processor.stop()
        module = import_handler("lifecycle:View", [tmp_path]).__module__
        assert sys.modules[module].calls == ["setup", ("process", 1), "teardown"]

    def test_class_without_process(self) -> None:
        class NoProcess:
            pass

        with pytest.raises(HandlerImportError, match="no process"):
            build_processor("x", NoProcess, stream_arn=ARN, timeout_s=5)


class TestImport:
    """module:callable references, dotted attributes and clear errors."""

    def test_dotted_attribute(self, tmp_path: Path) -> None:
        write_module(
            tmp_path, "nested_attr", "class Box:\n    @staticmethod\n    def run(e, c): return 1\n"
        )
        assert import_handler("nested_attr:Box.run", [tmp_path])({}, None) == 1

    @pytest.mark.parametrize("ref", ["no_dot_or_colon", ":handler", "module:", "module.", ".f"])
    def test_bad_reference(self, ref: str) -> None:
        message = "must be Lambda's 'file.function' (app.orders.handler) or 'module:attribute'"
        with pytest.raises(HandlerImportError, match=re.escape(f"handler {ref!r}: {message}")):
            import_handler(ref, [])


def nested_package(root: Path) -> str:
    """``<root>/<pkg>/orders/view.py`` with ``handler`` and class ``View``; returns ``pkg``."""
    package = f"app_{uuid.uuid4().hex[:8]}"
    leaf = root / package / "orders"
    leaf.mkdir(parents=True)
    (root / package / "__init__.py").touch()
    (leaf / "__init__.py").touch()
    (leaf / "view.py").write_text(
        "def handler(event, context):\n    return 'view'\n\n"
        "class View:\n    def process(self, event, context):\n        return 'class'\n"
    )
    importlib.invalidate_caches()
    return package


class TestLambdaNotation:
    """Lambda's Handler setting (file.function) moves unchanged; module:attribute still works."""

    def test_both_notations_name_the_same_function(self, tmp_path: Path) -> None:
        write_module(tmp_path, "lambda_function", "def lambda_handler(e, c): return 'ok'\n")
        lambda_style = import_handler("lambda_function.lambda_handler", [tmp_path])
        assert lambda_style is import_handler("lambda_function:lambda_handler", [tmp_path])
        assert lambda_style({}, None) == "ok"

    def test_nested_packages(self, tmp_path: Path) -> None:
        package = nested_package(tmp_path)
        dotted = import_handler(f"{package}.orders.view.handler", [tmp_path])
        assert dotted.__module__ == f"{package}.orders.view"
        assert dotted({}, None) == "view"
        # Lambda's runtime reads slashes in the file part as package separators.
        assert import_handler(f"{package}/orders/view.handler", [tmp_path]) is dotted
        assert import_handler(f"{package}.orders.view:handler", [tmp_path]) is dotted

    def test_the_last_dot_splits_module_and_function(self, tmp_path: Path) -> None:
        """As in Lambda: a class method needs module:attribute, the dot form finds no module."""
        package = nested_package(tmp_path)
        assert import_handler(f"{package}.orders.view:View", [tmp_path])().process({}, None)
        with pytest.raises(HandlerImportError, match=f"cannot import module '{package}"):
            import_handler(f"{package}.orders.view.View.process", [tmp_path])

    def test_missing_function(self, tmp_path: Path) -> None:
        package = nested_package(tmp_path)
        ref = f"{package}.orders.view.lambda_handler"
        expected = f"handler {ref!r}: module '{package}.orders.view' has no attribute "
        with pytest.raises(HandlerImportError, match=re.escape(expected + "'lambda_handler'")):
            import_handler(ref, [tmp_path])

    def test_missing_module(self, tmp_path: Path) -> None:
        with pytest.raises(HandlerImportError, match=r"cannot import module 'no_such_app\.orders'"):
            import_handler("no_such_app.orders.handler", [tmp_path])

    def test_a_file_name_is_not_a_handler(self) -> None:
        with pytest.raises(
            HandlerImportError, match=r"names a file, not a function: .*app\.orders\.handler"
        ):
            import_handler("app/orders.py", [])

    @pytest.mark.parametrize(
        ("ref", "parts"),
        [
            ("app.orders.handler", ("app.orders", "handler")),
            ("app/orders.handler", ("app.orders", "handler")),
            ("lambda_function.lambda_handler", ("lambda_function", "lambda_handler")),
            ("app.orders:handler", ("app.orders", "handler")),
            ("views:Orders.process", ("views", "Orders.process")),
        ],
    )
    def test_split(self, ref: str, parts: tuple[str, str]) -> None:
        assert split_handler(ref) == parts
