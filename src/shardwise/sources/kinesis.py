"""Kinesis Data Streams over the raw JSON client: shard listing, iterators, Lambda's records.

Every call goes through ``RawStreamsClient`` speaking the Kinesis JSON 1.1 protocol
(``sigv4.KINESIS``), and every error is translated by ``dynamodb.mapped_errors`` into the
same ``SourceError`` tree as DynamoDB Streams' (throttling, expired iterators, a shard or
stream that is gone). A GetRecords reply is decoded once with ``orjson``; a wire record
becomes Lambda's Kinesis record by renaming its four keys, its ``Data`` left the base64
string the wire carries (Lambda delivers it so), never decoded and encoded again.

What the service leaves to its consumer:

* ListShards pages with ``NextToken``, and a call carrying a token must not name the
  stream; a token that expired (``ExpiredNextTokenException``) starts the listing over.
* A closed shard read to its end replies without ``NextShardIterator`` (and with its
  ``ChildShards``). An endpoint that keeps handing out iterators (moto) is ended here the
  way the KCL ends it: the listing's ``EndingSequenceNumber`` says where the shard stops,
  and once a record at or past it was read the shard is finished. Only the shard-sync
  leader lists the stream, so until the endpoint has been seen to end a shard itself, an
  empty page on a shard not known to be closed lists it again here (at most once per
  ``RELIST_S``).
* With ``deaggregate`` KPL aggregates are split into their user records (``kpl``); each
  carries ``subSequenceNumber`` and is checkpointed as ``<sequence>:<sub-sequence>``, so a
  resume inside an aggregate opens the iterator *at* the aggregate and skips the user
  records already done (``AT_SEQUENCE_NUMBER``, as the KCL does).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any, Final

import structlog

from shardwise.errors import ShardNotFoundError, SourceError
from shardwise.records import (
    Position,
    ReadLimits,
    RecordPage,
    Shard,
    ShardId,
    ShardListing,
    StartingPosition,
    StreamRecord,
)
from shardwise.sources.dynamodb import MALFORMED, listed_shard, mapped_errors
from shardwise.sources.dynamodb_raw import RawStreamsClient, json_object
from shardwise.sources.kpl import deaggregate

__all__ = [
    "LIST_SHARDS_PAGE",
    "READ_LIMITS",
    "RECORDS_PER_CALL",
    "KinesisSource",
    "lambda_records",
    "resolve_stream_arn",
    "split_position",
]

# GetRecords returns at most 10,000 records (and 10 MB) per call. Lambda polls a Kinesis
# shard once a second; a shard allows 5 GetRecords calls a second, shared by every consumer
# of the stream, so even a backlog is read at most that fast.
RECORDS_PER_CALL: Final = 10_000
READ_LIMITS: Final = ReadLimits(
    records_per_call=RECORDS_PER_CALL, poll_interval_s=1.0, min_call_interval_s=0.2
)
# ListShards returns at most this many shards per call (its maximum).
LIST_SHARDS_PAGE: Final = 10_000
_LISTING_RESTARTS: Final = 3
# The least time between the listings an empty page may start (see the module docstring).
RELIST_S: Final = 5.0

log = structlog.get_logger("shardwise.sources")


def split_position(position: str) -> tuple[str, int | None]:
    """A checkpointed position: ``(sequence number, sub-sequence number or None)``."""
    sequence, _, sub = position.partition(":")
    return sequence, (int(sub) if sub else None)


def _region_of(stream_arn: str) -> str:
    parts = stream_arn.split(":")
    return parts[3] if len(parts) > 3 else ""


def lambda_records(
    records: list[dict[str, Any]], shard_id: str, stream_arn: str, identity_arn: str
) -> list[StreamRecord]:
    """Decoded wire records as the records Lambda delivers (``data`` stays base64).

    The keys every record of the page shares are copied from one template (a dict copy is
    cheaper than building them one by one: the per-record cost here is comparable to
    decoding the page)."""
    template: StreamRecord = {
        "eventSource": "aws:kinesis",
        "eventVersion": "1.0",
        "eventName": "aws:kinesis:record",
        "invokeIdentityArn": identity_arn,
        "awsRegion": _region_of(stream_arn),
        "eventSourceARN": stream_arn,
    }
    prefix = shard_id + ":"
    out: list[StreamRecord] = []
    append = out.append
    for raw in records:
        sequence = raw["SequenceNumber"]
        record = template.copy()
        record["kinesis"] = {
            "kinesisSchemaVersion": "1.0",
            "partitionKey": raw["PartitionKey"],
            "sequenceNumber": sequence,
            "data": raw["Data"],
            "approximateArrivalTimestamp": raw["ApproximateArrivalTimestamp"],
        }
        record["eventID"] = prefix + sequence
        append(record)
    return out


async def resolve_stream_arn(client: RawStreamsClient, stream_name: str) -> str:
    """A stream's ARN, by its name (DescribeStreamSummary)."""
    where = f"stream {stream_name}"
    with mapped_errors("DescribeStreamSummary", where, shard_op=False):
        body = await client.call("DescribeStreamSummary", {"StreamName": stream_name})
    summary = json_object(body, "DescribeStreamSummary", where).get("StreamDescriptionSummary")
    arn = summary.get("StreamARN") if isinstance(summary, dict) else None
    if not isinstance(arn, str) or not arn:
        raise SourceError(
            f"DescribeStreamSummary on {where}: the reply has no StreamARN", code=MALFORMED
        )
    return arn


def _child_shards(children: Any) -> tuple[Shard, ...]:
    """GetRecords' ChildShards at a closed shard's end: each child and its parents."""
    if not isinstance(children, list):
        return ()
    found: list[Shard] = []
    for child in children:
        parents = [ShardId(p) for p in child.get("ParentShards") or () if p]
        found.append(
            Shard(
                shard_id=ShardId(child["ShardId"]),
                parent_shard_id=parents[0] if parents else None,
                adjacent_parent_shard_id=parents[1] if len(parents) > 1 else None,
            )
        )
    return tuple(found)


class KinesisSource:
    """Reads one Kinesis data stream through a ``RawStreamsClient`` (a ``ShardSource``).

    ``at_timestamp`` is where AT_TIMESTAMP positions open (StartingPositionTimestamp);
    ``on_corrupt`` hears of every aggregate passed on whole because it could not be split.
    """

    read_limits: Final = READ_LIMITS

    def __init__(
        self,
        client: RawStreamsClient,
        stream_arn: str,
        *,
        at_timestamp: datetime | None = None,
        deaggregate: bool = False,
        identity_arn: str = "",
        on_corrupt: Callable[[StreamRecord, str], None] | None = None,
    ) -> None:
        self._client = client
        self._stream_arn = stream_arn
        self._at_timestamp = at_timestamp
        self._deaggregate = deaggregate
        self._identity_arn = identity_arn
        self._on_corrupt = on_corrupt
        # Each closed shard's (starting, ending) sequence numbers from the listing, and how
        # far each shard was read.
        self._ends: dict[ShardId, tuple[int, int]] = {}
        self._read_to: dict[ShardId, int] = {}
        # A resume inside an aggregate: its sequence number and the last sub-sequence done.
        self._skip: dict[ShardId, tuple[str, int]] = {}
        self._listed_at = -math.inf
        # Set once a reply without NextShardIterator showed the endpoint ends shards itself.
        self._ends_shards = False

    def __repr__(self) -> str:
        return f"<KinesisSource {self._stream_arn} via {self._client!r}>"

    @property
    def stream_arn(self) -> str:
        return self._stream_arn

    async def describe(self) -> ShardListing:
        """Every shard (ListShards, all pages); a stream that answers is ACTIVE."""
        for _ in range(_LISTING_RESTARTS):
            shards = await self._list_shards()
            self._listed_at = time.monotonic()
            if shards is not None:
                self._ends = {
                    s.shard_id: (
                        int(s.starting_sequence_number or 0),
                        int(s.ending_sequence_number),
                    )
                    for s in shards
                    if s.ending_sequence_number is not None
                }
                return ShardListing(status="ACTIVE", shards=tuple(shards))
        raise SourceError(
            f"ListShards on stream {self._stream_arn}: NextToken expired "
            f"{_LISTING_RESTARTS} times in a row",
            code="ExpiredNextTokenException",
        )

    async def _list_shards(self) -> list[Shard] | None:
        """All pages, or None when a page token expired (start over)."""
        shards: list[Shard] = []
        token: str | None = None
        where = f"stream {self._stream_arn}"
        while True:
            # With a NextToken the stream must not be named (the API refuses both).
            params: dict[str, Any] = (
                {"NextToken": token, "MaxResults": LIST_SHARDS_PAGE}
                if token
                else {"StreamARN": self._stream_arn, "MaxResults": LIST_SHARDS_PAGE}
            )
            try:
                with mapped_errors("ListShards", where, shard_op=False):
                    body = await self._client.call("ListShards", params)
            except SourceError as exc:
                if exc.code == "ExpiredNextTokenException":
                    log.warning("ListShards page token expired; listing again", stream=where)
                    return None
                raise
            reply = json_object(body, "ListShards", where)
            page = reply.get("Shards")
            if not isinstance(page, list):
                raise SourceError(f"ListShards on {where}: reply without Shards", code=MALFORMED)
            shards.extend(listed_shard(raw) for raw in page)
            token = reply.get("NextToken")
            if not token:
                return shards

    async def get_iterator(self, shard_id: ShardId, position: Position) -> str:
        params: dict[str, Any] = {"StreamARN": self._stream_arn, "ShardId": shard_id}
        self._skip.pop(shard_id, None)
        self._read_to.pop(shard_id, None)
        if position.after is not None:
            sequence, sub = split_position(position.after)
            self._read_to[shard_id] = int(sequence)
            params["StartingSequenceNumber"] = sequence
            if sub is None:
                params["ShardIteratorType"] = "AFTER_SEQUENCE_NUMBER"
            else:
                # Inside an aggregate: read it again and skip the user records done.
                params["ShardIteratorType"] = "AT_SEQUENCE_NUMBER"
                self._skip[shard_id] = (sequence, sub)
        elif position.start is StartingPosition.AT_TIMESTAMP:
            if self._at_timestamp is None:
                raise SourceError(
                    f"shard {shard_id} of {self._stream_arn} starts AT_TIMESTAMP, but no "
                    "starting_position_timestamp is configured",
                    code="ConfigError",
                )
            params["ShardIteratorType"] = "AT_TIMESTAMP"
            params["Timestamp"] = self._at_timestamp.timestamp()
        else:
            params["ShardIteratorType"] = position.start.value
        where = self._where(shard_id)
        with mapped_errors("GetShardIterator", where, shard_op=True):
            body = await self._client.call("GetShardIterator", params)
        iterator = json_object(body, "GetShardIterator", where).get("ShardIterator")
        if not iterator:
            raise ShardNotFoundError(f"GetShardIterator on {where}: no iterator")
        return str(iterator)

    async def get_records(self, shard_id: ShardId, iterator: str, limit: int) -> RecordPage:
        where = self._where(shard_id)
        with mapped_errors("GetRecords", where, shard_op=True):
            body = await self._client.call(
                "GetRecords",
                {
                    "ShardIterator": iterator,
                    "Limit": min(limit, RECORDS_PER_CALL),
                    # Optional in the API; names the stream for resource-based policies.
                    "StreamARN": self._stream_arn,
                },
            )
        reply = json_object(body, "GetRecords", where)
        wire = reply.get("Records")
        if not isinstance(wire, list):
            # Not a closed shard's last page (that has "Records": []): never finish on it.
            raise SourceError(f"GetRecords on {where}: the response has no Records", code=MALFORMED)
        records = lambda_records(wire, shard_id, self._stream_arn, self._identity_arn)
        if records:
            self._read_to[shard_id] = int(records[-1]["kinesis"]["sequenceNumber"])
        if self._deaggregate:
            records = deaggregate(records, on_corrupt=self._on_corrupt)
        if shard_id in self._skip:
            records = self._skip_done(shard_id, records)
        following = reply.get("NextShardIterator")
        if not following:
            self._ends_shards = True
        elif not wire and self._may_have_closed(shard_id):
            await self._relist(shard_id)
        behind = reply.get("MillisBehindLatest")
        return RecordPage(
            records=records,
            next_iterator=self._next_iterator(shard_id, following, empty=not wire),
            millis_behind_latest=behind if isinstance(behind, int) else None,
            child_shards=_child_shards(reply.get("ChildShards")),
        )

    def _may_have_closed(self, shard_id: ShardId) -> bool:
        """An empty page on a shard not known to be closed, from an endpoint not seen to
        end shards itself, and no listing for ``RELIST_S``: worth listing the stream."""
        return (
            not self._ends_shards
            and shard_id not in self._ends
            and time.monotonic() - self._listed_at >= RELIST_S
        )

    async def _relist(self, shard_id: ShardId) -> None:
        # Counted from the start: the empty pages of other shards meanwhile do not list too.
        self._listed_at = time.monotonic()
        try:
            await self.describe()
        except SourceError as exc:
            self._listed_at = time.monotonic()  # tried: not again before RELIST_S
            log.info(
                "listing the stream to see if a shard closed failed", shard=shard_id, error=str(exc)
            )

    def _skip_done(self, shard_id: ShardId, records: list[StreamRecord]) -> list[StreamRecord]:
        """Drop the user records of the aggregate resumed in that were done already."""
        sequence, done = self._skip[shard_id]
        kept: list[StreamRecord] = []
        for index, record in enumerate(records):
            body = record["kinesis"]
            if body["sequenceNumber"] != sequence:
                del self._skip[shard_id]  # past the aggregate: nothing more to skip
                kept.extend(records[index:])
                return kept
            if body.get("subSequenceNumber", done + 1) > done:
                kept.append(record)
        return kept

    def _next_iterator(self, shard_id: ShardId, iterator: Any, *, empty: bool) -> str | None:
        """The reply's iterator, or None once a closed shard was read to its listed end
        (for an endpoint that never ends a closed shard's iterators itself): a record at or
        past its ending sequence number was read, or it replied empty and its range holds
        nothing past its start."""
        if not iterator:
            return None
        listed = self._ends.get(shard_id)
        if listed is not None:
            start, end = listed
            if self._read_to.get(shard_id, -1) >= end or (empty and end <= start):
                return None
        return str(iterator)

    def _where(self, shard_id: str) -> str:
        return f"shard {shard_id} of {self._stream_arn}"
