"""``HttpPool``: the raw source's keep-alive HTTP/1.1 transport, against real sockets.

Each test runs a small asyncio server on 127.0.0.1 that answers with bytes written out
by hand, so replies a library server would never send (a body up to the connection's
end, a connection dropped mid-reply, garbage) can be sent as real endpoints and proxies
do.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from shardwise.sources.http import HttpPool, Sign
from shardwise.sources.http_connection import TransportError

OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"


class Server:
    """Counts connections and keeps each request it read (head and body)."""

    def __init__(self, reply: Callable[[int, bytes], bytes | None]) -> None:
        self.reply = reply  # (request number, body) -> bytes to send, None = hang up
        self.connections = 0
        self.requests: list[tuple[bytes, bytes]] = []
        self.port = 0
        self.handlers: set[asyncio.Task[None]] = set()
        self.writers: list[asyncio.StreamWriter] = []

    def track(self, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.handlers.add(task)
        self.writers.append(writer)

    async def stop(self) -> None:
        """Hang up on every client and wait for the handlers (none outlives its test)."""
        for writer in self.writers:
            writer.close()
        await asyncio.gather(*self.handlers, return_exceptions=True)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.track(writer)
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                body = await reader.readexactly(length)
                self.requests.append((head, body))
                answer = self.reply(len(self.requests), body)
                if answer is None:
                    break
                writer.write(answer)
                await writer.drain()
                if b"Connection: close" in answer or b"HTTP/1.0" in answer[:9]:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@asynccontextmanager
async def serving(
    reply: Callable[[int, bytes], bytes | None], ssl_context: ssl.SSLContext | None = None
) -> AsyncIterator[Server]:
    server = Server(reply)
    listener = await asyncio.start_server(server.handle, "127.0.0.1", 0, ssl=ssl_context)
    server.port = listener.sockets[0].getsockname()[1]
    async with listener:
        try:
            yield server
        finally:
            await server.stop()


def signed(headers: Mapping[str, str] | None = None) -> Sign:
    """``HttpPool.post``'s headers: made once the request has a connection (here, fixed)."""
    fixed = dict(headers or {})

    async def sign() -> Mapping[str, str]:
        return fixed

    return sign


def pool(url: str, **options: object) -> HttpPool:
    settings: dict[str, object] = {
        "max_connections": 4,
        "connect_timeout_s": 2.0,
        "read_timeout_s": 2.0,
        "headers": {"User-Agent": "shardwise-test"},
    }
    settings.update(options)
    return HttpPool(url, **settings)  # type: ignore[arg-type]


async def test_requests_reuse_one_connection() -> None:
    async with serving(lambda n, body: OK) as server:
        http = pool(f"http://127.0.0.1:{server.port}/")
        for n in range(5):
            response = await http.post(signed({"X-Amz-Target": f"op{n}"}), b'{"n":%d}' % n)
            assert (response.status, response.body) == (200, b"{}")
            assert response.headers["content-type"] == "application/json"
        await http.close()
    assert server.connections == 1
    head, body = server.requests[3]
    assert head.startswith(b"POST / HTTP/1.1\r\n")
    assert f"Host: 127.0.0.1:{server.port}\r\n".encode() in head
    assert b"User-Agent: shardwise-test\r\n" in head
    assert b"X-Amz-Target: op3\r\n" in head
    assert b"Content-Length: 7\r\n" in head
    assert body == b'{"n":3}'


async def test_concurrent_requests_stay_within_the_bound() -> None:
    in_flight = peak = 0
    tracker = Server(lambda n, body: None)

    async def reply_later(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal in_flight, peak
        tracker.track(writer)
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                await reader.readexactly(2)
                in_flight += 1
                peak = max(peak, in_flight)
                await asyncio.sleep(0.02)
                in_flight -= 1
                writer.write(OK)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    listener = await asyncio.start_server(reply_later, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    async with listener:
        http = pool(f"http://127.0.0.1:{port}/", max_connections=3)
        replies = await asyncio.gather(*(http.post(signed(), b"{}") for _ in range(12)))
        await http.close()
        await tracker.stop()
    assert [r.status for r in replies] == [200] * 12
    assert peak == 3


async def test_chunked_body() -> None:
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b'5\r\n{"Rec\r\n9\r\nords":[]}\r\n0\r\n\r\n'
    )
    async with serving(lambda n, body: chunked) as server:
        http = pool(f"http://127.0.0.1:{server.port}/")
        first = await http.post(signed(), b"{}")
        second = await http.post(signed(), b"{}")
        await http.close()
    assert first.body == second.body == b'{"Records":[]}'
    assert server.connections == 1


async def test_body_up_to_the_end_of_the_connection() -> None:
    """An HTTP/1.0 reply without a length: the body is everything until the close."""
    legacy = b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n" + b'{"a":1}'
    async with serving(lambda n, body: legacy) as server:
        http = pool(f"http://127.0.0.1:{server.port}/")
        assert (await http.post(signed(), b"{}")).body == b'{"a":1}'
        assert (await http.post(signed(), b"{}")).body == b'{"a":1}'
        await http.close()
    assert server.connections == 2


async def test_connection_close_is_honoured() -> None:
    closing = OK.replace(b"Content-Length", b"Connection: close\r\nContent-Length")
    async with serving(lambda n, body: closing) as server:
        http = pool(f"http://127.0.0.1:{server.port}/")
        for _ in range(3):
            assert (await http.post(signed(), b"{}")).status == 200
        await http.close()
    assert server.connections == 3


async def test_an_idle_connection_closed_by_the_server_is_replaced() -> None:
    """The server drops the kept-alive connection; the next call goes out once more on a
    new connection instead of failing."""
    async with serving(lambda n, body: None if n == 2 else OK) as server:
        http = pool(f"http://127.0.0.1:{server.port}/")
        assert (await http.post(signed(), b"{}")).status == 200
        assert (await http.post(signed(), b"{}")).status == 200  # request 2 hung up, 3 answered
        await http.close()
    assert server.connections == 2
    assert len(server.requests) == 3


async def test_a_fresh_connection_that_hangs_up_fails() -> None:
    async with serving(lambda n, body: None) as server:
        http = pool(f"http://127.0.0.1:{server.port}/")
        with pytest.raises(TransportError, match="closed before a reply"):
            await http.post(signed(), b"{}")
        await http.close()
    assert len(server.requests) == 1  # a new connection is not tried twice


async def test_a_reply_cut_short_fails_and_the_connection_is_not_reused() -> None:
    cut = b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"Records":'
    answers = {1: OK, 2: cut}

    def reply(n: int, body: bytes) -> bytes | None:
        return answers.get(n, OK)

    async with serving(reply) as server:
        # The server writes the partial reply and waits for more requests; the client
        # must not wait forever: the read timeout fails it.
        http = pool(f"http://127.0.0.1:{server.port}/", read_timeout_s=0.3)
        assert (await http.post(signed(), b"{}")).status == 200
        with pytest.raises(TimeoutError, match=r"0\.3 s"):
            await http.post(signed(), b"{}")
        assert (await http.post(signed(), b"{}")).status == 200
        await http.close()
    assert server.connections == 2


async def test_a_reply_that_is_not_http() -> None:
    async with serving(lambda n, body: b"SSH-2.0-OpenSSH_9.6\r\n") as server:
        http = pool(f"http://127.0.0.1:{server.port}/")
        with pytest.raises(TransportError, match="not valid HTTP"):
            await http.post(signed(), b"{}")
        await http.close()


async def test_nothing_listening() -> None:
    async with serving(lambda n, body: OK) as server:
        port = server.port
    http = pool(f"http://127.0.0.1:{port}/")
    with pytest.raises(TransportError, match=f"cannot connect to 127.0.0.1:{port}"):
        await http.post(signed(), b"{}")
    await http.close()


async def test_cancelled_call_drops_its_connection() -> None:
    """A call abandoned mid-flight (shutdown) must not leave its half-read reply on a
    connection the next call would reuse."""

    def reply(n: int, body: bytes) -> bytes | None:
        return OK if n > 1 else b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n{"

    async with serving(reply) as server:
        http = pool(f"http://127.0.0.1:{server.port}/")
        call = asyncio.create_task(http.post(signed(), b"{}"))
        await asyncio.sleep(0.1)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        assert (await http.post(signed(), b"{}")).body == b"{}"
        await http.close()
    assert server.connections == 2


async def test_closed_pool_refuses_calls() -> None:
    async with serving(lambda n, body: OK) as server:
        http = pool(f"http://127.0.0.1:{server.port}/")
        await http.post(signed(), b"{}")
        await http.close()
        await http.close()
        assert http.closed
        with pytest.raises(TransportError, match="closed"):
            await http.post(signed(), b"{}")


def test_only_http_urls() -> None:
    with pytest.raises(ValueError, match="not an http"):
        pool("ftp://example.com/")


def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


async def test_https_verifies_the_server(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    async with serving(lambda n, body: OK, server_context) as server:
        url = f"https://localhost:{server.port}/"
        trusted = pool(url, ssl_context=ssl.create_default_context(cafile=str(cert)))
        for _ in range(2):
            assert (await trusted.post(signed(), b"{}")).body == b"{}"
        await trusted.close()
        assert server.connections == 1
        default = pool(url)  # the system's CAs do not know this certificate
        with pytest.raises(TransportError, match="CERTIFICATE_VERIFY_FAILED"):
            await default.post(signed(), b"{}")
        await default.close()
