"""A processor whose function already runs elsewhere, behind an invoke URL.

A container built from an AWS Lambda base image embeds the Runtime Interface Emulator,
which serves ``POST /2015-03-31/functions/function/invocations`` on port 8080: the body is
the event, the response the function's result. Run that container as a sidecar (same pod
or task) and point ``invoke: {url: ...}`` at it.

The emulator reports outcomes its own way, and ``InvokeUrlProcessor`` reads them so that
they feed the failure model like any handler error:

* ``200`` with the function's result - success;
* ``200`` with Lambda's error document (``errorType`` and ``errorMessage``, optionally
  ``stackTrace``/``requestId``, and nothing else) - a function error: the emulator sends
  the error as the body, without Lambda's ``X-Amz-Function-Error`` header (which is
  honoured too, for servers that send it);
* ``200`` with ``Task timed out after N seconds`` - a timeout (the emulator restarts the
  function itself);
* ``502`` (the emulator's answer when the function failed to initialise or its runtime
  died) or any other status, a refused connection or no answer within
  ``timeout_seconds`` - the invocation fails and is retried.

The emulator runs one invocation at a time and answers a concurrent one with a bare
``400``, so invocations are sent one at a time (shards and lanes take turns; the
timeout counts from when an invocation is sent).

A function that legitimately returns an object made of exactly ``errorType`` and
``errorMessage`` is read as a failure; that is the price of the emulator's format (the
README says so).
"""

from __future__ import annotations

import asyncio
import re
from typing import Any, Final

import aiohttp

from shardwise.errors import FunctionError, HandlerError, HandlerTimeoutError
from shardwise.records import Batch
from shardwise.runtimes.pool import decode_response
from shardwise.runtimes.process import encode_event

__all__ = ["InvokeUrlProcessor", "read_invoke_response"]

_ERROR_KEYS: Final = frozenset({"errorType", "errorMessage"})
_OPTIONAL_ERROR_KEYS: Final = frozenset({"stackTrace", "requestId", "trace"})
_TIMED_OUT: Final = re.compile(r"Task timed out after [0-9.]+ seconds")
_SHOWN: Final = 2000


def _error_document(value: Any) -> bool:
    return (
        isinstance(value, dict)
        and _ERROR_KEYS <= value.keys()
        and value.keys() <= _ERROR_KEYS | _OPTIONAL_ERROR_KEYS
        and isinstance(value["errorType"], str)
    )


def read_invoke_response(name: str, status: int, headers: dict[str, str], body: bytes) -> Any:
    """The function's result from an invoke URL's answer, or the error it stands for."""
    text = body.decode("utf-8", "replace")
    # Header names are case-insensitive (a proxy in between may lower-case them).
    function_error = {k.lower(): v for k, v in headers.items()}.get("x-amz-function-error")
    if status == 200:
        value = decode_response(body)
        if function_error is not None or _error_document(value):
            error = value if isinstance(value, dict) else {}
            trace = error.get("stackTrace", error.get("trace"))
            error_type = error.get("errorType") or function_error
            raise FunctionError(
                str(error_type or "Unhandled"),
                str(error.get("errorMessage", text[:_SHOWN])),
                tuple(str(line) for line in trace) if isinstance(trace, list) else (),
            )
        if isinstance(value, str) and _TIMED_OUT.fullmatch(value.strip()):
            raise HandlerTimeoutError(
                f"processor {name}: {value.strip()} (reported by the function)"
            )
        return value
    if status == 502:
        # The emulator's init failure carries the runtime's /init/error document.
        document = decode_response(body)
        if _error_document(document):
            raise FunctionError(document["errorType"], str(document["errorMessage"]))
        raise FunctionError(
            "Runtime.Unavailable",
            f"the emulator answered 502 (the function failed to initialise or its runtime"
            f" exited): {text[:_SHOWN]}",
        )
    raise HandlerError(f"processor {name}: invoke URL answered HTTP {status}: {text[:_SHOWN]}")


class InvokeUrlProcessor:
    """``processors.Processor`` for an ``invoke:`` processor (see the module docstring)."""

    def __init__(self, name: str, url: str, *, function_arn: str, timeout_s: float) -> None:
        self.name = name
        self.function_arn = function_arn
        self.url = url
        self._timeout_s = timeout_s
        self._session: aiohttp.ClientSession | None = None
        self._one_at_a_time = asyncio.Lock()

    async def start(self) -> None:
        # No check that the sidecar is up: it may start after shardwise, and an invocation
        # that finds it down fails and is retried.
        self._session = aiohttp.ClientSession(
            headers={"Content-Type": "application/json"},
            timeout=aiohttp.ClientTimeout(total=None, connect=10),
        )

    async def invoke(self, batch: Batch) -> Any:
        return await self.invoke_event(batch.event(), batch.shard_id)

    async def invoke_event(self, event: dict[str, Any], shard_id: str) -> Any:
        if self._session is None:
            raise HandlerError(f"processor {self.name} is not started")
        payload = encode_event(event)
        try:
            async with self._one_at_a_time, asyncio.timeout(self._timeout_s):
                async with self._session.post(self.url, data=payload) as response:
                    body = await response.read()
                    status, headers = response.status, dict(response.headers)
        except TimeoutError as exc:
            raise HandlerTimeoutError(
                f"processor {self.name}: {self.url} did not answer within {self._timeout_s:g} s"
            ) from exc
        except aiohttp.ClientError as exc:
            raise HandlerError(f"processor {self.name}: cannot invoke {self.url}: {exc}") from exc
        return read_invoke_response(self.name, status, headers, body)

    async def stop(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()
