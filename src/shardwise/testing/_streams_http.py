"""``StreamsServer``: the scripted streams served over real HTTP from a daemon thread.

One port speaks both protocols: a request whose ``X-Amz-Target`` starts
``Kinesis_20131202.`` goes to the Kinesis Data Streams protocol (JSON 1.1), every other
to the DynamoDB Streams one (JSON 1.0).

``ThreadingHTTPServer`` gives each client connection a thread. Responses use HTTP/1.1
keep-alive so botocore's connection pool reuses its sockets, TCP_NODELAY so a small
response is not held back by Nagle's algorithm, and nothing is logged per request.
``stop()`` also shuts the idle keep-alive connections, so nothing is served after it.
"""

from __future__ import annotations

import contextlib
import enum
import re
import socket
import socketserver
import sys
import threading
import uuid
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self

from shardwise.testing._kinesis_protocol import KINESIS_TARGET, KinesisProtocol
from shardwise.testing._kinesis_state import KinesisRegistry, ScriptedKinesisStream
from shardwise.testing._streams_protocol import StreamsProtocol, error_response
from shardwise.testing._streams_state import ScriptedStream, StreamRegistry

__all__ = ["StreamsServer"]

_SIGNING_REGION = re.compile(r"Credential=[^/,\s]+/\d{8}/([^/,\s]+)/")
_JSON_1_0 = "application/x-amz-json-1.0"  # DynamoDB Streams
_JSON_1_1 = "application/x-amz-json-1.1"  # Kinesis


class _HttpServer(ThreadingHTTPServer):
    daemon_threads = True
    # A worker opens dozens of pooled connections at once; socketserver's default backlog of
    # 5 would drop their SYNs and stall each for a retransmit.
    request_queue_size = 1024

    def __init__(
        self, address: tuple[str, int], protocol: StreamsProtocol, kinesis: KinesisProtocol
    ) -> None:
        self.protocol = protocol
        self.kinesis = kinesis
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(address, _RequestHandler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks up the host's FQDN, which stalls where DNS is slow.
        socketserver.TCPServer.server_bind(self)
        host, port = self.socket.getsockname()[:2]
        self.server_name, self.server_port = host, port

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], OSError):
            return  # the client went away mid-request: nothing to report
        super().handle_error(request, client_address)

    def close_connections(self) -> None:
        with self.connections_lock:
            connections = list(self.connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)


class _RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HttpServer

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self.server.connections_lock:
            self.server.connections.add(self.connection)

    def finish(self) -> None:
        with self.server.connections_lock:
            self.server.connections.discard(self.connection)
        super().finish()

    def do_POST(self) -> None:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            self.close_connection = True
            self._respond(*error_response("SerializationException", "Bad Content-Length"))
            return
        body = self.rfile.read(length) if length > 0 else b""
        match = _SIGNING_REGION.search(self.headers.get("Authorization") or "")
        region = match.group(1) if match else None
        target = self.headers.get("X-Amz-Target") or ""
        if target.startswith(KINESIS_TARGET):
            self._respond(*self.server.kinesis.handle(target, body, region), _JSON_1_1)
        else:
            self._respond(*self.server.protocol.handle(target, body, region))

    def _respond(self, status: int, payload: bytes, content_type: str = _JSON_1_0) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("x-amzn-RequestId", uuid.uuid4().hex)
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        """Log nothing: tests and benchmarks read their own output."""


class _State(enum.Enum):
    UNSTARTED = "unstarted"
    RUNNING = "running"
    STOPPED = "stopped"


class StreamsServer:
    """A DynamoDB Streams and Kinesis Data Streams endpoint over real HTTP, scripted from
    the test that runs it.

    ::

        with StreamsServer() as server:
            stream = server.create_stream("Orders", shards=2)
            stream.put(stream.shard_ids[0], keys={"Id": {"N": "1"}})
            client = boto3.client("dynamodbstreams", endpoint_url=server.endpoint_url)

            events = server.create_kinesis_stream("Events", shards=4)
            events.put(b"hello", partition_key="user-1")
            kinesis = boto3.client("kinesis", endpoint_url=server.endpoint_url)

    Streams can be scripted before ``start()`` and while clients read. A server starts
    once; ``stop()`` is idempotent. Also answers DynamoDB's DescribeTable, so a consumer
    can resolve a table's ``LatestStreamArn``.
    """

    def __init__(
        self, *, host: str = "127.0.0.1", port: int = 0, iterator_ttl_seconds: float = 900.0
    ) -> None:
        self._address = (host, port)
        self._registry = StreamRegistry()
        self._protocol = StreamsProtocol(self._registry, iterator_ttl_seconds=iterator_ttl_seconds)
        self._kinesis_registry = KinesisRegistry(self._registry.lock)
        self._kinesis = KinesisProtocol(self._kinesis_registry, calls=self._protocol.calls)
        self._state = _State.UNSTARTED
        self._http: _HttpServer | None = None
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        where = self.endpoint_url if self._http else self._state.value
        return f"StreamsServer({where}, streams={len(self.streams)})"

    def start(self) -> Self:
        """Bind the port and serve from a daemon thread."""
        if self._state is not _State.UNSTARTED:
            raise RuntimeError(f"a StreamsServer starts once; this one is {self._state.value}")
        self._http = _HttpServer(self._address, self._protocol, self._kinesis)
        self._thread = threading.Thread(
            target=self._http.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"shardwise-streams-server-{self.port}",
            daemon=True,
        )
        self._thread.start()
        self._state = _State.RUNNING
        return self

    def stop(self) -> None:
        """Stop serving, close the port and every open connection."""
        if self._state is not _State.RUNNING or self._http is None or self._thread is None:
            self._state = _State.STOPPED
            return
        self._state = _State.STOPPED
        self._http.shutdown()
        self._http.server_close()
        self._http.close_connections()
        self._thread.join()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._http is None:
            raise RuntimeError("the StreamsServer has not been started")
        return self._http.server_port

    @property
    def endpoint_url(self) -> str:
        """``http://HOST:PORT``, for botocore's ``endpoint_url``."""
        if self._state is not _State.RUNNING:
            raise RuntimeError(f"the StreamsServer is {self._state.value}, not running")
        return f"http://{self._address[0]}:{self.port}"

    @property
    def calls(self) -> Counter[str]:
        """Requests received per operation, of either protocol (injected failures included);
        ``clear()`` resets. A Kinesis stream also counts its own (``calls``)."""
        return self._protocol.calls

    @property
    def iterator_ttl_seconds(self) -> float:
        """DynamoDB Streams iterators older than this fail with ExpiredIteratorException;
        settable any time (a Kinesis stream has its own)."""
        return self._protocol.iterator_ttl_seconds

    @iterator_ttl_seconds.setter
    def iterator_ttl_seconds(self, seconds: float) -> None:
        self._protocol.iterator_ttl_seconds = seconds

    @property
    def streams(self) -> list[ScriptedStream]:
        """Every stream, in creation order."""
        return self._registry.streams()

    def create_stream(
        self,
        table: str,
        *,
        view_type: str = "NEW_AND_OLD_IMAGES",
        region: str = "us-east-1",
        shards: int = 1,
        hash_key: str = "Id",
        range_key: str | None = None,
    ) -> ScriptedStream:
        """A new enabled stream with ``shards`` open shards; it becomes the table's latest."""
        return self._registry.create_stream(
            table,
            view_type=view_type,
            region=region,
            shards=shards,
            hash_key=hash_key,
            range_key=range_key,
        )

    @property
    def kinesis_streams(self) -> list[ScriptedKinesisStream]:
        """Every Kinesis stream, in creation order."""
        return self._kinesis_registry.streams()

    def create_kinesis_stream(
        self,
        name: str,
        *,
        shards: int = 1,
        region: str = "us-east-1",
        limits: bool = True,
        iterator_ttl_seconds: float = 300.0,
    ) -> ScriptedKinesisStream:
        """A new ACTIVE Kinesis data stream with ``shards`` open shards of equal hash ranges.

        ``limits=False`` starts it without the service's rate limits (GetRecords 5 calls
        per second per shard, ListShards 1000 per second); the handle can change them later,
        as it can ``iterator_ttl_seconds`` (5 minutes, as on the service).
        """
        return self._kinesis_registry.create_stream(
            name,
            region=region,
            shards=shards,
            limits=limits,
            iterator_ttl_seconds=iterator_ttl_seconds,
        )

    def stream(self, arn: str) -> ScriptedStream:
        found = self._registry.find(arn)
        if found is None:
            raise ValueError(f"no stream {arn!r}")
        return found

    def fail(
        self,
        operation: str,
        code: str,
        *,
        shard_id: str | None = None,
        times: int | None = 1,
        message: str | None = None,
    ) -> None:
        """Make the next ``times`` DynamoDB Streams calls of ``operation`` fail with ``code``
        (a Kinesis stream scripts its own faults: ``ScriptedKinesisStream.fail``).

        ``shard_id`` (GetRecords, GetShardIterator) limits the fault to calls on one shard;
        ``times=None`` fails every matching call until ``clear_faults()``. Faults queue in
        the order given. InternalServerError answers HTTP 500, every other code 400.
        """
        self._protocol.faults.add(operation, code, shard_id, times, message)

    def clear_faults(self) -> None:
        self._protocol.faults.clear()
