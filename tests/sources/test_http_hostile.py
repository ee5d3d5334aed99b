"""``HttpPool`` against hostile servers: replies a kept client (aiohttp, urllib3) refuses or
survives, written out byte by byte (issue 13).

Each server is a script run on every connection it accepts; the script reads requests and
writes whatever it likes: interim replies, replies nobody asked for, endless heads and
bodies, a reset mid-body.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import pytest

from shardwise.sources.http import HttpPool
from shardwise.sources.http_connection import Response, TransportError
from tests.sources.test_http import OK, pool, signed

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Hostile:
    """Runs ``script`` on each accepted connection; counts the connections."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.connections = 0
        self.port = 0
        self.handlers: set[asyncio.Task[None]] = set()
        self.writers: list[asyncio.StreamWriter] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.handlers.add(task)
        self.writers.append(writer)
        self.connections += 1
        try:
            await self.script(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        """Cut every connection; each script ends at its next read or write."""
        for writer in self.writers:
            writer.transport.abort()
        await asyncio.gather(*self.handlers, return_exceptions=True)


@asynccontextmanager
async def hostile(script: Script) -> AsyncIterator[Hostile]:
    server = Hostile(script)
    listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    server.port = listener.sockets[0].getsockname()[1]
    async with listener:
        try:
            yield server
        finally:
            await server.stop()


@asynccontextmanager
async def pooled(script: Script, **options: object) -> AsyncIterator[tuple[Hostile, HttpPool]]:
    """A server running ``script`` and a pool (``options`` as for ``pool``) sending to it;
    the pool is closed before the server stops."""
    async with hostile(script) as server:
        http = pool(server.url, **options)
        try:
            yield server, http
        finally:
            await http.close()


def patiently(script: Script) -> AbstractAsyncContextManager[tuple[Hostile, HttpPool]]:
    """``pooled`` with a read timeout (5 s) far past the moment a limit must fail the call."""
    return pooled(script, read_timeout_s=5.0)


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """One request: its head and its body."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return head, await reader.readexactly(length)


def answering(*replies: bytes) -> Script:
    """A script answering the server's n-th request (on whichever connection) with
    ``replies[n]``, the last one once they run out, each written whole."""
    count = 0

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal count
        while True:
            await read_request(reader)
            count += 1
            writer.write(replies[min(count, len(replies)) - 1])
            await writer.drain()

    return script


def numbered(n: int) -> bytes:
    body = b'{"n":%d}' % n
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


async def send(http: HttpPool, headers: Mapping[str, str] | None = None) -> Response:
    """One POST of ``{}`` with ``headers``."""
    return await http.post(signed(headers), b"{}")


class TestInterimReplies:
    """1xx replies are skipped; a call's reply is its own, never the next call's."""

    async def test_100_continue_then_the_reply(self) -> None:
        """The interim reply comes first, the final one a moment later: the call waits for
        the final one, and the next call on the connection gets its own reply (not the
        previous call's: one shard's records delivered under another shard)."""
        count = 0

        async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal count
            while True:
                await read_request(reader)
                count += 1
                writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                await writer.drain()
                await asyncio.sleep(0.05)
                writer.write(numbered(count))
                await writer.drain()

        async with pooled(script) as (server, http):
            first = await send(http)
            second = await send(http)
        assert (first.status, first.body) == (200, b'{"n":1}')
        assert (second.status, second.body) == (200, b'{"n":2}')
        assert server.connections == 1

    async def test_interim_and_final_in_one_write(self) -> None:
        """103 Early Hints and the reply in one segment: the reply's headers are its own."""
        early = b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"
        async with pooled(answering(early + OK)) as (server, http):
            responses = [await send(http), await send(http)]
        for response in responses:
            assert (response.status, response.body) == (200, b"{}")
            assert response.headers == {"content-type": "application/json", "content-length": "2"}
        assert server.connections == 1

    async def test_switching_protocols_is_refused(self) -> None:
        upgrade = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n"
        async with pooled(answering(upgrade, OK)) as (server, http):
            with pytest.raises(TransportError, match="101"):
                await send(http)
            assert (await send(http)).body == b"{}"  # on a new connection
        assert server.connections == 2

    async def test_a_reply_nobody_asked_for_closes_the_connection(self) -> None:
        """A second reply right behind the first: the first is the answer, and the
        connection is never used again (its next bytes could be anyone's)."""
        async with pooled(answering(OK + numbered(99), numbered(2))) as (server, http):
            first = await send(http)
            second = await send(http)
        assert first.body == b"{}"
        assert second.body == b'{"n":2}'
        assert server.connections == 2

    async def test_bytes_while_idle_close_the_connection(self) -> None:
        async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await read_request(reader)
            writer.write(OK)
            await asyncio.sleep(0.05)
            writer.write(numbered(99))  # to nobody
            await read_request(reader)
            writer.write(OK)

        async with pooled(script) as (server, http):
            assert (await send(http)).body == b"{}"
            await asyncio.sleep(0.1)
            assert (await send(http)).body == b"{}"
        assert server.connections == 2


def endless(start: bytes, piece: bytes) -> Script:
    """A script answering the first request with ``start`` and then ``piece`` forever."""

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(start)
        while True:
            writer.write(piece)
            await writer.drain()

    return script


class TestLimits:
    """A reply's head and body are capped: past the cap the call fails at once (not at the
    read timeout, with the memory grown meanwhile) and the connection is closed."""

    async def test_an_endless_header_block(self) -> None:
        padding = b"X-Pad: " + b"a" * 1000 + b"\r\n"
        async with patiently(endless(b"HTTP/1.1 200 OK\r\n", padding)) as (_, http):
            started = time.monotonic()
            with pytest.raises(TransportError, match="head is over 65536 bytes"):
                await send(http)
            assert time.monotonic() - started < 2.0

    async def test_one_endless_header_line(self) -> None:
        async with patiently(endless(b"HTTP/1.1 200 OK\r\nX-Pad: ", b"a" * 4096)) as (_, http):
            with pytest.raises(TransportError, match="head is over 65536 bytes"):
                await send(http)

    async def test_endless_interim_replies(self) -> None:
        async with patiently(endless(b"", b"HTTP/1.1 100 Continue\r\n\r\n")) as (_, http):
            with pytest.raises(TransportError, match="head is over 65536 bytes"):
                await send(http)

    async def test_too_many_header_fields(self) -> None:
        fields = b"".join(b"X-F%d: 1\r\n" % n for n in range(101))
        reply = b"HTTP/1.1 200 OK\r\n" + fields + b"Content-Length: 2\r\n\r\n{}"
        async with pooled(answering(reply, OK)) as (server, http):
            with pytest.raises(TransportError, match="over 100 header fields"):
                await send(http)
            assert (await send(http)).body == b"{}"
        assert server.connections == 2

    async def test_an_endless_chunked_body(self) -> None:
        chunk = b"10000\r\n" + b"a" * 0x10000 + b"\r\n"
        start = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        async with patiently(endless(start, chunk)) as (_, http):
            started = time.monotonic()
            with pytest.raises(TransportError, match="body is over 33554432 bytes"):
                await send(http)
            assert time.monotonic() - started < 3.0

    async def test_an_endless_body_to_the_close(self) -> None:
        async with patiently(endless(b"HTTP/1.0 200 OK\r\n\r\n", b"a" * 0x10000)) as (_, http):
            with pytest.raises(TransportError, match="body is over"):
                await send(http)

    async def test_the_body_cap_is_per_pool(self) -> None:
        body = b"a" * 2000
        reply = b"HTTP/1.1 200 OK\r\nContent-Length: 2000\r\n\r\n" + body
        async with hostile(answering(reply)) as server:
            roomy = pool(server.url, max_body_bytes=2000)
            tight = pool(server.url, max_body_bytes=1999)
            assert (await send(roomy)).body == body
            with pytest.raises(TransportError, match="body is over 1999 bytes"):
                await send(tight)
            await roomy.close()
            await tight.close()

    async def test_a_declared_length_over_the_cap_fails_at_once(self) -> None:
        reply = b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000000\r\n\r\n"
        async with patiently(answering(reply)) as (_, http):
            started = time.monotonic()
            with pytest.raises(TransportError, match="body is over"):
                await send(http)
            assert time.monotonic() - started < 1.0


def reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP reset (SO_LINGER 0), as a crashed server or a middlebox does."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class TestConnectionErrors:
    """A body delimited by the connection's end is complete only on a clean end."""

    async def test_a_body_to_the_close_cut_by_a_reset(self) -> None:
        async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await read_request(reader)
            writer.write(b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{"Records":[')
            await writer.drain()
            await asyncio.sleep(0.1)
            reset(writer)

        async with pooled(script) as (_, http):
            with pytest.raises(TransportError, match="closed mid-reply"):
                await send(http)

    async def test_a_body_to_a_clean_close_is_complete(self) -> None:
        async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await read_request(reader)
            writer.write(b'HTTP/1.1 200 OK\r\n\r\n{"Records":[]}')
            await writer.drain()

        async with pooled(script) as (_, http):
            assert (await send(http)).body == b'{"Records":[]}'


class TestHeaderValues:
    """A header holding a control character (CR, LF, NUL...) is never written: it would
    end the header early and start one of the server's choosing."""

    @pytest.mark.parametrize("bad", ["\r\nX-Injected: 1", "\n", "\r", "\x00", "\x7f", "\x1b"])
    async def test_a_request_header(self, bad: str) -> None:
        requests: list[bytes] = []

        async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while True:
                head, _ = await read_request(reader)
                requests.append(head)
                writer.write(OK)

        async with pooled(script) as (_, http):
            with pytest.raises(ValueError, match="X-Amz-Security-Token"):
                await send(http, {"X-Amz-Date": "20240101T000000Z", "X-Amz-Security-Token": bad})
            assert (await send(http, {"X-Amz-Security-Token": "fine\tto send"})).body == b"{}"
        assert len(requests) == 1
        assert b"X-Amz-Security-Token: fine\tto send\r\n" in requests[0]

    def test_a_fixed_header(self) -> None:
        with pytest.raises(ValueError, match="User-Agent"):
            pool("http://127.0.0.1:1/", headers={"User-Agent": "shardwise\r\nX-Injected: 1"})


class TestConnect:
    """Connecting races the addresses a name resolves to (Happy Eyeballs, RFC 8305)."""

    async def test_an_address_that_never_answers_is_raced(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The name resolves to an address whose SYNs vanish (a listener with a full
        backlog) and then to a working one: the call connects after the 0.25 s attempt
        delay instead of waiting out the connect timeout."""
        blackhole = socket.socket()
        blackhole.bind(("127.0.0.1", 0))
        blackhole.listen(0)
        blackhole.setblocking(False)
        dead_port = blackhole.getsockname()[1]
        loop = asyncio.get_running_loop()
        fillers = []
        for _ in range(3):  # fill the accept queue; later connects hang
            filler = socket.socket()
            filler.setblocking(False)
            fillers.append(filler)
            try:
                await asyncio.wait_for(loop.sock_connect(filler, ("127.0.0.1", dead_port)), 0.2)
            except TimeoutError:
                break
        async with hostile(answering(OK)) as server:
            addresses = [("127.0.0.1", dead_port), ("127.0.0.1", server.port)]

            async def getaddrinfo(host: str, port: int, **options: Any) -> list[Any]:
                assert host == "streams.dualstack.test"
                tcp = (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "")
                return [(*tcp, address) for address in addresses]

            monkeypatch.setattr(loop, "getaddrinfo", getaddrinfo)
            http = pool(f"http://streams.dualstack.test:{server.port}/", connect_timeout_s=3.0)
            started = time.monotonic()
            assert (await send(http)).body == b"{}"
            assert time.monotonic() - started < 1.5
            await http.close()
        for filler in fillers:
            filler.close()
        blackhole.close()
