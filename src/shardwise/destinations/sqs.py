"""The SQS target: Lambda's invocation record, without the records, as one message.

Like Lambda, the message is metadata only: which shard, which sequence range, why. The
records themselves stay in the stream (for its 24-hour retention); use an S3, ``sql`` or
``file:///`` destination to keep them.
"""

from __future__ import annotations

import json
from typing import Any

from shardwise.destinations._aws import map_aws_errors, parse_arn
from shardwise.destinations.base import FailedBatch

__all__ = ["SqsDestination"]


class SqsDestination:
    """SendMessage to the queue named by ``arn:aws:sqs:REGION:ACCOUNT:QUEUE``.

    The queue URL is looked up once with GetQueueUrl (queue name and owner account from the
    ARN) and cached. A FIFO queue gets the shard as message group and the batch's request id
    for deduplication. The client belongs to the caller, who closes it.
    """

    def __init__(self, client: Any, arn: str) -> None:
        parsed = parse_arn(arn)
        self._client = client
        self._arn = arn
        self._queue_name = parsed.resource
        self._account = parsed.account
        self._queue_url: str | None = None

    @property
    def target(self) -> str:
        return self._arn

    async def send(self, failed: FailedBatch) -> None:
        message: dict[str, str] = {
            "MessageBody": json.dumps(failed.invocation_record(include_payload=False))
        }
        if self._queue_name.endswith(".fifo"):
            # In shard order, and a retried send within SQS's 5-minute window is dropped.
            message["MessageGroupId"] = failed.shard_id
            message["MessageDeduplicationId"] = failed.request_id
        with map_aws_errors(self._arn, failed.shard_id):
            queue_url = await self._url()
            await self._client.send_message(QueueUrl=queue_url, **message)

    async def close(self) -> None:
        return None

    async def _url(self) -> str:
        if self._queue_url is None:
            response = await self._client.get_queue_url(
                QueueName=self._queue_name, QueueOwnerAWSAccountId=self._account
            )
            self._queue_url = str(response["QueueUrl"])
        return self._queue_url
