"""Kinesis requests and replies: parameter rules, ListShards' NextToken, error bodies.

The parameter checks answer as the service does: a value the API model forbids (a
missing field, a number out of range) is a ValidationException, a value the service
refuses after reading it (an unknown stream, a hash key outside its range) an
InvalidArgumentException or ResourceNotFoundException. ListShards' NextToken is URL-safe
base64 of ``[stream ARN, last shard id listed, filter, issued-at]``, stateless like the
shard iterators, and expires after ``NEXT_TOKEN_TTL_SECONDS``.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import time
from datetime import UTC, datetime
from typing import Any, Final, TypeAlias

from shardwise.testing._kinesis_shard import HASH_KEY_SPACE, MAX_RECORD_BYTES, ShardFilter
from shardwise.testing._kinesis_state import ScriptedKinesisStream
from shardwise.testing._shard_log import StreamsApiError
from shardwise.testing._streams_protocol import _optional_str, _required_str
from shardwise.testing._streams_state import ACCOUNT_ID

__all__ = [
    "MAX_PUT_RECORDS",
    "MAX_PUT_RECORDS_BYTES",
    "NEXT_TOKEN_TTL_SECONDS",
    "NOT_WITH_NEXT_TOKEN",
    "SUMMARY_FIELDS",
    "bounded_int",
    "decode_next_token",
    "encode_next_token",
    "epoch_seconds",
    "error_response",
    "expired_message",
    "invalid",
    "record_entry",
    "shard_filter_of",
    "stream_fields",
    "stream_not_found",
]

NEXT_TOKEN_TTL_SECONDS: Final = 300.0
MAX_PUT_RECORDS: Final = 500
MAX_PUT_RECORDS_BYTES: Final = 5 * 1024 * 1024
_MAX_PARTITION_KEY: Final = 256
_SHARD_FILTER_TYPES: Final = frozenset(
    {
        "AFTER_SHARD_ID",
        "AT_TRIM_HORIZON",
        "FROM_TRIM_HORIZON",
        "AT_LATEST",
        "AT_TIMESTAMP",
        "FROM_TIMESTAMP",
    }
)
# ListShards with a NextToken may not name the stream or where to start: the token does.
NOT_WITH_NEXT_TOKEN: Final = (
    "StreamName",
    "StreamARN",
    "ExclusiveStartShardId",
    "StreamCreationTimestamp",
)

SUMMARY_FIELDS: Final = (  # a stream in ListStreams' StreamSummaries
    "StreamName",
    "StreamARN",
    "StreamStatus",
    "StreamModeDetails",
    "StreamCreationTimestamp",
)

_Request: TypeAlias = dict[str, Any]

_to_json = json.JSONEncoder(separators=(",", ":")).encode


def error_response(code: str, message: str) -> tuple[int, bytes]:
    """The status and body of a Kinesis API error (JSON 1.1: the bare code as ``__type``)."""
    error = StreamsApiError(code, message)
    return error.http_status, _to_json({"__type": code, "message": message}).encode()


def invalid(message: str) -> StreamsApiError:
    return StreamsApiError("InvalidArgumentException", message)


def stream_not_found(name: str) -> StreamsApiError:
    return StreamsApiError(
        "ResourceNotFoundException", f"Stream {name} under account {ACCOUNT_ID} not found."
    )


def bounded_int(request: _Request, name: str, default: int, maximum: int) -> int:
    value = request.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= maximum:
        raise StreamsApiError("ValidationException", f"{name} must be between 1 and {maximum}")
    return value


def epoch_seconds(request: _Request, name: str) -> float | None:
    value = request.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise StreamsApiError("ValidationException", f"{name} must be epoch seconds")
    return float(value)


def encode_next_token(arn: str, last_shard_id: str, shard_filter: ShardFilter | None) -> str:
    listed = None
    if shard_filter is not None:
        listed = [shard_filter.kind, shard_filter.shard_id, shard_filter.timestamp]
    token = _to_json([arn, last_shard_id, listed, time.monotonic()]).encode()
    return base64.urlsafe_b64encode(token).decode("ascii")


def decode_next_token(token: str) -> tuple[str, str, ShardFilter | None, float]:
    with contextlib.suppress(ValueError, TypeError):  # whatever it is, it is not ours
        arn, last, listed, issued = json.loads(base64.urlsafe_b64decode(token))
        if isinstance(arn, str) and isinstance(last, str) and isinstance(issued, float):
            return arn, last, None if listed is None else ShardFilter(*listed), issued
    raise invalid("NextToken is not valid")


def shard_filter_of(value: Any) -> ShardFilter | None:
    if value is None:
        return None
    if not isinstance(value, dict) or value.get("Type") not in _SHARD_FILTER_TYPES:
        raise StreamsApiError(
            "ValidationException", f"ShardFilter.Type must be one of {sorted(_SHARD_FILTER_TYPES)}"
        )
    kind: str = value["Type"]
    shard_id = _optional_str(value, "ShardId")
    timestamp = epoch_seconds(value, "Timestamp")
    if kind == "AFTER_SHARD_ID":
        if shard_id is None:
            raise invalid("ShardFilter AFTER_SHARD_ID needs a ShardId")
        return ShardFilter(kind, shard_id=shard_id)
    if kind in {"AT_TIMESTAMP", "FROM_TIMESTAMP"}:
        if timestamp is None:
            raise invalid(f"ShardFilter {kind} needs a Timestamp")
        return ShardFilter(kind, timestamp=timestamp)
    return ShardFilter(kind)


def record_entry(entry: Any) -> tuple[bytes, str, int | None]:
    """A PutRecord request's (or PutRecords entry's) data, partition key and explicit key."""
    if not isinstance(entry, dict) or not isinstance(entry.get("Data"), str):
        raise StreamsApiError("ValidationException", "Data is required and must be base64")
    try:
        data = base64.b64decode(entry["Data"], validate=True)
    except binascii.Error:
        raise StreamsApiError("SerializationException", "Data is not valid base64") from None
    partition_key = _required_str(entry, "PartitionKey")
    if len(partition_key) > _MAX_PARTITION_KEY:
        raise StreamsApiError("ValidationException", "PartitionKey is longer than 256")
    if len(data) + len(partition_key.encode()) > MAX_RECORD_BYTES:
        raise StreamsApiError("ValidationException", "A record may not exceed 1 MiB")
    explicit = _optional_str(entry, "ExplicitHashKey")
    if explicit is None:
        return data, partition_key, None
    if not explicit.isdigit():
        raise StreamsApiError("ValidationException", "ExplicitHashKey must be a decimal integer")
    if int(explicit) >= HASH_KEY_SPACE:
        raise invalid(f"ExplicitHashKey {explicit} is greater than 2**128 - 1")
    return data, partition_key, int(explicit)


def stream_fields(stream: ScriptedKinesisStream) -> dict[str, Any]:
    """What DescribeStream and DescribeStreamSummary both say of a stream."""
    return {
        "StreamName": stream.name,
        "StreamARN": stream.arn,
        "StreamStatus": "ACTIVE",
        "StreamModeDetails": {"StreamMode": "PROVISIONED"},
        "RetentionPeriodHours": 24,
        "StreamCreationTimestamp": round(stream.created_at, 3),
        "EnhancedMonitoring": [{"ShardLevelMetrics": []}],
        "EncryptionType": "NONE",
    }


def expired_message(age: float, stream: ScriptedKinesisStream) -> str:
    def when(moment: float) -> str:
        return f"{datetime.fromtimestamp(moment, UTC):%a %b %d %H:%M:%S UTC %Y}"

    now = time.time()
    return (
        f"Iterator expired. The iterator was created at time {when(now - age)} while right now "
        f"it is {when(now)} which is further in the future than the tolerated delay of "
        f"{round(stream.iterator_ttl_seconds * 1000)} milliseconds."
    )
