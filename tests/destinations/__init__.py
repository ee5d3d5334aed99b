"""Shared by the destination tests: failed batches in Lambda's shape, checked field by field."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from shardwise.destinations import FailedBatch, FailureCondition
from shardwise.records import ShardId, StreamRecord

STREAM_ARN = "arn:aws:dynamodb:us-east-1:123456789012:table/orders/stream/2024-01-01T00:00:00.000"
FUNCTION_ARN = "arn:aws:lambda:us-east-1:123456789012:function:orders"
SHARD = ShardId("shardId-00000001573689847184-864758bb")
FAILED_AT = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
FIRST_CREATED = 1_714_979_280  # 2024-05-06T07:08:00Z; later records follow 10 s apart
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def stream_record(sequence_number: str, created: int, key: str = "a") -> StreamRecord:
    """One DynamoDB record exactly as a Lambda handler receives it."""
    return {
        "eventID": f"event-{sequence_number}",
        "eventName": "INSERT",
        "eventVersion": "1.1",
        "eventSource": "aws:dynamodb",
        "awsRegion": "us-east-1",
        "eventSourceARN": STREAM_ARN,
        "dynamodb": {
            "ApproximateCreationDateTime": created,
            "Keys": {"id": {"S": key}},
            "NewImage": {"id": {"S": key}, "n": {"N": "1"}},
            "SequenceNumber": sequence_number,
            "SizeBytes": 26,
            "StreamViewType": "NEW_AND_OLD_IMAGES",
        },
    }


def failed_batch(
    processor: str = "orders",
    *,
    first: int = 100,
    size: int = 2,
    failed_at: datetime = FAILED_AT,
    shard_id: ShardId = SHARD,
    condition: FailureCondition = FailureCondition.RETRY_ATTEMPTS_EXHAUSTED,
) -> FailedBatch:
    """``size`` records with sequence numbers from ``first``, ten seconds apart."""
    records = [
        stream_record(str(first + i), FIRST_CREATED + 10 * i, key=f"k{first + i}")
        for i in range(size)
    ]
    return FailedBatch(
        processor=processor,
        function_arn=FUNCTION_ARN,
        stream_arn=STREAM_ARN,
        shard_id=shard_id,
        condition=condition,
        records=records,
        approximate_invoke_count=3,
        error_message="ValueError: bad item",
        failed_at=failed_at,
    )


def assert_lambda_record(record: dict[str, Any], failed: FailedBatch, *, payload: bool) -> None:
    """``record`` is Lambda's on-failure invocation record for ``failed``, field by field."""
    expected_keys = {
        "requestContext",
        "responseContext",
        "version",
        "timestamp",
        "DDBStreamBatchInfo",
        "shardwise",
    }
    assert set(record) == expected_keys | ({"payload"} if payload else set())
    assert record["requestContext"] == {
        "requestId": failed.request_id,
        "functionArn": FUNCTION_ARN,
        "condition": failed.condition.value,
        "approximateInvokeCount": 3,
    }
    assert record["responseContext"] == {
        "statusCode": 200,
        "executedVersion": "$LATEST",
        "functionError": "Unhandled",
    }
    assert record["version"] == "1.0"
    assert TIMESTAMP.fullmatch(record["timestamp"])
    assert record["timestamp"] == failed.failed_at.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    last_created = FIRST_CREATED + 10 * (len(failed.records) - 1)
    assert record["DDBStreamBatchInfo"] == {
        "shardId": failed.shard_id,
        "startSequenceNumber": failed.records[0]["dynamodb"]["SequenceNumber"],
        "endSequenceNumber": failed.records[-1]["dynamodb"]["SequenceNumber"],
        "approximateArrivalOfFirstRecord": _iso(FIRST_CREATED),
        "approximateArrivalOfLastRecord": _iso(last_created),
        "batchSize": len(failed.records),
        "streamArn": STREAM_ARN,
    }
    assert record["shardwise"] == {"processor": failed.processor, "error": "ValueError: bad item"}
    if payload:
        assert record["payload"] == {"Records": list(failed.records)}


def _iso(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
