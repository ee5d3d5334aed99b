"""The interface every stream source implements (DynamoDB Streams today, Kinesis later).

Dispatch only ever sees this Protocol, ``Shard``, ``Position`` and ``RecordPage``; the
source translates its API's errors into ``shardwise.errors.SourceError`` subclasses.
"""

from __future__ import annotations

from typing import Protocol

from shardwise.records import Position, RecordPage, ShardId, ShardListing

__all__ = ["MAX_RECORDS_PER_CALL", "ShardSource"]

# GetRecords returns at most this many records per call (and at most 1 MB).
MAX_RECORDS_PER_CALL = 1000


class ShardSource(Protocol):
    """Lists the shards of one stream and reads them."""

    @property
    def stream_arn(self) -> str: ...

    async def describe(self) -> ShardListing:
        """The stream's status and every shard currently in it (all pages)."""
        ...

    async def get_iterator(self, shard_id: ShardId, position: Position) -> str:
        """An iterator for ``shard_id`` at ``position``."""
        ...

    async def get_records(self, shard_id: ShardId, iterator: str, limit: int) -> RecordPage:
        """The next page of records, in the handler's record shape."""
        ...
