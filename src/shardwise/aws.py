"""What every AWS client shardwise opens shares: one session, no retries of botocore's own,
bounded pools, and endpoints resolved the way botocore resolves them.

Endpoints, for each service (``dynamodbstreams``, ``dynamodb``, ``kinesis``, ``sqs``, ``sns``,
``s3``):

1. ``aws.endpoints.<service>`` (a VPC interface endpoint for one service);
2. ``aws.endpoint_url`` (one switch for a local emulator: moto, LocalStack);
3. botocore's own answer for the region and session: the partition's DNS suffix
   (``amazonaws.com.cn``, ``amazonaws.com`` in GovCloud, ...), FIPS
   (``use_fips_endpoint`` / ``AWS_USE_FIPS_ENDPOINT``), dual-stack, ``AWS_ENDPOINT_URL`` and
   ``AWS_ENDPOINT_URL_<SERVICE>``, and the profile's ``services`` section.

aiobotocore clients are handed 1 or 2 and otherwise resolve 3 themselves; the raw GetRecords
path asks botocore for 3 once at start-up (``resolve_endpoint``), so both transports always
send to the same host.
"""

from __future__ import annotations

from typing import Final

import botocore.session
from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession
from botocore import UNSIGNED
from botocore.config import Config

from shardwise.config import AwsConfig

__all__ = [
    "AWS_MAX_CONNECTIONS",
    "aws_client_config",
    "aws_session",
    "credential_environment",
    "endpoint_override",
    "resolve_endpoint",
]

# Connections per AWS client: a bound, so 1000 shards do not open 1000 sockets.
AWS_MAX_CONNECTIONS: Final = 64


def aws_client_config(max_connections: int = AWS_MAX_CONNECTIONS) -> AioConfig:
    """Our clients do their own backoff: botocore must not retry behind our back."""
    return AioConfig(
        retries={"total_max_attempts": 1},
        connect_timeout=5,
        read_timeout=20,
        max_pool_connections=max_connections,
    )


def aws_session(aws: AwsConfig) -> AioSession:
    """A session on ``aws.profile``, or on the default chain."""
    return AioSession(profile=aws.profile) if aws.profile else AioSession()


def endpoint_override(aws: AwsConfig, service: str) -> str | None:
    """``aws.endpoints.<service>``, else ``aws.endpoint_url``; None: botocore decides."""
    return getattr(aws.endpoints, service, None) or aws.endpoint_url


def resolve_endpoint(aws: AwsConfig, service: str, region: str) -> str:
    """The URL a client of ``service`` in ``region`` sends to (see the module docstring).

    botocore's answer is read off a client it builds for the same profile and region: the
    same resolver, configuration files and environment an aiobotocore client uses.
    """
    override = endpoint_override(aws, service)
    if override:
        return override
    session = botocore.session.Session(profile=aws.profile)
    client = session.create_client(
        service, region_name=region, config=Config(signature_version=UNSIGNED)
    )
    try:
        url: str = client.meta.endpoint_url
    finally:
        client.close()
    return url


async def credential_environment(session: AioSession) -> dict[str, str]:
    """The session's current credentials as Lambda hands them to a function: environment
    variables (none when the chain has no credentials). A refreshable chain (an assumed
    role, a container or IRSA token) is refreshed by botocore before it expires."""
    credentials = await session.get_credentials()
    if credentials is None:
        return {}
    frozen = await credentials.get_frozen_credentials()
    env = {"AWS_ACCESS_KEY_ID": frozen.access_key, "AWS_SECRET_ACCESS_KEY": frozen.secret_key}
    if frozen.token:
        env["AWS_SESSION_TOKEN"] = frozen.token
    return env
