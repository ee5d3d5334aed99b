"""Scripted Kinesis data streams: the handle tests hold, and the reads the API makes.

A ``ScriptedKinesisStream`` is the handle a test holds to write records and reshard (each
shard a ``KinesisShard``, looked up as a ``ShardOwner``, like ``ScriptedStream``'s); as a
``CallGate`` it also counts, faults and throttles the calls addressed to it. Sequence
numbers are 56-digit decimals from one counter per stream, so they are unique across the
stream, increase within a shard, and a child's are all greater than its parents':
children open after their parents close. Resharding moves no record: parents keep
theirs, readable to their end (moto copies them into the children instead).

The functions at the bottom (``list_shards``, ``shard_position``, ``read_page``) are the
reads behind ListShards, GetShardIterator and GetRecords. One re-entrant lock, owned by
the ``KinesisRegistry``, guards every Kinesis stream.
"""

from __future__ import annotations

import bisect
import itertools
import re
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from shardwise.testing._kinesis_gate import CallGate
from shardwise.testing._kinesis_shard import (
    HASH_KEY_SPACE,
    KinesisShard,
    ShardFilter,
    encode_record,
    hash_key,
    uniform_bounds,
)
from shardwise.testing._shard_log import ShardOwner, StreamsApiError
from shardwise.testing._streams_state import ACCOUNT_ID

__all__ = [
    "KinesisRegistry",
    "Page",
    "ScriptedKinesisStream",
    "list_shards",
    "read_page",
    "shard_position",
]

_STREAM_NAME: Final = re.compile(r"[a-zA-Z0-9_.-]{1,128}")
_FIRST_SEQUENCE_NUMBER: Final = 49 * 10**54  # 56 digits, as the service's are
_SEQUENCE_STRIDE: Final = 10  # gaps: a number never handed out is a real case
_PUT_MANY_BATCH: Final = 1000  # records written per hold of the lock


def _epoch(moment: datetime | float | None) -> float:
    if moment is None:
        return time.time()
    return moment.timestamp() if isinstance(moment, datetime) else float(moment)


class ScriptedKinesisStream(CallGate, ShardOwner[KinesisShard]):
    """A test's handle on one Kinesis data stream: write records, reshard, script faults.

    Every method is thread-safe and returns at once, so it can be called while consumers
    read the stream over HTTP; misuse (an unknown or closed shard, shards that are not
    adjacent) raises ``ValueError``. Made by ``StreamsServer.create_kinesis_stream``.

    A test may set these at any time: ``iterator_ttl_seconds`` (older iterators fail with
    ExpiredIteratorException), ``get_records_per_second`` (per shard) and
    ``list_shards_per_second`` (the service's rate limits; ``None`` lifts one).
    ``calls`` counts the requests addressed to the stream per operation, and
    ``get_records_calls`` the GetRecords requests per shard, faulted or throttled ones
    included (``clear()`` resets either). ``fail`` and ``clear_faults`` script faults.
    """

    def __init__(
        self,
        lock: threading.RLock,
        *,
        name: str,
        region: str,
        shards: int,
        limits: bool,
        iterator_ttl_seconds: float,
    ) -> None:
        super().__init__(lock, name=name, limits=limits)
        self._named = name
        self.region = region
        self.arn = f"arn:aws:kinesis:{region}:{ACCOUNT_ID}:stream/{name}"
        self.created_at = time.time()
        self.iterator_ttl_seconds = iterator_ttl_seconds
        self._shards: dict[str, KinesisShard] = {}
        self._open: list[KinesisShard] = []  # open shards by hash key, for routing
        self._open_starts: list[int] = []
        self._last_sequence = _FIRST_SEQUENCE_NUMBER
        self._generated = 0
        bounds = uniform_bounds(shards)
        for start, stop in itertools.pairwise(bounds):
            self._add_shard((), (start, stop - 1))
        self._index_open()

    def __repr__(self) -> str:
        return f"ScriptedKinesisStream({self.arn!r}, shards={len(self._shards)})"

    @property
    def shard_ids(self) -> list[str]:
        """Every shard, open or closed, in creation order (as ListShards lists them)."""
        with self._lock:
            return list(self._shards)

    @property
    def open_shard_ids(self) -> list[str]:
        """The open shards, in hash key order."""
        with self._lock:
            return [shard.shard_id for shard in self._open]

    def hash_key_range(self, shard_id: str) -> tuple[int, int]:
        """The first and last hash key the shard owns (owned, once it is closed)."""
        with self._lock:
            shard = self._shard(shard_id)
            return shard.hash_start, shard.hash_end

    def shard_for(self, partition_key: str, *, explicit_hash_key: int | None = None) -> str:
        """The open shard PutRecord would write ``partition_key`` (or the explicit key) to."""
        key = hash_key(partition_key) if explicit_hash_key is None else explicit_hash_key
        if not 0 <= key < HASH_KEY_SPACE:
            raise ValueError(f"hash key {key} is outside 0 .. 2**128 - 1")
        with self._lock:
            return self._open[bisect.bisect_right(self._open_starts, key) - 1].shard_id

    def put(
        self,
        data: bytes,
        *,
        shard_id: str | None = None,
        partition_key: str | None = None,
        explicit_hash_key: int | None = None,
        arrival: datetime | float | None = None,
    ) -> str:
        """Append one record and return its SequenceNumber.

        Given only ``partition_key``, the record goes where PutRecord puts it: to the open
        shard whose hash key range holds the key's MD5 (or ``explicit_hash_key``). Given
        ``shard_id``, it goes to that open shard, under ``partition_key`` or a generated
        key (which need not hash into it). ``arrival`` (ApproximateArrivalTimestamp)
        defaults to now.
        """
        with self._lock:
            if shard_id is not None:
                shard = self._open_shard(shard_id)
            elif partition_key is not None:
                shard = self._shards[
                    self.shard_for(partition_key, explicit_hash_key=explicit_hash_key)
                ]
            else:
                raise ValueError("put needs a shard_id or a partition_key")
            key = self._generated_key() if partition_key is None else partition_key
            return self._append(shard, data, key, _epoch(arrival))

    def put_many(
        self,
        shard_id: str,
        count: int,
        *,
        payload_bytes: int = 0,
        arrival: datetime | float | None = None,
    ) -> list[str]:
        """Append ``count`` generated records to an open shard; return their sequence numbers.

        Each record's data is a JSON object numbered on from the stream's last generated
        record (``{"n": 17}``), padded with ``payload_bytes`` characters; its partition key
        is that number. Records are written in batches, so readers are served meanwhile.
        """
        padding = "x" * payload_bytes
        sequence_numbers: list[str] = []
        while len(sequence_numbers) < count:
            with self._lock:
                shard = self._open_shard(shard_id)
                moment = _epoch(arrival)  # one arrival time per batch, shared by its records
                for _ in range(min(count - len(sequence_numbers), _PUT_MANY_BATCH)):
                    key = self._generated_key()
                    data = f'{{"n":{key},"payload":"{padding}"}}' if padding else f'{{"n":{key}}}'
                    sequence_numbers.append(self._append(shard, data.encode(), key, moment))
        return sequence_numbers

    def split(self, shard_id: str, new_starting_hash_key: int | None = None) -> list[str]:
        """Split an open shard as SplitShard does; return its two children, lower keys first.

        ``new_starting_hash_key``, the upper child's first hash key, defaults to the middle
        of the shard's range.
        """
        with self._lock:
            shard = self._open_shard(shard_id)
            at = new_starting_hash_key
            if at is None:
                at = (shard.hash_start + shard.hash_end + 1) // 2
            if not shard.hash_start < at <= shard.hash_end:
                raise ValueError(f"hash key {at} does not split shard {shard_id}'s range")
            children = self._split(shard, at)
            self._index_open()
            return [child.shard_id for child in children]

    def merge(self, shard_id: str, adjacent_shard_id: str) -> str:
        """Merge two open shards with adjacent hash key ranges as MergeShards does; return
        the child (its ParentShardId is ``shard_id``, its AdjacentParentShardId the other)."""
        with self._lock:
            shard = self._open_shard(shard_id)
            adjacent = self._open_shard(adjacent_shard_id)
            if not (
                shard.hash_end + 1 == adjacent.hash_start
                or adjacent.hash_end + 1 == shard.hash_start
            ):
                raise ValueError(f"shards {shard_id} and {adjacent_shard_id} are not adjacent")
            child = self._merge(shard, adjacent)
            self._index_open()
            return child.shard_id

    def update_shard_count(self, target: int) -> list[str]:
        """Reshard to ``target`` open shards of equal ranges, as UpdateShardCount's
        UNIFORM_SCALING does, and return them in hash key order.

        Every open shard a new range boundary falls inside is split there, then the pieces
        inside each new range are merged left to right: short-lived shards appear in the
        lineage between the old shards and the new, as on the service.
        """
        if target < 1:
            raise ValueError("a stream keeps at least one open shard")
        bounds = uniform_bounds(target)
        with self._lock:
            pieces: list[KinesisShard] = []
            for shard in list(self._open):
                rest = shard
                first = bisect.bisect_right(bounds, shard.hash_start)
                for at in bounds[first : bisect.bisect_right(bounds, shard.hash_end)]:
                    lower, rest = self._split(rest, at)
                    pieces.append(lower)
                pieces.append(rest)
            result: list[KinesisShard] = []
            pieces.reverse()  # popped lowest first
            for stop in bounds[1:]:
                merged = pieces.pop()
                while pieces and pieces[-1].hash_end < stop:
                    merged = self._merge(merged, pieces.pop())
                result.append(merged)
            self._index_open()
            return [shard.shard_id for shard in result]

    def _generated_key(self) -> str:
        self._generated += 1
        return str(self._generated)

    def _next_sequence(self) -> int:
        self._last_sequence += _SEQUENCE_STRIDE
        return self._last_sequence

    def _append(self, shard: KinesisShard, data: bytes, partition_key: str, arrival: float) -> str:
        sequence_number = self._next_sequence()
        shard.append(
            sequence_number, arrival, encode_record(sequence_number, arrival, data, partition_key)
        )
        return str(sequence_number)

    def _add_shard(self, parents: tuple[str, ...], hash_keys: tuple[int, int]) -> KinesisShard:
        shard_id = f"shardId-{len(self._shards):012d}"  # shards are never forgotten
        shard = KinesisShard(shard_id, parents, hash_keys, self._next_sequence())
        self._shards[shard_id] = shard
        return shard

    def _split(self, shard: KinesisShard, at: int) -> tuple[KinesisShard, KinesisShard]:
        shard.close()
        parents = (shard.shard_id,)
        return (
            self._add_shard(parents, (shard.hash_start, at - 1)),
            self._add_shard(parents, (at, shard.hash_end)),
        )

    def _merge(self, shard: KinesisShard, adjacent: KinesisShard) -> KinesisShard:
        shard.close()
        adjacent.close()
        keys = (min(shard.hash_start, adjacent.hash_start), max(shard.hash_end, adjacent.hash_end))
        return self._add_shard((shard.shard_id, adjacent.shard_id), keys)

    def _index_open(self) -> None:
        self._open = sorted(
            (shard for shard in self._shards.values() if not shard.closed),
            key=lambda shard: shard.hash_start,
        )
        self._open_starts = [shard.hash_start for shard in self._open]


class KinesisRegistry:
    """Every Kinesis stream the server knows, by ARN, and the lock that guards them all
    (``lock``: one shared with the server's DynamoDB streams, if given)."""

    def __init__(self, lock: threading.RLock | None = None) -> None:
        self.lock = threading.RLock() if lock is None else lock
        self._streams: dict[str, ScriptedKinesisStream] = {}

    def create_stream(
        self, name: str, *, region: str, shards: int, limits: bool, iterator_ttl_seconds: float
    ) -> ScriptedKinesisStream:
        if not _STREAM_NAME.fullmatch(name):
            raise ValueError(f"stream name {name!r} is not 1-128 of a-z, A-Z, 0-9, _ . -")
        if shards < 1:
            raise ValueError("a stream has at least one shard")
        with self.lock:
            stream = ScriptedKinesisStream(
                self.lock,
                name=name,
                region=region,
                shards=shards,
                limits=limits,
                iterator_ttl_seconds=iterator_ttl_seconds,
            )
            if stream.arn in self._streams:
                raise ValueError(f"stream {stream.arn} exists")
            self._streams[stream.arn] = stream
            return stream

    def find(self, arn: str) -> ScriptedKinesisStream | None:
        with self.lock:
            return self._streams.get(arn)

    def named(self, name: str, region: str | None) -> ScriptedKinesisStream | None:
        """The stream called ``name`` in ``region`` (in any region when it is unknown)."""
        with self.lock:
            for stream in self._streams.values():
                if stream.name == name and region in {None, stream.region}:
                    return stream
            return None

    def streams(self, region: str | None = None) -> list[ScriptedKinesisStream]:
        """Streams in creation order, optionally only one region's."""
        with self.lock:
            return [s for s in self._streams.values() if region in {None, s.region}]


def _shard_not_found(stream: ScriptedKinesisStream, shard_id: str) -> StreamsApiError:
    return StreamsApiError(
        "ResourceNotFoundException",
        f"Shard {shard_id} in stream {stream.name} under account {ACCOUNT_ID} does not exist",
    )


def list_shards(
    stream: ScriptedKinesisStream,
    *,
    after: str | None,
    limit: int,
    shard_filter: ShardFilter | None = None,
) -> tuple[list[dict[str, Any]], bool]:
    """One page of shards in id order (ListShards, DescribeStream), and whether more follow.

    Shard ids are zero-padded counters, so ``after`` need not name a shard that exists.
    """
    if shard_filter is not None and shard_filter.shard_id is not None:
        after = max(after or "", shard_filter.shard_id)
    keeps = shard_filter.keeps() if shard_filter is not None else None
    with stream._lock:
        shards = list(stream._shards.values())
        if after is not None:
            shards = shards[bisect.bisect_right([s.shard_id for s in shards], after) :]
        if keeps is not None:
            shards = [shard for shard in shards if keeps(shard)]
        return [shard.describe() for shard in shards[:limit]], len(shards) > limit


def shard_position(
    stream: ScriptedKinesisStream,
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
            raise _shard_not_found(stream, shard_id)
        return shard.position(iterator_type, sequence_number=sequence_number, timestamp=timestamp)


@dataclass(frozen=True, slots=True)
class Page:
    """A GetRecords reply: records as encoded, where to read next (None: the shard is
    closed and read to its end, and ``child_shards`` are its children) and how far behind
    the tip the reader is."""

    records: list[bytes]
    next_index: int | None
    millis_behind_latest: int
    child_shards: list[dict[str, Any]]


def read_page(stream: ScriptedKinesisStream, shard_id: str, index: int, limit: int) -> Page:
    """GetRecords from ``index``: up to ``limit`` records and 10 MB."""
    with stream._lock:
        shard = stream._shards.get(shard_id)
        if shard is None:
            raise _shard_not_found(stream, shard_id)
        records, next_index, behind = shard.read(index, limit)
        children: list[dict[str, Any]] = []
        if next_index is None:
            children = [s.child() for s in stream._shards.values() if shard_id in s.parents]
        return Page(records, next_index, behind, children)
