"""The S3 target: Lambda's invocation record *with* the records, one object per batch.

Keys follow Lambda's layout, under an optional prefix::

    <prefix/>aws/lambda/<esm_uuid(processor)>/<shardId>/YYYY/MM/DD/YYYY-MM-DDTHH.MM.SS-<uuid>

(UTC, from the time the batch failed), so every processor's failures list under one prefix.
``list_failure_keys`` lists them page by page (ListObjectsV2 and its continuation tokens)
without reading a body: the key alone tells the shard and the second the batch failed
(``parse_object_key``). ``read_failure`` fetches one stored record, for ``show`` and ``replay``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from shardwise.destinations._aws import map_aws_errors, parse_arn
from shardwise.destinations.base import DestinationError, FailedBatch, esm_uuid

__all__ = [
    "ObjectKeyParts",
    "S3Destination",
    "S3Location",
    "failure_prefix",
    "list_failure_keys",
    "object_key",
    "parse_object_key",
    "parse_s3_target",
    "read_failure",
]

# Keys per ListObjectsV2 call (S3's maximum); each further page is fetched with the previous
# page's continuation token.
LIST_PAGE_SIZE = 1000

# <shardId>/YYYY/MM/DD/YYYY-MM-DDTHH.MM.SS-<request id>, after the processor's prefix.
_KEY_TAIL = re.compile(
    r"(?P<shard>[^/]+)/\d{4}/\d\d/\d\d/"
    r"(?P<at>\d{4}-\d\d-\d\dT\d\d\.\d\d\.\d\d)-(?P<request_id>[^/]+)"
)


@dataclass(frozen=True, slots=True)
class S3Location:
    """A bucket and a key prefix that is empty or ends in ``/``."""

    bucket: str
    prefix: str = ""

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"


def parse_s3_target(target: str) -> S3Location:
    """``s3://bucket/prefix`` or ``arn:aws:s3:::bucket`` as a location."""
    if target.startswith("s3://"):
        bucket, _, prefix = target.removeprefix("s3://").partition("/")
    else:
        bucket, prefix = parse_arn(target).resource, ""
    prefix = prefix.strip("/")
    return S3Location(bucket, f"{prefix}/" if prefix else "")


def failure_prefix(location: S3Location, processor: str) -> str:
    """The key prefix under which all of ``processor``'s failed batches are stored."""
    return f"{location.prefix}aws/lambda/{esm_uuid(processor)}/"


def object_key(location: S3Location, failed: FailedBatch) -> str:
    """The key of ``failed`` in Lambda's layout.

    The trailing UUID is the batch's ``request_id`` (a uuid4): unique per failed batch, and
    the same when dispatch retries a send whose outcome it never learned, so a retry
    overwrites the object instead of storing the batch twice.
    """
    at = failed.failed_at.astimezone(UTC)
    name = f"{at:%Y-%m-%dT%H.%M.%S}-{failed.request_id}"
    return f"{failure_prefix(location, failed.processor)}{failed.shard_id}/{at:%Y/%m/%d}/{name}"


class S3Destination:
    """PutObject of each failed batch as JSON; the caller owns the client."""

    def __init__(self, client: Any, target: str) -> None:
        self._client = client
        self._target = target
        self._location = parse_s3_target(target)

    @property
    def target(self) -> str:
        return self._target

    async def send(self, failed: FailedBatch) -> None:
        body = json.dumps(failed.invocation_record(include_payload=True)).encode()
        with map_aws_errors(self._target, failed.shard_id):
            await self._client.put_object(
                Bucket=self._location.bucket,
                Key=object_key(self._location, failed),
                Body=body,
                ContentType="application/json",
            )

    async def close(self) -> None:
        return None


@dataclass(frozen=True, slots=True)
class ObjectKeyParts:
    """What a failure's key says without its body: shard, time (to the second), request id."""

    shard_id: str
    failed_at: datetime
    request_id: str


def parse_object_key(location: S3Location, processor: str, key: str) -> ObjectKeyParts | None:
    """The parts of a key in Lambda's layout (see ``object_key``); None for any other key."""
    prefix = failure_prefix(location, processor)
    found = _KEY_TAIL.fullmatch(key.removeprefix(prefix)) if key.startswith(prefix) else None
    if found is None:
        return None
    at = datetime.strptime(found["at"], "%Y-%m-%dT%H.%M.%S").replace(tzinfo=UTC)
    return ObjectKeyParts(found["shard"], at, found["request_id"])


async def list_failure_keys(client: Any, location: S3Location, processor: str) -> list[str]:
    """Every stored failure's key for ``processor``: ListObjectsV2 page by page, no bodies."""
    prefix = failure_prefix(location, processor)
    keys: list[str] = []
    with map_aws_errors(f"listing s3://{location.bucket}/{prefix}"):
        pages = client.get_paginator("list_objects_v2").paginate(
            Bucket=location.bucket,
            Prefix=prefix,
            PaginationConfig={"PageSize": LIST_PAGE_SIZE},
        )
        async for page in pages:
            keys.extend(str(item["Key"]) for item in page.get("Contents", ()))
    return keys


async def read_failure(client: Any, location: S3Location, key: str) -> dict[str, Any]:
    """The invocation record stored at ``key``."""
    where = f"reading s3://{location.bucket}/{key}"
    with map_aws_errors(where):
        response = await client.get_object(Bucket=location.bucket, Key=key)
        async with response["Body"] as stream:
            data = await stream.read()
    try:
        record: dict[str, Any] = json.loads(data)
    except ValueError as exc:
        raise DestinationError(f"{where} failed: not JSON: {exc}") from exc
    return record
