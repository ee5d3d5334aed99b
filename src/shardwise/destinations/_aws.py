"""What the SQS, SNS and S3 targets share: clients, ARNs and the error boundary.

botocore and transport exceptions never leave the destinations package: ``map_aws_errors``
turns them into ``DestinationError`` naming the target and the shard. AWS's own messages
carry no credentials, and neither do ours.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
from botocore.exceptions import BotoCoreError, ClientError

from shardwise.aws import aws_client_config, aws_session, endpoint_override
from shardwise.config import Settings
from shardwise.destinations.base import DestinationError

__all__ = ["Arn", "aws_client", "map_aws_errors", "parse_arn", "storing"]


@dataclass(frozen=True, slots=True)
class Arn:
    """The parts of ``arn:PARTITION:SERVICE:REGION:ACCOUNT:RESOURCE`` a target needs."""

    partition: str
    service: str
    region: str
    account: str
    resource: str


def parse_arn(arn: str) -> Arn:
    """Split an ARN; ``ValueError`` if it does not have six parts."""
    parts = arn.split(":", 5)
    if len(parts) != 6 or parts[0] != "arn":
        raise ValueError(f"not an ARN: {arn!r}")
    return Arn(*parts[1:])


def storing(target: str, shard_id: str | None) -> str:
    """The start of every destination error: ``cannot store ... of shard 's' in T``."""
    if shard_id is None:
        return f"{target} failed"
    return f"cannot store the failed batch of shard {shard_id!r} in {target}"


@contextmanager
def map_aws_errors(target: str, shard_id: str | None = None) -> Iterator[None]:
    """Re-raise botocore and transport errors as ``DestinationError``."""
    try:
        yield
    except ClientError as exc:
        error = exc.response.get("Error", {})
        code = str(error.get("Code", "Unknown"))
        reason = f"{code}: {error.get('Message', '')}".rstrip(": ")
        raise DestinationError(f"{storing(target, shard_id)}: {reason}") from exc
    except (BotoCoreError, aiohttp.ClientError, TimeoutError) as exc:
        reason = f"{type(exc).__name__}: {exc}"
        raise DestinationError(f"{storing(target, shard_id)}: {reason}") from exc


@asynccontextmanager
async def aws_client(
    service: str, settings: Settings, *, region: str | None = None
) -> AsyncIterator[Any]:
    """An aiobotocore client configured from ``settings.aws``; ``region`` overrides its region.

    Its configuration is the supervisor's: botocore does not retry behind our back (dispatch
    retries a destination until the batch is stored).
    """
    aws = settings.aws
    async with aws_session(aws).create_client(
        service,
        region_name=region or aws.region,
        endpoint_url=endpoint_override(aws, service),
        config=aws_client_config(),
    ) as client:
        yield client
