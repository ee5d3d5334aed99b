"""The shared vocabulary: shards, sequence numbers, positions, records and batches.

Records travel through the pipeline as plain dicts in exactly the shape Lambda hands to a
handler (see ``StreamRecord``), so nothing is copied or re-encoded between the source and
the handler. What dispatch reads from a record (its sequence number, when it arrived, the
key its lane is chosen by) is found through the record's ``RecordShape``: a source's
records name theirs by the key their stream data sits under (``dynamodb``, ``kinesis``).
Everything else here is a small frozen value.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NewType, TypeAlias

__all__ = [
    "DYNAMODB_SHAPE",
    "KINESIS_SHAPE",
    "Batch",
    "Position",
    "ReadLimits",
    "RecordPage",
    "RecordShape",
    "SequenceNumber",
    "Shard",
    "ShardId",
    "ShardListing",
    "StartingPosition",
    "StreamRecord",
    "shape_of",
    "sortable_position",
]

ShardId = NewType("ShardId", str)
SequenceNumber = NewType("SequenceNumber", str)

# A record in Lambda's event shape: eventID, eventName, eventVersion, eventSource,
# awsRegion, eventSourceARN, dynamodb{...}, userIdentity (TTL deletes only).
StreamRecord: TypeAlias = dict[str, Any]


def sortable_position(sequence_number: str) -> str:
    """A position in a shard as text that sorts as the shard does: sequence numbers are
    decimal strings of varying length (DynamoDB Streams and Kinesis alike), and a KPL user
    record's position is ``<sequence>:<sub-sequence>``. Both parts are zero-padded."""
    main, _, sub = sequence_number.partition(":")
    if not main.isdigit() or (sub and not sub.isdigit()):
        raise ValueError(f"not a sequence number: {sequence_number!r}")
    return f"{int(main):064d}.{int(sub or 0):020d}"


@dataclass(frozen=True, slots=True)
class RecordShape:
    """Where one source's records, in Lambda's event shape, keep what dispatch reads."""

    body: str  # the key the stream's data sits under
    sequence: str  # the sequence number, under body
    arrival: str  # when the record reached the stream, epoch seconds, under body
    partition: str  # what a record's lane is chosen by, under body
    batch_info: str  # the on-failure record's batch description (Lambda's key)
    # A user record split out of an aggregate (Kinesis KPL) carries its index in the
    # aggregate under this key, next to the aggregate's sequence number.
    sub_sequence: str | None = None

    def sequence_number(self, record: StreamRecord) -> SequenceNumber:
        """The record's position: its sequence number, or for a user record split out of an
        aggregate ``<sequence number>:<sub-sequence number>`` (what is checkpointed)."""
        body = record[self.body]
        if self.sub_sequence is not None and self.sub_sequence in body:
            return SequenceNumber(f"{body[self.sequence]}:{body[self.sub_sequence]}")
        return SequenceNumber(body[self.sequence])

    def identifiers(self, record: StreamRecord) -> tuple[str, ...]:
        """What a handler may name the record by in ``batchItemFailures``: its position,
        and for a user record of an aggregate also the aggregate's sequence number (the
        one the handler sees; it names the aggregate's first record in the batch)."""
        position = self.sequence_number(record)
        plain = record[self.body][self.sequence]
        return (position,) if position == plain else (position, plain)

    def arrival_time(self, record: StreamRecord) -> float | None:
        """Epoch seconds, when the record carries them."""
        value = record[self.body].get(self.arrival)
        return float(value) if isinstance(value, int | float) else None

    def partition_key(self, record: StreamRecord) -> Any:
        return record[self.body].get(self.partition)


DYNAMODB_SHAPE = RecordShape(
    "dynamodb", "SequenceNumber", "ApproximateCreationDateTime", "Keys", "DDBStreamBatchInfo"
)
KINESIS_SHAPE = RecordShape(
    "kinesis",
    "sequenceNumber",
    "approximateArrivalTimestamp",
    "partitionKey",
    "KinesisBatchInfo",
    sub_sequence="subSequenceNumber",
)
_SHAPES = (DYNAMODB_SHAPE, KINESIS_SHAPE)


def shape_of(record: StreamRecord) -> RecordShape:
    """The shape of a record, by the key its stream data sits under."""
    for shape in _SHAPES:
        if shape.body in record:
            return shape
    raise ValueError(
        "not a stream record: none of "
        + ", ".join(repr(shape.body) for shape in _SHAPES)
        + f" in its keys {sorted(record)[:10]}"
    )


class StartingPosition(enum.StrEnum):
    """Where a processor starts on a stream it has never read (ESM ``StartingPosition``)."""

    TRIM_HORIZON = "TRIM_HORIZON"
    LATEST = "LATEST"
    AT_TIMESTAMP = "AT_TIMESTAMP"  # Kinesis only: StartingPositionTimestamp


@dataclass(frozen=True, slots=True)
class Position:
    """Where to open a shard iterator: a starting position or just after a sequence number."""

    after: SequenceNumber | None = None
    start: StartingPosition = StartingPosition.TRIM_HORIZON

    @classmethod
    def after_sequence(cls, sequence_number: str) -> Position:
        return cls(after=SequenceNumber(sequence_number))

    def describe(self) -> str:
        return f"AFTER_SEQUENCE_NUMBER {self.after}" if self.after else self.start.value


@dataclass(frozen=True, slots=True)
class Shard:
    """One shard as listed by DescribeStream."""

    shard_id: ShardId
    parent_shard_id: ShardId | None = None
    starting_sequence_number: SequenceNumber | None = None
    ending_sequence_number: SequenceNumber | None = None
    # A merge's second parent (Kinesis AdjacentParentShardId).
    adjacent_parent_shard_id: ShardId | None = None

    @property
    def parents(self) -> tuple[ShardId, ...]:
        """The shards this one continues: none, one (a split), or two (a merge)."""
        return tuple(p for p in (self.parent_shard_id, self.adjacent_parent_shard_id) if p)

    @property
    def closed(self) -> bool:
        """A shard with an ending sequence number receives no new records."""
        return self.ending_sequence_number is not None


@dataclass(frozen=True, slots=True)
class ShardListing:
    """A stream's status and every shard currently in it."""

    status: str
    shards: tuple[Shard, ...]

    @property
    def enabled(self) -> bool:
        return self.status in {"ENABLED", "ENABLING", "ACTIVE", "UPDATING"}


@dataclass(frozen=True, slots=True)
class ReadLimits:
    """How a source's shards may be read: its API's page size and polling budget."""

    records_per_call: int  # the most records one GetRecords call returns (a full page)
    poll_interval_s: float  # between polls while a shard has records (Lambda's rate)
    # Between two GetRecords calls on one shard, even with a backlog (0: no floor; Kinesis
    # allows 5 calls/s per shard, shared by every consumer of the stream).
    min_call_interval_s: float = 0.0


@dataclass(frozen=True, slots=True)
class RecordPage:
    """One GetRecords response: records in order and the iterator for the next call.

    ``next_iterator`` is None when the shard is closed and has been read to its end.
    """

    records: Sequence[StreamRecord]
    next_iterator: str | None
    # How far the page is behind the shard's tip (Kinesis MillisBehindLatest), when told.
    millis_behind_latest: int | None = None
    # At a closed shard's end, the shards that continue it, when told (Kinesis ChildShards).
    child_shards: tuple[Shard, ...] = ()


@dataclass(frozen=True, slots=True)
class Batch:
    """Consecutive records of one shard, handed to a processor as one event."""

    stream_arn: str
    shard_id: ShardId
    records: Sequence[StreamRecord] = field(repr=False)
    # Size of the event JSON when the batcher measured it (0 = not measured).
    payload_bytes: int = 0

    def __post_init__(self) -> None:
        if not self.records:
            raise ValueError(f"empty batch for shard {self.shard_id}")

    def __len__(self) -> int:
        return len(self.records)

    @property
    def shape(self) -> RecordShape:
        return shape_of(self.records[0])

    @property
    def first_sequence_number(self) -> SequenceNumber:
        return self.shape.sequence_number(self.records[0])

    @property
    def last_sequence_number(self) -> SequenceNumber:
        return self.shape.sequence_number(self.records[-1])

    def sequence_numbers(self) -> list[SequenceNumber]:
        shape = self.shape
        return [shape.sequence_number(record) for record in self.records]

    def event(self) -> dict[str, Any]:
        """The event a Lambda-style handler receives."""
        return {"Records": list(self.records)}
