"""The lease statements: every change to a lease is one compare-and-set on its counter.

A shard's lease lives on its checkpoint row (``owner``, ``lease_counter``, ``handoff_to``), so
"I still hold this shard" and "move its checkpoint" are the same statement. Every change
(take, renew, release, finish) increments the counter and is conditional on the value the
writer last saw, so of two workers racing for a lease exactly one wins, and a worker that
lost its lease never moves the checkpoint again. The sync leader's lease works the same way
on ``shardwise_leaders``; worker heartbeats on ``shardwise_workers`` only ever count up.

Renewals of everything a worker holds go in one transaction, rows in a fixed order (leader,
worker, shards by id), so concurrent renewals and takes cannot deadlock on PostgreSQL and
hold SQLite's write lock once. SQLAlchemy and driver errors leave as ``StoreError``.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

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
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from shardwise.errors import LeaseLostError
from shardwise.leases.balance import LeaseRow
from shardwise.records import Position, SequenceNumber, ShardId, StartingPosition
from shardwise.store import CheckpointStore
from shardwise.store.engine import map_store_errors, writer
from shardwise.store.models import checkpoints, leaders, workers

__all__ = ["LeaseTable", "Renewal", "Snapshot", "Taken"]

_ROW = checkpoints.c
_NEXT = _ROW.lease_counter + 1


class _Keep:
    """Marker: leave a column as it is."""


KEEP = _Keep()
# Leases renewed by one statement.
RENEW_CHUNK = 500


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything one taker round looks at, read on one connection."""

    leases: list[LeaseRow]
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


def _insert_or_nothing(dialect: str, table: Any) -> Any:
    """INSERT ... ON CONFLICT DO NOTHING on the table's primary key."""
    module = postgresql if dialect == "postgresql" else sqlite
    return module.insert(table).on_conflict_do_nothing(
        index_elements=list(table.primary_key.columns)
    )


def _lease_row(row: Row[Any]) -> LeaseRow:
    return LeaseRow(
        shard_id=ShardId(row.shard_id),
        parent_shard_id=None if row.parent_shard_id is None else ShardId(row.parent_shard_id),
        owner=row.owner,
        counter=int(row.lease_counter),
        handoff_to=row.handoff_to,
        finished=bool(row.finished),
        started=row.sequence_number is not None or row.owner is not None or bool(row.finished),
    )


class LeaseTable:
    """The lease rows of one processor on one stream, as seen by one worker."""

    def __init__(
        self, store: CheckpointStore, *, processor: str, stream_arn: str, worker_id: str
    ) -> None:
        engine = store.engine
        self._engine = engine
        self._checkpoints = store.checkpoint_writer
        self._writer = writer(engine)
        self._dialect = engine.dialect.name
        self.processor = processor
        self.stream_arn = stream_arn
        self.worker_id = worker_id
        self._scope = {"processor": processor, "stream_arn": stream_arn}
        self._rows = and_(_ROW.processor == processor, _ROW.stream_arn == stream_arn)
        self._workers = and_(workers.c.processor == processor, workers.c.stream_arn == stream_arn)
        self._leader = and_(leaders.c.processor == processor, leaders.c.stream_arn == stream_arn)

    async def snapshot(self) -> Snapshot:
        """Every lease, worker heartbeat and the leader lease of this processor and stream."""
        beats = select(workers.c.worker_id, workers.c.heartbeat).where(self._workers)
        leader = select(leaders.c.owner, leaders.c.lease_counter).where(self._leader)
        with self._errors("reading leases"):
            async with self._engine.connect() as connection:
                rows = (await connection.execute(select(checkpoints).where(self._rows))).all()
                heartbeats = (await connection.execute(beats)).all()
                post = (await connection.execute(leader)).first()
        return Snapshot(
            leases=[_lease_row(row) for row in rows],
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
        """Ask ``owner`` to hand the lease over to this worker; the owner sees it at its next
        renewal. The counter is unchanged: the owner still holds the lease."""
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
                    post = await connection.execute(
                        self._leader_cas(leader, updated_at=_now()).returning(
                            leaders.c.lease_counter
                        )
                    )
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
                    rows = await connection.execute(statement)
                    done = {row[0]: (int(row[1]), row[2]) for row in rows}
                    for shard_id in chunk:
                        renewed[shard_id] = done.get(shard_id)
        return Renewal(leases=renewed, leader=new_leader)

    async def release(
        self, leases: Mapping[ShardId, int], leader: int | None, *, leave: bool = False
    ) -> None:
        """Free the leases held at these counters (and the leader lease) so another worker may
        take them at once - the one that asked for a lease first, if one did (``handoff_to``
        stays). ``leave`` also deletes this worker's heartbeat row."""
        with self._errors("release leases"):
            async with self._writer.begin() as connection:
                if leader is not None:
                    await connection.execute(self._leader_cas(leader, owner=None))
                if leave:
                    await connection.execute(delete(workers).where(self._worker(self.worker_id)))
                for shard_id in sorted(leases):
                    await connection.execute(
                        update(checkpoints)
                        .where(self._fence(shard_id, leases[shard_id]))
                        .values(owner=None, owner_since=None, lease_counter=_NEXT)
                    )

    async def save(
        self,
        shard_id: ShardId,
        counter: int,
        sequence_number: SequenceNumber | None,
        *,
        window_state: str | _Keep | None = KEEP,
    ) -> None:
        """Checkpoint, fenced: raise ``LeaseLostError`` unless the lease is still ours at
        ``counter`` (which stays as it is). ``window_state`` (tumbling windows) is written in
        the same statement; by default it is left as it is. A plain checkpoint joins the
        store's coalesced writes (``store/fenced_writes.py``)."""
        if isinstance(window_state, _Keep) and sequence_number is not None:
            saved = await self._checkpoints.save(
                processor=self.processor,
                stream_arn=self.stream_arn,
                owner=self.worker_id,
                shard_id=shard_id,
                counter=counter,
                sequence_number=sequence_number,
            )
            if not saved:
                raise self._refused("checkpoint", shard_id, counter)
            return
        values: dict[str, object] = {}
        if sequence_number is not None:
            values["sequence_number"] = sequence_number
        if not isinstance(window_state, _Keep):
            values["window_state"] = window_state
        await self._fenced("checkpoint", shard_id, counter, values)

    async def window_state(self, shard_id: ShardId) -> str | None:
        """The open tumbling window stored with the shard's checkpoint, if any."""
        with self._errors("read window state"):
            async with self._engine.connect() as connection:
                result = await connection.execute(
                    select(_ROW.window_state).where(self._shard(shard_id))
                )
                value = result.scalar()
        return None if value is None else str(value)

    async def finish(
        self, shard_id: ShardId, counter: int, sequence_number: SequenceNumber | None
    ) -> None:
        """Mark the shard finished and free its lease, fenced like ``save``."""
        values: dict[str, object] = {"finished": True, "owner": None, "owner_since": None}
        values.update(handoff_to=None, lease_counter=_NEXT)
        if sequence_number is not None:
            values["sequence_number"] = sequence_number
        await self._fenced("finish", shard_id, counter, values)

    async def collect(self, shard_id: ShardId, counter: int) -> bool:
        """Delete a finished shard's row (its children have started), unless it changed."""
        statement = (
            delete(checkpoints)
            .where(self._shard(shard_id), _ROW.finished == true(), _ROW.lease_counter == counter)
            .returning(_ROW.shard_id)
        )
        return await self._write_one("collect finished lease", statement, shard_id) is not None

    # -- workers and the sync leader -------------------------------------------------------

    async def forget_worker(self, worker_id: str, heartbeat: int) -> bool:
        """Delete a dead worker's heartbeat row, unless it beat again meanwhile."""
        statement = (
            delete(workers)
            .where(self._worker(worker_id), workers.c.heartbeat == heartbeat)
            .returning(workers.c.worker_id)
        )
        return await self._write_one("forget worker", statement) is not None

    async def take_leader(self, seen: int | None) -> int | None:
        """Become the sync leader if the leader lease is still at ``seen`` (None: no row yet);
        the new counter, or None when another worker came first."""
        statement: Any
        if seen is None:
            statement = _insert_or_nothing(self._dialect, leaders).values(
                **self._scope, owner=self.worker_id, lease_counter=1, updated_at=_now()
            )
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
        if (await connection.execute(beat)).rowcount == 0:
            await connection.execute(
                _insert_or_nothing(self._dialect, workers).values(
                    **self._scope,
                    worker_id=self.worker_id,
                    heartbeat=1,
                    started_at=now,
                    updated_at=now,
                )
            )

    async def _fenced(
        self, operation: str, shard_id: ShardId, counter: int, values: Mapping[str, object]
    ) -> None:
        statement = (
            update(checkpoints)
            .where(self._fence(shard_id, counter))
            .values(**values, updated_at=_now())
            .returning(_ROW.shard_id)
        )
        if await self._write_one(operation, statement, shard_id) is None:
            raise self._refused(operation, shard_id, counter)

    def _refused(self, operation: str, shard_id: ShardId, counter: int) -> LeaseLostError:
        return LeaseLostError(
            f"{operation} refused (processor {self.processor!r}, shard {shard_id!r}): "
            f"worker {self.worker_id!r} no longer holds the lease at counter {counter}",
            shard_id=shard_id,
        )

    async def _write_one(
        self, operation: str, statement: Executable, shard_id: ShardId | None = None
    ) -> Row[Any] | None:
        with self._errors(operation, shard_id):
            async with self._writer.begin() as connection:
                return (await connection.execute(statement)).first()

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
