"""The DynamoDB Streams JSON protocol: a target and a body in, a status and bytes out.

``StreamsProtocol.handle`` knows nothing of sockets. Shard iterators are opaque tokens,
URL-safe base64 of ``[stream ARN, shard id, index, issued-at]`` with issued-at read from
``time.monotonic()``: the server keeps no per-iterator state, so a token can be used any
number of times until it is ``iterator_ttl_seconds`` old. Injected faults (``faults``, a
``FaultQueue`` of ``_faults``) are matched before the request is validated, the way a
throttle or an outage hits a real call.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, TypeAlias

from shardwise.testing._faults import FaultQueue
from shardwise.testing._shard_log import StreamsApiError
from shardwise.testing._streams_state import (
    ACCOUNT_ID,
    StreamRegistry,
    describe_stream,
    read_page,
    shard_position,
)

__all__ = ["FAULT_CODES", "OPERATIONS", "StreamsProtocol", "error_response"]

OPERATIONS: Final = (
    "DescribeStream",
    "DescribeTable",
    "GetRecords",
    "GetShardIterator",
    "ListStreams",
)
FAULT_CODES: Final = frozenset(
    {
        "ExpiredIteratorException",
        "ExpiredTokenException",  # the request's credentials expired
        "InternalServerError",
        "LimitExceededException",
        "ResourceNotFoundException",
        "TrimmedDataAccessException",
        "ValidationException",
    }
)
_SHARD_OPERATIONS: Final = frozenset({"GetRecords", "GetShardIterator"})
_STREAMS_TARGET: Final = "DynamoDBStreams_20120810."
_DESCRIBE_TABLE_TARGET: Final = "DynamoDB_20120810.DescribeTable"
_ERROR_TYPE: Final = "com.amazonaws.dynamodb.v20120810#"

_Request: TypeAlias = dict[str, Any]
_Operation: TypeAlias = Callable[[_Request, str | None], bytes]

_logger = logging.getLogger(__name__)
_to_json = json.JSONEncoder(separators=(",", ":")).encode


def error_response(code: str, message: str) -> tuple[int, bytes]:
    """The status and body of an API error; botocore reads the code after the ``#``."""
    error = StreamsApiError(code, message)
    body = _to_json({"__type": _ERROR_TYPE + code, "message": message}).encode()
    return error.http_status, body


@dataclass(frozen=True, slots=True)
class _Iterator:
    arn: str
    shard_id: str
    index: int
    issued: float


def _encode_iterator(arn: str, shard_id: str, index: int) -> str:
    token = _to_json([arn, shard_id, index, time.monotonic()]).encode()
    return base64.urlsafe_b64encode(token).decode("ascii")


def _decode_iterator(token: str) -> _Iterator:
    with contextlib.suppress(ValueError, TypeError):  # whatever it is, it is not ours
        arn, shard_id, index, issued = json.loads(base64.urlsafe_b64decode(token))
        if (
            isinstance(arn, str)
            and isinstance(shard_id, str)
            and isinstance(index, int)
            and isinstance(issued, float)
        ):
            return _Iterator(arn, shard_id, index, issued)
    raise StreamsApiError("ValidationException", "Invalid ShardIterator")


def _operation_of(target: str) -> str | None:
    """The operation an ``X-Amz-Target`` names (DescribeTable is DynamoDB's, not Streams')."""
    if target == _DESCRIBE_TABLE_TARGET:
        return "DescribeTable"
    name = target.removeprefix(_STREAMS_TARGET)
    if name != target and name in OPERATIONS and name != "DescribeTable":
        return name
    return None


def _parse_request(body: bytes) -> _Request:
    try:
        request = json.loads(body or b"{}")
    except ValueError:
        request = None
    if not isinstance(request, dict):
        raise StreamsApiError("SerializationException", "The body must be a JSON object")
    return request


def _required_str(request: _Request, name: str) -> str:
    value = request.get(name)
    if not isinstance(value, str) or not value:
        raise StreamsApiError("ValidationException", f"{name} is required and must be a string")
    return value


def _optional_str(request: _Request, name: str) -> str | None:
    return None if request.get(name) is None else _required_str(request, name)


def _limit(request: _Request, maximum: int) -> int:
    value = request.get("Limit", maximum)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= maximum:
        raise StreamsApiError("ValidationException", f"Limit must be between 1 and {maximum}")
    return value


class StreamsProtocol:
    """Answers DynamoDB Streams requests from a registry of scripted streams."""

    def __init__(self, registry: StreamRegistry, *, iterator_ttl_seconds: float) -> None:
        self.registry = registry
        self.iterator_ttl_seconds = iterator_ttl_seconds
        self.calls: Counter[str] = Counter()
        self._lock = registry.lock
        self.faults = FaultQueue(OPERATIONS, _SHARD_OPERATIONS, FAULT_CODES, "StreamsServer")
        self._operations: dict[str, _Operation] = {
            "DescribeStream": self._describe_stream,
            "DescribeTable": self._describe_table,
            "GetRecords": self._get_records,
            "GetShardIterator": self._get_shard_iterator,
            "ListStreams": self._list_streams,
        }

    def handle(self, target: str, body: bytes, region: str | None = None) -> tuple[int, bytes]:
        """Answer one request; ``region`` (from the signature) scopes table look-ups."""
        operation = _operation_of(target)
        if operation is None:
            return error_response("UnknownOperationException", f"Unknown operation {target!r}")
        answer = self._operations[operation]
        with self._lock:
            self.calls[operation] += 1
        try:
            request = _parse_request(body)
            self._raise_injected_fault(operation, request)
            return 200, answer(request, region)
        except StreamsApiError as exc:
            return error_response(exc.code, exc.message)
        except Exception:
            _logger.exception("streams server failed to answer %s", operation)
            return error_response("InternalServerError", f"{operation} failed in the server")

    def _raise_injected_fault(self, operation: str, request: _Request) -> None:
        if not self.faults:
            return  # nothing to match: no iterator to decode
        fault = self.faults.take(operation, self._addressed_shard(operation, request))
        if fault is not None:
            raise StreamsApiError(fault.code, fault.message)

    @staticmethod
    def _addressed_shard(operation: str, request: _Request) -> str | None:
        if operation == "GetShardIterator":
            shard_id = request.get("ShardId")
            return shard_id if isinstance(shard_id, str) else None
        if operation == "GetRecords":
            token = request.get("ShardIterator")
            try:
                return _decode_iterator(token).shard_id if isinstance(token, str) else None
            except StreamsApiError:
                return None
        return None

    def _describe_stream(self, request: _Request, region: str | None) -> bytes:
        stream = self.registry.get(_required_str(request, "StreamArn"))
        child_of = None
        shard_filter = request.get("ShardFilter")
        if shard_filter is not None:
            if not isinstance(shard_filter, dict) or shard_filter.get("Type") != "CHILD_SHARDS":
                raise StreamsApiError(
                    "ValidationException", "ShardFilter.Type must be CHILD_SHARDS"
                )
            child_of = _required_str(shard_filter, "ShardId")
        description = describe_stream(
            stream,
            limit=_limit(request, 100),
            exclusive_start=_optional_str(request, "ExclusiveStartShardId"),
            child_of=child_of,
        )
        return _to_json({"StreamDescription": description}).encode()

    def _list_streams(self, request: _Request, region: str | None) -> bytes:
        table = _optional_str(request, "TableName")
        limit = _limit(request, 100)
        streams = self.registry.streams(table=table, region=region)
        if table is not None and not streams:
            raise StreamsApiError("ResourceNotFoundException", f"Table {table} not found")
        start = _optional_str(request, "ExclusiveStartStreamArn")
        if start is not None:
            arns = [stream.arn for stream in streams]
            if start not in arns:
                raise StreamsApiError("ValidationException", f"Unknown stream {start}")
            streams = streams[arns.index(start) + 1 :]
        page = streams[:limit]
        response: dict[str, Any] = {
            "Streams": [
                {"StreamArn": s.arn, "TableName": s.table, "StreamLabel": s.label} for s in page
            ]
        }
        if len(streams) > limit:
            response["LastEvaluatedStreamArn"] = page[-1].arn
        return _to_json(response).encode()

    def _get_shard_iterator(self, request: _Request, region: str | None) -> bytes:
        stream = self.registry.get(_required_str(request, "StreamArn"))
        shard_id = _required_str(request, "ShardId")
        timestamp = request.get("Timestamp")
        if timestamp is not None and (
            isinstance(timestamp, bool) or not isinstance(timestamp, int | float)
        ):
            raise StreamsApiError("ValidationException", "Timestamp must be epoch seconds")
        index = shard_position(
            stream,
            shard_id,
            _required_str(request, "ShardIteratorType"),
            sequence_number=_optional_str(request, "SequenceNumber"),
            timestamp=timestamp,
        )
        return _to_json({"ShardIterator": _encode_iterator(stream.arn, shard_id, index)}).encode()

    def _get_records(self, request: _Request, region: str | None) -> bytes:
        iterator = _decode_iterator(_required_str(request, "ShardIterator"))
        limit = _limit(request, 1000)
        if time.monotonic() - iterator.issued > self.iterator_ttl_seconds:
            raise StreamsApiError(
                "ExpiredIteratorException",
                "Iterator expired. The iterator was created too long ago",
            )
        stream = self.registry.get(iterator.arn)
        records, next_index = read_page(stream, iterator.shard_id, iterator.index, limit)
        parts = [b'{"Records":[', b",".join(records), b"]"]
        if next_index is not None:
            token = _encode_iterator(iterator.arn, iterator.shard_id, next_index)
            parts += [b',"NextShardIterator":"', token.encode("ascii"), b'"']
        parts.append(b"}")
        return b"".join(parts)

    def _describe_table(self, request: _Request, region: str | None) -> bytes:
        name = _required_str(request, "TableName")
        streams = self.registry.streams(table=name, region=region)
        if not streams:
            raise StreamsApiError(
                "ResourceNotFoundException",
                f"Requested resource not found: Table: {name} not found",
            )
        latest = streams[-1]
        specification: dict[str, Any] = {"StreamEnabled": latest.enabled}
        if latest.enabled:
            specification["StreamViewType"] = latest.view_type
        table = {
            "TableName": name,
            "TableArn": f"arn:aws:dynamodb:{latest.region}:{ACCOUNT_ID}:table/{name}",
            "TableStatus": "ACTIVE",
            "KeySchema": latest.key_schema,
            "StreamSpecification": specification,
            "LatestStreamArn": latest.arn,
            "LatestStreamLabel": latest.label,
        }
        return _to_json({"Table": table}).encode()
