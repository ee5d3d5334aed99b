"""On-failure destinations: where records go once dispatch gives up on them.

``open_destination`` turns a configured target (an SQS or SNS ARN, an S3 bucket, ``sql`` or
``file:///path.jsonl``) into a ``Destination``. SQS and SNS receive Lambda's invocation
record only (metadata, as in Lambda); S3, ``sql`` and ``file:///`` keep the records too, so
``shardwise failures`` can list, show and replay them.
"""

from __future__ import annotations

from shardwise.destinations.base import (
    Destination,
    DestinationError,
    FailedBatch,
    FailureCondition,
    esm_uuid,
)
from shardwise.destinations.factory import open_destination, target_kind
from shardwise.destinations.file import FileDestination
from shardwise.destinations.s3 import S3Destination
from shardwise.destinations.sns import SnsDestination
from shardwise.destinations.sql import SqlDestination
from shardwise.destinations.sqs import SqsDestination

__all__ = [
    "Destination",
    "DestinationError",
    "FailedBatch",
    "FailureCondition",
    "FileDestination",
    "S3Destination",
    "SnsDestination",
    "SqlDestination",
    "SqsDestination",
    "esm_uuid",
    "open_destination",
    "target_kind",
]
