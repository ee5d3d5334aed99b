"""A keep-alive HTTP/1.1 connection pool for one endpoint: the raw source's transport.

Every call shardwise makes to DynamoDB Streams is a small ``POST`` of JSON to one URL. An
idle worker makes hundreds of them a second (1000 shards, each polled every few seconds),
and there ``aiohttp``'s general-purpose request machinery (cookie jars, redirects, header
multidicts, tracing hooks, a ``ClientResponse`` per call) cost about 2.5x what the call
itself needs: ``make bench`` measured ~0.27 ms of CPU per call through ``aiohttp``
against ~0.10 ms here, at the same calls per second. What this pool does instead:

* requests are written as bytes in one ``transport.write``; responses are parsed by
  ``httptools`` (llhttp, the parser Node.js uses): status, headers, ``Content-Length`` or
  chunked bodies, or a body read to the connection's (clean) end;
* at most ``max_connections`` requests are in flight; idle connections are reused, last
  used first, and closed after ``KEEPALIVE_S`` unused or when the server says
  ``Connection: close``; a request's headers are made (signed) once it has a connection,
  right before it is written, so a long wait for a connection never ages a signature;
* a request that finds its reused connection closed by the server before a byte of the
  answer came back is sent again once on a new connection (every call made through this
  pool is a read, safe to repeat); any other failure is raised as ``TransportError``
  (or ``TimeoutError`` after ``read_timeout_s``) and the connection is dropped;
* connecting races the addresses of the host name (Happy Eyeballs, RFC 8305).

It is as strict as a kept client (issue 13). Interim ``1xx`` replies are skipped (``101``
fails: nothing here switches protocols); a connection that receives bytes no request asked
for is closed, never reused (they could be the answer to a request not yet sent); a reply's
head is capped at ``MAX_HEAD_BYTES`` and ``MAX_HEADER_FIELDS``, its body at
``max_body_bytes``, so a server sending without end fails the call at once instead of
growing memory until the read timeout; a header value holding a control character (CR,
LF, NUL...) is refused before anything is written (``ValueError``, as ``http.client`` and
``aiohttp`` refuse it).

Proxies are not spoken here: with ``HTTPS_PROXY`` / ``HTTP_PROXY`` in effect the raw
source sends through ``aiohttp`` instead (``dynamodb_raw.open_raw_client``).
"""

from __future__ import annotations

import asyncio
import collections
import re
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, cast
from urllib.parse import urlsplit

import httptools

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "KEEPALIVE_S",
    "MAX_HEADER_FIELDS",
    "MAX_HEAD_BYTES",
    "HttpPool",
    "Response",
    "Sign",
    "TransportError",
    "host_header",
]

# Idle connections older than this are closed instead of reused (servers drop them too).
KEEPALIVE_S: Final = 15.0
# What one reply may hold: its head (interim replies included) and its header fields...
MAX_HEAD_BYTES: Final = 64 * 1024
MAX_HEADER_FIELDS: Final = 100
# ...and, by default, its body (as received: chunk framing counts). Far above the largest
# legal page (1 MB for DynamoDB Streams' GetRecords, 10 MB for Kinesis').
DEFAULT_MAX_BODY_BYTES: Final = 32 * 1024 * 1024
# RFC 8305's recommended delay before the next address is tried alongside.
HAPPY_EYEBALLS_DELAY_S: Final = 0.25
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}
# The control characters no header name or value may hold (HTAB is allowed).
_CONTROLS: Final = bytes([*range(0x09), *range(0x0A, 0x20), 0x7F])
_CONTROL: Final = re.compile("[" + re.escape(_CONTROLS.decode("latin-1")) + "]")

# Makes a request's headers once it has a connection (``HttpPool.post``).
Sign = Callable[[], Awaitable[Mapping[str, str]]]


def host_header(url: str) -> str:
    """The Host header for ``url``, as botocore signs it: the host name, with the port
    unless it is the scheme's default; IPv6 literals keep their brackets. The request and
    its SigV4 signature (``sigv4.EndpointSigner``) both use this one."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    if parts.port is not None and parts.port != _DEFAULT_PORTS.get(parts.scheme):
        host = f"{host}:{parts.port}"
    return host


class TransportError(Exception):
    """The request failed below HTTP: connecting, TLS, a dropped connection, a reply
    that is not HTTP or is over a limit."""


def _header_block(headers: Mapping[str, str]) -> bytes:
    """``Name: value\r\n`` lines for ``headers``; ``ValueError`` naming the header if a
    name or a value holds a control character (a CR or LF would end the header and start
    one of the sender's choosing) or is not Latin-1 text.

    One pass over the block: each line has exactly the two control characters written
    here, so any more came from a name or a value.
    """
    try:
        text = "".join([f"{name}: {value}\r\n" for name, value in headers.items()])
        block = text.encode("latin-1")
    except UnicodeEncodeError:
        block = b"\0"  # the header is found and named below
    if len(block) - len(block.translate(None, _CONTROLS)) != 2 * len(headers):
        # The value is not shown: it can be a secret (a session token).
        name = next(name for name, value in headers.items() if not _sendable(name + value))
        raise ValueError(
            f"header {name!r}: a control character (CR, LF, NUL...) or a character outside"
            " Latin-1 in its name or value; the request is not sent"
        )
    return block


def _sendable(text: str) -> bool:
    try:
        text.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return _CONTROL.search(text) is None


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    headers: dict[str, str]  # names lower-cased
    body: bytes


class _Connection(asyncio.Protocol):
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
            self._fail(_Dropped(f"the connection closed before a reply: {exc or 'EOF'}"))
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


class _Dropped(TransportError):
    """A reused connection closed before any reply: the request can be sent again."""


class HttpPool:
    """Bounded keep-alive connections to the host of ``url``; ``post`` sends to its path.

    ``headers`` are sent with every request; a reply's body over ``max_body_bytes`` fails
    the call.
    """

    def __init__(
        self,
        url: str,
        *,
        max_connections: int,
        connect_timeout_s: float,
        read_timeout_s: float,
        headers: Mapping[str, str] = {},
        ssl_context: ssl.SSLContext | None = None,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        self._host = parts.hostname
        self._port = parts.port or _DEFAULT_PORTS[parts.scheme]
        self._ssl: ssl.SSLContext | None = None
        if parts.scheme == "https":
            self._ssl = ssl_context or ssl.create_default_context()
        path = parts.path or "/"
        fixed = _header_block({"Host": host_header(url), **headers})
        self._head = f"POST {path} HTTP/1.1\r\n".encode("latin-1") + fixed
        self._slots = asyncio.Semaphore(max_connections)
        self._idle: collections.deque[_Connection] = collections.deque()
        self._connect_timeout_s = connect_timeout_s
        self._read_timeout_s = read_timeout_s
        self._max_body_bytes = max_body_bytes
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    async def post(self, sign: Sign, body: bytes) -> Response:
        """Send one request; its response, whatever the status.

        ``sign`` makes the request's headers. It is awaited once a connection is ready for
        the request, right before the request is written: however long the wait for a free
        connection (every one busy, a stalled endpoint), a signature is as fresh as the
        write. A header holding a control character raises ``ValueError``; nothing is sent.
        """
        if self._closed:
            raise TransportError("the HTTP pool is closed")
        async with self._slots:
            connection = self._reusable()
            if connection is not None:
                try:
                    return await self._send(connection, sign, body)
                except _Dropped:
                    pass  # closed by the server while idle: once more, on a new connection
            return await self._send(await self._connect(), sign, body)

    async def close(self) -> None:
        """Close the idle connections; calls made afterwards fail. Closing twice is harmless."""
        self._closed = True
        while self._idle:
            self._idle.pop().close()

    def _reusable(self) -> _Connection | None:
        now = time.monotonic()
        while self._idle:
            connection = self._idle.pop()
            if connection.usable and now - connection.idle_since < KEEPALIVE_S:
                return connection
            connection.close()
        return None

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        # asyncio's loop races the addresses; uvloop's create_connection takes no such
        # options (MagicStack/uvloop#406) and tries them one after the other.
        racing: dict[str, Any] = (
            {"happy_eyeballs_delay": HAPPY_EYEBALLS_DELAY_S, "interleave": 1}
            if isinstance(loop, asyncio.BaseEventLoop)
            else {}
        )
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                _, connection = await loop.create_connection(
                    lambda: _Connection(loop, self._max_body_bytes),
                    self._host,
                    self._port,
                    ssl=self._ssl,
                    server_hostname=self._host if self._ssl else None,
                    **racing,
                )
        except TimeoutError as exc:
            raise TransportError(
                f"connecting to {self._host}:{self._port} took over {self._connect_timeout_s:g} s"
            ) from exc
        except OSError as exc:  # refused, unreachable, DNS, TLS (ssl.SSLError)
            raise TransportError(f"cannot connect to {self._host}:{self._port}: {exc}") from exc
        return connection

    async def _send(self, connection: _Connection, sign: Sign, body: bytes) -> Response:
        try:
            fields = _header_block(await sign())
        except BaseException:
            self._release(connection)  # nothing was written: the connection is as it was
            raise
        data = b"".join((self._head, fields, b"Content-Length: %d\r\n\r\n" % len(body), body))
        try:
            response = await connection.request(data, self._read_timeout_s)
        except BaseException:
            connection.close()  # a failed or abandoned exchange leaves the socket unusable
            raise
        self._release(connection)
        return response

    def _release(self, connection: _Connection) -> None:
        if connection.usable and not self._closed:
            self._idle.append(connection)
        else:
            connection.close()
