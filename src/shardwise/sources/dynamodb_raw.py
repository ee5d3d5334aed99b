"""DynamoDB Streams over raw HTTP: the GetRecords hot path without botocore's parse round trip.

``DynamoDBStreamsSource`` reads through aiobotocore, which parses every page against the
service model (base64 binaries decoded to bytes, creation times to datetimes) before
``lambda_record`` turns each record back into Lambda's shape. Here the same request is
signed as botocore signs it (``sigv4.EndpointSigner``), sent over one shared, bounded pool
of keep-alive connections (``http.HttpPool``; through ``aiohttp`` when a proxy is set),
and the body is decoded once with ``orjson``: a wire record already *is* Lambda's record
but for ``eventSourceARN`` (added) and ``userIdentity``'s key names (renamed on TTL
deletes). Binary attributes stay the base64 strings the wire has.

Nothing else is re-implemented, so the two sources cannot drift apart:

* DescribeStream and GetShardIterator run through ``DynamoDBStreamsSource`` itself, with
  ``RawStreamsClient`` standing in for the aiobotocore client (it answers the two calls);
* an error response is parsed by botocore's JSON parser and raised as the ``ClientError``
  botocore would raise, inside the same ``mapped_errors`` translation, so every error maps to the
  same ``SourceError`` class.

``tests/sources/test_conformance.py`` holds the two sources to identical pages and errors.
"""

from __future__ import annotations

import ssl
import urllib.request
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Final, Protocol
from urllib.parse import urlsplit

import aiohttp
import orjson
from aiobotocore.session import AioSession
from botocore.credentials import ReadOnlyCredentials, RefreshableCredentials
from botocore.exceptions import ClientError, NoCredentialsError
from botocore.parsers import JSONParser

from shardwise import __version__
from shardwise.config import AwsConfig
from shardwise.errors import ConfigError, SourceError
from shardwise.records import Position, RecordPage, ShardId, ShardListing, StreamRecord
from shardwise.sources.dynamodb import MALFORMED, DynamoDBStreamsSource, mapped_errors
from shardwise.sources.http import HttpPool, Response
from shardwise.sources.sigv4 import EndpointSigner

__all__ = [
    "DEFAULT_MAX_CONNECTIONS",
    "AiohttpTransport",
    "RawDynamoDBStreamsSource",
    "RawStreamsClient",
    "Transport",
    "open_raw_client",
    "open_raw_source",
    "proxy_for",
]

# Connections kept open to the endpoint, shared by every shard: the same bound as the
# aiobotocore client's ``max_pool_connections`` (``supervisor.aws_client_config``).
DEFAULT_MAX_CONNECTIONS: Final = 64
# The aiobotocore client's connect and read timeouts.
CONNECT_TIMEOUT_S: Final = 5.0
READ_TIMEOUT_S: Final = 20.0

_TARGET_PREFIX: Final = "DynamoDBStreams_20120810."
_SIGNING_NAME: Final = "dynamodb"  # DynamoDB Streams signs as the dynamodb service
_ERROR_PARSER: Final = JSONParser()


class _Signer:
    """SigV4 for one endpoint (``EndpointSigner``, held to botocore's signer by the tests);
    static credentials are frozen once, refreshable ones (assumed roles, instance
    profiles, SSO) are asked for a fresh copy per request, which costs nothing until they
    are near expiry."""

    def __init__(self, credentials: Any, url: str, region: str) -> None:
        self._credentials = credentials
        self._refreshable = isinstance(credentials, RefreshableCredentials)
        self._frozen: ReadOnlyCredentials | None = None
        self._endpoint = EndpointSigner(url, region=region, service=_SIGNING_NAME)

    async def headers(self, target: str, body: bytes) -> dict[str, str]:
        return self._endpoint.headers(await self._current(), target, body)

    async def _current(self) -> ReadOnlyCredentials:
        if self._credentials is None:
            # What botocore's signer raises on every call of a client without credentials;
            # it maps to the same SourceError.
            raise NoCredentialsError
        if self._refreshable:
            frozen: ReadOnlyCredentials = await self._credentials.get_frozen_credentials()
            return frozen
        if self._frozen is None:
            self._frozen = await self._credentials.get_frozen_credentials()
        return self._frozen


def _client_error(operation: str, status: int, headers: Any, body: bytes) -> ClientError:
    """The exception botocore raises for this error response (same code, message, status)."""
    response = {"status_code": status, "headers": headers, "body": body}
    # The output shape only shapes a success; an error parses the same without it.
    parsed = _ERROR_PARSER.parse(response, None)  # type: ignore[arg-type]
    return ClientError(parsed, operation)


def _json_object(body: bytes, operation: str, where: str) -> dict[str, Any]:
    """A successful response's JSON object; anything else is a failed call, never a page."""
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise SourceError(
            f"{operation} on {where}: the response is not JSON: {exc}", code=MALFORMED
        ) from exc
    if not isinstance(value, dict):
        raise SourceError(f"{operation} on {where}: the response is not an object", code=MALFORMED)
    return value


class Transport(Protocol):
    """Sends a signed request to the endpoint: ``HttpPool``, or ``AiohttpTransport``."""

    @property
    def closed(self) -> bool: ...

    async def post(self, headers: Mapping[str, str], body: bytes) -> Response: ...

    async def close(self) -> None: ...


class AiohttpTransport:
    """The same requests through an ``aiohttp`` session: used when a proxy is configured
    (``aiohttp`` tunnels through it; ``HttpPool`` speaks to the endpoint directly)."""

    def __init__(self, url: str, session: aiohttp.ClientSession) -> None:
        self._url = url
        self._session = session

    @property
    def closed(self) -> bool:
        return self._session.closed

    async def post(self, headers: Mapping[str, str], body: bytes) -> Response:
        async with self._session.post(
            self._url, data=body, headers=headers, allow_redirects=False
        ) as response:
            payload = await response.read()
            names = {name.lower(): value for name, value in response.headers.items()}
            return Response(response.status, names, payload)

    async def close(self) -> None:
        await self._session.close()


class RawStreamsClient:
    """Signed DynamoDB Streams JSON calls over one pooled ``Transport``.

    ``call`` returns the body of a successful response and raises what botocore raises
    otherwise (``ClientError``), or the transport's error (``TransportError``,
    ``aiohttp.ClientError``, ``TimeoutError``), so ``mapped_errors`` translates them all.
    ``describe_stream`` and ``get_shard_iterator`` make it usable as
    ``DynamoDBStreamsSource``'s client. Open one with ``open_raw_client``; share it
    between the sources of one process.
    """

    def __init__(
        self,
        http: Transport,
        *,
        endpoint_url: str,
        region: str,
        credentials: Any,
    ) -> None:
        self._http = http
        self._url = endpoint_url.rstrip("/") + "/"
        self._region = region
        self._signer = _Signer(credentials, self._url, region)

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<RawStreamsClient {self._url} {self._region} {state}>"

    @property
    def endpoint_url(self) -> str:
        return self._url

    @property
    def region(self) -> str:
        return self._region

    @property
    def closed(self) -> bool:
        return self._http.closed

    async def call(self, operation: str, params: Mapping[str, Any]) -> bytes:
        """POST one operation; the response body, or botocore's ``ClientError`` for it."""
        body = orjson.dumps(params)
        headers = await self._signer.headers(_TARGET_PREFIX + operation, body)
        response = await self._http.post(headers, body)
        if response.status >= 300:
            raise _client_error(operation, response.status, response.headers, response.body)
        return response.body

    async def describe_stream(self, **params: Any) -> dict[str, Any]:
        body = await self.call("DescribeStream", params)
        return _json_object(body, "DescribeStream", f"stream {params.get('StreamArn')}")

    async def get_shard_iterator(self, **params: Any) -> dict[str, Any]:
        body = await self.call("GetShardIterator", params)
        where = f"shard {params.get('ShardId')} of {params.get('StreamArn')}"
        return _json_object(body, "GetShardIterator", where)

    async def close(self) -> None:
        """Close the pooled connections. Closing twice is harmless."""
        await self._http.close()

    async def __aenter__(self) -> RawStreamsClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()


def _lambda_records(records: list[StreamRecord], stream_arn: str) -> list[StreamRecord]:
    """Turn decoded wire records into Lambda's records, in place (see ``lambda_record``).

    The per-record work is what differs between the two shapes and nothing more: the
    stream ARN, ``userIdentity``'s key names, and a creation time sent as a whole float
    (``1.4794997E9``) delivered as the integer Lambda shows.
    """
    for record in records:
        record["eventSourceARN"] = stream_arn
        if "userIdentity" in record:
            identity = record.pop("userIdentity")
            if identity:
                record["userIdentity"] = {
                    "type": identity.get("Type"),
                    "principalId": identity.get("PrincipalId"),
                }
        stream = record["dynamodb"]
        created = stream.get("ApproximateCreationDateTime")
        if created.__class__ is float and created.is_integer():
            stream["ApproximateCreationDateTime"] = int(created)
    return records


class RawDynamoDBStreamsSource:
    """Reads one DynamoDB stream through a ``RawStreamsClient`` (a ``ShardSource``)."""

    def __init__(
        self, client: RawStreamsClient, stream_arn: str, *, owns_client: bool = False
    ) -> None:
        self._client = client
        self._stream_arn = stream_arn
        self._owns_client = owns_client
        self._listing = DynamoDBStreamsSource(client, stream_arn)

    def __repr__(self) -> str:
        return f"<RawDynamoDBStreamsSource {self._stream_arn} via {self._client!r}>"

    @property
    def stream_arn(self) -> str:
        return self._stream_arn

    @property
    def client(self) -> RawStreamsClient:
        return self._client

    async def describe(self) -> ShardListing:
        """All shards and the status, exactly as ``DynamoDBStreamsSource.describe``."""
        return await self._listing.describe()

    async def get_iterator(self, shard_id: ShardId, position: Position) -> str:
        return await self._listing.get_iterator(shard_id, position)

    async def get_records(self, shard_id: ShardId, iterator: str, limit: int) -> RecordPage:
        where = f"shard {shard_id} of {self._stream_arn}"
        with mapped_errors("GetRecords", where, shard_op=True):
            body = await self._client.call(
                "GetRecords", {"ShardIterator": iterator, "Limit": limit}
            )
        response = _json_object(body, "GetRecords", where)
        records = response.get("Records")
        if not isinstance(records, list):
            # Not a closed shard's last page (that has "Records": []): never finish on it.
            raise SourceError(f"GetRecords on {where}: the response has no Records", code=MALFORMED)
        return RecordPage(
            records=_lambda_records(records, self._stream_arn),
            next_iterator=response.get("NextShardIterator"),
        )

    async def close(self) -> None:
        """Close the client if this source opened it (``open_raw_source``)."""
        if self._owns_client:
            await self._client.close()


def proxy_for(url: str) -> str | None:
    """The proxy HTTPS_PROXY / HTTP_PROXY name for ``url`` unless NO_PROXY exempts it, as
    botocore decides, read once: aiohttp's ``trust_env`` would look the environment and
    ~/.netrc up again on every request, in a thread."""
    parts = urlsplit(url)
    if urllib.request.proxy_bypass(parts.hostname or ""):
        return None
    return urllib.request.getproxies_environment().get(parts.scheme)


async def open_raw_client(
    aws: AwsConfig, *, max_connections: int = DEFAULT_MAX_CONNECTIONS
) -> RawStreamsClient:
    """A client for ``aws`` (region, endpoint, profile), credentials resolved once.

    Region and credentials come from ``aws`` first, then botocore's usual chain, as for
    the aiobotocore clients; the endpoint is ``aws.endpoint_url`` or the region's public
    DynamoDB Streams endpoint.
    """
    session = AioSession(profile=aws.profile) if aws.profile else AioSession()
    region = aws.region or session.get_config_variable("region")
    if not region:
        raise ConfigError(
            ["aws.region: no region configured; set it here or in AWS_REGION / the profile"]
        )
    credentials = await session.get_credentials()
    # As botocore: AWS_CA_BUNDLE or the profile's ca_bundle, else the system's CAs.
    ca_bundle = session.get_config_variable("ca_bundle")
    tls = ssl.create_default_context(cafile=ca_bundle) if ca_bundle else None
    endpoint_url = aws.endpoint_url or f"https://streams.dynamodb.{region}.amazonaws.com"
    url = endpoint_url.rstrip("/") + "/"
    # As botocore: no compression asked for.
    headers = {"User-Agent": f"shardwise/{__version__}", "Accept-Encoding": "identity"}
    proxy = proxy_for(url)
    http: Transport
    if proxy is None:
        http = HttpPool(
            url,
            max_connections=max_connections,
            connect_timeout_s=CONNECT_TIMEOUT_S,
            read_timeout_s=READ_TIMEOUT_S,
            headers=headers,
            ssl_context=tls,
        )
    else:
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=max_connections, ssl=tls or True),
            timeout=aiohttp.ClientTimeout(
                total=None, sock_connect=CONNECT_TIMEOUT_S, sock_read=READ_TIMEOUT_S
            ),
            headers=headers,
            proxy=proxy,
        )
        http = AiohttpTransport(url, session)
    return RawStreamsClient(
        http, endpoint_url=endpoint_url, region=str(region), credentials=credentials
    )


async def open_raw_source(
    aws: AwsConfig, stream_arn: str, *, max_connections: int = DEFAULT_MAX_CONNECTIONS
) -> RawDynamoDBStreamsSource:
    """A source with a client of its own; ``await source.close()`` closes both."""
    client = await open_raw_client(aws, max_connections=max_connections)
    return RawDynamoDBStreamsSource(client, stream_arn, owns_client=True)
