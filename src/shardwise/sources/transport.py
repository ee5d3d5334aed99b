"""What the raw client sends through (``Transport``): ``HttpPool``, or ``aiohttp`` behind a proxy.

``HttpPool`` (``http``) speaks to the endpoint directly; with ``HTTPS_PROXY`` /
``HTTP_PROXY`` in effect ``AiohttpTransport`` sends the same requests through an
``aiohttp`` session, which tunnels through the proxy.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

import aiohttp

from shardwise.sources.http import Sign
from shardwise.sources.http_connection import DEFAULT_MAX_BODY_BYTES, Response, TransportError
from shardwise.sources.http_headers import check_header_values

__all__ = ["AiohttpTransport", "Transport"]


class Transport(Protocol):
    """Sends a request to the endpoint: ``HttpPool``, or ``AiohttpTransport``. ``sign``
    makes its headers once a connection is free for it, right before it is sent."""

    @property
    def closed(self) -> bool: ...

    async def post(self, sign: Sign, body: bytes) -> Response: ...

    async def close(self) -> None: ...


class AiohttpTransport:
    """The same requests through an ``aiohttp`` session: used when a proxy is configured
    (``aiohttp`` tunnels through it; ``HttpPool`` speaks to the endpoint directly).

    At most ``max_connections`` requests are in flight (the session's connector should
    allow as many), each signed once it may go; a reply's body over ``max_body_bytes``
    fails the call with ``TransportError``, a header holding a control character with
    ``InvalidHeaderError`` (naming it) before anything is sent. Timeouts are the session's.
    """

    def __init__(
        self,
        url: str,
        session: aiohttp.ClientSession,
        *,
        max_connections: int,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    ) -> None:
        self._url = url
        self._session = session
        self._slots = asyncio.Semaphore(max_connections)
        self._max_body_bytes = max_body_bytes

    @property
    def closed(self) -> bool:
        return self._session.closed

    async def post(self, sign: Sign, body: bytes) -> Response:
        async with self._slots:
            headers = await sign()
            check_header_values(headers)  # what aiohttp refuses, named and mapped
            async with self._session.post(
                self._url, data=body, headers=headers, allow_redirects=False
            ) as response:
                payload = await self._read(response)
                names = {name.lower(): value for name, value in response.headers.items()}
                return Response(response.status, names, payload)

    async def _read(self, response: aiohttp.ClientResponse) -> bytes:
        too_large = f"the reply's body is over {self._max_body_bytes} bytes"
        if (response.content_length or 0) > self._max_body_bytes:
            raise TransportError(too_large)
        chunks: list[bytes] = []
        room = self._max_body_bytes
        async for chunk in response.content.iter_any():
            room -= len(chunk)
            if room < 0:
                raise TransportError(too_large)
            chunks.append(chunk)
        return b"".join(chunks)

    async def close(self) -> None:
        await self._session.close()
