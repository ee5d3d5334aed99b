"""The Runtime API a runtime process talks to: Lambda's paths, headers and status codes.

Every test speaks HTTP to a real ``RuntimeApi`` with aiohttp's client, as a runtime does.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shardwise.errors import FunctionError
from shardwise.runtimes.api import MAX_RESPONSE_BYTES, PREFIX, Invocation, RuntimeApi

ARN = "arn:aws:lambda:eu-west-1:111122223333:function:orders"
TRACE_ID = re.compile(r"^Root=1-[0-9a-f]{8}-[0-9a-f]{24};Parent=[0-9a-f]{16};Sampled=0$")


@dataclass
class Answer:
    status: int
    body: bytes
    headers: dict[str, str]

    def json(self) -> Any:
        return json.loads(self.body)


class Runtime:
    """The runtime's side of the protocol, over HTTP."""

    def __init__(self, session: aiohttp.ClientSession, api: RuntimeApi) -> None:
        self.session = session
        self.base = f"http://{api.address}{PREFIX}/runtime"

    async def _send(self, method: str, path: str, **kwargs: Any) -> Answer:
        async with self.session.request(method, self.base + path, **kwargs) as response:
            return Answer(response.status, await response.read(), dict(response.headers))

    async def next(self) -> Answer:
        return await self._send("GET", "/invocation/next")

    async def respond(self, request_id: str, body: Any = b"{}") -> Answer:
        return await self._send("POST", f"/invocation/{request_id}/response", data=body)

    async def error(
        self, request_id: str, body: Any = b"", headers: dict[str, str] | None = None
    ) -> Answer:
        return await self._send(
            "POST", f"/invocation/{request_id}/error", data=body, headers=headers
        )

    async def init_error(self, body: Any = b"", headers: dict[str, str] | None = None) -> Answer:
        return await self._send("POST", "/init/error", data=body, headers=headers)


def invocation(payload: bytes = b'{"Records": []}', timeout_s: float = 30.0) -> Invocation:
    return Invocation(
        payload=payload, deadline_ms=int((time.time() + timeout_s) * 1000), function_arn=ARN
    )


@pytest.fixture
async def api() -> AsyncIterator[RuntimeApi]:
    server = RuntimeApi(max_response_bytes=1024)
    await server.start()
    yield server
    await server.close()


@pytest.fixture
async def runtime(api: RuntimeApi) -> AsyncIterator[Runtime]:
    async with aiohttp.ClientSession() as session:
        yield Runtime(session, api)


async def fetched(api: RuntimeApi, runtime: Runtime, payload: bytes = b"{}") -> Invocation:
    """Offer an invocation and GET /next it, as the runtime does."""
    inv = invocation(payload)
    api.offer(inv)
    answer = await runtime.next()
    assert answer.status == 200
    assert answer.headers["Lambda-Runtime-Aws-Request-Id"] == inv.request_id
    return inv


class TestNext:
    """GET /next long-polls and hands the event over with Lambda's headers."""

    async def test_long_poll_blocks_until_an_invocation_is_offered(
        self, api: RuntimeApi, runtime: Runtime
    ) -> None:
        waiting = asyncio.create_task(runtime.next())
        # The first GET /next ends the init phase.
        await asyncio.wait_for(api.initialised.wait(), 5)
        await asyncio.sleep(0.2)
        assert not waiting.done()
        inv = invocation(b'{"Records": [{"eventID": "1"}]}')
        api.offer(inv)
        answer = await asyncio.wait_for(waiting, 5)
        assert answer.status == 200
        assert answer.body == b'{"Records": [{"eventID": "1"}]}'
        assert answer.headers["Content-Type"].startswith("application/json")

    async def test_headers(self, api: RuntimeApi, runtime: Runtime) -> None:
        inv = invocation(timeout_s=30)
        api.offer(inv)
        answer = await runtime.next()
        headers = answer.headers
        assert headers["Lambda-Runtime-Aws-Request-Id"] == inv.request_id
        uuid.UUID(inv.request_id)
        deadline = headers["Lambda-Runtime-Deadline-Ms"]
        assert deadline.isdigit()  # integer epoch milliseconds
        now_ms = time.time() * 1000
        assert now_ms + 25_000 < int(deadline) <= now_ms + 30_000
        assert headers["Lambda-Runtime-Invoked-Function-Arn"] == ARN
        assert TRACE_ID.match(headers["Lambda-Runtime-Trace-Id"])
        assert "Lambda-Runtime-Client-Context" not in headers
        assert "Lambda-Runtime-Cognito-Identity" not in headers

    async def test_client_context_and_cognito_identity_when_set(
        self, api: RuntimeApi, runtime: Runtime
    ) -> None:
        inv = invocation()
        inv.client_context = '{"custom": {"a": "b"}}'
        inv.cognito_identity = '{"cognitoIdentityId": "id", "cognitoIdentityPoolId": "pool"}'
        api.offer(inv)
        headers = (await runtime.next()).headers
        assert headers["Lambda-Runtime-Client-Context"] == inv.client_context
        assert headers["Lambda-Runtime-Cognito-Identity"] == inv.cognito_identity

    async def test_every_invocation_has_its_own_request_and_trace_id(
        self, api: RuntimeApi, runtime: Runtime
    ) -> None:
        first = await fetched(api, runtime)
        assert (await runtime.respond(first.request_id)).status == 202
        second = await fetched(api, runtime)
        assert first.request_id != second.request_id
        assert first.trace_id != second.trace_id

    async def test_next_while_an_invocation_is_unanswered_is_refused(
        self, api: RuntimeApi, runtime: Runtime
    ) -> None:
        inv = await fetched(api, runtime)
        answer = await runtime.next()
        assert answer.status == 403
        assert answer.json()["errorType"] == "InvalidStateTransition"
        # The invocation is still the runtime's to answer.
        assert (await runtime.respond(inv.request_id, b'"ok"')).status == 202
        assert await inv.outcome == b'"ok"'

    async def test_a_runtime_that_gave_up_a_long_poll_still_gets_the_next_event(
        self, api: RuntimeApi, runtime: Runtime
    ) -> None:
        """A client timeout on GET /next, then a new GET /next: the event goes to the live one."""
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=0.2)) as impatient:
            with pytest.raises(TimeoutError):
                await Runtime(impatient, api).next()
        await asyncio.sleep(0.1)
        waiting = asyncio.create_task(runtime.next())
        await asyncio.sleep(0.1)
        inv = invocation()
        api.offer(inv)
        answer = await asyncio.wait_for(waiting, 5)
        assert answer.status == 200
        assert answer.headers["Lambda-Runtime-Aws-Request-Id"] == inv.request_id


class TestResponse:
    """POST /response: 202 once, 403 for an answered or abandoned id, 400 for an unknown one."""

    async def test_response_resolves_the_invocation(
        self, api: RuntimeApi, runtime: Runtime
    ) -> None:
        inv = await fetched(api, runtime)
        answer = await runtime.respond(inv.request_id, b'{"batchItemFailures": []}')
        assert answer.status == 202
        assert await inv.outcome == b'{"batchItemFailures": []}'
        assert not api.busy

    async def test_empty_response_is_an_empty_result(
        self, api: RuntimeApi, runtime: Runtime
    ) -> None:
        inv = await fetched(api, runtime)
        assert (await runtime.respond(inv.request_id, b"")).status == 202
        assert await inv.outcome == b""

    async def test_second_answer_is_refused_and_changes_nothing(
        self, api: RuntimeApi, runtime: Runtime
    ) -> None:
        inv = await fetched(api, runtime)
        assert (await runtime.respond(inv.request_id, b"1")).status == 202
        again = await runtime.respond(inv.request_id, b"2")
        assert again.status == 403
        assert again.json()["errorType"] == "InvalidStateTransition"
        error = await runtime.error(inv.request_id, b'{"errorType": "E", "errorMessage": "m"}')
        assert error.status == 403
        assert inv.outcome.result() == b"1"

    async def test_answer_after_abandon_is_refused(self, api: RuntimeApi, runtime: Runtime) -> None:
        inv = await fetched(api, runtime)
        timeout = FunctionError("Sandbox.Timedout", "timed out")
        api.abandon(inv, timeout)
        assert not api.busy
        late = await runtime.respond(inv.request_id, b"late")
        assert late.status == 403
        assert late.json()["errorType"] == "InvalidStateTransition"
        assert (await runtime.error(inv.request_id, b"{}")).status == 403
        assert inv.outcome.exception() is timeout
        # The environment goes on: the next invocation is handed out and answered.
        following = await fetched(api, runtime)
        assert (await runtime.respond(following.request_id, b"ok")).status == 202
        assert await following.outcome == b"ok"

    async def test_unknown_request_id(self, api: RuntimeApi, runtime: Runtime) -> None:
        inv = await fetched(api, runtime)
        for answer in (
            await runtime.respond(str(uuid.uuid4())),
            await runtime.error(str(uuid.uuid4()), b"{}"),
        ):
            assert answer.status == 400
            assert answer.json()["errorType"] == "InvalidRequestID"
        assert not inv.outcome.done()
        assert (await runtime.respond(inv.request_id, b"ok")).status == 202

    async def test_offered_but_not_fetched_id_is_unknown_to_the_runtime(
        self, api: RuntimeApi, runtime: Runtime
    ) -> None:
        inv = invocation()
        api.offer(inv)
        assert (await runtime.respond(inv.request_id)).status == 400
        assert not inv.outcome.done()

    async def test_abandon_while_the_response_body_is_arriving(
        self, api: RuntimeApi, runtime: Runtime
    ) -> None:
        """The owner gives up mid-upload: the late answer is refused, the outcome kept."""
        inv = await fetched(api, runtime)
        release = asyncio.Event()

        async def body() -> AsyncIterator[bytes]:
            yield b'{"part": '
            await release.wait()
            yield b"1}"

        posting = asyncio.create_task(runtime.respond(inv.request_id, body()))
        await asyncio.sleep(0.2)  # the server has the headers and the first chunk
        timeout = FunctionError("Sandbox.Timedout", "timed out")
        api.abandon(inv, timeout)
        release.set()
        answer = await asyncio.wait_for(posting, 5)
        assert answer.status == 403
        assert inv.outcome.exception() is timeout


class TestResponseSize:
    """Responses over the limit get 413 and fail the invocation with ResponseSizeTooLarge."""

    async def test_over_the_limit(self, api: RuntimeApi, runtime: Runtime) -> None:
        inv = await fetched(api, runtime)
        answer = await runtime.respond(inv.request_id, b"x" * 1025)
        assert answer.status == 413
        assert answer.json()["errorType"] == "RequestEntityTooLarge"
        error = inv.outcome.exception()
        assert isinstance(error, FunctionError)
        assert error.error_type == "Function.ResponseSizeTooLarge"
        assert "1024 bytes" in error.error_message
        # The invocation is over: a smaller retry of the answer is refused.
        assert (await runtime.respond(inv.request_id, b"x")).status == 403

    async def test_over_the_limit_without_content_length(
        self, api: RuntimeApi, runtime: Runtime
    ) -> None:
        """A chunked body (no Content-Length) is counted as it arrives."""
        inv = await fetched(api, runtime)

        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(4):
                yield b"y" * 300

        answer = await runtime.respond(inv.request_id, chunks())
        assert answer.status == 413
        error = inv.outcome.exception()
        assert isinstance(error, FunctionError)
        assert error.error_type == "Function.ResponseSizeTooLarge"

    async def test_exactly_the_limit_is_accepted(self, api: RuntimeApi, runtime: Runtime) -> None:
        inv = await fetched(api, runtime)
        assert (await runtime.respond(inv.request_id, b"z" * 1024)).status == 202
        assert len(await inv.outcome) == 1024

    async def test_lambda_limit(self) -> None:
        """The default limit is Lambda's: 6,291,556 bytes pass, one more byte does not."""
        server = RuntimeApi()
        await server.start()
        try:
            async with aiohttp.ClientSession() as session:
                runtime = Runtime(session, server)
                inv = await fetched(server, runtime)
                assert (
                    await runtime.respond(inv.request_id, io.BytesIO(b"a" * MAX_RESPONSE_BYTES))
                ).status == 202
                assert len(await inv.outcome) == MAX_RESPONSE_BYTES == 6_291_556
                inv = await fetched(server, runtime)
                over = await runtime.respond(
                    inv.request_id, io.BytesIO(b"a" * (MAX_RESPONSE_BYTES + 1))
                )
                assert over.status == 413
                error = inv.outcome.exception()
                assert isinstance(error, FunctionError)
                assert error.error_type == "Function.ResponseSizeTooLarge"
        finally:
            await server.close()


class TestError:
    """POST /error: the body's errorMessage/errorType/stack, the header type as a fallback."""

    async def _error(self, api: RuntimeApi, runtime: Runtime, **kwargs: Any) -> FunctionError:
        inv = await fetched(api, runtime)
        answer = await runtime.error(inv.request_id, **kwargs)
        assert answer.status == 202
        error = inv.outcome.exception()
        assert isinstance(error, FunctionError)
        return error

    async def test_python_ric_shape(self, api: RuntimeApi, runtime: Runtime) -> None:
        body = {
            "errorMessage": "poison record poison1",
            "errorType": "RuntimeError",
            "requestId": "",
            "stackTrace": ['  File "/var/task/app.py", line 53, in handler\n    raise X\n'],
        }
        error = await self._error(api, runtime, body=json.dumps(body))
        assert error.error_type == "RuntimeError"
        assert error.error_message == "poison record poison1"
        assert error.stack_trace == (
            '  File "/var/task/app.py", line 53, in handler\n    raise X\n',
        )

    async def test_node_ric_shape(self, api: RuntimeApi, runtime: Runtime) -> None:
        body = {
            "errorType": "Error",
            "errorMessage": "poison record poison1",
            "trace": ["Error: poison record poison1", "    at exports.handler (index.js:44:13)"],
        }
        error = await self._error(api, runtime, body=json.dumps(body))
        assert error.error_type == "Error"
        assert error.error_message == "poison record poison1"
        assert error.stack_trace == (
            "Error: poison record poison1",
            "    at exports.handler (index.js:44:13)",
        )

    async def test_body_type_wins_over_the_header(self, api: RuntimeApi, runtime: Runtime) -> None:
        error = await self._error(
            api,
            runtime,
            body=b'{"errorMessage": "bad", "errorType": "PoisonRecord"}',
            headers={"Lambda-Runtime-Function-Error-Type": "Unhandled"},
        )
        assert (error.error_type, error.error_message) == ("PoisonRecord", "bad")

    async def test_header_type_when_the_body_has_none(
        self, api: RuntimeApi, runtime: Runtime
    ) -> None:
        error = await self._error(
            api,
            runtime,
            body=b'{"errorMessage": "bad"}',
            headers={"Lambda-Runtime-Function-Error-Type": "Runtime.HandlerError"},
        )
        assert (error.error_type, error.error_message) == ("Runtime.HandlerError", "bad")

    async def test_header_only(self, api: RuntimeApi, runtime: Runtime) -> None:
        error = await self._error(
            api, runtime, headers={"Lambda-Runtime-Function-Error-Type": "Runtime.Crash"}
        )
        assert error.error_type == "Runtime.Crash"
        assert error.stack_trace == ()

    async def test_non_json_body_is_the_message(self, api: RuntimeApi, runtime: Runtime) -> None:
        error = await self._error(
            api,
            runtime,
            body=b"segfault in handler",
            headers={"Lambda-Runtime-Function-Error-Type": "Unhandled"},
        )
        assert (error.error_type, error.error_message) == ("Unhandled", "segfault in handler")

    async def test_nothing_at_all_is_unhandled(self, api: RuntimeApi, runtime: Runtime) -> None:
        error = await self._error(api, runtime)
        assert error.error_type == "Unhandled"

    async def test_json_without_error_fields_is_kept_as_the_message(
        self, api: RuntimeApi, runtime: Runtime
    ) -> None:
        error = await self._error(api, runtime, body=b'{"detail": "disk full"}')
        assert error.error_type == "Unhandled"
        assert "disk full" in error.error_message


class TestInitError:
    """POST /init/error: accepted during init only; the runtime may not ask for events after."""

    async def test_before_the_first_next(self, api: RuntimeApi, runtime: Runtime) -> None:
        answer = await runtime.init_error(
            b'{"errorMessage": "Unable to import module \'app\'", '
            b'"errorType": "Runtime.ImportModuleError", "stackTrace": []}',
            headers={"Lambda-Runtime-Function-Error-Type": "Runtime.ImportModuleError"},
        )
        assert answer.status == 202
        assert api.init_failed.is_set()
        assert api.init_error is not None
        assert api.init_error.error_type == "Runtime.ImportModuleError"
        assert api.init_error.error_message == "Unable to import module 'app'"
        # Initialisation is over (it failed): no events, no second init error.
        refused = await runtime.next()
        assert refused.status == 403
        assert refused.json()["errorType"] == "InvalidStateTransition"
        assert not api.initialised.is_set()
        assert (await runtime.init_error(b"{}")).status == 403

    async def test_after_the_first_next(self, api: RuntimeApi, runtime: Runtime) -> None:
        inv = await fetched(api, runtime)
        answer = await runtime.init_error(b'{"errorMessage": "late", "errorType": "X"}')
        assert answer.status == 403
        assert answer.json()["errorType"] == "InvalidStateTransition"
        assert api.init_error is None
        assert not inv.outcome.done()

    async def test_while_the_first_next_is_waiting(self, api: RuntimeApi, runtime: Runtime) -> None:
        waiting = asyncio.create_task(runtime.next())
        await asyncio.wait_for(api.initialised.wait(), 5)
        assert (await runtime.init_error(b"{}")).status == 403
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting


# -- property: no answer is taken twice, no offered invocation is lost -----------------------

# Which id an answer is sent for.
TARGETS = ("current", "stale", "unknown", "offered")
OPERATIONS = st.one_of(
    st.just(("offer",)),
    st.just(("next",)),
    st.tuples(st.sampled_from(["respond", "error", "oversize"]), st.sampled_from(TARGETS)),
    st.tuples(st.just("abandon"), st.sampled_from(["current", "offered", "stale"])),
)


class Model:
    """What the runtime and the owner have done, and what each request must get."""

    def __init__(self, api: RuntimeApi, runtime: Runtime) -> None:
        self.api = api
        self.runtime = runtime
        self.offered: Invocation | None = None  # offered, not yet fetched
        self.current: Invocation | None = None  # fetched, not yet answered
        self.polling: asyncio.Task[Answer] | None = None  # a GET /next under way
        self.finished: list[Invocation] = []
        self.everything: list[Invocation] = []
        # request id -> the outcome it must have: the body, or the exception (identity)
        self.expected: dict[str, bytes | BaseException] = {}
        self.accepted: dict[str, int] = {}

    async def settle(self) -> None:
        """Let a GET /next under way pick up what was offered."""
        if self.polling is None or self.offered is None:
            return
        answer = await asyncio.wait_for(self.polling, 5)
        self.polling = None
        assert answer.status == 200
        assert answer.headers["Lambda-Runtime-Aws-Request-Id"] == self.offered.request_id
        self.current, self.offered = self.offered, None

    def target(self, which: str) -> str | None:
        if which == "current":
            return self.current.request_id if self.current else None
        if which == "offered":
            return self.offered.request_id if self.offered else None
        if which == "stale":
            return self.finished[-1].request_id if self.finished else None
        return str(uuid.uuid4())

    async def offer(self) -> None:
        if self.api.busy:
            with pytest.raises(RuntimeError):
                self.api.offer(invocation())
            return
        inv = invocation()
        self.api.offer(inv)
        self.offered = inv
        self.everything.append(inv)
        await self.settle()

    async def next(self) -> None:
        if self.polling is not None:
            return  # one runtime, one long poll
        if self.current is not None:
            answer = await self.runtime.next()
            assert answer.status == 403
            return
        self.polling = asyncio.create_task(self.runtime.next())
        await asyncio.sleep(0.005)
        await self.settle()

    async def answer(self, kind: str, which: str) -> None:
        request_id = self.target(which)
        if request_id is None:
            return
        if kind == "respond":
            body = f'"{request_id}"'.encode()
            answer = await self.runtime.respond(request_id, body)
        elif kind == "oversize":
            answer = await self.runtime.respond(request_id, b"o" * 1025)
        else:
            body = json.dumps({"errorMessage": request_id, "errorType": "E"}).encode()
            answer = await self.runtime.error(request_id, body)
        assert answer.status != 500
        if which == "current":
            assert answer.status == (413 if kind == "oversize" else 202)
            assert self.current is not None
            self.accepted[request_id] = self.accepted.get(request_id, 0) + 1
            self.expected[request_id] = body if kind == "respond" else b"<error>"
            self.finished.append(self.current)
            self.current = None
        elif which == "stale":
            assert answer.status == 403
        else:  # an id the runtime never fetched
            assert answer.status == 400

    def abandon(self, which: str) -> None:
        inv = {"current": self.current, "offered": self.offered}.get(which)
        if which == "stale" and self.finished:
            inv = self.finished[-1]
            before = inv.outcome.exception() if inv.outcome.done() else None
            before_result = None if before else inv.outcome.result()
            self.api.abandon(inv, FunctionError("Late", "late"))
            # An invocation that has its outcome keeps it.
            if before is None:
                assert inv.outcome.result() == before_result
            else:
                assert inv.outcome.exception() is before
            return
        if inv is None:
            return
        error = FunctionError("Abandoned", inv.request_id)
        self.api.abandon(inv, error)
        self.expected[inv.request_id] = error
        self.finished.append(inv)
        if which == "current":
            self.current = None
        else:
            self.offered = None

    async def run(self, operation: tuple[str, ...]) -> None:
        match operation:
            case ("offer",):
                await self.offer()
            case ("next",):
                await self.next()
            case ("abandon", which):
                self.abandon(which)
            case (kind, which):
                await self.answer(kind, which)

    async def finish(self) -> None:
        """The runtime answers what it has in hand; nothing offered may be left without one."""
        if self.offered is not None and self.polling is None:
            await self.next()
        await self.settle()
        if self.current is not None:
            await self.answer("respond", "current")
        if self.polling is not None:
            self.polling.cancel()
            with pytest.raises(asyncio.CancelledError):
                await self.polling


def check_outcomes(model: Model) -> None:
    for inv in model.everything:
        assert inv.outcome.done(), f"invocation {inv.request_id} was lost"
        assert model.accepted.get(inv.request_id, 0) <= 1
        expected = model.expected[inv.request_id]
        if isinstance(expected, BaseException):
            assert inv.outcome.exception() is expected
        elif expected == b"<error>":
            assert isinstance(inv.outcome.exception(), FunctionError)
        else:
            assert inv.outcome.result() == expected


async def run_operations(operations: list[tuple[str, ...]]) -> None:
    server = RuntimeApi(max_response_bytes=1024)
    await server.start()
    try:
        async with aiohttp.ClientSession() as session:
            model = Model(server, Runtime(session, server))
            for operation in operations:
                await model.run(operation)
            await model.finish()
            check_outcomes(model)
    finally:
        await server.close()


@settings(max_examples=50, deadline=None)
@given(st.lists(OPERATIONS, max_size=25))
def test_every_invocation_gets_exactly_one_outcome(operations: list[tuple[str, ...]]) -> None:
    """Any interleaving of offers, polls, answers (right, stale, unknown ids) and abandons."""
    asyncio.run(run_operations(operations))
