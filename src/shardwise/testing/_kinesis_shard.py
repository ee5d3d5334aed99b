"""One Kinesis shard: a ``ShardLog`` with a hash key range and, after a merge, two parents.

The records, positions and paging are the DynamoDB side's ``ShardLog``; a Kinesis record is
encoded once, by ``encode_record``, into the JSON GetRecords returns. What Kinesis adds is
routing: every open shard owns a contiguous range of the 128-bit hash keys, a record goes
to the open shard whose range holds the MD5 of its partition key (``hash_key``), and a
split or merge closes its parents and hands their keys to children. Records never move.
``position`` and ``read`` are the shard's part of GetShardIterator and GetRecords, with
the service's error codes; ``ShardFilter`` is ListShards' choice of shards by state and
time. ``KinesisShard`` does no locking; the stream that owns it does.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from shardwise.testing._shard_log import ShardLog, StreamsApiError

__all__ = [
    "HASH_KEY_SPACE",
    "MAX_GET_RECORDS_BYTES",
    "MAX_RECORD_BYTES",
    "KinesisShard",
    "ShardFilter",
    "encode_record",
    "hash_key",
    "uniform_bounds",
]

HASH_KEY_SPACE: Final = 1 << 128  # hash keys run from 0 to 2**128 - 1
MAX_RECORD_BYTES: Final = 1024 * 1024  # a record's data blob plus its partition key
MAX_GET_RECORDS_BYTES: Final = 10 * 1024 * 1024  # one GetRecords reply (its records' JSON)

_to_json = json.JSONEncoder(separators=(",", ":")).encode


def hash_key(partition_key: str) -> int:
    """The hash key a partition key routes by: its MD5 as a 128-bit big-endian integer."""
    digest = hashlib.md5(partition_key.encode(), usedforsecurity=False).digest()
    return int.from_bytes(digest, "big")


def uniform_bounds(count: int) -> list[int]:
    """The first hash key of each of ``count`` equal ranges, then ``HASH_KEY_SPACE``: the
    ranges CreateStream and UpdateShardCount's UNIFORM_SCALING give shards."""
    return [i * HASH_KEY_SPACE // count for i in range(count)] + [HASH_KEY_SPACE]


def encode_record(sequence_number: int, arrival: float, data: bytes, partition_key: str) -> bytes:
    """A record in GetRecords' shape: ``Data`` in base64, arrival in epoch seconds (to the ms)."""
    blob = base64.b64encode(data).decode("ascii")
    return (
        f'{{"SequenceNumber":"{sequence_number}","ApproximateArrivalTimestamp":{arrival:.3f},'
        f'"Data":"{blob}","PartitionKey":{_to_json(partition_key)}}}'
    ).encode()


class KinesisShard(ShardLog):
    """A shard's records and sequence range, the hash keys it owns, its parents and the
    wall-clock times it opened and closed (for ListShards' timestamp filters)."""

    __slots__ = ("adjacent_parent_id", "closed_at", "hash_end", "hash_start", "opened_at")

    def __init__(
        self, shard_id: str, parents: tuple[str, ...], hash_keys: tuple[int, int], starting: int
    ) -> None:
        super().__init__(shard_id, parents[0] if parents else None, starting)
        self.adjacent_parent_id = parents[1] if len(parents) > 1 else None
        self.hash_start, self.hash_end = hash_keys
        self.opened_at = time.time()
        self.closed_at: float | None = None

    @property
    def parents(self) -> list[str]:
        """ParentShardId, then AdjacentParentShardId (after a merge)."""
        return [p for p in (self.parent_id, self.adjacent_parent_id) if p is not None]

    def close(self) -> None:
        if self.closed_at is None:
            self.closed_at = time.time()
        super().close()

    def open_at(self, timestamp: float) -> bool:
        """Whether the shard was open at ``timestamp`` (the stream's first shards always were
        open from its start)."""
        opened = not self.parents or self.opened_at <= timestamp
        return opened and (self.closed_at is None or self.closed_at > timestamp)

    def hash_key_range(self) -> dict[str, str]:
        return {"StartingHashKey": str(self.hash_start), "EndingHashKey": str(self.hash_end)}

    def describe(self) -> dict[str, Any]:
        """The shard as ListShards and DescribeStream list it."""
        shard: dict[str, Any] = {"ShardId": self.shard_id}
        if self.parent_id is not None:
            shard["ParentShardId"] = self.parent_id
        if self.adjacent_parent_id is not None:
            shard["AdjacentParentShardId"] = self.adjacent_parent_id
        shard["HashKeyRange"] = self.hash_key_range()
        shard["SequenceNumberRange"] = super().describe()["SequenceNumberRange"]
        return shard

    def position(
        self, iterator_type: str, *, sequence_number: str | None, timestamp: float | None
    ) -> int:
        """The absolute index an iterator of ``iterator_type`` points at."""
        if iterator_type == "TRIM_HORIZON":
            return self.base
        if iterator_type == "LATEST":
            return self.end
        if iterator_type == "AT_TIMESTAMP":
            if timestamp is None:
                raise StreamsApiError("InvalidArgumentException", "AT_TIMESTAMP needs a Timestamp")
            return self.index_at_time(timestamp)  # later than every record: the tip
        if iterator_type not in {"AT_SEQUENCE_NUMBER", "AFTER_SEQUENCE_NUMBER"}:
            raise StreamsApiError(
                "ValidationException",
                f"Value '{iterator_type}' at 'shardIteratorType' failed to satisfy constraint: "
                "Member must satisfy enum value set",
            )
        if sequence_number is None or not sequence_number.isdigit():
            raise StreamsApiError(
                "InvalidArgumentException", f"{iterator_type} needs a StartingSequenceNumber"
            )
        after = iterator_type == "AFTER_SEQUENCE_NUMBER"
        try:
            return self.index_of(int(sequence_number), after=after)
        except StreamsApiError:  # a number this shard never handed out
            raise StreamsApiError(
                "InvalidArgumentException",
                f"StartingSequenceNumber {sequence_number} used in GetShardIterator on shard "
                f"{self.shard_id} is invalid because it did not come from this shard.",
            ) from None

    def read(self, index: int, limit: int) -> tuple[list[bytes], int | None, int]:
        """Up to ``limit`` records (and 10 MB) from ``index``, the index to read next (None:
        the shard is closed and read to its end), and MillisBehindLatest: how long ago the
        first record not yet read arrived, 0 once the page reaches the tip."""
        records, next_index = self.page(index, limit, MAX_GET_RECORDS_BYTES)
        behind = 0
        if next_index is not None and next_index < self.end:
            arrival = self.created[next_index - self.base]
            behind = max(0, round((time.time() - arrival) * 1000))
        return records, next_index, behind

    def child(self) -> dict[str, Any]:
        """The shard as a GetRecords reply's ChildShards lists it."""
        return {
            "ShardId": self.shard_id,
            "ParentShards": self.parents,
            "HashKeyRange": self.hash_key_range(),
        }


@dataclass(frozen=True, slots=True)
class ShardFilter:
    """ListShards' ShardFilter: ``kind`` is its Type; ``shard_id`` and ``timestamp`` what
    AFTER_SHARD_ID and the two timestamp types name."""

    kind: str
    shard_id: str | None = None
    timestamp: float | None = None

    def keeps(self) -> Callable[[KinesisShard], bool]:
        """Which shards the filter lists. Nothing ages out of a scripted stream, so the
        trim horizon is the stream's start, where only its first shards were open."""
        at = self.timestamp
        if self.kind == "AT_LATEST":
            return lambda shard: not shard.closed
        if self.kind == "AT_TRIM_HORIZON":
            return lambda shard: not shard.parents
        if self.kind == "AT_TIMESTAMP" and at is not None:
            return lambda shard: shard.open_at(at)
        if self.kind == "FROM_TIMESTAMP" and at is not None:
            return lambda shard: shard.closed_at is None or shard.closed_at >= at
        return lambda shard: True  # FROM_TRIM_HORIZON, and AFTER_SHARD_ID by its shard id
