"""The raw-HTTP source's own concerns: signing, credentials, the connection bound, set-up."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiobotocore.credentials import AioCredentials, AioRefreshableCredentials
from aiohttp import web
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import ReadOnlyCredentials

from shardwise.config import AwsConfig
from shardwise.errors import ConfigError, SourceError
from shardwise.records import ShardId
from shardwise.sources import dynamodb_raw, sigv4
from shardwise.sources.credentials import ResolveCredentials
from shardwise.sources.dynamodb_raw import (
    RawDynamoDBStreamsSource,
    RawStreamsClient,
    open_raw_client,
    proxy_for,
)
from shardwise.sources.http import HttpPool
from shardwise.sources.transport import AiohttpTransport, Transport
from tests.sources.test_http import self_signed
from tests.sources.test_http_hostile import answering, hostile, read_request

ARN = "arn:aws:dynamodb:us-east-1:123456789012:table/Raw/stream/2024-01-01T00:00:00.000"
EMPTY_PAGE = b'{"Records":[],"NextShardIterator":"next"}'


class Endpoint:
    """A local endpoint that records each request and answers with an empty page."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.url = ""
        self.in_flight = 0
        self.peak_in_flight = 0
        self.answered = 0
        self._delay_s = delay_s

    async def answer(self, request: web.Request) -> web.Response:
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            body = await request.read()
            self.requests.append((dict(request.headers), body))
            await asyncio.sleep(self._delay_s)
            self.answered += 1
            return web.Response(body=EMPTY_PAGE, content_type="application/x-amz-json-1.0")
        finally:
            self.in_flight -= 1


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Endpoint], Awaitable[str]]]:
    runners: list[web.AppRunner] = []

    async def start(endpoint: Endpoint) -> str:
        app = web.Application()
        app.router.add_post("/", endpoint.answer)
        runner = web.AppRunner(app)
        await runner.setup()
        runners.append(runner)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        endpoint.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        return endpoint.url

    yield start
    for runner in runners:
        await runner.cleanup()


RawClient = Callable[..., RawStreamsClient]


@pytest.fixture(params=["pool", "aiohttp"])
def raw_client(request: pytest.FixtureRequest) -> RawClient:
    """Makes clients over each transport: the keep-alive pool (direct) and aiohttp
    (the one used behind a proxy)."""

    def make(
        url: str,
        credentials: Any,
        *,
        limit: int = 8,
        resolve_credentials: ResolveCredentials | None = None,
    ) -> RawStreamsClient:
        endpoint = url.rstrip("/") + "/"
        http: Transport
        if request.param == "pool":
            http = HttpPool(endpoint, max_connections=limit, connect_timeout_s=5, read_timeout_s=5)
        else:
            session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=limit))
            http = AiohttpTransport(endpoint, session, max_connections=limit)
        return RawStreamsClient(
            http,
            endpoint_url=url,
            region="us-east-1",
            credentials=credentials,
            resolve_credentials=resolve_credentials,
        )

    return make


def signature_of(url: str, headers: dict[str, str], body: bytes, secret: str) -> str:
    """Recompute the SigV4 signature from what arrived on the wire."""
    authorization = headers["Authorization"]
    signed = authorization.split("SignedHeaders=")[1].split(",")[0].split(";")
    access_key = authorization.split("Credential=")[1].split("/")[0]
    wire = {name: value for name, value in headers.items() if name.lower() in signed}
    request = AWSRequest(method="POST", url=url + "/", data=body, headers=wire)
    request.context["timestamp"] = headers["X-Amz-Date"]
    signer = SigV4Auth(ReadOnlyCredentials(access_key, secret, None), "dynamodb", "us-east-1")
    return signer.signature(
        signer.string_to_sign(request, signer.canonical_request(request)), request
    )


class TestSigning:
    """Requests carry a SigV4 signature over exactly the headers and body that were sent."""

    async def test_signature_covers_what_was_sent(
        self, serve: Callable[[Endpoint], Awaitable[str]], raw_client: RawClient
    ) -> None:
        endpoint = Endpoint()
        url = await serve(endpoint)
        credentials = AioCredentials("AKIDEXAMPLE", "secret-key", "session-token")
        async with raw_client(url, credentials) as client:
            source = RawDynamoDBStreamsSource(client, ARN)
            page = await source.get_records(ShardId("shardId-1"), "iterator-1", 500)
        assert not page.records
        [(headers, body)] = endpoint.requests
        assert headers["X-Amz-Target"] == "DynamoDBStreams_20120810.GetRecords"
        assert headers["X-Amz-Security-Token"] == "session-token"
        assert body == b'{"ShardIterator":"iterator-1","Limit":500}'
        signed = headers["Authorization"].split("SignedHeaders=")[1].split(",")[0]
        assert signed == "content-type;host;x-amz-date;x-amz-security-token;x-amz-target"
        assert "/us-east-1/dynamodb/aws4_request" in headers["Authorization"]
        expected = headers["Authorization"].rsplit("Signature=", 1)[1]
        assert signature_of(url, headers, body, "secret-key") == expected

    async def test_refreshable_credentials_are_refreshed(
        self, serve: Callable[[Endpoint], Awaitable[str]], raw_client: RawClient
    ) -> None:
        endpoint = Endpoint()
        url = await serve(endpoint)
        refreshed = 0

        async def refresh() -> dict[str, str]:
            nonlocal refreshed
            refreshed += 1
            expiry = datetime.now(UTC) + timedelta(hours=1)
            return {
                "access_key": f"AKIDNEW{refreshed}",
                "secret_key": "new-secret",
                "token": "new-token",
                "expiry_time": expiry.isoformat(),
            }

        credentials = AioRefreshableCredentials(
            "AKIDOLD",
            "old-secret",
            "old-token",
            datetime.now(UTC) + timedelta(seconds=30),  # inside the refresh window
            refresh,
            "test",
        )
        async with raw_client(url, credentials) as client:
            source = RawDynamoDBStreamsSource(client, ARN)
            for _ in range(3):
                await source.get_records(ShardId("shardId-1"), "iterator", 10)
        keys = [
            h["Authorization"].split("Credential=")[1].split("/")[0] for h, _ in endpoint.requests
        ]
        assert keys == ["AKIDNEW1"] * 3
        assert refreshed == 1
        headers, body = endpoint.requests[-1]
        expected = headers["Authorization"].rsplit("Signature=", 1)[1]
        assert signature_of(url, headers, body, "new-secret") == expected

    async def test_no_credentials_fails_each_call(
        self, serve: Callable[[Endpoint], Awaitable[str]], raw_client: RawClient
    ) -> None:
        endpoint = Endpoint()
        url = await serve(endpoint)
        async with raw_client(url, None) as client:
            source = RawDynamoDBStreamsSource(client, ARN)
            with pytest.raises(SourceError) as caught:
                await source.get_records(ShardId("shardId-1"), "iterator", 10)
        assert caught.value.code == "NoCredentialsError"
        assert caught.value.retriable
        assert not endpoint.requests


class TestUnsendableHeaders:
    """A header the transport refuses to write (a control character: CR, LF, NUL...)
    fails the call with a ``SourceError`` naming the call and the header (never its
    value, a secret), not a bare ``ValueError``; nothing is sent."""

    @pytest.mark.parametrize("token", ["token\r\nX-Injected: 1", "token\x00"])
    async def test_a_session_token_with_a_control_character(
        self, serve: Callable[[Endpoint], Awaitable[str]], raw_client: RawClient, token: str
    ) -> None:
        endpoint = Endpoint()
        url = await serve(endpoint)
        credentials = AioCredentials("AKID", "secret", token)
        async with raw_client(url, credentials) as client:
            source = RawDynamoDBStreamsSource(client, ARN)
            with pytest.raises(SourceError) as reading:
                await source.get_records(ShardId("shardId-1"), "iterator", 10)
            with pytest.raises(SourceError) as listing:
                await source.describe()
        assert reading.value.code == listing.value.code == "InvalidHeaderError"
        assert str(reading.value).startswith(f"GetRecords on shard shardId-1 of {ARN}: ")
        assert str(listing.value).startswith(f"DescribeStream on stream {ARN}: ")
        for error in (reading.value, listing.value):
            assert "'X-Amz-Security-Token'" in str(error)
            assert "X-Injected" not in str(error)
            assert isinstance(error.__cause__, ValueError)
        assert not endpoint.requests


class ExpiringEndpoint(Endpoint):
    """Refuses requests signed with an expired access key, as AWS does."""

    def __init__(self, expired: set[str]) -> None:
        super().__init__()
        self.expired = expired

    async def answer(self, request: web.Request) -> web.Response:
        key = request.headers["Authorization"].split("Credential=")[1].split("/")[0]
        if key not in self.expired:
            return await super().answer(request)
        self.requests.append((dict(request.headers), await request.read()))
        body = (
            b'{"__type":"com.amazon.coral.service#ExpiredTokenException",'
            b'"message":"The security token included in the request is expired"}'
        )
        return web.Response(status=400, body=body, content_type="application/x-amz-json-1.0")


def access_keys(endpoint: Endpoint) -> list[str]:
    return [h["Authorization"].split("Credential=")[1].split("/")[0] for h, _ in endpoint.requests]


class TestExpiredCredentials:
    """Keys the endpoint calls expired are resolved again from the provider chain; the call
    fails with a clear, retriable error, and the next one goes out with the new keys."""

    async def test_the_next_call_uses_the_chains_new_keys(
        self, serve: Callable[[Endpoint], Awaitable[str]], raw_client: RawClient
    ) -> None:
        endpoint = ExpiringEndpoint({"AKIDOLD"})
        url = await serve(endpoint)
        resolved = 0

        async def chain() -> AioCredentials:
            nonlocal resolved
            resolved += 1
            return AioCredentials(f"AKIDNEW{resolved}", "new-secret", "new-token")

        old = AioCredentials("AKIDOLD", "old-secret", "old-token")
        async with raw_client(url, old, resolve_credentials=chain) as client:
            source = RawDynamoDBStreamsSource(client, ARN)
            with pytest.raises(SourceError) as caught:
                await source.get_records(ShardId("shardId-1"), "iterator", 10)
            assert caught.value.code == "ExpiredTokenException"
            assert caught.value.retriable
            assert "security token included in the request is expired" in str(caught.value)
            assert "shardId-1" in str(caught.value)
            for _ in range(2):
                await source.get_records(ShardId("shardId-1"), "iterator", 10)
        assert access_keys(endpoint) == ["AKIDOLD", "AKIDNEW1", "AKIDNEW1"]
        assert resolved == 1

    async def test_a_chain_still_handing_out_expired_keys_is_not_hammered(
        self, serve: Callable[[Endpoint], Awaitable[str]], raw_client: RawClient
    ) -> None:
        endpoint = ExpiringEndpoint({"AKIDOLD"})
        url = await serve(endpoint)
        resolved = 0

        async def stale_chain() -> AioCredentials:
            nonlocal resolved
            resolved += 1
            return AioCredentials("AKIDOLD", "old-secret", "old-token")

        old = AioCredentials("AKIDOLD", "old-secret", "old-token")
        async with raw_client(url, old, resolve_credentials=stale_chain) as client:
            source = RawDynamoDBStreamsSource(client, ARN)
            for _ in range(5):
                with pytest.raises(SourceError, match="ExpiredTokenException"):
                    await source.get_records(ShardId("shardId-1"), "iterator", 10)
        assert len(endpoint.requests) == 5  # every call is made and fails loudly
        assert resolved == 1  # the chain is asked at most once per RENEW_INTERVAL_S


class TestConnections:
    """One bounded pool: concurrent shards never open more than ``max_connections``."""

    async def test_concurrency_is_bounded(
        self, serve: Callable[[Endpoint], Awaitable[str]], raw_client: RawClient
    ) -> None:
        endpoint = Endpoint(delay_s=0.05)
        url = await serve(endpoint)
        credentials = AioCredentials("AKID", "secret")
        async with raw_client(url, credentials, limit=3) as client:
            source = RawDynamoDBStreamsSource(client, ARN)
            async with asyncio.TaskGroup() as tasks:
                for n in range(12):
                    tasks.create_task(source.get_records(ShardId(f"s{n}"), "iterator", 10))
        assert len(endpoint.requests) == 12
        assert endpoint.peak_in_flight == 3

    async def test_close(self, serve: Callable[[Endpoint], Awaitable[str]]) -> None:
        url = await serve(Endpoint())
        client = await open_raw_client(AwsConfig(region="us-east-1", endpoint_url=url))
        shared = RawDynamoDBStreamsSource(client, ARN)
        await shared.close()  # does not own the client
        assert repr(client).endswith(" open>")
        await client.close()
        await client.close()
        assert client.closed
        assert repr(client).endswith(" closed>")


class TestOpen:
    """Region and endpoint come from the settings first, then botocore's chain."""

    async def test_region_and_default_endpoint(self) -> None:
        client = await open_raw_client(AwsConfig(region="eu-west-2"))
        async with client:
            assert client.region == "eu-west-2"
            assert client.endpoint_url == "https://streams.dynamodb.eu-west-2.amazonaws.com/"

    async def test_region_from_the_environment(self) -> None:
        async with await open_raw_client(AwsConfig()) as client:
            assert client.region == "us-east-1"  # AWS_DEFAULT_REGION, set in conftest

    async def test_no_region(self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
        monkeypatch.delenv("AWS_DEFAULT_REGION")
        monkeypatch.delenv("AWS_REGION", raising=False)
        monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
        with pytest.raises(ConfigError, match=r"aws\.region"):
            await open_raw_client(AwsConfig())

    def test_proxy_from_the_environment(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
        monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
        assert proxy_for("https://streams.dynamodb.us-east-1.amazonaws.com") == (
            "http://proxy.internal:3128"
        )
        assert proxy_for("https://127.0.0.1:4566") is None
        assert proxy_for("http://streams.example") is None  # no HTTP_PROXY set

    async def test_a_proxy_sends_through_aiohttp(
        self, serve: Callable[[Endpoint], Awaitable[str]], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The keep-alive pool speaks to the endpoint directly; with a proxy configured the
        requests go through aiohttp (which tunnels) and still reach the endpoint signed."""
        endpoint = Endpoint()
        url = await serve(endpoint)
        forwarded: list[str] = []

        async def forward(request: web.Request) -> web.Response:
            # A plain HTTP proxy receives the absolute URL and passes the request on.
            forwarded.append(str(request.url))
            async with aiohttp.ClientSession() as session:
                # The Host header arrives as the client set it (the endpoint's host:port).
                headers = dict(request.headers.items())
                async with session.post(
                    str(request.url), data=await request.read(), headers=headers
                ) as reply:
                    return web.Response(body=await reply.read(), status=reply.status)

        proxy_app = web.Application()
        proxy_app.router.add_route("*", "/{tail:.*}", forward)
        runner = web.AppRunner(proxy_app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        try:
            monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{runner.addresses[0][1]}")
            monkeypatch.setenv("NO_PROXY", "")
            monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDPROXY")
            monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "proxy-secret")
            client = await open_raw_client(AwsConfig(region="us-east-1", endpoint_url=url))
            async with client:
                page = await RawDynamoDBStreamsSource(client, ARN).get_records(
                    ShardId("shardId-1"), "iterator", 10
                )
        finally:
            await runner.cleanup()
        assert not page.records
        assert forwarded == [url + "/"]
        [(headers, body)] = endpoint.requests
        expected = headers["Authorization"].rsplit("Signature=", 1)[1]
        assert signature_of(url, headers, body, "proxy-secret") == expected

    async def test_ca_bundle_as_botocore_reads_it(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """AWS_CA_BUNDLE (or a profile's ca_bundle) decides which CAs an HTTPS endpoint is
        verified against, as for botocore's clients; without it the system's are used."""
        cert, key = self_signed(tmp_path)
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(cert, key)
        endpoint = Endpoint()
        app = web.Application()
        app.router.add_post("/", endpoint.answer)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls).start()
        url = f"https://localhost:{runner.addresses[0][1]}"
        try:
            monkeypatch.setenv("AWS_CA_BUNDLE", str(cert))
            async with await open_raw_client(AwsConfig(endpoint_url=url)) as client:
                page = await RawDynamoDBStreamsSource(client, ARN).get_records(
                    ShardId("shardId-1"), "iterator", 10
                )
            assert not page.records
            monkeypatch.delenv("AWS_CA_BUNDLE")
            async with await open_raw_client(AwsConfig(endpoint_url=url)) as client:
                with pytest.raises(SourceError, match="CERTIFICATE_VERIFY_FAILED"):
                    await RawDynamoDBStreamsSource(client, ARN).get_records(
                        ShardId("shardId-1"), "iterator", 10
                    )
        finally:
            await runner.cleanup()
        assert len(endpoint.requests) == 1


class TestRegion:
    """The region goes into the endpoint's host name and every signature: it must be one
    host label, as botocore requires (and not followed by a newline botocore's ``$`` lets
    through)."""

    @pytest.mark.parametrize(
        "region",
        [
            "us-east-1.evil.example#",
            "us-east-1\r\nX-Injected: 1",
            "us-east-1\n",
            "-us-east-1",
            "us-east-1-",
            "us east 1",
            "a" * 64,
            "123",
        ],
    )
    async def test_refused(self, region: str) -> None:
        with pytest.raises(ConfigError, match=r"aws\.region: .* is not a valid region"):
            await open_raw_client(AwsConfig(region=region))

    async def test_refused_from_the_environment(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("AWS_DEFAULT_REGION", "evil.example#")
        with pytest.raises(ConfigError, match=r"aws\.region: 'evil\.example#'"):
            await open_raw_client(AwsConfig())

    @pytest.mark.parametrize("region", ["us-east-1", "eu-central-2", "us-gov-west-1", "x"])
    async def test_accepted(self, region: str) -> None:
        async with await open_raw_client(AwsConfig(region=region)) as client:
            assert client.region == region


class TestSignedWhenSent:
    """A request is signed once a connection is free for it, not before waiting for one:
    with every connection busy for long, a signature made up front would age (SigV4
    allows 15 minutes)."""

    async def test_the_wait_for_a_connection_is_not_in_the_signature(
        self,
        serve: Callable[[Endpoint], Awaitable[str]],
        raw_client: RawClient,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        endpoint = Endpoint(delay_s=0.2)
        url = await serve(endpoint)
        before = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
        after = datetime(2024, 5, 1, 12, 7, tzinfo=UTC)

        class Clock(datetime):
            """The signer's clock: ``after`` once the first call was answered."""

            @classmethod
            def now(cls, tz: Any = None) -> Clock:
                moment = after if endpoint.answered else before
                return cls.fromtimestamp(moment.timestamp(), tz)

        monkeypatch.setattr(sigv4, "datetime", Clock)
        credentials = AioCredentials("AKID", "secret")
        async with raw_client(url, credentials, limit=1) as client:
            source = RawDynamoDBStreamsSource(client, ARN)
            async with asyncio.TaskGroup() as tasks:
                for n in range(2):
                    tasks.create_task(source.get_records(ShardId(f"s{n}"), "iterator", 10))
        dates = [headers["X-Amz-Date"] for headers, _ in endpoint.requests]
        assert dates == ["20240501T120000Z", "20240501T120700Z"]
        headers, body = endpoint.requests[1]
        expected = headers["Authorization"].rsplit("Signature=", 1)[1]
        assert signature_of(url, headers, body, "secret") == expected


class TestProxies:
    """The proxy is the one botocore (so aiobotocore) would use for the endpoint."""

    def test_no_proxy_names_a_host_and_port(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("HTTP_PROXY", "http://proxy.internal:3128")
        monkeypatch.setenv("NO_PROXY", "localhost:4566")
        assert proxy_for("http://localhost:4566") is None
        assert proxy_for("http://localhost:4567") == "http://proxy.internal:3128"

    @pytest.mark.parametrize(
        ("setting", "proxy"),
        [
            ("proxy.internal:3128", "http://proxy.internal:3128"),
            ("//proxy.internal:3128", "http://proxy.internal:3128"),
            ("https://proxy.internal:3129", "https://proxy.internal:3129"),
        ],
    )
    def test_a_proxy_without_a_scheme(
        self, monkeypatch: pytest.MonkeyPatch, setting: str, proxy: str
    ) -> None:
        monkeypatch.setenv("HTTPS_PROXY", setting)
        monkeypatch.delenv("NO_PROXY", raising=False)
        assert proxy_for("https://streams.dynamodb.us-east-1.amazonaws.com") == proxy

    async def test_a_scheme_less_proxy_is_used(
        self, serve: Callable[[Endpoint], Awaitable[str]], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """``HTTP_PROXY=host:port`` opens (it crashed start-up) and sends through it."""
        endpoint = Endpoint()
        url = await serve(endpoint)
        forwarded: list[bytes] = []

        async def forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            head, body = await read_request(reader)
            forwarded.append(head.split(b" ")[1])
            headers = dict(line.decode().split(": ", 1) for line in head.split(b"\r\n")[1:] if line)
            async with (
                aiohttp.ClientSession() as session,
                session.post(head.split(b" ")[1].decode(), data=body, headers=headers) as reply,
            ):
                payload = await reply.read()
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(payload), payload)
            )
            await writer.drain()

        async with hostile(forward) as proxy:
            monkeypatch.setenv("HTTP_PROXY", f"127.0.0.1:{proxy.port}")
            monkeypatch.setenv("NO_PROXY", "")
            async with await open_raw_client(AwsConfig(endpoint_url=url)) as client:
                page = await RawDynamoDBStreamsSource(client, ARN).get_records(
                    ShardId("shardId-1"), "iterator", 10
                )
        assert not page.records
        assert forwarded == [f"{url}/".encode()]
        assert len(endpoint.requests) == 1

    async def test_a_proxied_call_has_a_total_timeout(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A reply trickling in a byte at a time never trips the read timeout between
        bytes; the call still ends after the connect and read timeouts together."""

        async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n")
            while True:
                writer.write(b" ")
                await writer.drain()
                await asyncio.sleep(0.05)

        monkeypatch.setattr(dynamodb_raw, "CONNECT_TIMEOUT_S", 0.3)
        monkeypatch.setattr(dynamodb_raw, "READ_TIMEOUT_S", 0.3)
        async with hostile(trickle) as proxy:
            monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.port}")
            monkeypatch.setenv("NO_PROXY", "")
            started = time.monotonic()
            async with (
                asyncio.timeout(5),
                await open_raw_client(AwsConfig(endpoint_url="http://streams.test")) as client,
            ):
                with pytest.raises(SourceError, match="Timeout"):
                    await RawDynamoDBStreamsSource(client, ARN).get_records(
                        ShardId("shardId-1"), "iterator", 10
                    )
            assert time.monotonic() - started < 2.0

    async def test_a_proxied_reply_over_the_body_cap(self, monkeypatch: pytest.MonkeyPatch) -> None:
        async with hostile(
            answering(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000000\r\n\r\n")
        ) as proxy:
            monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.port}")
            monkeypatch.setenv("NO_PROXY", "")
            async with (
                asyncio.timeout(5),
                await open_raw_client(AwsConfig(endpoint_url="http://streams.test")) as client,
            ):
                with pytest.raises(SourceError, match="body is over"):
                    await RawDynamoDBStreamsSource(client, ARN).get_records(
                        ShardId("shardId-1"), "iterator", 10
                    )
