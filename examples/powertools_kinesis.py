"""A Kinesis handler written with Powertools for AWS Lambda's BatchProcessor, unchanged.

Each record is a Powertools ``KinesisStreamRecord``; a record whose JSON data says
``{"poison": true}`` raises, and ``process_partial_response`` reports it in
``batchItemFailures`` (the mapping needs ``function_response_types:
[ReportBatchItemFailures]``). Processed records are appended to ``POWERTOOLS_OUT`` (a file
path) so tests can see them (tests/test_kinesis_handlers.py).
"""

import json
import os
from typing import Any

from aws_lambda_powertools.utilities.batch import (
    BatchProcessor,
    EventType,
    process_partial_response,
)
from aws_lambda_powertools.utilities.data_classes.kinesis_stream_event import (
    KinesisStreamRecord,
)

processor = BatchProcessor(event_type=EventType.KinesisDataStreams)


def record_handler(record: KinesisStreamRecord) -> None:
    payload = record.kinesis.data_as_json()
    if payload.get("poison"):
        raise ValueError(f"poison record {record.kinesis.sequence_number}")
    with open(os.environ["POWERTOOLS_OUT"], "a", encoding="utf-8") as out:
        out.write(json.dumps({"key": record.kinesis.partition_key, "payload": payload}) + "\n")


def lambda_handler(event: dict[str, Any], context: Any) -> Any:
    return process_partial_response(
        event=event, record_handler=record_handler, processor=processor, context=context
    )
