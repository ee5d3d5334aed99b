"""DynamoDB Streams over raw HTTP: the GetRecords hot path without botocore's parse round trip.

``DynamoDBStreamsSource`` reads through aiobotocore, which parses every page against the
service model (base64 binaries decoded to bytes, creation times to datetimes) before
``lambda_record`` turns each record back into Lambda's shape. Here the same request is
signed as botocore signs it (``credentials.RequestSigner``), sent over one shared, bounded
pool of keep-alive connections (``http.HttpPool``; through ``aiohttp`` when a proxy is set:
``transport.AiohttpTransport``), and the body is decoded once with ``orjson``: a wire
record already *is* Lambda's record but for a few keys (``dynamodb_records``).

This module holds the client (``RawStreamsClient``: signed calls, error responses, expired
credentials), the source over it (``RawDynamoDBStreamsSource``) and their set-up from the
settings (``open_raw_client``: region, endpoint, credentials, TLS, proxy).

Nothing else is re-implemented, so the two sources cannot drift apart:

* DescribeStream and GetShardIterator run through ``DynamoDBStreamsSource`` itself, with
  ``RawStreamsClient`` standing in for the aiobotocore client (it answers the two calls);
* an error response is parsed by botocore's JSON parser and raised as the ``ClientError``
  botocore would raise, inside the same ``mapped_errors`` translation, so every error maps to the
  same ``SourceError`` class.

``tests/sources/test_conformance.py`` holds the two sources to identical pages and errors.
"""

from __future__ import annotations

import re
import ssl
from collections.abc import Mapping
from functools import partial
from types import TracebackType
from typing import Any, Final

import aiohttp
import orjson
import structlog
from botocore.exceptions import ClientError, InvalidRegionError, NoCredentialsError
from botocore.httpsession import ProxyConfiguration
from botocore.parsers import JSONParser
from botocore.utils import get_environ_proxies, validate_region_name

from shardwise import __version__
from shardwise.aws import aws_session, resolve_endpoint
from shardwise.config import AwsConfig
from shardwise.errors import ConfigError, SourceError
from shardwise.records import Position, RecordPage, ShardId, ShardListing
from shardwise.sources.credentials import (
    EXPIRED_CREDENTIAL_CODES,
    RequestSigner,
    ResolveCredentials,
)
from shardwise.sources.dynamodb import (
    MALFORMED,
    READ_LIMITS,
    DynamoDBStreamsSource,
    mapped_errors,
)
from shardwise.sources.dynamodb_records import lambda_records
from shardwise.sources.http import HttpPool
from shardwise.sources.sigv4 import DYNAMODB_STREAMS, JsonApi
from shardwise.sources.transport import AiohttpTransport, Transport

__all__ = [
    "CONNECT_TIMEOUT_S",
    "DEFAULT_MAX_CONNECTIONS",
    "READ_TIMEOUT_S",
    "RawDynamoDBStreamsSource",
    "RawStreamsClient",
    "json_object",
    "open_raw_client",
    "open_raw_source",
    "proxy_for",
]

# Connections kept open to the endpoint, shared by every shard: the same bound as the
# aiobotocore client's ``max_pool_connections`` (``aws.aws_client_config``).
DEFAULT_MAX_CONNECTIONS: Final = 64
# The aiobotocore client's connect and read timeouts.
CONNECT_TIMEOUT_S: Final = 5.0
READ_TIMEOUT_S: Final = 20.0
# One host label, as botocore.utils.validate_region_name asks, matched whole (its ``$``
# would let a trailing newline through).
_REGION: Final = re.compile(r"[a-zA-Z0-9](?:[a-zA-Z0-9\-]{0,61}[a-zA-Z0-9])?")

_ERROR_PARSER: Final = JSONParser()

log = structlog.get_logger("shardwise.sources")


def _client_error(operation: str, status: int, headers: Any, body: bytes) -> ClientError:
    """The exception botocore raises for this error response (same code, message, status)."""
    response = {"status_code": status, "headers": headers, "body": body}
    # The output shape only shapes a success; an error parses the same without it.
    parsed = _ERROR_PARSER.parse(response, None)  # type: ignore[arg-type]
    return ClientError(parsed, operation)


def json_object(body: bytes, operation: str, where: str) -> dict[str, Any]:
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


class RawStreamsClient:
    """Signed JSON calls of one API (DynamoDB Streams unless told: ``api``) over one pooled
    ``Transport``.

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
        resolve_credentials: ResolveCredentials | None = None,
        api: JsonApi = DYNAMODB_STREAMS,
    ) -> None:
        self._http = http
        self._resolve_credentials = resolve_credentials
        self._url = endpoint_url.rstrip("/") + "/"
        self._region = region
        self._target_prefix = api.target_prefix
        self._signer = RequestSigner(credentials, self._url, region, api)

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
        """POST one operation; the response body, or botocore's ``ClientError`` for it.

        The transport signs the request once a connection is free for it: a signature
        made before the wait for one would age with it."""
        if not self._signer.has_credentials:
            # What botocore's signer raises on every call of a client without credentials
            # (it maps to the same SourceError); raised before a connection is taken.
            raise NoCredentialsError
        body = orjson.dumps(params)
        sign = partial(self._signer.headers, self._target_prefix + operation, body)
        response = await self._http.post(sign, body)
        if response.status >= 300:
            error = _client_error(operation, response.status, response.headers, response.body)
            code = error.response.get("Error", {}).get("Code")
            if code in EXPIRED_CREDENTIAL_CODES and self._resolve_credentials is not None:
                # The call still fails (and is retried with backoff); the next is signed
                # with what the provider chain hands out now.
                if await self._signer.renew(self._resolve_credentials):
                    log.warning("credentials expired; resolved again", code=code)
            raise error
        return response.body

    async def describe_stream(self, **params: Any) -> dict[str, Any]:
        body = await self.call("DescribeStream", params)
        return json_object(body, "DescribeStream", f"stream {params.get('StreamArn')}")

    async def get_shard_iterator(self, **params: Any) -> dict[str, Any]:
        body = await self.call("GetShardIterator", params)
        where = f"shard {params.get('ShardId')} of {params.get('StreamArn')}"
        return json_object(body, "GetShardIterator", where)

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


class RawDynamoDBStreamsSource:
    """Reads one DynamoDB stream through a ``RawStreamsClient`` (a ``ShardSource``)."""

    read_limits: Final = READ_LIMITS

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
        response = json_object(body, "GetRecords", where)
        records = response.get("Records")
        if not isinstance(records, list):
            # Not a closed shard's last page (that has "Records": []): never finish on it.
            raise SourceError(f"GetRecords on {where}: the response has no Records", code=MALFORMED)
        return RecordPage(
            records=lambda_records(records, self._stream_arn),
            next_iterator=response.get("NextShardIterator"),
        )

    async def close(self) -> None:
        """Close the client if this source opened it (``open_raw_source``)."""
        if self._owns_client:
            await self._client.close()


def proxy_for(url: str) -> str | None:
    """The proxy botocore (so aiobotocore) sends ``url`` through, by botocore's own code:
    HTTPS_PROXY / HTTP_PROXY unless NO_PROXY exempts the host or ``host:port``
    (``get_environ_proxies``), a proxy without a scheme taken as ``http://``
    (``ProxyConfiguration``). Read once: aiohttp's ``trust_env`` would look the
    environment and ~/.netrc up again on every request, in a thread."""
    proxy = ProxyConfiguration(proxies=get_environ_proxies(url)).proxy_url_for(url)
    return proxy or None


def _checked_region(region: str) -> str:
    """``region`` if it is one host label (botocore's rule), else ``ConfigError``. The
    region goes into the endpoint's host name and into every signed request: a
    ``us-east-1.evil.example#`` would send them to another host, a CR or LF add headers."""
    try:
        validate_region_name(region)
        valid = _REGION.fullmatch(region) is not None
    except InvalidRegionError:
        valid = False
    if not valid:
        raise ConfigError(
            [
                f"aws.region: {region!r} is not a valid region name (letters, digits and"
                " inner hyphens, at most 63; as set here or in AWS_REGION / the profile)"
            ]
        )
    return region


async def open_raw_client(
    aws: AwsConfig,
    *,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    api: JsonApi = DYNAMODB_STREAMS,
) -> RawStreamsClient:
    """A client of ``api`` (DynamoDB Streams, Kinesis) for ``aws`` (region, endpoint,
    profile); credentials are resolved once, and again when the endpoint says they expired.

    Region and credentials come from ``aws`` first, then botocore's usual chain, as for
    the aiobotocore clients; the endpoint is the one an aiobotocore client would use
    (``shardwise.aws.resolve_endpoint``).
    """
    session = aws_session(aws)
    region = aws.region or session.get_config_variable("region")
    if not region:
        raise ConfigError(
            ["aws.region: no region configured; set it here or in AWS_REGION / the profile"]
        )
    region = _checked_region(str(region))
    credentials = await session.get_credentials()
    # As botocore: AWS_CA_BUNDLE or the profile's ca_bundle, else the system's CAs.
    ca_bundle = session.get_config_variable("ca_bundle")
    tls = ssl.create_default_context(cafile=ca_bundle) if ca_bundle else None
    endpoint_url = resolve_endpoint(aws, api.endpoint_service, str(region))
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
        proxied = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=max_connections, ssl=tls or True),
            # A whole call within both, as through the pool: a reply trickling in never
            # trips the read timeout between its bytes.
            timeout=aiohttp.ClientTimeout(
                total=CONNECT_TIMEOUT_S + READ_TIMEOUT_S,
                sock_connect=CONNECT_TIMEOUT_S,
                sock_read=READ_TIMEOUT_S,
            ),
            headers=headers,
            proxy=proxy,
        )
        http = AiohttpTransport(url, proxied, max_connections=max_connections)
    return RawStreamsClient(
        http,
        endpoint_url=endpoint_url,
        region=str(region),
        credentials=credentials,
        resolve_credentials=session.get_credentials,
        api=api,
    )


async def open_raw_source(
    aws: AwsConfig, stream_arn: str, *, max_connections: int = DEFAULT_MAX_CONNECTIONS
) -> RawDynamoDBStreamsSource:
    """A source with a client of its own; ``await source.close()`` closes both."""
    client = await open_raw_client(aws, max_connections=max_connections)
    return RawDynamoDBStreamsSource(client, stream_arn, owns_client=True)
