"""The SNS target: Lambda's invocation record, without the records, published to a topic.

Metadata only, as in Lambda; subscribers get the same JSON an SQS destination would.
"""

from __future__ import annotations

import json
from typing import Any

from shardwise.destinations._aws import map_aws_errors
from shardwise.destinations.base import FailedBatch

__all__ = ["SnsDestination"]


class SnsDestination:
    """Publish to the topic ``arn:aws:sns:REGION:ACCOUNT:TOPIC``; the caller owns the client."""

    def __init__(self, client: Any, arn: str) -> None:
        self._client = client
        self._arn = arn

    @property
    def target(self) -> str:
        return self._arn

    async def send(self, failed: FailedBatch) -> None:
        message = json.dumps(failed.invocation_record(include_payload=False))
        with map_aws_errors(self._arn, failed.shard_id):
            await self._client.publish(TopicArn=self._arn, Message=message)

    async def close(self) -> None:
        return None
