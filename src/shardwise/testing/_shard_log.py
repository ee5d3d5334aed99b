"""One shard's records as a trimmable log, and the API's rules for positions in it.

A ``ShardLog`` holds each record as the JSON bytes GetRecords returns, encoded once by
``encode_record`` when the record is put; serving a page only slices and joins bytes.
A position is an absolute index: the first record ever appended is 0, and trimming moves
``base`` (the index of the oldest record still held) forward, so an iterator issued
before a trim can tell that its records are gone. ``ShardLog`` does no locking; the
stream that owns it does, and ``ShardOwner`` is what the two streams' scripting handles
(``ScriptedStream``, ``ScriptedKinesisStream``) share in looking their shards up.
"""

from __future__ import annotations

import bisect
import json
import os
import threading
from collections.abc import Mapping
from typing import Any, Final, Generic, TypeAlias, TypeVar

__all__ = [
    "MAX_PAGE_BYTES",
    "AttributeMap",
    "ShardLog",
    "ShardOwner",
    "StreamsApiError",
    "encode_record",
    "not_found",
]

MAX_PAGE_BYTES: Final = 1024 * 1024  # GetRecords returns at most 1 MB of records

AttributeMap: TypeAlias = Mapping[str, Any]  # DynamoDB JSON, e.g. {"Id": {"N": "1"}}

_to_json = json.JSONEncoder(separators=(",", ":")).encode
_TTL_IDENTITY: Final = ',"userIdentity":{"PrincipalId":"dynamodb.amazonaws.com","Type":"Service"}'
_SERVER_ERRORS: Final = frozenset({"InternalServerError", "InternalFailure"})  # DynamoDB, Kinesis


class StreamsApiError(Exception):
    """An error the DynamoDB Streams or Kinesis API answers with: a code and a message."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message

    @property
    def http_status(self) -> int:
        return 500 if self.code in _SERVER_ERRORS else 400


def not_found(what: str) -> StreamsApiError:
    return StreamsApiError("ResourceNotFoundException", f"Requested resource not found: {what}")


def _trimmed(shard_id: str) -> StreamsApiError:
    return StreamsApiError(
        "TrimmedDataAccessException",
        f"The requested position in shard {shard_id} is beyond the trim horizon",
    )


def encode_record(
    *,
    sequence_number: int,
    event_name: str,
    region: str,
    view_type: str,
    keys: AttributeMap,
    new_image: AttributeMap | None,
    old_image: AttributeMap | None,
    ttl_delete: bool,
    created_s: int,
) -> bytes:
    """A record in GetRecords' shape, with only the images ``view_type`` carries.

    The envelope is assembled around the encoded keys and images, so each is encoded once
    and its length is the record's SizeBytes; ``event_name`` and ``view_type`` come from
    fixed vocabularies the caller has checked, so they need no escaping.
    """
    keys_json = _to_json(keys)
    size = len(keys_json)
    dynamodb = [f'{{"ApproximateCreationDateTime":{created_s},"Keys":{keys_json}']
    if new_image is not None and view_type in {"NEW_IMAGE", "NEW_AND_OLD_IMAGES"}:
        image_json = _to_json(new_image)
        size += len(image_json)
        dynamodb.append(f',"NewImage":{image_json}')
    if old_image is not None and view_type in {"OLD_IMAGE", "NEW_AND_OLD_IMAGES"}:
        image_json = _to_json(old_image)
        size += len(image_json)
        dynamodb.append(f',"OldImage":{image_json}')
    dynamodb.append(
        f',"SequenceNumber":"{sequence_number}","SizeBytes":{size},"StreamViewType":"{view_type}"}}'
    )
    record = (
        f'{{"eventID":"{os.urandom(16).hex()}","eventName":"{event_name}",'
        f'"eventVersion":"1.1","eventSource":"aws:dynamodb","awsRegion":{_to_json(region)},'
        f'"dynamodb":{"".join(dynamodb)}{_TTL_IDENTITY if ttl_delete else ""}}}'
    )
    return record.encode()


class ShardLog:
    """One shard: its place in the lineage, its sequence range and the records still held."""

    __slots__ = (
        "base",
        "created",
        "ending",
        "last_sequence",
        "parent_id",
        "records",
        "sequences",
        "shard_id",
        "starting",
        "trimmed_through",
    )

    def __init__(self, shard_id: str, parent_id: str | None, starting: int) -> None:
        self.shard_id = shard_id
        self.parent_id = parent_id
        self.starting = starting
        self.ending: int | None = None
        self.base = 0
        self.records: list[bytes] = []  # encoded records, oldest first
        self.sequences: list[int] = []  # their sequence numbers, for bisection
        self.created: list[float] = []  # their creation (arrival) times, for AT_TIMESTAMP
        self.last_sequence: int | None = None
        self.trimmed_through: int | None = None

    @property
    def closed(self) -> bool:
        return self.ending is not None

    @property
    def end(self) -> int:
        """The index the next record will get (where LATEST points)."""
        return self.base + len(self.records)

    def append(self, sequence_number: int, created_s: float, encoded: bytes) -> None:
        self.records.append(encoded)
        self.sequences.append(sequence_number)
        self.created.append(created_s)
        self.last_sequence = sequence_number

    def close(self) -> None:
        """End the shard at its last record's sequence number (its first, if it has none)."""
        if self.ending is None:
            self.ending = self.last_sequence or self.starting

    def trim(self, count: int) -> None:
        """Drop the oldest ``count`` records."""
        if not 0 <= count <= len(self.records):
            raise ValueError(f"shard {self.shard_id} holds {len(self.records)} records")
        if count:
            self.trimmed_through = self.sequences[count - 1]
            del self.records[:count], self.sequences[:count], self.created[:count]
            self.base += count

    def describe(self) -> dict[str, Any]:
        """The shard as DescribeStream lists it."""
        sequence_range = {"StartingSequenceNumber": str(self.starting)}
        if self.ending is not None:
            sequence_range["EndingSequenceNumber"] = str(self.ending)
        shard: dict[str, Any] = {"ShardId": self.shard_id}
        if self.parent_id is not None:
            shard["ParentShardId"] = self.parent_id
        shard["SequenceNumberRange"] = sequence_range
        return shard

    def index_of(self, sequence_number: int, *, after: bool) -> int:
        """Where AT_ / AFTER_SEQUENCE_NUMBER points: only numbers this shard handed out."""
        i = bisect.bisect_left(self.sequences, sequence_number)
        if i < len(self.sequences) and self.sequences[i] == sequence_number:
            return self.base + i + (1 if after else 0)
        trimmed = self.trimmed_through
        if trimmed is not None and self.starting <= sequence_number <= trimmed:
            raise _trimmed(self.shard_id)
        if sequence_number == self.starting:
            return self.base
        raise StreamsApiError(
            "ValidationException",
            f"Sequence number {sequence_number} is not in shard {self.shard_id}",
        )

    def index_at_time(self, timestamp: float) -> int:
        """The first record created at or after ``timestamp`` (AT_TIMESTAMP)."""
        for i, created in enumerate(self.created):
            if created >= timestamp:
                return self.base + i
        return self.end

    def page(
        self, index: int, limit: int, max_bytes: int = MAX_PAGE_BYTES
    ) -> tuple[list[bytes], int | None]:
        """Up to ``limit`` records from ``index`` within ``max_bytes`` (always at least one),
        and the index to read next: None once a closed shard has been read to its end."""
        if index < self.base:
            raise _trimmed(self.shard_id)
        start = index - self.base
        stop = min(len(self.records), start + limit)
        size = 0
        cut = start
        while cut < stop:
            size += len(self.records[cut])
            if size > max_bytes and cut > start:
                break
            cut += 1
        if self.closed and cut >= len(self.records):
            return self.records[start:cut], None
        return self.records[start:cut], self.base + cut


ShardT = TypeVar("ShardT", bound=ShardLog)


class ShardOwner(Generic[ShardT]):
    """A stream's scripting handle, as far as it holds shards: ``_shards`` by id, guarded
    by ``_lock``. ``_named`` is the stream as a ``ValueError`` names it."""

    _lock: threading.RLock
    _shards: dict[str, ShardT]
    _named: str

    def records(self, shard_id: str) -> list[dict[str, Any]]:
        """The shard's records still held, decoded, exactly as GetRecords returns them."""
        with self._lock:
            encoded = list(self._shard(shard_id).records)
        return [json.loads(record) for record in encoded]

    def _shard(self, shard_id: str) -> ShardT:
        try:
            return self._shards[shard_id]
        except KeyError:
            raise ValueError(f"stream {self._named} has no shard {shard_id!r}") from None

    def _open_shard(self, shard_id: str) -> ShardT:
        shard = self._shard(shard_id)
        if shard.closed:
            raise ValueError(f"shard {shard_id} is closed")
        return shard
