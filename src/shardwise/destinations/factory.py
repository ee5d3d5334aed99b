"""From a configured ``destination_config.on_failure.destination`` to a ``Destination``.

``open_destination`` picks the target by the shape of the string (``shardwise.config``
has already validated it) and opens what it needs: an aiobotocore client for SQS, SNS and S3, the
checkpoint store's engine for ``sql``, nothing for ``file:///``. ``close()`` on the result
releases what was opened here; the checkpoint store stays open, as it belongs to the caller.
"""

from __future__ import annotations

from contextlib import AsyncExitStack

from shardwise.config import Settings
from shardwise.destinations._aws import aws_client, map_aws_errors, parse_arn
from shardwise.destinations.base import Destination, FailedBatch
from shardwise.destinations.file import FileDestination
from shardwise.destinations.s3 import S3Destination
from shardwise.destinations.sns import SnsDestination
from shardwise.destinations.sql import SqlDestination
from shardwise.destinations.sqs import SqsDestination
from shardwise.store import CheckpointStore
from shardwise.store.failures import FailureStore

__all__ = ["open_destination", "target_kind"]


def target_kind(target: str) -> str:
    """``sqs``, ``sns``, ``s3``, ``sql`` or ``file``; ``ValueError`` for anything else."""
    if target == "sql":
        return "sql"
    if target.startswith("file:///"):
        return "file"
    if target.startswith("s3://"):
        return "s3"
    if target.startswith("arn:"):
        service = parse_arn(target).service
        if service in {"sqs", "sns", "s3"}:
            return service
    raise ValueError(f"unsupported on-failure destination {target!r}")


class _WithClient:
    """A destination together with the AWS client opened for it; closing closes both."""

    def __init__(self, destination: Destination, resources: AsyncExitStack) -> None:
        self._destination = destination
        self._resources = resources

    @property
    def target(self) -> str:
        return self._destination.target

    async def send(self, failed: FailedBatch) -> None:
        await self._destination.send(failed)

    async def close(self) -> None:
        try:
            await self._destination.close()
        finally:
            await self._resources.aclose()


async def open_destination(
    target: str, *, settings: Settings, store: CheckpointStore | None, processor: str
) -> Destination:
    """Open the on-failure destination ``target`` of ``processor``; close it when done.

    ``store`` is required for ``sql``. SQS and SNS clients use the region in the ARN; S3
    clients use ``settings.aws.region``. Endpoint and profile always come from ``settings``.
    """
    kind = target_kind(target)
    if kind == "file":
        return FileDestination(target)
    if kind == "sql":
        if store is None:
            raise ValueError(f"processor {processor!r}: the sql destination needs the store")
        return SqlDestination(FailureStore(store.engine))
    region = parse_arn(target).region if kind in {"sqs", "sns"} else None
    resources = AsyncExitStack()
    try:
        with map_aws_errors(target):
            client = await resources.enter_async_context(aws_client(kind, settings, region=region))
    except BaseException:
        await resources.aclose()
        raise
    if kind == "sqs":
        return _WithClient(SqsDestination(client, target), resources)
    if kind == "sns":
        return _WithClient(SnsDestination(client, target), resources)
    return _WithClient(S3Destination(client, target), resources)
