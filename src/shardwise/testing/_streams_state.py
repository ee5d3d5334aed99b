"""The scripted streams: the handle tests write through, and the reads the API makes.

A ``ScriptedStream`` is the handle a test holds to write records and reshape the shard
tree (each shard a ``ShardLog``, looked up as a ``ShardOwner``, like a Kinesis stream's).
The functions at the bottom (``describe_stream``, ``shard_position``, ``read_page``) are
the reads the protocol layer makes for DescribeStream, GetShardIterator and GetRecords.

One re-entrant lock, owned by the ``StreamRegistry``, guards every stream: scripting calls
come from test threads or an event loop, reads from the server's request threads.
"""

from __future__ import annotations

import threading
import time
import zlib
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from shardwise.testing._shard_log import (
    AttributeMap,
    ShardLog,
    ShardOwner,
    StreamsApiError,
    encode_record,
    not_found,
)

__all__ = [
    "ACCOUNT_ID",
    "EVENT_NAMES",
    "VIEW_TYPES",
    "ScriptedStream",
    "StreamRegistry",
    "describe_stream",
    "read_page",
    "shard_position",
]

ACCOUNT_ID: Final = "123456789012"
VIEW_TYPES: Final = ("KEYS_ONLY", "NEW_IMAGE", "OLD_IMAGE", "NEW_AND_OLD_IMAGES")
EVENT_NAMES: Final = ("INSERT", "MODIFY", "REMOVE")
# Sequence numbers are ~21-digit decimals, strictly increasing within a stream; the gaps
# between them make "a number that was never handed out" a real case, as on AWS.
_FIRST_SEQUENCE_NUMBER: Final = 100_000_000_000_000_000_000
_SEQUENCE_STRIDE: Final = 10
_PUT_MANY_BATCH: Final = 1000  # records written per hold of the lock


class ScriptedStream(ShardOwner[ShardLog]):
    """A test's handle on one stream: write records, split, close, trim and remove shards.

    Every method is thread-safe and returns at once, so it can be called from plain tests,
    from an event loop and while consumers read the stream over HTTP. Misuse (an unknown
    or closed shard, a bad event name) raises ``ValueError``. Made by
    ``StreamsServer.create_stream``.
    """

    def __init__(
        self,
        lock: threading.RLock,
        *,
        table: str,
        label: datetime,
        region: str,
        view_type: str,
        key_schema: list[dict[str, str]],
    ) -> None:
        self._lock = lock
        self.table = table
        self.region = region
        self.view_type = view_type
        self.label = label.strftime("%Y-%m-%dT%H:%M:%S.") + f"{label.microsecond // 1000:03d}"
        self.arn = f"arn:aws:dynamodb:{region}:{ACCOUNT_ID}:table/{table}/stream/{self.label}"
        self._named = self.arn
        self.created_at = label.timestamp()
        self.key_schema = key_schema
        self._enabled = True
        self._shards: dict[str, ShardLog] = {}
        self._last_sequence = _FIRST_SEQUENCE_NUMBER
        self._last_shard_ms = 0
        self._generated_keys = 0

    def __repr__(self) -> str:
        return f"ScriptedStream({self.arn!r}, shards={len(self._shards)})"

    @property
    def enabled(self) -> bool:
        return self._enabled

    @property
    def shard_ids(self) -> list[str]:
        """Shards currently listed by DescribeStream, in creation order."""
        with self._lock:
            return list(self._shards)

    def add_shard(self, parent: str | None = None) -> str:
        """Open a new shard (a child of ``parent`` if given) and return its id."""
        with self._lock:
            if not self._enabled:
                raise ValueError(f"stream {self.arn} is disabled")
            if parent is not None:
                self._shard(parent)
            # The id embeds a creation time in ms that never repeats within the stream, so
            # ids sort in creation order, as DescribeStream pagination relies on.
            self._last_shard_ms = max(time.time_ns() // 1_000_000, self._last_shard_ms + 1)
            suffix = zlib.crc32(f"{self.arn}/{self._last_shard_ms}".encode())
            shard_id = f"shardId-{self._last_shard_ms:020d}-{suffix:08x}"
            self._shards[shard_id] = ShardLog(shard_id, parent, self._next_sequence())
            return shard_id

    def put(
        self,
        shard_id: str,
        event_name: str = "INSERT",
        *,
        keys: AttributeMap,
        new_image: AttributeMap | None = None,
        old_image: AttributeMap | None = None,
        ttl_delete: bool = False,
        created: datetime | float | None = None,
    ) -> str:
        """Append one record and return its SequenceNumber.

        Images the stream's view type does not carry are dropped; ``ttl_delete`` (REMOVE
        only) adds the ``userIdentity`` of a TTL expiry; ``created`` defaults to now.
        """
        if event_name not in EVENT_NAMES:
            raise ValueError(f"event_name must be one of {EVENT_NAMES}, not {event_name!r}")
        if ttl_delete and event_name != "REMOVE":
            raise ValueError("ttl_delete applies to REMOVE records only")
        with self._lock:
            shard = self._open_shard(shard_id)
            return self._append(
                shard,
                event_name,
                keys,
                new_image,
                old_image,
                ttl_delete=ttl_delete,
                created=created,
            )

    def put_many(
        self,
        shard_id: str,
        count: int,
        *,
        payload_bytes: int = 0,
        created: datetime | float | None = None,
    ) -> list[str]:
        """Append ``count`` generated INSERT records; return their sequence numbers.

        Keys number on from the last generated record of this stream, so every generated
        item is distinct; ``payload_bytes`` pads each new image with a string attribute.
        Records are written in batches, so readers are served while a big write runs.
        """
        payload = {"S": "x" * payload_bytes} if payload_bytes else None
        sequence_numbers: list[str] = []
        while True:
            with self._lock:
                shard = self._open_shard(shard_id)
                for _ in range(min(count - len(sequence_numbers), _PUT_MANY_BATCH)):
                    self._generated_keys += 1
                    keys = self._generated_item_keys(self._generated_keys)
                    image = dict(keys, Payload=payload) if payload else keys
                    number = self._append(shard, "INSERT", keys, image, created=created)
                    sequence_numbers.append(number)
            if len(sequence_numbers) >= count:
                return sequence_numbers

    def split(self, shard_id: str, into: int = 2) -> list[str]:
        """Close an open shard and open ``into`` children of it (1 is a rollover)."""
        if into < 1:
            raise ValueError("a shard splits into at least one child")
        with self._lock:
            self._open_shard(shard_id)
            self.close_shard(shard_id)
            return [self.add_shard(parent=shard_id) for _ in range(into)]

    def close_shard(self, shard_id: str) -> None:
        """Give the shard an EndingSequenceNumber; closing a closed shard does nothing."""
        with self._lock:
            self._shard(shard_id).close()

    def trim(self, shard_id: str, count: int) -> None:
        """Drop the oldest ``count`` records, as if they aged past the 24 h retention."""
        with self._lock:
            self._shard(shard_id).trim(count)

    def remove_shard(self, shard_id: str) -> None:
        """Forget the shard entirely, as when all of it has aged out."""
        with self._lock:
            self._shard(shard_id)
            del self._shards[shard_id]

    def disable(self) -> None:
        """Mark the stream DISABLED; its open shards close, its records stay readable."""
        with self._lock:
            self._enabled = False
            for shard_id in self._shards:
                self.close_shard(shard_id)

    def _next_sequence(self) -> int:
        self._last_sequence += _SEQUENCE_STRIDE
        return self._last_sequence

    def _generated_item_keys(self, number: int) -> dict[str, Any]:
        keys: dict[str, Any] = {}
        for element in self.key_schema:
            kind = "N" if element["KeyType"] == "HASH" else "S"
            keys[element["AttributeName"]] = {kind: str(number)}
        return keys

    def _append(
        self,
        shard: ShardLog,
        event_name: str,
        keys: AttributeMap,
        new_image: AttributeMap | None = None,
        old_image: AttributeMap | None = None,
        *,
        ttl_delete: bool = False,
        created: datetime | float | None = None,
    ) -> str:
        if created is None:
            created_s = int(time.time())
        elif isinstance(created, datetime):
            created_s = int(created.timestamp())
        else:
            created_s = int(created)
        sequence_number = self._next_sequence()
        encoded = encode_record(
            sequence_number=sequence_number,
            event_name=event_name,
            region=self.region,
            view_type=self.view_type,
            keys=keys,
            new_image=new_image,
            old_image=old_image,
            ttl_delete=ttl_delete,
            created_s=created_s,
        )
        shard.append(sequence_number, created_s, encoded)
        return str(sequence_number)


class StreamRegistry:
    """Every stream the server knows, in creation order, and the lock that guards them all."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self._streams: dict[str, ScriptedStream] = {}
        self._last_label: dict[tuple[str, str], datetime] = {}

    def create_stream(
        self,
        table: str,
        *,
        view_type: str,
        region: str,
        shards: int,
        hash_key: str,
        range_key: str | None,
    ) -> ScriptedStream:
        if view_type not in VIEW_TYPES:
            raise ValueError(f"view_type must be one of {VIEW_TYPES}, not {view_type!r}")
        key_schema = [{"AttributeName": hash_key, "KeyType": "HASH"}]
        if range_key is not None:
            key_schema.append({"AttributeName": range_key, "KeyType": "RANGE"})
        with self.lock:
            # A stream's label is its creation time in ms; a table's next stream gets a
            # later label even within the same millisecond, so ARNs never repeat.
            now = datetime.now(UTC)
            now = now.replace(microsecond=now.microsecond // 1000 * 1000)
            previous = self._last_label.get((region, table))
            label = now if previous is None else max(now, previous + timedelta(milliseconds=1))
            self._last_label[(region, table)] = label
            stream = ScriptedStream(
                self.lock,
                table=table,
                label=label,
                region=region,
                view_type=view_type,
                key_schema=key_schema,
            )
            for _ in range(shards):
                stream.add_shard()
            self._streams[stream.arn] = stream
            return stream

    def find(self, arn: str) -> ScriptedStream | None:
        with self.lock:
            return self._streams.get(arn)

    def streams(
        self, *, table: str | None = None, region: str | None = None
    ) -> list[ScriptedStream]:
        """Streams in creation order, optionally only one table's or one region's."""
        with self.lock:
            return [
                stream
                for stream in self._streams.values()
                if (table is None or stream.table == table)
                and (region is None or stream.region == region)
            ]

    def get(self, arn: str) -> ScriptedStream:
        stream = self.find(arn)
        if stream is None:
            raise not_found(f"Stream {arn}")
        return stream


def describe_stream(
    stream: ScriptedStream, *, limit: int, exclusive_start: str | None, child_of: str | None
) -> dict[str, Any]:
    """DescribeStream's ``StreamDescription``: one page of shards, in creation order."""
    with stream._lock:
        shards = list(stream._shards.values())
        if child_of is not None:
            shards = [shard for shard in shards if shard.parent_id == child_of]
        if exclusive_start is not None:
            # Shard ids sort in creation order, so a vanished start id still works.
            shards = [shard for shard in shards if shard.shard_id > exclusive_start]
        page = [shard.describe() for shard in shards[:limit]]
        description: dict[str, Any] = {
            "StreamArn": stream.arn,
            "StreamLabel": stream.label,
            "StreamStatus": "ENABLED" if stream.enabled else "DISABLED",
            "StreamViewType": stream.view_type,
            "CreationRequestDateTime": stream.created_at,
            "TableName": stream.table,
            "KeySchema": stream.key_schema,
            "Shards": page,
        }
        if len(shards) > limit:
            description["LastEvaluatedShardId"] = page[-1]["ShardId"]
        return description


def shard_position(
    stream: ScriptedStream,
    shard_id: str,
    iterator_type: str,
    *,
    sequence_number: str | None,
    timestamp: float | None,
) -> int:
    """The absolute index GetShardIterator's iterator points at."""
    with stream._lock:
        shard = stream._shards.get(shard_id)
        if shard is None:
            raise not_found(f"Shard {shard_id} in stream {stream.arn}")
        if iterator_type == "TRIM_HORIZON":
            return shard.base
        if iterator_type == "LATEST":
            return shard.end
        if iterator_type in {"AT_SEQUENCE_NUMBER", "AFTER_SEQUENCE_NUMBER"}:
            if sequence_number is None or not sequence_number.isdigit():
                raise StreamsApiError(
                    "ValidationException", f"{iterator_type} needs a decimal SequenceNumber"
                )
            after = iterator_type == "AFTER_SEQUENCE_NUMBER"
            return shard.index_of(int(sequence_number), after=after)
        if iterator_type == "AT_TIMESTAMP":
            if timestamp is None or timestamp > time.time():
                raise StreamsApiError("ValidationException", "AT_TIMESTAMP needs a past Timestamp")
            return shard.index_at_time(timestamp)
        raise StreamsApiError("ValidationException", f"Unknown ShardIteratorType {iterator_type}")


def read_page(
    stream: ScriptedStream, shard_id: str, index: int, limit: int
) -> tuple[list[bytes], int | None]:
    """GetRecords' encoded records from ``index`` and the next index (None: shard done)."""
    with stream._lock:
        shard = stream._shards.get(shard_id)
        if shard is None:
            raise not_found(f"Shard {shard_id} in stream {stream.arn}")
        return shard.page(index, limit)
