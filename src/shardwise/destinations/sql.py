"""The ``sql`` target: failed batches, with their records, in the checkpoint store.

Rows go to ``shardwise_failures`` beside the checkpoints (same database, same pool), so a
failed batch is as durable as a checkpoint and ``shardwise failures`` can list, show and
replay it. Each row carries the batch's request id, unique: when a commit's acknowledgement
is lost and dispatch sends the same batch again, the second write stores nothing.
"""

from __future__ import annotations

from shardwise.destinations.base import DestinationError, FailedBatch
from shardwise.errors import StoreError
from shardwise.store.failures import FailureStore

__all__ = ["SqlDestination"]


class SqlDestination:
    """One row per failed batch; the store (and its engine) belongs to the caller."""

    target = "sql"

    def __init__(self, failures: FailureStore) -> None:
        self._failures = failures

    async def send(self, failed: FailedBatch) -> None:
        try:
            await self._failures.add(
                request_id=failed.request_id,
                processor=failed.processor,
                stream_arn=failed.stream_arn,
                shard_id=failed.shard_id,
                condition=failed.condition.value,
                start_sequence_number=failed.start_sequence_number,
                end_sequence_number=failed.end_sequence_number,
                batch_size=len(failed.records),
                record=failed.invocation_record(include_payload=True),
                failed_at=failed.failed_at,
            )
        except StoreError as exc:  # already names the database, without its password
            raise DestinationError(
                f"cannot store the failed batch of shard {failed.shard_id!r} in sql: {exc}"
            ) from exc

    async def close(self) -> None:
        return None
