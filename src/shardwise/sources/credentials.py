"""The raw client's request signing: credentials frozen, refreshed, resolved again when expired.

``RequestSigner`` signs with SigV4 for one endpoint (``sigv4.EndpointSigner``, held to
botocore's signer by the tests). Static credentials are frozen once; refreshable ones
(assumed roles, instance profiles, SSO) are asked for a fresh copy per request, which
costs nothing until they are near expiry; when the endpoint calls them expired the
provider chain is asked again (``renew``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final, TypeAlias

from botocore.credentials import ReadOnlyCredentials, RefreshableCredentials
from botocore.exceptions import NoCredentialsError

from shardwise.sources.sigv4 import DYNAMODB_STREAMS, EndpointSigner, JsonApi

__all__ = [
    "EXPIRED_CREDENTIAL_CODES",
    "RENEW_INTERVAL_S",
    "RequestSigner",
    "ResolveCredentials",
]

# Error codes that say the request's credentials are no longer valid, and how often they
# may send us back to the provider chain for new ones.
EXPIRED_CREDENTIAL_CODES: Final = frozenset({"ExpiredTokenException", "ExpiredToken"})
RENEW_INTERVAL_S: Final = 5.0

ResolveCredentials: TypeAlias = Callable[[], Awaitable[Any]]


class RequestSigner:
    """SigV4 for one endpoint with the current credentials (``None``: every request fails
    with ``NoCredentialsError``, as botocore's signer does)."""

    def __init__(
        self, credentials: Any, url: str, region: str, api: JsonApi = DYNAMODB_STREAMS
    ) -> None:
        self._endpoint = EndpointSigner(
            url, region=region, service=api.signing_name, content_type=api.content_type
        )
        self._renewed_at = -math.inf
        self.use(credentials)

    def use(self, credentials: Any) -> None:
        self._credentials = credentials
        self._refreshable = isinstance(credentials, RefreshableCredentials)
        self._frozen: ReadOnlyCredentials | None = None

    async def renew(self, resolve: ResolveCredentials) -> bool:
        """The endpoint called our credentials expired: resolve them again from the provider
        chain (a new role session, the task role's or web identity's next keys), at most
        once per ``RENEW_INTERVAL_S``. False when it was too soon to ask again."""
        now = time.monotonic()
        if now - self._renewed_at < RENEW_INTERVAL_S:
            return False
        self._renewed_at = now
        self.use(await resolve())
        return True

    @property
    def has_credentials(self) -> bool:
        return self._credentials is not None

    async def headers(self, target: str, body: bytes) -> Mapping[str, str]:
        """The signed headers, as of now: called by the transport right before it sends."""
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
