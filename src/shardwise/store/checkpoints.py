"""The checkpoint store: where each processor is in each shard, in SQLite or PostgreSQL.

A row exists once a shard is registered (``register_shards``) and moves forward only
through the shard's lease (``lease_rows``, ``store/leases.py``): ``fenced_checkpoints``
writes it only while the lease is held (``store/fenced_writes.py``), so a worker that lost
a lease can never move a checkpoint. Every write is one short transaction of its own and,
apart from registration, one SQL statement, so a checkpoint costs the same round trips
however many shards there are (``statements`` counts them for the benchmarks).

Callers that must not lose a write to cancellation run it with ``shardwise.tasks.to_completion``;
a cancelled call never leaves a connection checked out of the pool.
"""

from __future__ import annotations

import builtins
import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Final

from sqlalchemy import ColumnElement, Executable, Row, select
from sqlalchemy.engine import CursorResult
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from shardwise.records import Position, SequenceNumber, ShardId, StartingPosition
from shardwise.store.engine import (
    insert_unless_present,
    map_store_errors,
    open_engine,
    redact_url,
    transactions_engine,
    writer,
)
from shardwise.store.fenced_writes import CheckpointWriter, FencedCheckpoints
from shardwise.store.leases import LeaseRows
from shardwise.store.migrate import require_head, upgrade_engine
from shardwise.store.models import checkpoints

__all__ = ["CheckpointStore", "ShardCheckpoint", "ShardRegistration"]

# Rows per INSERT in register_shards: 9 parameters each stays far below both backends'
# limit on bound parameters, and thousands of shards still take a handful of round trips.
REGISTER_CHUNK: Final = 500

_KEY: Final = (checkpoints.c.processor, checkpoints.c.stream_arn, checkpoints.c.shard_id)


@dataclass(frozen=True, slots=True)
class ShardCheckpoint:
    """Where one processor is in one shard of one stream."""

    processor: str
    stream_arn: str
    shard_id: ShardId
    parent_shard_id: ShardId | None
    sequence_number: SequenceNumber | None
    start_position: StartingPosition
    finished: bool
    updated_at: datetime
    adjacent_parent_shard_id: ShardId | None = None

    @property
    def position(self) -> Position:
        """Where to resume: after the checkpoint, or the start position if there is none."""
        return Position(after=self.sequence_number, start=self.start_position)


@dataclass(frozen=True, slots=True)
class ShardRegistration:
    """A shard to start tracking; ``finished`` marks one known to be done already."""

    shard_id: ShardId
    parent_shard_id: ShardId | None
    start_position: StartingPosition
    finished: bool = False
    adjacent_parent_shard_id: ShardId | None = None


class _State(enum.Enum):
    OPEN = "open"
    CLOSED = "closed"


def _now() -> datetime:
    return datetime.now(UTC)


def _shard_id(value: str | None) -> ShardId | None:
    return None if value is None else ShardId(value)


def checkpoint_from_row(row: Row[Any]) -> ShardCheckpoint:
    """A ``shardwise_checkpoints`` row as a ``ShardCheckpoint``."""
    return ShardCheckpoint(
        processor=row.processor,
        stream_arn=row.stream_arn,
        shard_id=ShardId(row.shard_id),
        parent_shard_id=None if row.parent_shard_id is None else ShardId(row.parent_shard_id),
        sequence_number=(
            None if row.sequence_number is None else SequenceNumber(row.sequence_number)
        ),
        start_position=StartingPosition(row.start_position),
        finished=bool(row.finished),
        updated_at=row.updated_at,
        adjacent_parent_shard_id=_shard_id(row.adjacent_parent_shard_id),
    )


def _ordering(dialect: str) -> tuple[ColumnElement[str], ...]:
    """Key columns in code point order on every backend, as Python's ``sorted`` would.

    PostgreSQL would otherwise sort by the database's collation, in which "a-b" may come
    after "ab"; SQLite already compares bytes.
    """
    if dialect == "postgresql":
        return tuple(column.collate("C") for column in _KEY)
    return _KEY


def _insert_missing(dialect: str) -> Executable:
    """INSERT ... ON CONFLICT DO NOTHING RETURNING shard_id: only new rows come back."""
    return insert_unless_present(dialect, checkpoints, _KEY).returning(checkpoints.c.shard_id)


class CheckpointStore:
    """Checkpoints in a SQL database; open one with ``await CheckpointStore.connect(url)``."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._writer = writer(engine)
        self._url = redact_url(engine.url)
        self._insert_missing = _insert_missing(engine.dialect.name)
        self._ordering = _ordering(engine.dialect.name)
        self._statements = 0
        self._state = _State.OPEN
        self._checkpoint_writer = CheckpointWriter(engine)
        self._transactions: AsyncEngine | None = None  # opened at the first need

    @classmethod
    async def connect(cls, url: str, *, migrate: bool = True) -> CheckpointStore:
        """Open the store at ``url``; upgrade its schema, or with ``migrate=False`` require it.

        Raises ``ValueError`` for a URL that cannot hold checkpoints (another database, or
        in-memory SQLite), ``StoreSchemaError`` when the schema is missing or not at head
        and ``migrate`` is False, and ``StoreError`` when the database cannot be reached.
        """
        engine = open_engine(url)
        try:
            if migrate:
                await upgrade_engine(engine)
            else:
                await require_head(engine)
        except BaseException:
            await engine.dispose()
            raise
        return cls(engine)

    @property
    def url(self) -> str:
        """The database URL with its password replaced by ``***``."""
        return self._url

    @property
    def engine(self) -> AsyncEngine:
        """The engine, for tables kept beside the checkpoints (``store.failures``)."""
        return self._engine

    @property
    def checkpoint_writer(self) -> CheckpointWriter:
        """Where leased shards' checkpoints are written (fenced, coalesced)."""
        return self._checkpoint_writer

    @property
    def statements(self) -> int:
        """How many SQL statements this store has sent: its own, those of its lease rows and
        the coalesced checkpoints (one per save, however many shards it carries)."""
        return self._statements + self._checkpoint_writer.writes

    def lease_rows(self, *, processor: str, stream_arn: str, worker_id: str) -> LeaseRows:
        """The lease rows of ``processor`` on ``stream_arn`` as ``worker_id`` changes them;
        their statements count in ``statements``."""
        return LeaseRows(
            self._engine,
            self._execute,
            processor=processor,
            stream_arn=stream_arn,
            worker_id=worker_id,
        )

    def fenced_checkpoints(
        self, *, processor: str, stream_arn: str, owner: str
    ) -> FencedCheckpoints:
        """Checkpoints of the shards ``owner`` leases on ``processor``'s stream, fenced; the
        only way a checkpoint moves. Their statements count in ``statements``."""
        if self._transactions is None:
            self._transactions = transactions_engine(self._engine)
        return FencedCheckpoints(
            self._engine,
            self._checkpoint_writer,
            self._execute,
            processor=processor,
            stream_arn=stream_arn,
            owner=owner,
            transactions=self._transactions,
        )

    async def close(self) -> None:
        """Close every pooled connection. Closing twice is harmless."""
        if self._state is _State.CLOSED:
            return
        self._state = _State.CLOSED
        await self._checkpoint_writer.close()
        if self._transactions is not None and self._transactions is not self._engine:
            await self._transactions.dispose()
        await self._engine.dispose()

    async def __aenter__(self) -> CheckpointStore:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"<CheckpointStore {self._url} {self._state.value}>"

    async def ping(self) -> None:
        """Round-trip ``SELECT 1``; raise ``StoreError`` if the database does not answer."""
        self._require_open()
        with map_store_errors("ping", self._engine.url):
            async with self._engine.connect() as connection:
                await self._execute(connection, select(1))

    async def register_shards(
        self, processor: str, stream_arn: str, shards: Sequence[ShardRegistration]
    ) -> int:
        """Add rows for shards not tracked yet and return how many were added.

        Rows that exist are left exactly as they are, so registering the whole shard list on
        every sync is safe, also from several processes at once. All rows go in one
        transaction, ``REGISTER_CHUNK`` rows per statement, in shard order (so concurrent
        registrations lock rows in the same order and cannot deadlock).
        """
        self._require_open()
        unique = {shard.shard_id: shard for shard in reversed(shards)}
        if not unique:
            return 0
        now = _now()
        rows = [
            {
                "processor": processor,
                "stream_arn": stream_arn,
                "shard_id": shard.shard_id,
                "parent_shard_id": shard.parent_shard_id,
                "adjacent_parent_shard_id": shard.adjacent_parent_shard_id,
                "sequence_number": None,
                "start_position": StartingPosition(shard.start_position).value,
                "finished": shard.finished,
                "created_at": now,
                "updated_at": now,
            }
            for _, shard in sorted(unique.items())
        ]
        inserted = 0
        with map_store_errors("register_shards", self._engine.url, processor=processor):
            async with self._writer.begin() as connection:
                for start in range(0, len(rows), REGISTER_CHUNK):
                    chunk = rows[start : start + REGISTER_CHUNK]
                    result = await self._execute(connection, self._insert_missing, chunk)
                    inserted += len(result.all())
        return inserted

    async def load(self, processor: str, stream_arn: str) -> dict[ShardId, ShardCheckpoint]:
        """Every checkpoint of ``processor`` in ``stream_arn``, by shard."""
        self._require_open()
        query = select(checkpoints).where(
            checkpoints.c.processor == processor, checkpoints.c.stream_arn == stream_arn
        )
        with map_store_errors("load", self._engine.url, processor=processor):
            async with self._engine.connect() as connection:
                rows = (await self._execute(connection, query)).all()
        return {ShardId(row.shard_id): checkpoint_from_row(row) for row in rows}

    async def list(self, processor: str | None = None) -> builtins.list[ShardCheckpoint]:
        """All checkpoints, or one processor's, ordered by processor, stream and shard."""
        self._require_open()
        query = select(checkpoints).order_by(*self._ordering)
        if processor is not None:
            query = query.where(checkpoints.c.processor == processor)
        with map_store_errors("list", self._engine.url, processor=processor):
            async with self._engine.connect() as connection:
                rows = (await self._execute(connection, query)).all()
        return [checkpoint_from_row(row) for row in rows]

    async def _execute(
        self,
        connection: AsyncConnection,
        statement: Executable,
        parameters: Sequence[Mapping[str, Any]] | None = None,
    ) -> CursorResult[Any]:
        self._statements += 1
        return await connection.execute(statement, parameters)

    def _require_open(self) -> None:
        if self._state is _State.CLOSED:
            raise RuntimeError(f"{self!r} is closed")
