"""The Python handlers from AWS's Kinesis examples for Lambda, in their shape: unchanged code.

``lambda_handler`` logs each record's eventID and its data, base64-decoded (the "Invoke a
Lambda function from a Kinesis trigger" example); ``batch_item_failures_handler`` is the
"Reporting batch item failures for Lambda functions with a Kinesis trigger" example, which
names the record it stopped at by its sequence number. ``shardwise run`` runs both as they
are (tests/test_kinesis_handlers.py).
"""

import base64
from typing import Any


def lambda_handler(event: dict[str, Any], context: Any) -> None:
    for record in event["Records"]:
        try:
            print(f"Processed Kinesis Event - EventID: {record['eventID']}")
            record_data = base64.b64decode(record["kinesis"]["data"]).decode("utf-8")
            print(f"Record Data: {record_data}")
            # TODO: Do interesting work based on the new data
        except Exception as e:
            print(f"An error occurred {e}")
            raise e  # noqa: TRY201 - AWS's example, unchanged
    print(f"Successfully processed {len(event['Records'])} records.")


def batch_item_failures_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    records = event.get("Records")
    cur_record_sequence_number = ""

    for record in records or []:
        try:
            # Process your record
            cur_record_sequence_number = record["kinesis"]["sequenceNumber"]
            if base64.b64decode(record["kinesis"]["data"]) == b"poison":
                raise ValueError("poison record")  # noqa: TRY301 - the test's failing record
        except Exception:  # noqa: BLE001 - AWS's example, unchanged
            # Return failed record's sequence number
            return {"batchItemFailures": [{"itemIdentifier": cur_record_sequence_number}]}

    return {"batchItemFailures": []}
