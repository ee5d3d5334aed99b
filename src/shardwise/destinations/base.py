"""On-failure destinations: the contract, and the invocation record Lambda writes.

A ``FailedBatch`` is what dispatch hands over once records are given up on (retries
exhausted, record too old, payload too large). A ``Destination`` must either store it
durably or raise ``DestinationError``; dispatch retries until it is stored, and only then
lets the checkpoint pass those records.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from shardwise.errors import ShardwiseError
from shardwise.records import ShardId, StreamRecord, shape_of

__all__ = [
    "Destination",
    "DestinationError",
    "FailedBatch",
    "FailureCondition",
    "esm_uuid",
]

# Fixed namespace: a processor's ESM-style UUID is the same on every worker and restart.
_ESM_NAMESPACE = uuid.UUID("6b1d1f0e-52c4-4d1a-9d0b-0d6c3f6f7a11")


def esm_uuid(processor: str) -> str:
    """A stable UUID standing in for the event source mapping's UUID (S3 key layout)."""
    return str(uuid.uuid5(_ESM_NAMESPACE, processor))


class DestinationError(ShardwiseError):
    """The failed batch could not be stored; dispatch retries and does not checkpoint."""

    retriable = True


class FailureCondition(enum.StrEnum):
    """``requestContext.condition`` of Lambda's invocation record."""

    RETRY_ATTEMPTS_EXHAUSTED = "RetryAttemptsExhausted"
    RECORD_AGE_EXCEEDED = "RecordAgeExceeded"
    MAXIMUM_PAYLOAD_SIZE_EXCEEDED = "MaximumPayloadSizeExceeded"


def _iso_seconds(epoch: Any) -> str | None:
    if not isinstance(epoch, int | float):
        return None
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True, slots=True)
class FailedBatch:
    """Consecutive records of one shard that were given up on, and why."""

    processor: str
    function_arn: str
    stream_arn: str
    shard_id: ShardId
    condition: FailureCondition
    records: Sequence[StreamRecord] = field(repr=False)
    approximate_invoke_count: int = 0
    function_error: str | None = "Unhandled"
    error_message: str | None = None
    request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    failed_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def start_sequence_number(self) -> str:
        return str(shape_of(self.records[0]).sequence_number(self.records[0]))

    @property
    def end_sequence_number(self) -> str:
        return str(shape_of(self.records[-1]).sequence_number(self.records[-1]))

    def invocation_record(self, *, include_payload: bool) -> dict[str, Any]:
        """Lambda's on-failure invocation record; S3 and local targets add the payload."""
        shape = shape_of(self.records[0])
        first = shape.arrival_time(self.records[0])
        last = shape.arrival_time(self.records[-1])
        response: dict[str, Any] = {"statusCode": 200, "executedVersion": "$LATEST"}
        if self.function_error:
            response["functionError"] = self.function_error
        record: dict[str, Any] = {
            "requestContext": {
                "requestId": self.request_id,
                "functionArn": self.function_arn,
                "condition": self.condition.value,
                "approximateInvokeCount": self.approximate_invoke_count,
            },
            "responseContext": response,
            "version": "1.0",
            "timestamp": self.failed_at.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            shape.batch_info: {
                "shardId": self.shard_id,
                "startSequenceNumber": self.start_sequence_number,
                "endSequenceNumber": self.end_sequence_number,
                "approximateArrivalOfFirstRecord": _iso_seconds(first),
                "approximateArrivalOfLastRecord": _iso_seconds(last),
                "batchSize": len(self.records),
                "streamArn": self.stream_arn,
            },
        }
        if self.error_message:
            # Not in Lambda's record (it has no access to the exception); ours says why.
            record["shardwise"] = {"processor": self.processor, "error": self.error_message}
        else:
            record["shardwise"] = {"processor": self.processor}
        if include_payload:
            record["payload"] = {"Records": list(self.records)}
        return record


class Destination(Protocol):
    """Somewhere failed batches are stored."""

    @property
    def target(self) -> str:
        """The configured destination, for logs (never contains secrets)."""
        ...

    async def send(self, failed: FailedBatch) -> None:
        """Store ``failed`` durably or raise ``DestinationError``."""
        ...

    async def close(self) -> None: ...
