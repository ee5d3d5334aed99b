"""InvokeUrlProcessor against a stand-in for AWS's Runtime Interface Emulator.

The real emulator (aws-lambda-runtime-interface-emulator, a Go binary shipped inside Lambda
base images) is not installable on this machine, so an aiohttp server in this module gives
the answers its ``cmd/aws-lambda-rie/handlers.go`` gives: ``200`` with the function's result;
``200`` with the runtime's error document as the body and no ``X-Amz-Function-Error``
header for a function error; ``200`` with ``Task timed out after N.00 seconds`` for a
timeout; ``502`` with the error body when init failed; ``500``/``504`` with no body for its
own failures.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from shardwise.errors import FunctionError, HandlerError, HandlerTimeoutError
from shardwise.records import Batch, ShardId
from shardwise.runtimes.invoke_url import InvokeUrlProcessor

PATH = "/2015-03-31/functions/function/invocations"
ARN = "arn:aws:lambda:us-east-1:012345678912:function:orders"
STREAM_ARN = "arn:aws:dynamodb:eu-west-1:111122223333:table/T/stream/2026-01-01T00:00:00.000"

PYTHON_ERROR = {
    "errorMessage": "poison record poison-1",
    "errorType": "RuntimeError",
    "requestId": "0b1c7a52-8fa7-4c2f-9a70-5d0e3cbb04c2",
    "stackTrace": ['  File "/var/task/app.py", line 53, in handler\n    raise RuntimeError\n'],
}
NODE_ERROR = {
    "errorType": "Error",
    "errorMessage": "poison record poison-1",
    "trace": ["Error: poison record poison-1", "    at exports.handler (/var/task/index.js:4:9)"],
}
INIT_ERROR = {
    "errorType": "Runtime.ImportModuleError",
    "errorMessage": "Unable to import module 'app': No module named 'app'",
}


# The emulator's answers (handlers.go), by name.
ANSWERS: dict[str, tuple[int, bytes]] = {
    "result": (200, b'{"batchItemFailures": []}'),
    # A function error: the runtime's /error body, status 200, no X-Amz-Function-Error.
    "python-error": (200, json.dumps(PYTHON_ERROR).encode()),
    "node-error": (200, json.dumps(NODE_ERROR).encode()),
    # rapidcore.ErrInvokeTimeout: fmt.Sprintf("Task timed out after %d.00 seconds", timeout)
    "timeout": (200, b"Task timed out after 3.00 seconds"),
    # rapidcore.ErrInitDoneFailed: 502 with the init error
    "init-error": (502, json.dumps(INIT_ERROR).encode()),
    # ErrInternalServerError, ErrInvokeReservationDone, ErrAlreadyReserved: no body
    "internal": (500, b""),
    "reservation": (504, b""),
    "busy": (400, b""),
}


class Emulator:
    """Answers as the emulator does; what it answers is chosen by the event's ``answer``."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, str, bytes]] = []
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post(PATH, self.invoke)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        assert site._server is not None
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        self.url = f"http://127.0.0.1:{port}{PATH}"

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def invoke(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.requests.append(
            (request.method, request.path, request.headers.get("Content-Type", ""), body)
        )
        event = json.loads(body)
        answer = event.get("answer", "result")
        if answer == "hang":
            await asyncio.sleep(30)
        if answer == "raw":
            return web.Response(body=event["body"].encode(), headers=event.get("headers"))
        status, text = ANSWERS[answer]
        return web.Response(status=status, body=text)


@pytest.fixture
async def emulator() -> AsyncIterator[Emulator]:
    server = Emulator()
    await server.start()
    yield server
    await server.close()


@pytest.fixture
async def processor(emulator: Emulator) -> AsyncIterator[InvokeUrlProcessor]:
    processor = InvokeUrlProcessor("orders", emulator.url, function_arn=ARN, timeout_s=5)
    await processor.start()
    yield processor
    await processor.stop()


async def call(processor: InvokeUrlProcessor, answer: str, **event: Any) -> Any:
    return await processor.invoke_event({"answer": answer, **event}, "shard-1")


class TestResults:
    """200 with the function's result is the result."""

    async def test_result(self, processor: InvokeUrlProcessor, emulator: Emulator) -> None:
        assert await call(processor, "result") == {"batchItemFailures": []}

    async def test_the_event_is_posted_as_compact_json(
        self, processor: InvokeUrlProcessor, emulator: Emulator
    ) -> None:
        records = [{"eventID": "1", "dynamodb": {"Keys": {"pk": {"S": "caf\u00e9"}}}}]
        batch = Batch(STREAM_ARN, ShardId("shardId-1"), records)
        await processor.invoke(batch)
        ((method, path, content_type, body),) = emulator.requests
        assert (method, path, content_type) == ("POST", PATH, "application/json")
        assert json.loads(body) == {"Records": records}
        assert (
            body
            == json.dumps({"Records": records}, separators=(",", ":"), ensure_ascii=False).encode()
        )

    @pytest.mark.parametrize(
        ("body", "value"),
        [
            ("", None),
            ("null", None),
            ('"Successfully processed 2 records."', "Successfully processed 2 records."),
            ("not json at all", "not json at all"),
            # An error-like object with more keys is a result, not an error document.
            (
                '{"errorType": "X", "errorMessage": "m", "batchItemFailures": []}',
                {"errorType": "X", "errorMessage": "m", "batchItemFailures": []},
            ),
            # Only the emulator's exact timeout sentence is a timeout.
            (
                "Task timed out after 3.00 seconds, says the function",
                "Task timed out after 3.00 seconds, says the function",
            ),
        ],
    )
    async def test_result_shapes(
        self, processor: InvokeUrlProcessor, body: str, value: Any
    ) -> None:
        assert await call(processor, "raw", body=body) == value


class TestFunctionErrors:
    """The emulator's error document (200, no header) is a FunctionError."""

    async def test_python_error_document(self, processor: InvokeUrlProcessor) -> None:
        with pytest.raises(FunctionError) as caught:
            await call(processor, "python-error")
        assert caught.value.error_type == "RuntimeError"
        assert caught.value.error_message == "poison record poison-1"
        assert caught.value.stack_trace == tuple(PYTHON_ERROR["stackTrace"])

    async def test_node_error_document(self, processor: InvokeUrlProcessor) -> None:
        with pytest.raises(FunctionError) as caught:
            await call(processor, "node-error")
        assert caught.value.error_type == "Error"
        assert caught.value.stack_trace == tuple(NODE_ERROR["trace"])

    async def test_function_error_header(self, processor: InvokeUrlProcessor) -> None:
        """Lambda's own X-Amz-Function-Error header, from servers that send it."""
        with pytest.raises(FunctionError) as caught:
            await call(
                processor,
                "raw",
                body='{"errorMessage": "boom"}',
                headers={"X-Amz-Function-Error": "Unhandled"},
            )
        assert (caught.value.error_type, caught.value.error_message) == ("Unhandled", "boom")

    async def test_function_error_header_with_a_text_body(
        self, processor: InvokeUrlProcessor
    ) -> None:
        with pytest.raises(FunctionError) as caught:
            await call(
                processor,
                "raw",
                body="out of memory",
                headers={"X-Amz-Function-Error": "Unhandled"},
            )
        assert (caught.value.error_type, caught.value.error_message) == (
            "Unhandled",
            "out of memory",
        )

    async def test_function_error_header_in_lower_case(self, processor: InvokeUrlProcessor) -> None:
        """Header names are case-insensitive (a proxy in front may lower-case them)."""
        with pytest.raises(FunctionError) as caught:
            await call(
                processor,
                "raw",
                body='{"errorMessage": "boom"}',
                headers={"x-amz-function-error": "Unhandled"},
            )
        assert caught.value.error_type == "Unhandled"


class TestFailures:
    """Timeouts, init failures, other statuses and network errors."""

    async def test_function_timeout(self, processor: InvokeUrlProcessor) -> None:
        with pytest.raises(HandlerTimeoutError, match=r"Task timed out after 3\.00 seconds"):
            await call(processor, "timeout")

    async def test_init_failure(self, processor: InvokeUrlProcessor) -> None:
        with pytest.raises(FunctionError) as caught:
            await call(processor, "init-error")
        assert caught.value.error_type == "Runtime.ImportModuleError"
        assert "Unable to import module 'app'" in caught.value.error_message

    async def test_502_without_an_error_document(
        self, processor: InvokeUrlProcessor, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setitem(ANSWERS, "bare-502", (502, b"runtime exited"))
        with pytest.raises(FunctionError) as caught:
            await call(processor, "bare-502")
        assert caught.value.error_type == "Runtime.Unavailable"
        message = caught.value.error_message
        assert "502" in message and "runtime exited" in message

    @pytest.mark.parametrize(
        ("answer", "status"), [("internal", 500), ("reservation", 504), ("busy", 400)]
    )
    async def test_other_statuses(
        self, processor: InvokeUrlProcessor, answer: str, status: int
    ) -> None:
        with pytest.raises(HandlerError, match=f"answered HTTP {status}") as caught:
            await call(processor, answer)
        assert not isinstance(caught.value, FunctionError | HandlerTimeoutError)

    async def test_connection_refused(self) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        url = f"http://127.0.0.1:{port}{PATH}"
        processor = InvokeUrlProcessor("orders", url, function_arn=ARN, timeout_s=5)
        await processor.start()
        try:
            with pytest.raises(HandlerError, match="cannot invoke") as caught:
                await call(processor, "result")
            assert not isinstance(caught.value, HandlerTimeoutError)
        finally:
            await processor.stop()

    async def test_no_answer_within_the_timeout(self, emulator: Emulator) -> None:
        processor = InvokeUrlProcessor("orders", emulator.url, function_arn=ARN, timeout_s=0.3)
        await processor.start()
        try:
            with pytest.raises(HandlerTimeoutError, match=r"did not answer within 0\.3 s"):
                await call(processor, "hang")
            # The processor still works after giving up on one request.
            assert await call(processor, "result") == {"batchItemFailures": []}
        finally:
            await processor.stop()

    async def test_not_started_or_stopped(self, emulator: Emulator) -> None:
        processor = InvokeUrlProcessor("orders", emulator.url, function_arn=ARN, timeout_s=5)
        with pytest.raises(HandlerError, match="not started"):
            await call(processor, "result")
        await processor.start()
        await processor.stop()
        with pytest.raises(HandlerError, match="not started"):
            await call(processor, "result")
        assert emulator.requests == []
