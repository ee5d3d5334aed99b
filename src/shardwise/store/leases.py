"""Lease rows in SQL: take, renew, hand off, release and collect; heartbeats; the sync leader.

A shard's lease lives on its checkpoint row (``owner``, ``lease_counter``, ``handoff_to``), so
"I still hold this shard" and "move its checkpoint" are the same statement. Every change
(take, renew, release, finish) increments the counter and is conditional on the value the
writer last saw, so of two workers racing for a lease exactly one wins, and a worker that
lost its lease never moves the checkpoint again. The sync leader's lease works the same way
on ``shardwise_leaders``; worker heartbeats on ``shardwise_workers`` only ever count up.

Renewals of everything a worker holds go in one transaction, rows in a fixed order (leader,
worker, shards by id), so concurrent renewals and takes cannot deadlock on PostgreSQL and
hold SQLite's write lock once. The checkpoints written through a lease (and a finish, which
frees it) are in ``fenced_writes.py``. SQLAlchemy and driver errors leave as ``StoreError``.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from sqlalchemy import (
    ColumnElement,
    Executable,
    Row,
    Update,
    and_,
    delete,
    false,
    select,
    true,
    tuple_,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from shardwise.records import Position, SequenceNumber, ShardId, StartingPosition
from shardwise.store.engine import Execute, insert_unless_present, map_store_errors, writer
from shardwise.store.fenced_writes import applied_of
from shardwise.store.models import applied, checkpoints, leaders, workers

__all__ = ["LeaseRows", "Renewal", "StoredLease", "StoredLeases", "Taken"]

_ROW = checkpoints.c
_NEXT = _ROW.lease_counter + 1
# Leases renewed by one statement.
RENEW_CHUNK: Final = 500


@dataclass(frozen=True, slots=True)
class StoredLease:
    """One shard's lease and checkpoint columns, as stored."""

    shard_id: ShardId
    parent_shard_id: ShardId | None
    owner: str | None
    counter: int
    handoff_to: str | None
    finished: bool
    sequence_number: SequenceNumber | None
    adjacent_parent_shard_id: ShardId | None = None


@dataclass(frozen=True, slots=True)
class StoredLeases:
    """Every shard lease, worker heartbeat and the leader lease, read on one connection."""

    shards: list[StoredLease]
    # worker id -> heartbeat counter
    workers: dict[str, int]
    # (owner, counter) of the sync leader's lease; None when the row does not exist yet
    leader: tuple[str | None, int] | None


@dataclass(frozen=True, slots=True)
class Taken:
    """A lease just taken: its new counter and where the shard's checkpoint stands."""

    counter: int
    position: Position


@dataclass(frozen=True, slots=True)
class Renewal:
    """What one renewal round found: per shard the new counter and any hand-off request
    (None when the lease was no longer ours), and the leader lease's new counter."""

    leases: dict[ShardId, tuple[int, str | None] | None]
    leader: int | None


def _now() -> datetime:
    return datetime.now(UTC)


def _stored_lease(row: Row[Any]) -> StoredLease:
    return StoredLease(
        shard_id=ShardId(row.shard_id),
        parent_shard_id=None if row.parent_shard_id is None else ShardId(row.parent_shard_id),
        adjacent_parent_shard_id=(
            None if row.adjacent_parent_shard_id is None else ShardId(row.adjacent_parent_shard_id)
        ),
        owner=row.owner,
        counter=int(row.lease_counter),
        handoff_to=row.handoff_to,
        finished=bool(row.finished),
        sequence_number=(
            None if row.sequence_number is None else SequenceNumber(row.sequence_number)
        ),
    )


class LeaseRows:
    """The lease rows of one processor on one stream, as one worker reads and changes them
    (``CheckpointStore.lease_rows`` makes them)."""

    def __init__(
        self,
        engine: AsyncEngine,
        execute: Execute,
        *,
        processor: str,
        stream_arn: str,
        worker_id: str,
    ) -> None:
        self._engine = engine
        self._execute = execute
        self._writer = writer(engine)
        self._dialect = engine.dialect.name
        self.processor = processor
        self.stream_arn = stream_arn
        self.worker_id = worker_id
        self._scope = {"processor": processor, "stream_arn": stream_arn}
        self._rows = and_(_ROW.processor == processor, _ROW.stream_arn == stream_arn)
        self._workers = and_(workers.c.processor == processor, workers.c.stream_arn == stream_arn)
        self._leader = and_(leaders.c.processor == processor, leaders.c.stream_arn == stream_arn)

    async def read(self) -> StoredLeases:
        """Every shard lease, worker heartbeat and the leader lease; three SELECTs."""
        shards = select(checkpoints).where(self._rows)
        beats = select(workers.c.worker_id, workers.c.heartbeat).where(self._workers)
        leader = select(leaders.c.owner, leaders.c.lease_counter).where(self._leader)
        with self._errors("reading leases"):
            async with self._engine.connect() as connection:
                rows = (await self._execute(connection, shards)).all()
                heartbeats = (await self._execute(connection, beats)).all()
                post = (await self._execute(connection, leader)).first()
        return StoredLeases(
            shards=[_stored_lease(row) for row in rows],
            workers={row.worker_id: int(row.heartbeat) for row in heartbeats},
            leader=None if post is None else (post.owner, int(post.lease_counter)),
        )

    # -- shard leases ----------------------------------------------------------------------

    async def take(self, shard_id: ShardId, seen: int) -> Taken | None:
        """Own the lease if its counter is still ``seen``; None when another change came first."""
        statement = (
            update(checkpoints)
            .where(self._shard(shard_id), _ROW.lease_counter == seen, _ROW.finished == false())
            .values(owner=self.worker_id, lease_counter=_NEXT, owner_since=_now(), handoff_to=None)
            .returning(_ROW.lease_counter, _ROW.sequence_number, _ROW.start_position)
        )
        row = await self._write_one("take lease", statement, shard_id)
        if row is None:
            return None
        after = None if row.sequence_number is None else SequenceNumber(row.sequence_number)
        position = Position(after=after, start=StartingPosition(row.start_position))
        return Taken(counter=int(row.lease_counter), position=position)

    async def ask_handoff(self, shard_id: ShardId, owner: str, counter: int) -> bool:
        """Set ``handoff_to`` to this worker on ``owner``'s lease at ``counter`` if nobody
        asked yet; the counter is unchanged (the owner still holds the lease)."""
        statement = (
            update(checkpoints)
            .where(
                self._shard(shard_id),
                _ROW.owner == owner,
                _ROW.lease_counter == counter,
                _ROW.handoff_to.is_(None),
                _ROW.finished == false(),
            )
            .values(handoff_to=self.worker_id)
            .returning(_ROW.shard_id)
        )
        return await self._write_one("ask for hand-off", statement, shard_id) is not None

    async def renew(self, leases: Mapping[ShardId, int], leader: int | None) -> Renewal:
        """Renew the leases held at these counters and the leader lease, and beat this
        worker's heartbeat, in one transaction."""
        renewed: dict[ShardId, tuple[int, str | None] | None] = {}
        new_leader: int | None = None
        with self._errors("renew leases"):
            async with self._writer.begin() as connection:
                if leader is not None:
                    cas = self._leader_cas(leader, updated_at=_now())
                    post = await self._execute(connection, cas.returning(leaders.c.lease_counter))
                    new_leader = post.scalar()
                await self._heartbeat(connection)
                held = sorted(leases)
                # One compare-and-set statement per chunk of leases, not one per lease: a
                # worker holding 1000 shards renews them in two statements.
                for start in range(0, len(held), RENEW_CHUNK):
                    chunk = held[start : start + RENEW_CHUNK]
                    statement = (
                        update(checkpoints)
                        .where(
                            self._rows,
                            _ROW.owner == self.worker_id,
                            tuple_(_ROW.shard_id, _ROW.lease_counter).in_(
                                [(shard_id, leases[shard_id]) for shard_id in chunk]
                            ),
                        )
                        .values(lease_counter=_NEXT)
                        .returning(_ROW.shard_id, _ROW.lease_counter, _ROW.handoff_to)
                    )
                    rows = await self._execute(connection, statement)
                    done = {row.shard_id: (int(row.lease_counter), row.handoff_to) for row in rows}
                    for shard_id in chunk:
                        renewed[shard_id] = done.get(shard_id)
        return Renewal(leases=renewed, leader=new_leader)

    async def release(
        self, leases: Mapping[ShardId, int], leader: int | None, *, leave: bool = False
    ) -> None:
        """Free the leases held at these counters (and the leader lease), ``handoff_to``
        left as it is; ``leave`` also deletes this worker's heartbeat row. One transaction."""
        with self._errors("release leases"):
            async with self._writer.begin() as connection:
                if leader is not None:
                    await self._execute(connection, self._leader_cas(leader, owner=None))
                if leave:
                    forget = delete(workers).where(self._worker(self.worker_id))
                    await self._execute(connection, forget)
                for shard_id in sorted(leases):
                    free = (
                        update(checkpoints)
                        .where(self._fence(shard_id, leases[shard_id]))
                        .values(owner=None, owner_since=None, lease_counter=_NEXT)
                    )
                    await self._execute(connection, free)

    async def collect(self, shard_id: ShardId, counter: int) -> bool:
        """Delete a finished shard's row, unless its counter moved from ``counter``, with
        the rows transactional lanes left for it (``shardwise_applied``: its records are
        never read again)."""
        statement = (
            delete(checkpoints)
            .where(self._shard(shard_id), _ROW.finished == true(), _ROW.lease_counter == counter)
            .returning(_ROW.shard_id)
        )
        left = delete(applied).where(applied_of(self.processor, self.stream_arn, shard_id))
        with self._errors("collect finished lease", shard_id):
            async with self._writer.begin() as connection:
                if (await self._execute(connection, statement)).first() is None:
                    return False
                await self._execute(connection, left)
                return True

    # -- workers and the sync leader -------------------------------------------------------

    async def forget_worker(self, worker_id: str, heartbeat: int) -> bool:
        """Delete a worker's heartbeat row, unless it beat again since ``heartbeat``."""
        statement = (
            delete(workers)
            .where(self._worker(worker_id), workers.c.heartbeat == heartbeat)
            .returning(workers.c.worker_id)
        )
        return await self._write_one("forget worker", statement) is not None

    async def take_leader(self, seen: int | None) -> int | None:
        """Own the leader lease if it is still at ``seen`` (None: create the row); the new
        counter, or None when another worker came first."""
        statement: Any
        if seen is None:
            statement = insert_unless_present(
                self._dialect, leaders, leaders.primary_key.columns
            ).values(**self._scope, owner=self.worker_id, lease_counter=1, updated_at=_now())
        else:
            statement = (
                update(leaders)
                .where(self._leader, leaders.c.lease_counter == seen)
                .values(
                    owner=self.worker_id,
                    lease_counter=leaders.c.lease_counter + 1,
                    updated_at=_now(),
                )
            )
        row = await self._write_one(
            "take sync leadership", statement.returning(leaders.c.lease_counter)
        )
        return None if row is None else int(row[0])

    # -- statements ------------------------------------------------------------------------

    async def _heartbeat(self, connection: AsyncConnection) -> None:
        now = _now()
        beat = (
            update(workers)
            .where(self._worker(self.worker_id))
            .values(heartbeat=workers.c.heartbeat + 1, updated_at=now)
        )
        if (await self._execute(connection, beat)).rowcount == 0:
            first = insert_unless_present(
                self._dialect, workers, workers.primary_key.columns
            ).values(
                **self._scope,
                worker_id=self.worker_id,
                heartbeat=1,
                started_at=now,
                updated_at=now,
            )
            await self._execute(connection, first)

    async def _write_one(
        self, operation: str, statement: Executable, shard_id: ShardId | None = None
    ) -> Row[Any] | None:
        with self._errors(operation, shard_id):
            async with self._writer.begin() as connection:
                return (await self._execute(connection, statement)).first()

    def _errors(self, operation: str, shard_id: str | None = None) -> AbstractContextManager[None]:
        return map_store_errors(
            operation, self._engine.url, processor=self.processor, shard_id=shard_id
        )

    def _shard(self, shard_id: ShardId) -> ColumnElement[bool]:
        return and_(self._rows, _ROW.shard_id == shard_id)

    def _fence(self, shard_id: ShardId, counter: int) -> ColumnElement[bool]:
        owned = and_(_ROW.owner == self.worker_id, _ROW.lease_counter == counter)
        return and_(self._shard(shard_id), owned)

    def _worker(self, worker_id: str) -> ColumnElement[bool]:
        return and_(self._workers, workers.c.worker_id == worker_id)

    def _leader_cas(self, counter: int, **values: object) -> Update:
        """Change the leader lease held at ``counter``, incrementing it."""
        return (
            update(leaders)
            .where(
                self._leader, leaders.c.owner == self.worker_id, leaders.c.lease_counter == counter
            )
            .values(**values, lease_counter=leaders.c.lease_counter + 1)
        )
