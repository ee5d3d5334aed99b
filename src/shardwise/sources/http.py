"""A keep-alive HTTP/1.1 connection pool for one endpoint: the raw source's transport.

Every call shardwise makes to DynamoDB Streams is a small ``POST`` of JSON to one URL. An
idle worker makes hundreds of them a second (1000 shards, each polled every few seconds),
and there ``aiohttp``'s general-purpose request machinery (cookie jars, redirects, header
multidicts, tracing hooks, a ``ClientResponse`` per call) cost about 2.5x what the call
itself needs: ``make bench`` measured ~0.27 ms of CPU per call through ``aiohttp``
against ~0.10 ms here, at the same calls per second. What this pool does instead:

* requests are written as bytes in one ``transport.write``; responses are parsed by
  ``httptools`` (llhttp, the parser Node.js uses): status, headers, ``Content-Length`` or
  chunked bodies, or a body read to the connection's end;
* at most ``max_connections`` requests are in flight; idle connections are reused, last
  used first, and closed after ``KEEPALIVE_S`` unused or when the server says
  ``Connection: close``;
* a request that finds its reused connection closed by the server before a byte of the
  answer came back is sent again once on a new connection (every call made through this
  pool is a read, safe to repeat); any other failure is raised as ``TransportError``
  (or ``TimeoutError`` after ``read_timeout_s``) and the connection is dropped.

Proxies are not spoken here: with ``HTTPS_PROXY`` / ``HTTP_PROXY`` in effect the raw
source sends through ``aiohttp`` instead (``dynamodb_raw.open_raw_client``).
"""

from __future__ import annotations

import asyncio
import collections
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, cast
from urllib.parse import urlsplit

import httptools

__all__ = ["KEEPALIVE_S", "HttpPool", "Response", "TransportError", "host_header"]

# Idle connections older than this are closed instead of reused (servers drop them too).
KEEPALIVE_S: Final = 15.0
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}


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
    that is not HTTP."""


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    headers: dict[str, str]  # names lower-cased
    body: bytes


class _Connection(asyncio.Protocol):
    """One socket; one request at a time (``request``), answered through a future."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[Response] | None = None
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._got_bytes = False
        self._headers_done = False
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
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(TransportError(f"the reply is not valid HTTP: {exc}"))
            self.close()

    def eof_received(self) -> bool:
        return False  # close our side too; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.keep_alive = False
        self._transport = None
        if self._waiter is None or self._waiter.done():
            return
        if self._headers_done and not self._length_known():
            self._complete()  # a body delimited by the end of the connection
        elif not self._got_bytes:
            self._fail(_Dropped(f"the connection closed before a reply: {exc or 'EOF'}"))
        else:
            self._fail(TransportError(f"the connection closed mid-reply: {exc or 'EOF'}"))

    # -- httptools callbacks ---------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self._headers_done = True

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        self.keep_alive = self._parser.should_keep_alive()
        self._complete()

    # -- use -------------------------------------------------------------------------------

    @property
    def usable(self) -> bool:
        return self.keep_alive and self._transport is not None and not self._transport.is_closing()

    def request(self, data: bytes, timeout_s: float) -> asyncio.Future[Response]:
        assert self._transport is not None and self._waiter is None
        self._waiter = self._loop.create_future()
        self._headers = {}
        self._body = []
        self._got_bytes = self._headers_done = False
        self._timer = self._loop.call_later(timeout_s, self._timed_out, timeout_s)
        self._transport.write(data)
        return self._waiter

    def close(self) -> None:
        self.keep_alive = False
        self._stop_timer()
        if self._transport is not None:
            self._transport.close()

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
    """Bounded keep-alive connections to the host of ``url``; ``post`` sends to its path."""

    def __init__(
        self,
        url: str,
        *,
        max_connections: int,
        connect_timeout_s: float,
        read_timeout_s: float,
        headers: Mapping[str, str] = {},
        ssl_context: ssl.SSLContext | None = None,
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
        fixed = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        host = host_header(url)
        self._head = f"POST {path} HTTP/1.1\r\nHost: {host}\r\n{fixed}".encode("latin-1")
        self._slots = asyncio.Semaphore(max_connections)
        self._idle: collections.deque[_Connection] = collections.deque()
        self._connect_timeout_s = connect_timeout_s
        self._read_timeout_s = read_timeout_s
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    async def post(self, headers: Mapping[str, str], body: bytes) -> Response:
        """Send one request; its response, whatever the status."""
        if self._closed:
            raise TransportError("the HTTP pool is closed")
        fields = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        data = b"".join(
            (
                self._head,
                fields.encode("latin-1"),
                b"Content-Length: %d\r\n\r\n" % len(body),
                body,
            )
        )
        async with self._slots:
            connection = self._reusable()
            if connection is not None:
                try:
                    return await self._send(connection, data)
                except _Dropped:
                    pass  # closed by the server while idle: once more, on a new connection
            return await self._send(await self._connect(), data)

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
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                _, connection = await loop.create_connection(
                    lambda: _Connection(loop),
                    self._host,
                    self._port,
                    ssl=self._ssl,
                    server_hostname=self._host if self._ssl else None,
                )
        except TimeoutError as exc:
            raise TransportError(
                f"connecting to {self._host}:{self._port} took over {self._connect_timeout_s:g} s"
            ) from exc
        except OSError as exc:  # refused, unreachable, DNS, TLS (ssl.SSLError)
            raise TransportError(f"cannot connect to {self._host}:{self._port}: {exc}") from exc
        return connection

    async def _send(self, connection: _Connection, data: bytes) -> Response:
        try:
            response = await connection.request(data, self._read_timeout_s)
        except BaseException:
            connection.close()  # a failed or abandoned exchange leaves the socket unusable
            raise
        if connection.usable and not self._closed:
            self._idle.append(connection)
        else:
            connection.close()
        return response
