"""DynamoDB Streams wire records, decoded as JSON, turned into the records Lambda delivers.

A wire record already *is* Lambda's record but for ``eventSourceARN`` (added),
``userIdentity``'s key names (renamed on TTL deletes) and a creation time sent as a whole
float. Binary attributes stay the base64 strings the wire has. (Records parsed by
botocore take ``dynamodb.lambda_record`` instead.)
"""

from __future__ import annotations

from shardwise.records import StreamRecord

__all__ = ["lambda_records"]


def lambda_records(records: list[StreamRecord], stream_arn: str) -> list[StreamRecord]:
    """Turn decoded wire records into Lambda's records, in place (see ``dynamodb.lambda_record``).

    The per-record work is what differs between the two shapes and nothing more: the
    stream ARN, ``userIdentity``'s key names, and a creation time sent as a whole float
    (``1.4794997E9``) delivered as the integer Lambda shows.
    """
    for record in records:
        record["eventSourceARN"] = stream_arn
        if "userIdentity" in record:
            identity = record.pop("userIdentity")
            if identity:
                record["userIdentity"] = {
                    "type": identity.get("Type"),
                    "principalId": identity.get("PrincipalId"),
                }
        stream = record["dynamodb"]
        created = stream.get("ApproximateCreationDateTime")
        if created.__class__ is float and created.is_integer():
            stream["ApproximateCreationDateTime"] = int(created)
    return records
