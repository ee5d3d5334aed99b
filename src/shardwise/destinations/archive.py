"""Reading failed batches back from the destinations that keep their records.

``open_archive`` opens a processor's ``sql``, ``file:///`` or S3 destination for reading.
Every stored batch comes back as a ``StoredFailure``: an id (the row id, the line number or
the object key), Lambda's invocation record with its payload, and when it failed. Only
``sql`` records replays (``replayed_at``); SQS and SNS keep no records to read back.

Listing (``summaries``) reads no more than it must: on S3 it is ListObjectsV2 alone, and a
summary holds what the key tells (shard, the second it failed); bodies are fetched only by
``load``, for ``show`` and ``replay``.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from shardwise.config import Settings
from shardwise.destinations._aws import aws_client, map_aws_errors
from shardwise.destinations.factory import target_kind
from shardwise.destinations.file import file_path, read_failures
from shardwise.destinations.s3 import (
    failure_prefix,
    list_failure_keys,
    parse_object_key,
    parse_s3_target,
    read_failure,
)
from shardwise.records import DYNAMODB_SHAPE, KINESIS_SHAPE
from shardwise.store import CheckpointStore
from shardwise.store.failures import FailureStore

__all__ = ["Archive", "FailureSummary", "StoredFailure", "open_archive"]

_EPOCH = datetime.fromtimestamp(0, UTC)


@dataclass(frozen=True, slots=True)
class StoredFailure:
    """One failed batch as its destination stored it: Lambda's record, with the payload."""

    id: str
    record: dict[str, Any] = field(repr=False)
    failed_at: datetime
    replayed_at: datetime | None = None

    @classmethod
    def from_record(cls, id: str, record: dict[str, Any]) -> StoredFailure:
        """Built from the record alone: it failed at the record's ``timestamp``."""
        try:
            failed_at = datetime.fromisoformat(str(record.get("timestamp")))
        except ValueError:
            failed_at = _EPOCH
        return cls(id, record, failed_at)

    @property
    def condition(self) -> str:
        context = self.record.get("requestContext") or {}
        return str(context.get("condition"))

    @property
    def info(self) -> dict[str, Any]:
        """``DDBStreamBatchInfo`` / ``KinesisBatchInfo``: shard, sequence range, batch size,
        stream."""
        for shape in (DYNAMODB_SHAPE, KINESIS_SHAPE):
            info = self.record.get(shape.batch_info)
            if isinstance(info, dict):
                return info
        return {}

    @property
    def records(self) -> list[dict[str, Any]]:
        """The records of the batch, as the handler received them (empty without payload)."""
        payload = self.record.get("payload") or {}
        return list(payload.get("Records") or [])

    def summary(self) -> FailureSummary:
        """The listing line of this batch, from its record."""
        info = self.info

        def text(key: str) -> str | None:
            return None if info.get(key) is None else str(info[key])

        return FailureSummary(
            id=self.id,
            failed_at=self.failed_at,
            shard_id=text("shardId"),
            condition=self.condition,
            start_sequence_number=text("startSequenceNumber"),
            end_sequence_number=text("endSequenceNumber"),
            batch_size=text("batchSize"),
            replayed_at=self.replayed_at,
        )


@dataclass(frozen=True, slots=True)
class FailureSummary:
    """One line of ``shardwise failures list``; None where the destination's listing does not
    say (S3 lists keys: the condition, sequence range and size are in the bodies)."""

    id: str
    failed_at: datetime
    shard_id: str | None
    condition: str | None = None
    start_sequence_number: str | None = None
    end_sequence_number: str | None = None
    batch_size: str | None = None
    replayed_at: datetime | None = None
    failed_at_timespec: str = "milliseconds"  # S3 keys hold whole seconds


class Archive(Protocol):
    """Where one processor's failed batches are read back from."""

    @property
    def tracks_replays(self) -> bool:
        """Whether ``mark_replayed`` records anything (only ``sql`` does)."""
        ...

    async def load(self, ids: Sequence[str] | None = None) -> list[StoredFailure]:
        """Every stored batch, or those with the given ids, oldest first."""
        ...

    async def summaries(self) -> list[FailureSummary]:
        """Every stored batch as listing shows it, oldest first; reads as little as it can."""
        ...

    async def mark_replayed(self, failure: StoredFailure) -> None: ...


class _SqlArchive:
    tracks_replays = True

    def __init__(self, failures: FailureStore, processor: str) -> None:
        self._failures = failures
        self._processor = processor

    async def load(self, ids: Sequence[str] | None = None) -> list[StoredFailure]:
        keys = None if ids is None else [int(i) for i in ids if i.isdigit()]
        rows = await self._failures.list(self._processor, keys)
        return [StoredFailure(str(r.id), r.record, r.failed_at, r.replayed_at) for r in rows]

    async def summaries(self) -> list[FailureSummary]:
        return [failure.summary() for failure in await self.load()]

    async def mark_replayed(self, failure: StoredFailure) -> None:
        await self._failures.mark_replayed(self._processor, [int(failure.id)])


class _FileArchive:
    tracks_replays = False

    def __init__(self, path: Path, processor: str) -> None:
        self._path = path
        self._processor = processor

    async def load(self, ids: Sequence[str] | None = None) -> list[StoredFailure]:
        found, unreadable = await asyncio.to_thread(read_failures, self._path)
        for number in unreadable:
            print(f"warning: {self._path} line {number} is not a stored batch", file=sys.stderr)
        stored = [
            StoredFailure.from_record(str(number), record)
            for number, record in found
            # Processors may share a file; each record names its own.
            if _processor_of(record) in {self._processor, None}
            and (ids is None or str(number) in ids)
        ]
        return sorted(stored, key=lambda f: f.failed_at)

    async def summaries(self) -> list[FailureSummary]:
        return [failure.summary() for failure in await self.load()]

    async def mark_replayed(self, failure: StoredFailure) -> None:
        return None


class _S3Archive:
    tracks_replays = False

    def __init__(self, client: Any, target: str, processor: str) -> None:
        self._client = client
        self._location = parse_s3_target(target)
        self._processor = processor

    async def load(self, ids: Sequence[str] | None = None) -> list[StoredFailure]:
        if ids is None:
            keys = await list_failure_keys(self._client, self._location, self._processor)
        else:  # only this processor's keys
            prefix = failure_prefix(self._location, self._processor)
            keys = [key for key in ids if key.startswith(prefix)]
        stored = [
            StoredFailure.from_record(key, await read_failure(self._client, self._location, key))
            for key in keys
        ]
        return sorted(stored, key=lambda f: f.failed_at)

    async def summaries(self) -> list[FailureSummary]:
        """From ListObjectsV2 alone: no GetObject, whatever the number of stored batches."""
        summaries = []
        for key in await list_failure_keys(self._client, self._location, self._processor):
            parts = parse_object_key(self._location, self._processor, key)
            if parts is None:
                print(f"warning: s3 object {key} is not a stored batch", file=sys.stderr)
                continue
            summaries.append(
                FailureSummary(key, parts.failed_at, parts.shard_id, failed_at_timespec="seconds")
            )
        return sorted(summaries, key=lambda s: (s.failed_at, s.id))

    async def mark_replayed(self, failure: StoredFailure) -> None:
        return None


def _processor_of(record: dict[str, Any]) -> str | None:
    extra = record.get("shardwise")
    return extra.get("processor") if isinstance(extra, dict) else None


@asynccontextmanager
async def open_archive(settings: Settings, target: str, processor: str) -> AsyncIterator[Archive]:
    """Open ``processor``'s destination ``target`` for reading; ``ValueError`` for SQS/SNS."""
    kind = target_kind(target)
    if kind == "sql":
        async with await CheckpointStore.connect(settings.store.url, migrate=False) as store:
            yield _SqlArchive(FailureStore(store.engine), processor)
    elif kind == "file":
        yield _FileArchive(file_path(target), processor)
    elif kind == "s3":
        # The archive's own calls are mapped already; this maps opening the client.
        with map_aws_errors(target):
            async with aws_client("s3", settings) as client:
                yield _S3Archive(client, target, processor)
    else:
        raise ValueError(f"{target} keeps metadata only: there are no records to read back")
