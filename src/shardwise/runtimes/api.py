"""The Lambda Runtime API, served to one runtime process on a loopback port.

Lambda's runtime interface is a small HTTP protocol (prefix ``/2018-06-01``) that every
official runtime and Runtime Interface Client speaks:

* ``GET  /runtime/invocation/next`` - long poll for the next event. The body is the event;
  the headers carry the request id, the deadline (epoch milliseconds), the function ARN and
  the trace id (and the client context / Cognito identity when an invocation has them).
* ``POST /runtime/invocation/{id}/response`` - the function's result: ``202``; ``400`` for an
  id that was never handed out; ``403`` for one already answered; ``413`` for a result over
  6 MB (6,291,556 bytes; the invocation then fails with ``Function.ResponseSizeTooLarge``).
* ``POST /runtime/invocation/{id}/error`` - the function failed: ``errorMessage``,
  ``errorType`` and ``stackTrace`` in the body, the type also in the
  ``Lambda-Runtime-Function-Error-Type`` header. Same status codes.
* ``POST /runtime/init/error`` - initialisation failed (before the first ``next``); ``403``
  once initialisation is over.

One server serves one process: the execution environment runs one invocation at a time, so
the state is one offered invocation (``offer``) and one fetched but unanswered invocation.
Every offered invocation ends with exactly one outcome: the runtime's answer, or the failure
its owner sets when the process dies or times out (``abandon``); a late answer to an
abandoned id gets ``403``, never a second outcome.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Final

from aiohttp import web

from shardwise.errors import FunctionError

__all__ = [
    "MAX_RESPONSE_BYTES",
    "PREFIX",
    "Invocation",
    "RuntimeApi",
    "trace_id",
]

PREFIX: Final = "/2018-06-01"
# Lambda's limit on a synchronous invocation's response payload, "6 MB": 6,291,556 bytes
# exactly, the figure its ResponseSizeTooLarge message gives.
MAX_RESPONSE_BYTES: Final = 6_291_556
# Request ids remembered as answered, so that a second answer gets 403 rather than 400.
_ANSWERED_MEMORY: Final = 1024
_CHUNK: Final = 64 * 1024


def trace_id() -> str:
    """An X-Ray trace header like Lambda's: ``Root=1-<epoch hex>-<96 bits>;Parent=..;Sampled=0``."""
    root = f"1-{int(time.time()):08x}-{os.urandom(12).hex()}"
    return f"Root={root};Parent={os.urandom(8).hex()};Sampled=0"


@dataclass(eq=False)
class Invocation:
    """One event for the runtime, and the future its answer resolves.

    The future's result is the response body (bytes); a function error sets
    ``FunctionError``.
    """

    payload: bytes
    deadline_ms: int
    function_arn: str
    request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    trace_id: str = field(default_factory=trace_id)
    client_context: str | None = None
    cognito_identity: str | None = None
    outcome: asyncio.Future[bytes] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )

    def headers(self) -> dict[str, str]:
        headers = {
            "Lambda-Runtime-Aws-Request-Id": self.request_id,
            "Lambda-Runtime-Deadline-Ms": str(self.deadline_ms),
            "Lambda-Runtime-Invoked-Function-Arn": self.function_arn,
            "Lambda-Runtime-Trace-Id": self.trace_id,
        }
        if self.client_context is not None:
            headers["Lambda-Runtime-Client-Context"] = self.client_context
        if self.cognito_identity is not None:
            headers["Lambda-Runtime-Cognito-Identity"] = self.cognito_identity
        return headers


def _error(status: int, error_type: str, message: str) -> web.Response:
    body = json.dumps({"errorMessage": message, "errorType": error_type})
    return web.Response(status=status, text=body, content_type="application/json")


_ACCEPTED: Final = json.dumps({"status": "OK"})


def function_error(body: bytes, header_type: str | None) -> FunctionError:
    """The ``FunctionError`` an ``/error`` (or ``/init/error``) body describes.

    The body is Lambda's ``{"errorMessage", "errorType", "stackTrace"}`` when the runtime
    follows the documentation; anything else is kept as the message. The body's
    ``errorType`` wins over the ``Lambda-Runtime-Function-Error-Type`` header, which the RICs
    leave out and custom runtimes often set to a bare category (``Unhandled``).
    """
    parsed: Any = None
    try:
        parsed = json.loads(body) if body else None
    except ValueError:
        parsed = None
    if isinstance(parsed, dict):
        message = parsed.get("errorMessage")
        body_type = parsed.get("errorType")
        # Python's RIC sends stackTrace; Node.js' RIC sends trace.
        trace = parsed.get("stackTrace", parsed.get("trace"))
        stack = tuple(str(line) for line in trace) if isinstance(trace, list) else ()
        # The body's type is the function's own (ValueError); the header is often only a
        # category ("Unhandled"), so it is the fallback.
        error_type = (
            body_type if isinstance(body_type, str) and body_type else None
        ) or header_type
        return FunctionError(
            error_type or "Unhandled",
            message if isinstance(message, str) else json.dumps(parsed)[:4096],
            stack,
        )
    text = body.decode("utf-8", "replace")[:4096]
    return FunctionError(header_type or "Unhandled", text)


class RuntimeApi:
    """The Runtime API of one execution environment (see the module docstring)."""

    def __init__(self, *, host: str = "127.0.0.1", max_response_bytes: int = MAX_RESPONSE_BYTES):
        self._host = host
        self._max_response_bytes = max_response_bytes
        self._offered: Invocation | None = None
        self._current: Invocation | None = None
        self._answered: OrderedDict[str, None] = OrderedDict()
        self._wakeup = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.port = 0
        # Set by the first GET /next: the runtime has finished initialising.
        self.initialised = asyncio.Event()
        # Set by POST /init/error, with the error it reported.
        self.init_failed = asyncio.Event()
        self.init_error: FunctionError | None = None

    @property
    def address(self) -> str:
        """``host:port``, the value of ``AWS_LAMBDA_RUNTIME_API``."""
        return f"{self._host}:{self.port}"

    async def start(self) -> None:
        # The body limit is enforced by the handlers (413), not by aiohttp's 1 MB default.
        app = web.Application(client_max_size=self._max_response_bytes * 2)
        app.router.add_get(f"{PREFIX}/runtime/invocation/next", self._next)
        app.router.add_post(f"{PREFIX}/runtime/invocation/{{request_id}}/response", self._response)
        app.router.add_post(f"{PREFIX}/runtime/invocation/{{request_id}}/error", self._error)
        app.router.add_post(f"{PREFIX}/runtime/init/error", self._init_error)
        # handler_cancellation: a GET /next whose client went away stops waiting, so the
        # next event goes to the runtime's new long poll rather than to a closed connection.
        runner = web.AppRunner(
            app,
            access_log=None,
            handle_signals=False,
            shutdown_timeout=0.1,
            handler_cancellation=True,
        )
        await runner.setup()
        site = web.TCPSite(runner, self._host, 0)
        await site.start()
        self._runner = runner
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]

    async def close(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    # -- the owner's side ------------------------------------------------------------------

    def offer(self, invocation: Invocation) -> None:
        """Make ``invocation`` the answer to the runtime's (next) ``GET /next``."""
        if self._offered is not None or self._current is not None:
            raise RuntimeError("the runtime already has an invocation in hand")
        self._offered = invocation
        self._wakeup.set()

    def abandon(self, invocation: Invocation, error: BaseException) -> None:
        """End ``invocation`` with ``error`` (timeout, process exit); later answers get 403."""
        if self._offered is invocation:
            self._offered = None
        if self._current is invocation:
            self._current = None
        self._remember(invocation.request_id)
        if not invocation.outcome.done():
            invocation.outcome.set_exception(error)

    @property
    def busy(self) -> bool:
        return self._offered is not None or self._current is not None

    # -- the runtime's side ----------------------------------------------------------------

    async def _next(self, request: web.Request) -> web.Response:
        if self.init_error is not None:
            return _error(403, "InvalidStateTransition", "initialisation failed; exit")
        if self._current is not None:
            return _error(
                403,
                "InvalidStateTransition",
                f"invocation {self._current.request_id} has not been answered",
            )
        self.initialised.set()
        while self._offered is None:
            self._wakeup.clear()
            await self._wakeup.wait()
        invocation, self._offered = self._offered, None
        self._current = invocation
        return web.Response(
            body=invocation.payload, headers=invocation.headers(), content_type="application/json"
        )

    def _claim(self, request_id: str) -> Invocation | web.Response:
        current = self._current
        if current is not None and current.request_id == request_id:
            self._current = None
            self._remember(request_id)
            return current
        if request_id in self._answered:
            return _error(
                403, "InvalidStateTransition", f"invocation {request_id} was already answered"
            )
        return _error(400, "InvalidRequestID", f"invalid request id {request_id!r}")

    async def _response(self, request: web.Request) -> web.Response:
        # The body first, then the claim: an invocation abandoned while its answer was
        # arriving gets 403 (never a second outcome), and one whose upload broke off is
        # still unanswered.
        body = await self._read_limited(request)
        claimed = self._claim(request.match_info["request_id"])
        if isinstance(claimed, web.Response):
            return claimed
        if body is None:
            limit = self._max_response_bytes
            claimed.outcome.set_exception(
                FunctionError(
                    "Function.ResponseSizeTooLarge",
                    f"Response payload size exceeded maximum allowed payload size ({limit} bytes).",
                )
            )
            return _error(
                413,
                "RequestEntityTooLarge",
                f"Exceeded maximum allowed payload size ({limit} bytes).",
            )
        claimed.outcome.set_result(body)
        return web.Response(status=202, text=_ACCEPTED, content_type="application/json")

    async def _error(self, request: web.Request) -> web.Response:
        body = await self._read_limited(request) or b""
        claimed = self._claim(request.match_info["request_id"])
        if isinstance(claimed, web.Response):
            return claimed
        header_type = request.headers.get("Lambda-Runtime-Function-Error-Type")
        claimed.outcome.set_exception(function_error(body, header_type))
        return web.Response(status=202, text=_ACCEPTED, content_type="application/json")

    async def _init_error(self, request: web.Request) -> web.Response:
        if self.initialised.is_set() or self.init_error is not None:
            return _error(403, "InvalidStateTransition", "initialisation is already over")
        body = await self._read_limited(request) or b""
        header_type = request.headers.get("Lambda-Runtime-Function-Error-Type")
        self.init_error = function_error(body, header_type)
        self.init_failed.set()
        return web.Response(status=202, text=_ACCEPTED, content_type="application/json")

    async def _read_limited(self, request: web.Request) -> bytes | None:
        """The request body, or None when it is over the payload limit."""
        limit = self._max_response_bytes
        if request.content_length is not None and request.content_length > limit:
            return None
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.content.iter_chunked(_CHUNK):
            size += len(chunk)
            if size > limit:
                return None
            chunks.append(chunk)
        return b"".join(chunks)

    def _remember(self, request_id: str) -> None:
        self._answered[request_id] = None
        while len(self._answered) > _ANSWERED_MEMORY:
            self._answered.popitem(last=False)
