"""Fenced checkpoint writes: every checkpoint of a leased shard, plain ones coalesced.

``FencedCheckpoints`` is the one way a worker writes a checkpoint, always as one
compare-and-set on the lease's owner and counter that says whether the row was written. A
plain checkpoint (a sequence number, the tumbling window left as it is) joins the coalesced
statements of ``CheckpointWriter``; one that writes the window, and a finish (which also
frees the lease), is one UPDATE of its own in a pooled transaction.

A checkpoint is on the hot path: a shard's next batch is invoked only once the previous
batch's checkpoint is durable. Written as a pooled SQLAlchemy transaction it cost six round
trips (pool ping, BEGIN, UPDATE, COMMIT, reset) and about a millisecond of CPU, as much as
decoding the 1000 records it covers. ``CheckpointWriter`` writes them on a connection of its
own, as single autocommitted statements sent straight to the driver, and every checkpoint
that arrives while one is being written joins the next statement:

    UPDATE shardwise_checkpoints
       SET sequence_number = CASE shard_id WHEN 's1' THEN '300' WHEN 's2' THEN '120' END,
           updated_at = now
     WHERE processor = 'p' AND stream_arn = 'arn' AND owner = 'me'
       AND (shard_id, lease_counter) IN (('s1', 7), ('s2', 4))
    RETURNING shard_id

Each row is still its own compare-and-set on the lease counter: the shards returned were
written, any other lost its lease. One statement is atomic and, committed alone, as durable
as a transaction (SQLite's ``synchronous=FULL``, PostgreSQL's commit). A shard appears at
most once per statement; a second checkpoint of it waits for the next one, so writes of one
shard stay in order.

The statement runs in the writer's own task, so a caller that is cancelled (the caller
shields it anyway) never leaves a write half-done: on SQLite the write lock is held only
inside one call on the driver's thread. Driver errors leave as ``StoreError`` (retriable);
the connection is dropped and opened again for the next write.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import structlog
from sqlalchemy import and_, bindparam, delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.expression import ColumnElement, Delete, Executable

from shardwise.errors import CommitUnknownError, HandlerError, StoreError
from shardwise.records import SequenceNumber, ShardId, sortable_position
from shardwise.store.engine import Execute, map_store_errors, redact_url, writer
from shardwise.store.models import applied, checkpoints

__all__ = [
    "KEEP",
    "CheckpointWriter",
    "FencedCheckpoints",
    "Keep",
    "ShardTransaction",
    "applied_of",
    "passed",
]

log = structlog.get_logger("shardwise.store")

# Shards per statement: 2 + 3 per shard parameters stay far below both backends' limits.
MAX_SHARDS_PER_STATEMENT: Final = 256

_C = checkpoints.c
_A = applied.c


def applied_of(processor: str, stream_arn: str, shard_id: str) -> ColumnElement[bool]:
    """The ``shardwise_applied`` rows of one processor's shard."""
    return and_(_A.processor == processor, _A.stream_arn == stream_arn, _A.shard_id == shard_id)


def passed(rows: ColumnElement[bool], checkpoint: SequenceNumber) -> Delete:
    """Delete those of ``rows`` the checkpoint has passed: their records are never read
    again."""
    return delete(applied).where(rows, _A.last_position <= sortable_position(checkpoint))


class Keep:
    """Marker type: leave a column as it is."""


KEEP: Final = Keep()


class FencedCheckpoints:
    """The checkpoints one worker writes on one processor's stream, each only while the
    shard's lease is still the worker's at the counter given (the counter stays as it is,
    but for a finish); made by ``CheckpointStore.fenced_checkpoints``."""

    def __init__(
        self,
        engine: AsyncEngine,
        coalesced: CheckpointWriter,
        execute: Execute,
        *,
        processor: str,
        stream_arn: str,
        owner: str,
        transactions: AsyncEngine | None = None,
    ) -> None:
        self._engine = engine
        self._coalesced = coalesced
        self._execute = execute
        self._writer = writer(engine)
        # Processors' transactions (store.engine.transactions_engine; default: ``engine``).
        self._transactions = writer(transactions or engine)
        self.processor = processor
        self.stream_arn = stream_arn
        self.owner = owner
        self._rows = and_(_C.processor == processor, _C.stream_arn == stream_arn)
        self._in_transaction: dict[tuple[str, ...], Any] = {}  # see _fenced_in

    async def save(
        self,
        shard_id: ShardId,
        counter: int,
        sequence_number: SequenceNumber | None,
        window_state: str | Keep | None = KEEP,
    ) -> bool:
        """Move the checkpoint (None: leave it) and the tumbling window (``KEEP``: leave it)
        in one statement; False when the lease is not ours at ``counter``."""
        if isinstance(window_state, Keep) and sequence_number is not None:
            return await self._coalesced.save(
                processor=self.processor,
                stream_arn=self.stream_arn,
                owner=self.owner,
                shard_id=shard_id,
                counter=counter,
                sequence_number=sequence_number,
            )
        values: dict[str, object] = {}
        if sequence_number is not None:
            values["sequence_number"] = sequence_number
        if not isinstance(window_state, Keep):
            values["window_state"] = window_state
        return await self._update("checkpoint", shard_id, counter, values)

    async def finish(
        self, shard_id: ShardId, counter: int, sequence_number: SequenceNumber | None
    ) -> bool:
        """Mark the shard finished (with its last checkpoint if given) and free its lease,
        incrementing the counter; False when the lease is not ours at ``counter``."""
        values: dict[str, object] = {"finished": True, "owner": None, "owner_since": None}
        values.update(handoff_to=None, lease_counter=_C.lease_counter + 1)
        if sequence_number is not None:
            values["sequence_number"] = sequence_number
        return await self._update("finish", shard_id, counter, values)

    async def applied(
        self, shard_id: ShardId, after: SequenceNumber | None
    ) -> frozenset[SequenceNumber]:
        """The records past ``after`` (the checkpoint) that transactional lanes applied
        (``ShardTransaction.applied``); rows at or before it are deleted, being done."""
        where = self._applied_rows(shard_id)
        with map_store_errors("read applied records", self._engine.url, shard_id=shard_id):
            async with self._writer.begin() as connection:
                if after is not None:
                    await self._execute(connection, passed(where, after))
                rows = await self._execute(connection, select(_A.sequence_numbers).where(where))
                lists = [json.loads(row[0]) for row in rows]
        return frozenset(SequenceNumber(str(s)) for found in lists for s in found)

    def _applied_rows(self, shard_id: ShardId) -> ColumnElement[bool]:
        return applied_of(self.processor, self.stream_arn, shard_id)

    async def window_state(self, shard_id: ShardId) -> str | None:
        """The open tumbling window stored with the shard's checkpoint, if any."""
        query = select(_C.window_state).where(self._rows, _C.shard_id == shard_id)
        with map_store_errors("read window state", self._engine.url, processor=self.processor):
            async with self._engine.connect() as connection:
                value = (await self._execute(connection, query)).scalar()
        return None if value is None else str(value)

    @property
    def one_writer(self) -> bool:
        """True when a transaction holds the database's only write lock to its end (SQLite):
        no other write, a lease renewal included, can run meanwhile."""
        return self._engine.dialect.name == "sqlite"

    @contextlib.asynccontextmanager
    async def transaction(self, shard_id: ShardId) -> AsyncIterator[ShardTransaction]:
        """A transaction on the store's database in which a processor's own writes and the
        shard's checkpoint commit together, or not at all: the checkpoint is fenced like
        ``save``, so a worker that lost the lease commits nothing. Committed when the block
        ends, rolled back when it raises (``ShardTransaction.checkpoint`` says whether the
        lease was still ours; the caller raises if not). On SQLite the write lock is taken
        at the start and held to the end: one transaction at a time on the file, and other
        writers (lease renewals included) wait for it."""
        where = {"processor": self.processor, "shard_id": shard_id}
        with map_store_errors("begin transaction", self._engine.url, **where):
            connection = await self._transactions.connect()
        try:
            with map_store_errors("begin transaction", self._engine.url, **where):
                transaction = await connection.begin()
            shard_transaction = ShardTransaction(self, connection, shard_id)
            try:
                # The block's own errors (the processor's statements included) leave as
                # they are: what failed there is the processor's, not the store's.
                yield shard_transaction
            except BaseException:
                with contextlib.suppress(Exception):  # the block's error is what counts
                    await transaction.rollback()
                raise
            try:
                with map_store_errors("commit transaction", self._engine.url, **where):
                    await transaction.commit()
            except StoreError as exc:
                raise CommitUnknownError(str(exc), landed=shard_transaction.landed) from exc
        finally:
            with contextlib.suppress(Exception):
                await connection.close()

    async def _fenced_in(
        self,
        connection: AsyncConnection,
        shard_id: ShardId,
        counter: int,
        values: Mapping[str, str | None],
    ) -> bool:
        """The fenced update of ``values`` (sequence_number, window_state: text columns)
        inside a caller's transaction; False when the lease is not ours at ``counter``.
        On the hot path of a transactional processor (one per invocation): the statement
        for each set of columns is built once, with bound parameters, and reused."""
        columns = tuple(sorted(values))
        statement = self._in_transaction.get(columns)
        if statement is None:
            fence = (
                _C.shard_id == bindparam("fenced_shard"),
                _C.owner == self.owner,
                _C.lease_counter == bindparam("fenced_counter"),
            )
            statement = (
                update(checkpoints)
                .where(self._rows, *fence)
                .values({c: bindparam(f"new_{c}") for c in columns})
                .values(updated_at=bindparam("new_updated_at"))
                .returning(_C.shard_id)
            )
            self._in_transaction[columns] = statement
        parameters: dict[str, object] = {f"new_{c}": v for c, v in values.items()}
        parameters.update(
            fenced_shard=shard_id, fenced_counter=counter, new_updated_at=datetime.now(UTC)
        )
        with _own_statements("checkpoint in a transaction", self, shard_id):
            result = await connection.execute(statement, parameters)
            return result.first() is not None

    def _fenced_update(self, shard_id: ShardId, counter: int, values: Mapping[str, object]) -> Any:
        fence = (_C.shard_id == shard_id, _C.owner == self.owner, _C.lease_counter == counter)
        return (
            update(checkpoints)
            .where(self._rows, *fence)
            .values(**values, updated_at=datetime.now(UTC))
            .returning(_C.shard_id)
        )

    async def _update(
        self, operation: str, shard_id: ShardId, counter: int, values: Mapping[str, object]
    ) -> bool:
        statement = self._fenced_update(shard_id, counter, values)
        with map_store_errors(
            operation, self._engine.url, processor=self.processor, shard_id=shard_id
        ):
            async with self._writer.begin() as connection:
                return (await self._execute(connection, statement)).first() is not None


# PostgreSQL's "current transaction is aborted": an earlier statement of the processor failed
# (and the processor went on), so the transaction can only roll back.
_ABORTED_TRANSACTION: Final = "25P02"


@contextlib.contextmanager
def _own_statements(operation: str, fenced: FencedCheckpoints, shard_id: ShardId) -> Iterator[None]:
    """Errors of shardwise's statements inside a processor's transaction: the processor's
    failure (``HandlerError``) when one of its own statements left the transaction aborted,
    else the store's (``StoreError``)."""
    try:
        with map_store_errors(operation, fenced._engine.url, shard_id=shard_id):
            yield
    except StoreError as exc:
        if getattr(getattr(exc.__cause__, "orig", None), "sqlstate", None) == _ABORTED_TRANSACTION:
            raise HandlerError(
                f"shard {shard_id}: the transaction cannot commit - a statement of the "
                "processor failed earlier in it and the processor went on; the invocation "
                "counts as failed"
            ) from exc
        raise


class ShardTransaction:
    """An open transaction of ``FencedCheckpoints.transaction``: ``connection`` for the
    processor's own statements, ``checkpoint`` to move the shard's checkpoint in it."""

    def __init__(
        self, fenced: FencedCheckpoints, connection: AsyncConnection, shard_id: ShardId
    ) -> None:
        self._fenced = fenced
        self.connection = connection
        self.shard_id = shard_id
        # What the transaction wrote of shardwise's own: how ``landed`` recognises it.
        self._wrote: dict[str, str | None] = {}
        self._applied: str | None = None  # the JSON of the applied row it inserted

    @property
    def broken(self) -> bool:
        """The connection broke (SQLAlchemy invalidated it) during the transaction."""
        return bool(self.connection.invalidated)

    async def checkpoint(
        self,
        counter: int,
        sequence_number: SequenceNumber | None,
        window_state: str | Keep | None = KEEP,
    ) -> bool:
        """Move the checkpoint (and the tumbling window) inside the transaction; False when
        the lease is not ours at ``counter`` (then the transaction must not commit). The
        counter is the lease's as of now (renewals move it), not as of the transaction's
        start; the row stays locked to the commit, so no renewal or steal comes between."""
        values: dict[str, str | None] = {}
        if sequence_number is not None:
            values["sequence_number"] = sequence_number
        if not isinstance(window_state, Keep):
            values["window_state"] = window_state
        if not values:
            return True
        self._wrote.update(values)
        return await self._fenced._fenced_in(self.connection, self.shard_id, counter, values)

    async def applied(
        self,
        counter: int,
        sequence_numbers: Sequence[SequenceNumber],
        checkpointed: SequenceNumber | None,
    ) -> bool:
        """Record in the transaction that it applied ``sequence_numbers`` (a lane's records
        the checkpoint cannot pass yet), and drop rows the checkpoint (``checkpointed``)
        has passed; False when the lease is not ours at ``counter``. The fence locks the
        shard's checkpoint row to the commit, as ``checkpoint`` does."""
        fenced = self._fenced
        if not await fenced._fenced_in(self.connection, self.shard_id, counter, {}):
            return False
        statements: list[Executable] = []
        if checkpointed is not None:
            statements.append(passed(fenced._applied_rows(self.shard_id), checkpointed))
        row = {
            "processor": fenced.processor,
            "stream_arn": fenced.stream_arn,
            "shard_id": self.shard_id,
            "last_position": max(sortable_position(s) for s in sequence_numbers),
            "sequence_numbers": json.dumps(list(sequence_numbers)),
            "created_at": datetime.now(UTC),
        }
        self._applied = str(row["sequence_numbers"])
        statements.append(insert(applied).values(row))
        with _own_statements("record applied records", fenced, self.shard_id):
            for statement in statements:
                await fenced._execute(self.connection, statement)
        return True

    async def landed(self) -> bool:
        """Whether this transaction was committed, asked after its COMMIT broke off: are
        the checkpoint (and window) it wrote, or the applied row it inserted, in the store?
        While the lease is held nobody else writes them, so finding them means it landed.
        ``StoreError`` while the store is still unreachable."""
        fenced = self._fenced
        row_of = and_(fenced._rows, _C.shard_id == self.shard_id)
        with map_store_errors("look up a commit", fenced._engine.url, shard_id=self.shard_id):
            async with fenced._engine.connect() as connection:
                if self._applied is not None:
                    query = select(_A.id).where(
                        fenced._applied_rows(self.shard_id),
                        _A.sequence_numbers == self._applied,
                    )
                    return (await connection.execute(query)).first() is not None
                if not self._wrote:
                    return False
                columns = [getattr(_C, name) for name in self._wrote]
                stored = (await connection.execute(select(*columns).where(row_of))).first()
        return stored is not None and tuple(stored) == tuple(self._wrote.values())


@dataclass(slots=True)
class _Save:
    scope: tuple[str, str, str]  # processor, stream ARN, owner
    shard_id: str
    counter: int
    sequence_number: str
    done: asyncio.Future[bool] = field(repr=False)


def _padded(count: int) -> int:
    """Statements come in a few sizes (powers of two), so the driver prepares each once."""
    size = 1
    while size < count:
        size *= 2
    return size


class CheckpointWriter:
    """Writes fenced checkpoints for one store; ``close()`` writes what is queued, then stops."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._postgres = engine.dialect.name == "postgresql"
        self._stamp = checkpoints.c.updated_at.type.bind_processor(engine.dialect)
        self._queue: list[_Save] = []
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()  # set while nothing is queued or being written
        self._task: asyncio.Task[None] | None = None
        self._connection: AsyncConnection | None = None
        self._driver: Any = None
        self._statements: dict[int, str] = {}
        self._closed = False
        self.writes = 0  # statements sent

    async def save(
        self,
        *,
        processor: str,
        stream_arn: str,
        owner: str,
        shard_id: str,
        counter: int,
        sequence_number: str,
    ) -> bool:
        """Move the checkpoint if the lease is still ``owner``'s at ``counter``; False if not."""
        if self._closed:
            raise StoreError(f"checkpoint for shard {shard_id!r} refused: the store is closed")
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._queue.append(
            _Save((processor, stream_arn, owner), shard_id, counter, sequence_number, done)
        )
        self._idle.clear()
        self._wake.set()
        if self._task is None:
            self._task = asyncio.ensure_future(self._run())
        return await done

    async def close(self) -> None:
        """Write what is queued, stop the writer and give its connection back."""
        self._closed = True
        if self._task is not None:
            if not self._task.done():
                await self._idle.wait()
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._drop_connection(broken=False)

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                await self._write(self._next_round())
            self._idle.set()

    def _next_round(self) -> list[_Save]:
        """Every queued save whose shard is not already in this round, in arrival order;
        saves whose caller gave up before they were sent are dropped."""
        taken: list[_Save] = []
        seen: set[tuple[tuple[str, str, str], str]] = set()
        left: list[_Save] = []
        for save in self._queue:
            key = (save.scope, save.shard_id)
            if save.done.cancelled():
                continue
            if key in seen:
                left.append(save)
            else:
                seen.add(key)
                taken.append(save)
        self._queue = left
        return taken

    async def _write(self, saves: list[_Save]) -> None:
        groups: dict[tuple[str, str, str], list[_Save]] = {}
        for save in saves:
            groups.setdefault(save.scope, []).append(save)
        try:
            for scope, group in groups.items():
                for start in range(0, len(group), MAX_SHARDS_PER_STATEMENT):
                    chunk = group[start : start + MAX_SHARDS_PER_STATEMENT]
                    written = await self._statement(scope, chunk)
                    for save in chunk:
                        if not save.done.done():
                            save.done.set_result(save.shard_id in written)
        except Exception as exc:  # noqa: BLE001 - the writer outlives any one failed write
            failed = exc
            if not isinstance(exc, StoreError):
                failed = StoreError(
                    f"checkpoint failed on {redact_url(self._engine.url)}: "
                    f"{type(exc).__name__}: {exc}"
                )
                log.error("unexpected checkpoint write failure", error=str(failed))
            await self._drop_connection(broken=True)
            for save in saves:
                if not save.done.done():
                    save.done.set_exception(failed)
                    save.done.exception()  # a caller that gave up is not warned about

    async def _statement(self, scope: tuple[str, str, str], saves: list[_Save]) -> set[str]:
        processor, stream_arn, owner = scope
        size = _padded(len(saves))
        now = datetime.now(UTC)
        stamp = self._stamp(now) if self._stamp is not None else now
        cases: list[object] = []
        pairs: list[object] = []
        for save in saves:
            cases += [save.shard_id, save.sequence_number]
            pairs += [save.shard_id, save.counter]
        for _ in range(size - len(saves)):  # never matches: no shard has an empty id
            cases += ["", ""]
            pairs += ["", -1]
        parameters = [*cases, stamp, processor, stream_arn, owner, *pairs]
        shard = saves[0].shard_id if len(saves) == 1 else None
        with map_store_errors("checkpoint", self._engine.url, processor=processor, shard_id=shard):
            driver = await self._open()
            sql = self._sql(size)
            self.writes += 1
            if self._postgres:
                rows = await driver.fetch(sql, *parameters)
            else:
                try:
                    rows = await driver.execute_fetchall(sql, parameters)
                except ValueError as exc:  # aiosqlite: "Connection closed"
                    raise sqlite3.OperationalError(str(exc)) from exc
        return {row[0] for row in rows}

    def _sql(self, size: int) -> str:
        sql = self._statements.get(size)
        if sql is None:
            count = iter(range(1, 5 * size + 5))

            def mark() -> str:
                return f"${next(count)}" if self._postgres else "?"

            cases = " ".join(f"WHEN {mark()} THEN {mark()}" for _ in range(size))
            sequence = f"CASE {_C.shard_id.name} {cases} END"
            head = (
                f"UPDATE {checkpoints.name} SET {_C.sequence_number.name} = {sequence}, "
                f"{_C.updated_at.name} = {mark()} WHERE {_C.processor.name} = {mark()} "
                f"AND {_C.stream_arn.name} = {mark()} AND {_C.owner.name} = {mark()} "
            )
            pairs = ", ".join(f"({mark()}, {mark()})" for _ in range(size))
            sql = (
                f"{head}AND ({_C.shard_id.name}, {_C.lease_counter.name}) IN ({pairs}) "
                f"RETURNING {_C.shard_id.name}"
            )
            self._statements[size] = sql
        return sql

    async def _open(self) -> Any:
        if self._postgres and self._driver is not None and self._driver.is_closed():
            await self._drop_connection(broken=True)  # the server ended it (restart, idle kill)
        if self._driver is None:
            connection = await self._engine.connect()
            try:
                raw = await connection.get_raw_connection()
            except BaseException:
                await connection.close()
                raise
            self._connection, self._driver = connection, raw.driver_connection
        return self._driver

    async def _drop_connection(self, *, broken: bool) -> None:
        """Give the connection back to the pool, or throw it away when it failed."""
        connection, self._connection, self._driver = self._connection, None, None
        if connection is None:
            return
        with contextlib.suppress(Exception):
            if broken:
                await connection.invalidate()
            await connection.close()
