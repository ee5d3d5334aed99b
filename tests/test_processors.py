"""The handler contract: Lambda's context, sync and async handlers, class processors."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from shardwise.errors import HandlerImportError, HandlerTimeoutError
from shardwise.processors import LambdaContext, build_processor, import_handler
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

    @pytest.mark.parametrize("ref", ["no_colon", ":handler", "module:"])
    def test_bad_reference(self, ref: str) -> None:
        with pytest.raises(HandlerImportError, match="expected 'module:callable'"):
            import_handler(ref, [])
