"""Record shapes: what dispatch reads from a DynamoDB or a Kinesis record, in Lambda's shape."""

from __future__ import annotations

from typing import Any

import pytest

from shardwise.destinations.base import FailedBatch, FailureCondition
from shardwise.dispatch.lanes import lane_of
from shardwise.dispatch.response import interpret_response
from shardwise.records import DYNAMODB_SHAPE, KINESIS_SHAPE, Batch, ShardId, shape_of

KINESIS_ARN = "arn:aws:kinesis:us-east-1:123456789012:stream/orders"
DDB_ARN = "arn:aws:dynamodb:us-east-1:123456789012:table/Orders/stream/2026-01-01T00:00:00.000"


def kinesis_record(
    sequence: str, key: str = "customer-1", arrival: float = 1_780_000_000.25
) -> dict[str, Any]:
    """A record as Lambda delivers it from Kinesis (AWS's documented example event)."""
    return {
        "kinesis": {
            "kinesisSchemaVersion": "1.0",
            "partitionKey": key,
            "sequenceNumber": sequence,
            "data": "SGVsbG8sIHRoaXMgaXMgYSB0ZXN0Lg==",
            "approximateArrivalTimestamp": arrival,
        },
        "eventSource": "aws:kinesis",
        "eventVersion": "1.0",
        "eventID": f"shardId-000000000000:{sequence}",
        "eventName": "aws:kinesis:record",
        "invokeIdentityArn": "arn:aws:iam::123456789012:role/reader",
        "awsRegion": "us-east-1",
        "eventSourceARN": KINESIS_ARN,
    }


def dynamodb_record(sequence: str, pk: str = "a", created: int = 1_780_000_000) -> dict[str, Any]:
    return {
        "eventID": f"e{sequence}",
        "eventName": "INSERT",
        "eventSource": "aws:dynamodb",
        "eventSourceARN": DDB_ARN,
        "dynamodb": {
            "ApproximateCreationDateTime": created,
            "Keys": {"pk": {"S": pk}},
            "SequenceNumber": sequence,
        },
    }


SEQ_1 = "49590338271490256608559692538361571095921575989136588801"
SEQ_2 = "49590338271490256608559692538361571095921575989136588802"


class TestShapes:
    def test_each_source_by_its_body(self) -> None:
        assert shape_of(kinesis_record(SEQ_1)) is KINESIS_SHAPE
        assert shape_of(dynamodb_record("100")) is DYNAMODB_SHAPE

    def test_not_a_stream_record_names_its_keys(self) -> None:
        with pytest.raises(ValueError, match=r"'dynamodb', 'kinesis' in its keys \['body'\]"):
            shape_of({"body": "an SQS message"})

    def test_kinesis_fields(self) -> None:
        record = kinesis_record(SEQ_1, key="customer-7", arrival=1_780_000_000.5)
        assert KINESIS_SHAPE.sequence_number(record) == SEQ_1
        assert KINESIS_SHAPE.arrival_time(record) == 1_780_000_000.5
        assert KINESIS_SHAPE.partition_key(record) == "customer-7"

    def test_batch_reads_its_records_shape(self) -> None:
        records = [kinesis_record(SEQ_1), kinesis_record(SEQ_2)]
        batch = Batch(KINESIS_ARN, ShardId("shardId-000000000000"), records)
        assert (batch.first_sequence_number, batch.last_sequence_number) == (SEQ_1, SEQ_2)
        assert batch.sequence_numbers() == [SEQ_1, SEQ_2]


class TestKinesisThroughDispatch:
    """The parts of dispatch that read records work on Kinesis records unchanged."""

    def test_lanes_by_partition_key(self) -> None:
        same = {lane_of(kinesis_record(str(n), key="customer-3"), 10) for n in range(20)}
        assert len(same) == 1
        spread = {lane_of(kinesis_record("1", key=f"customer-{n}"), 10) for n in range(200)}
        assert len(spread) == 10

    def test_batch_item_failures_by_sequence_number(self) -> None:
        records = [kinesis_record(SEQ_1), kinesis_record(SEQ_2)]
        response = interpret_response({"batchItemFailures": [{"itemIdentifier": SEQ_2}]}, records)
        assert response.failed_from == 1

    def test_on_failure_record_has_kinesis_batch_info(self) -> None:
        records = [kinesis_record(SEQ_1, arrival=1_780_000_000.9), kinesis_record(SEQ_2)]
        failed = FailedBatch(
            "orders",
            "arn:aws:lambda:us-east-1:123456789012:function:orders",
            KINESIS_ARN,
            ShardId("shardId-000000000000"),
            FailureCondition.RETRY_ATTEMPTS_EXHAUSTED,
            records,
        )
        record = failed.invocation_record(include_payload=False)
        assert "DDBStreamBatchInfo" not in record
        assert record["KinesisBatchInfo"] == {
            "shardId": "shardId-000000000000",
            "startSequenceNumber": SEQ_1,
            "endSequenceNumber": SEQ_2,
            "approximateArrivalOfFirstRecord": "2026-05-28T20:26:40Z",
            "approximateArrivalOfLastRecord": "2026-05-28T20:26:40Z",
            "batchSize": 2,
            "streamArn": KINESIS_ARN,
        }
