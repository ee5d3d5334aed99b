"""One keep-alive HTTP/1.1 connection of the pool: a request written, its reply parsed strictly.

Replies are parsed by ``httptools`` (llhttp, the parser Node.js uses): status, headers,
``Content-Length`` or chunked bodies, or a body read to the connection's (clean) end.

It is as strict as a kept client (issue 13). Interim ``1xx`` replies are skipped (``101``
fails: nothing here switches protocols); a connection that receives bytes no request asked
for is closed, never reused (they could be the answer to a request not yet sent); a reply's
head is capped at ``MAX_HEAD_BYTES`` and ``MAX_HEADER_FIELDS``, its body at
``max_body_bytes``, so a server sending without end fails the call at once instead of
growing memory until the read timeout.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Final, cast

import httptools

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "MAX_HEADER_FIELDS",
    "MAX_HEAD_BYTES",
    "ConnectionDropped",
    "HttpConnection",
    "Response",
    "TransportError",
]

# What one reply may hold: its head (interim replies included) and its header fields...
MAX_HEAD_BYTES: Final = 64 * 1024
MAX_HEADER_FIELDS: Final = 100
# ...and, by default, its body (as received: chunk framing counts). Far above the largest
# legal page (1 MB for DynamoDB Streams' GetRecords, 10 MB for Kinesis').
DEFAULT_MAX_BODY_BYTES: Final = 32 * 1024 * 1024


class TransportError(Exception):
    """The request failed below HTTP: connecting, TLS, a dropped connection, a reply
    that is not HTTP or is over a limit, a request header that cannot be written."""


class ConnectionDropped(TransportError):
    """A reused connection closed before any reply: the request can be sent again."""


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    headers: dict[str, str]  # names lower-cased
    body: bytes


class HttpConnection(asyncio.Protocol):
    """One socket; one request at a time (``request``), answered through a future.

    The httptools callbacks raise ``TransportError`` to stop the parser (a limit passed,
    bytes no request asked for); ``data_received`` fails the call with it and closes.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, max_body_bytes: int) -> None:
        self._loop = loop
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[Response] | None = None
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._got_bytes = False
        self._headers_done = False
        self._max_body_bytes = max_body_bytes
        # What the reply may still send: head bytes, header fields, body bytes.
        self._head_room = MAX_HEAD_BYTES
        self._fields_room = MAX_HEADER_FIELDS
        self._body_room = max_body_bytes
        self._timer: asyncio.TimerHandle | None = None
        self.keep_alive = True
        self.idle_since = time.monotonic()

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's is one without subclassing asyncio.Transport).
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self._waiter is None:
            self.close()  # bytes nobody asked for: the connection cannot be trusted
            return
        self._got_bytes = True
        chunk: bytes | memoryview = data
        try:
            if self._headers_done:
                self._body_room -= len(data)
                if self._body_room < 0:
                    raise self._body_too_large()
            elif len(data) <= self._head_room:
                self._head_room -= len(data)
            else:
                chunk = self._past_the_head_room(data)
            self._parser.feed_data(chunk)
        except TransportError as exc:
            self._fail(exc)
            self.close()
        except httptools.HttpParserCallbackError as exc:
            error = exc.__context__
            if not isinstance(error, TransportError):
                error = TransportError(f"the reply is not valid HTTP: {error or exc}")
            self._fail(error)
            self.close()
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            self._fail(TransportError(f"the reply is not valid HTTP: {exc!r}"))
            self.close()

    def eof_received(self) -> bool:
        return False  # close our side too; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.keep_alive = False
        self._transport = None
        if self._waiter is None or self._waiter.done():
            return
        if self._headers_done and not self._length_known() and exc is None:
            self._complete()  # a body delimited by the (clean) end of the connection
        elif not self._got_bytes:
            self._fail(ConnectionDropped(f"the connection closed before a reply: {exc or 'EOF'}"))
        else:
            self._fail(TransportError(f"the connection closed mid-reply: {exc or 'EOF'}"))

    # -- httptools callbacks ---------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._waiter is None:
            raise TransportError("a reply nobody asked for")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._fields_room -= 1
        if self._fields_room < 0:
            raise TransportError(f"the reply has over {MAX_HEADER_FIELDS} header fields")
        if not self._headers_done:  # trailers (after a chunked body) are not kept
            self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self._headers_done = True
        length = self._headers.get("content-length")
        if length is not None and int(length) > self._max_body_bytes:
            raise self._body_too_large()

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        status = self._parser.get_status_code()
        if status < 200:
            if status == 101:
                raise TransportError("the server switched protocols (101) instead of replying")
            # An interim reply (100 Continue, 103 Early Hints): the reply follows it.
            self._headers = {}
            self._headers_done = False
            return
        self.keep_alive = self._parser.should_keep_alive()
        self._complete()

    # -- use -------------------------------------------------------------------------------

    @property
    def usable(self) -> bool:
        return self.keep_alive and self._transport is not None and not self._transport.is_closing()

    def request(self, data: bytes, timeout_s: float) -> asyncio.Future[Response]:
        assert self._transport is not None and self._waiter is None
        self._waiter = self._loop.create_future()
        self._headers = {}  # a new dict per reply: a Response's headers are its own
        self._body = []
        self._got_bytes = self._headers_done = False
        self._head_room = MAX_HEAD_BYTES
        self._fields_room = MAX_HEADER_FIELDS
        self._body_room = self._max_body_bytes
        self._timer = self._loop.call_later(timeout_s, self._timed_out, timeout_s)
        self._transport.write(data)
        return self._waiter

    def close(self) -> None:
        self.keep_alive = False
        self._stop_timer()
        if self._transport is not None:
            self._transport.close()

    def _past_the_head_room(self, data: bytes) -> memoryview:
        """Parse what is left of the head's room in ``data`` (received before the head
        ended): an endless head is never buffered. The rest of ``data``, to parse as
        the body, if the head ended within its room."""
        view, room = memoryview(data), self._head_room
        self._head_room = 0
        self._parser.feed_data(view[:room])
        if not self._headers_done:
            raise TransportError(f"the reply's head is over {MAX_HEAD_BYTES} bytes")
        self._body_room -= len(data) - room
        if self._body_room < 0:
            raise self._body_too_large()
        return view[room:]

    def _body_too_large(self) -> TransportError:
        return TransportError(f"the reply's body is over {self._max_body_bytes} bytes")

    def _length_known(self) -> bool:
        return "content-length" in self._headers or "transfer-encoding" in self._headers

    def _complete(self) -> None:
        waiter = self._waiter
        if waiter is None:
            return
        self._done()
        body, self._body = b"".join(self._body), []  # an idle connection keeps no page
        if not waiter.done():
            waiter.set_result(Response(self._parser.get_status_code(), self._headers, body))
        self.idle_since = time.monotonic()

    def _fail(self, exc: Exception) -> None:
        waiter = self._waiter
        self._done()
        self.keep_alive = False
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    def _done(self) -> None:
        self._waiter = None
        self._stop_timer()

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _timed_out(self, timeout_s: float) -> None:
        self._timer = None
        self._fail(TimeoutError(f"no complete reply within {timeout_s:g} s"))
        self.close()
