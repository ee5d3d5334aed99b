"""DynamoDB Streams through aiobotocore: shard listing, iterators, records in Lambda's shape.

Every botocore / transport exception is translated here, at the boundary, into the
``SourceError`` tree; nothing above this module sees a ``ClientError``.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any, Final

import aiohttp
from botocore.exceptions import BotoCoreError, ClientError

from shardwise.errors import (
    ExpiredIteratorError,
    ShardNotFoundError,
    SourceError,
    StreamNotFoundError,
    ThrottledError,
    TrimmedDataError,
)
from shardwise.records import (
    Position,
    ReadLimits,
    RecordPage,
    SequenceNumber,
    Shard,
    ShardId,
    ShardListing,
    StreamRecord,
)
from shardwise.sources.http_connection import TransportError

__all__ = [
    "MALFORMED",
    "READ_LIMITS",
    "DynamoDBStreamsSource",
    "lambda_record",
    "listed_shard",
    "mapped_errors",
    "resolve_stream_arn",
]

# The code of a 2xx reply that is not what the API promises (a proxy page, an empty body).
MALFORMED = "MalformedResponse"
# DescribeStream returns at most 100 shards per call.
DESCRIBE_STREAM_PAGE = 100
# GetRecords returns at most 1000 records (and 1 MB) per call; Lambda polls a DynamoDB
# stream's shard 4 times a second.
READ_LIMITS: Final = ReadLimits(records_per_call=1000, poll_interval_s=0.25)

_THROTTLE_CODES = frozenset(
    {
        "LimitExceededException",
        "ThrottlingException",
        "ProvisionedThroughputExceededException",
        "RequestLimitExceeded",
        "TooManyRequestsException",
        "InternalServerError",
        "InternalFailure",  # Kinesis' 500
        "KMSThrottlingException",  # Kinesis: the stream's KMS key is throttled
        "ServiceUnavailable",
    }
)


@contextmanager
def mapped_errors(operation: str, where: str, *, shard_op: bool) -> Iterator[None]:
    """Translate botocore and transport errors of one call into the SourceError tree
    (``TransportError`` includes a request header the transport refuses to write:
    ``http_headers.InvalidHeaderError``)."""
    try:
        yield
    except ClientError as exc:
        error = exc.response.get("Error", {})
        code = str(error.get("Code", "Unknown"))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        message = f"{operation} on {where}: {code}: {error.get('Message', '')}".rstrip(": ")
        if code == "ExpiredIteratorException":
            raise ExpiredIteratorError(message, code=code) from exc
        if code == "TrimmedDataAccessException":
            raise TrimmedDataError(message, code=code) from exc
        if code == "ResourceNotFoundException":
            error_type = ShardNotFoundError if shard_op else StreamNotFoundError
            raise error_type(message, code=code) from exc
        if code in _THROTTLE_CODES or status >= 500:
            raise ThrottledError(message, code=code) from exc
        raise SourceError(message, code=code) from exc
    except (BotoCoreError, aiohttp.ClientError, TransportError, TimeoutError) as exc:
        name = type(exc).__name__
        raise SourceError(f"{operation} on {where}: {name}: {exc}", code=name) from exc


def _binary_to_base64(value: Any) -> Any:
    """Re-encode botocore's parsed binary attributes (bytes) as Lambda delivers them."""
    if not isinstance(value, dict):
        return value
    if "B" in value and isinstance(value["B"], bytes | bytearray):
        return {"B": base64.b64encode(value["B"]).decode("ascii")}
    if "BS" in value:
        return {"BS": [base64.b64encode(b).decode("ascii") for b in value["BS"]]}
    if "M" in value:
        return {"M": _image(value["M"])}
    if "L" in value:
        return {"L": [_binary_to_base64(v) for v in value["L"]]}
    return value


def _image(attributes: dict[str, Any]) -> dict[str, Any]:
    return {name: _binary_to_base64(value) for name, value in attributes.items()}


def _epoch(value: Any) -> int | float:
    """ApproximateCreationDateTime as Lambda delivers it: epoch seconds, a number."""
    if isinstance(value, datetime):
        seconds = value.timestamp()
        return int(seconds) if seconds.is_integer() else seconds
    return value  # type: ignore[no-any-return]


def lambda_record(raw: dict[str, Any], stream_arn: str) -> StreamRecord:
    """Turn one parsed GetRecords record into the record a Lambda handler receives."""
    stream = raw["dynamodb"]
    dynamodb: dict[str, Any] = {}
    if "ApproximateCreationDateTime" in stream:
        dynamodb["ApproximateCreationDateTime"] = _epoch(stream["ApproximateCreationDateTime"])
    for image in ("Keys", "NewImage", "OldImage"):
        if image in stream:
            dynamodb[image] = _image(stream[image])
    dynamodb["SequenceNumber"] = stream["SequenceNumber"]
    dynamodb["SizeBytes"] = stream.get("SizeBytes", 0)
    dynamodb["StreamViewType"] = stream.get("StreamViewType", "")
    record: StreamRecord = {
        "eventID": raw.get("eventID", ""),
        "eventName": raw.get("eventName", ""),
        "eventVersion": raw.get("eventVersion", "1.1"),
        "eventSource": raw.get("eventSource", "aws:dynamodb"),
        "awsRegion": raw.get("awsRegion", ""),
        "dynamodb": dynamodb,
        "eventSourceARN": stream_arn,
    }
    identity = raw.get("userIdentity")
    if identity:
        record["userIdentity"] = {
            "type": identity.get("Type"),
            "principalId": identity.get("PrincipalId"),
        }
    return record


async def resolve_stream_arn(dynamodb: Any, table: str) -> str:
    """A table's LatestStreamArn (DescribeTable); a clear error when it has no stream."""
    with mapped_errors("DescribeTable", f"table {table}", shard_op=False):
        response = await dynamodb.describe_table(TableName=table)
    description = response["Table"]
    arn = description.get("LatestStreamArn")
    spec = description.get("StreamSpecification") or {}
    if not arn or not spec.get("StreamEnabled", False):
        raise StreamNotFoundError(
            f"table {table} has no enabled stream: enable DynamoDB Streams on it "
            "(StreamSpecification StreamEnabled=true) or configure source.dynamodb.stream_arn"
        )
    return str(arn)


class DynamoDBStreamsSource:
    """Reads one DynamoDB stream with an aiobotocore ``dynamodbstreams`` client."""

    read_limits: Final = READ_LIMITS

    def __init__(self, client: Any, stream_arn: str) -> None:
        self._client = client
        self._stream_arn = stream_arn

    @property
    def stream_arn(self) -> str:
        return self._stream_arn

    async def describe(self) -> ShardListing:
        """All shards (DescribeStream, paginated by ExclusiveStartShardId) and the status."""
        shards: list[Shard] = []
        start: str | None = None
        status = "UNKNOWN"
        while True:
            kwargs: dict[str, Any] = {"StreamArn": self._stream_arn, "Limit": DESCRIBE_STREAM_PAGE}
            if start:
                kwargs["ExclusiveStartShardId"] = start
            with mapped_errors("DescribeStream", f"stream {self._stream_arn}", shard_op=False):
                response = await self._client.describe_stream(**kwargs)
            description = response.get("StreamDescription")
            if not isinstance(description, dict):
                raise SourceError(
                    f"DescribeStream on stream {self._stream_arn}: reply without StreamDescription",
                    code=MALFORMED,
                )
            status = str(description.get("StreamStatus", status))
            shards.extend(listed_shard(s) for s in description.get("Shards", []))
            start = description.get("LastEvaluatedShardId")
            if not start:
                return ShardListing(status=status, shards=tuple(shards))

    async def get_iterator(self, shard_id: ShardId, position: Position) -> str:
        kwargs: dict[str, Any] = {"StreamArn": self._stream_arn, "ShardId": shard_id}
        if position.after is not None:
            kwargs["ShardIteratorType"] = "AFTER_SEQUENCE_NUMBER"
            kwargs["SequenceNumber"] = position.after
        else:
            kwargs["ShardIteratorType"] = position.start.value
        with mapped_errors("GetShardIterator", self._where(shard_id), shard_op=True):
            response = await self._client.get_shard_iterator(**kwargs)
        iterator = response.get("ShardIterator")
        if not iterator:
            raise ShardNotFoundError(f"GetShardIterator on {self._where(shard_id)}: no iterator")
        return str(iterator)

    async def get_records(self, shard_id: ShardId, iterator: str, limit: int) -> RecordPage:
        with mapped_errors("GetRecords", self._where(shard_id), shard_op=True):
            response = await self._client.get_records(ShardIterator=iterator, Limit=limit)
        if "Records" not in response:
            # Never read as the end of a closed shard: that would skip its unread records.
            raise SourceError(
                f"GetRecords on {self._where(shard_id)}: reply without Records", code=MALFORMED
            )
        arn = self._stream_arn
        records = [lambda_record(raw, arn) for raw in response["Records"]]
        return RecordPage(records=records, next_iterator=response.get("NextShardIterator"))

    def _where(self, shard_id: str) -> str:
        return f"shard {shard_id} of {self._stream_arn}"


def listed_shard(raw: dict[str, Any]) -> Shard:
    """One shard of a DescribeStream (DynamoDB Streams) or ListShards (Kinesis) reply; only
    Kinesis names a second parent (``AdjacentParentShardId``, a merge)."""
    seq_range = raw.get("SequenceNumberRange") or {}
    start = seq_range.get("StartingSequenceNumber")
    end = seq_range.get("EndingSequenceNumber")
    parent = raw.get("ParentShardId")
    adjacent = raw.get("AdjacentParentShardId")
    return Shard(
        shard_id=ShardId(raw["ShardId"]),
        parent_shard_id=ShardId(parent) if parent else None,
        starting_sequence_number=SequenceNumber(start) if start else None,
        ending_sequence_number=SequenceNumber(end) if end else None,
        adjacent_parent_shard_id=ShardId(adjacent) if adjacent else None,
    )
