"""The Python handler from AWS's DynamoDB Streams tutorial, in its shape: unchanged code.

It prints each event and, per record, its eventID, eventName and the DynamoDB part - what
a function deployed to Lambda with a DynamoDB trigger does. ``shardwise run`` runs it as
is (see tests/test_aws_docs_handler.py).
"""

import json
from typing import Any


def lambda_handler(event: dict[str, Any], context: Any) -> None:
    print(json.dumps(event, indent=2))
    for record in event["Records"]:
        log_dynamodb_record(record)


def log_dynamodb_record(record: dict[str, Any]) -> None:
    print(record["eventID"])
    print(record["eventName"])
    print(f"DynamoDB Record: {json.dumps(record['dynamodb'])}")
