"""A keep-alive HTTP/1.1 connection pool for one endpoint: the raw source's transport.

Every call shardwise makes to DynamoDB Streams is a small ``POST`` of JSON to one URL. An
idle worker makes hundreds of them a second (1000 shards, each polled every few seconds),
and there ``aiohttp``'s general-purpose request machinery (cookie jars, redirects, header
multidicts, tracing hooks, a ``ClientResponse`` per call) cost about 2.5x what the call
itself needs: ``make bench`` measured ~0.27 ms of CPU per call through ``aiohttp``
against ~0.10 ms here, at the same calls per second. What this pool does instead:

* requests are written as bytes in one ``transport.write`` (``http_headers``); responses
  are parsed by ``httptools``, as strictly as a kept client parses them
  (``http_connection``);
* at most ``max_connections`` requests are in flight; idle connections are reused, last
  used first, and closed after ``KEEPALIVE_S`` unused or when the server says
  ``Connection: close``; a request's headers are made (signed) once it has a connection,
  right before it is written, so a long wait for a connection never ages a signature;
* a request that finds its reused connection closed by the server before a byte of the
  answer came back is sent again once on a new connection (every call made through this
  pool is a read, safe to repeat); any other failure is raised as ``TransportError``
  (or ``TimeoutError`` after ``read_timeout_s``) and the connection is dropped; a header
  value holding a control character (CR, LF, NUL...) is refused before anything is
  written (``InvalidHeaderError``, a ``TransportError`` and a ``ValueError``);
* connecting races the addresses of the host name (Happy Eyeballs, RFC 8305).

Proxies are not spoken here: with ``HTTPS_PROXY`` / ``HTTP_PROXY`` in effect the raw
source sends through ``aiohttp`` instead (``transport.AiohttpTransport``, chosen by
``dynamodb_raw.open_raw_client``).
"""

from __future__ import annotations

import asyncio
import collections
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final
from urllib.parse import urlsplit

from shardwise.sources.http_connection import (
    DEFAULT_MAX_BODY_BYTES,
    ConnectionDropped,
    HttpConnection,
    Response,
    TransportError,
)
from shardwise.sources.http_headers import DEFAULT_PORTS, header_block, host_header

__all__ = ["HAPPY_EYEBALLS_DELAY_S", "KEEPALIVE_S", "HttpPool", "Sign"]

# Idle connections older than this are closed instead of reused (servers drop them too).
KEEPALIVE_S: Final = 15.0
# RFC 8305's recommended delay before the next address is tried alongside.
HAPPY_EYEBALLS_DELAY_S: Final = 0.25

# Makes a request's headers once it has a connection (``HttpPool.post``).
Sign = Callable[[], Awaitable[Mapping[str, str]]]


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
        if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        self._host = parts.hostname
        self._port = parts.port or DEFAULT_PORTS[parts.scheme]
        self._ssl: ssl.SSLContext | None = None
        if parts.scheme == "https":
            self._ssl = ssl_context or ssl.create_default_context()
        path = parts.path or "/"
        fixed = header_block({"Host": host_header(url), **headers})
        self._head = f"POST {path} HTTP/1.1\r\n".encode("latin-1") + fixed
        self._slots = asyncio.Semaphore(max_connections)
        self._idle: collections.deque[HttpConnection] = collections.deque()
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
        write. A header holding a control character raises ``InvalidHeaderError``
        (``http_headers``); nothing is sent.
        """
        if self._closed:
            raise TransportError("the HTTP pool is closed")
        async with self._slots:
            connection = self._reusable()
            if connection is not None:
                try:
                    return await self._send(connection, sign, body)
                except ConnectionDropped:
                    pass  # closed by the server while idle: once more, on a new connection
            return await self._send(await self._connect(), sign, body)

    async def close(self) -> None:
        """Close the idle connections; calls made afterwards fail. Closing twice is harmless."""
        self._closed = True
        while self._idle:
            self._idle.pop().close()

    def _reusable(self) -> HttpConnection | None:
        now = time.monotonic()
        while self._idle:
            connection = self._idle.pop()
            if connection.usable and now - connection.idle_since < KEEPALIVE_S:
                return connection
            connection.close()
        return None

    async def _connect(self) -> HttpConnection:
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
                    lambda: HttpConnection(loop, self._max_body_bytes),
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

    async def _send(self, connection: HttpConnection, sign: Sign, body: bytes) -> Response:
        try:
            fields = header_block(await sign())
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

    def _release(self, connection: HttpConnection) -> None:
        if connection.usable and not self._closed:
            self._idle.append(connection)
        else:
            connection.close()
