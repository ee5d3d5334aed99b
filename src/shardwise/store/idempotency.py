"""Idempotency records in the store's ``shardwise_idempotency`` table: the SQL side of
``shardwise.idempotency`` (``@idempotent``) and of its Powertools persistence layer.

A row says that a call with some (namespace, key) ran, or is running: ``in_progress`` while
a call holds the key, ``completed`` with the call's JSON result once it returned. Every row
has an expiry (``expires_at``): past it, the row counts as absent. An ``in_progress`` row
may also have ``in_progress_expires_at``: past it the call holding the key is taken to have
crashed, and the next call for the key takes the row over and runs again. These are the
conditions of Powertools' DynamoDB layer, kept here in SQL.

Design:

* ``try_begin`` is one statement, race-free on both backends without a retry loop:
  ``INSERT ... ON CONFLICT (namespace, key) DO UPDATE SET <the new holder> WHERE <the row
  lapsed> RETURNING token``. A row back means this call holds the key (it inserted it or
  took over a lapsed one); nothing back means a live row is in the way, which the same
  transaction then reads and returns. PostgreSQL serialises concurrent upserts of one key on
  the conflicting row (a second inserter waits for the first to commit, then sees its row)
  and keeps the row locked until commit, so the read always finds it; SQLite takes the
  write lock up front (``BEGIN IMMEDIATE``), so nothing runs between the two statements.
* A call holds the key with a token of its own (the caller's, e.g. a uuid4). ``complete``
  and ``release`` name it, so a call whose in-progress marker lapsed and was taken over can
  neither overwrite nor delete the new holder's marker; ``release`` never deletes a
  completed row.
* Times are the caller's clock (``now``, default ``datetime.now(UTC)``), as in Powertools,
  whose records carry absolute expiry times: workers comparing expiries should keep their
  clocks NTP-synced. Expiries are exclusive, like Powertools' (``expiry < now`` lapsed).
* Like everything in this package, SQLAlchemy and driver errors leave as ``StoreError``
  naming the operation, the namespace and the key. Every write is one short transaction.
"""

from __future__ import annotations

import contextlib
import enum
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Final

from sqlalchemy import ColumnElement, Row, and_, delete, or_, select, tuple_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.dml import Insert

from shardwise.store.engine import map_store_errors, open_engine, redact_url, writer
from shardwise.store.migrate import require_head, upgrade_engine
from shardwise.store.models import idempotency

__all__ = ["IdempotencyRecord", "IdempotencyStatus", "IdempotencyStore"]

# Column widths (models.idempotency): checked before any SQL, as SQLite would not.
MAX_NAMESPACE: Final = 200
MAX_KEY: Final = 1024
MAX_TOKEN: Final = 64

# Rows per DELETE in purge_expired: a purge of millions of rows never holds SQLite's write
# lock (which checkpoints need too) for more than a moment at a time.
PURGE_CHUNK: Final = 5_000

_t: Final = idempotency
_KEY: Final = (_t.c.namespace, _t.c.key)


class IdempotencyStatus(enum.StrEnum):
    """Where a call for a key is: running (holding the key), or done with a result."""

    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"


@dataclass(frozen=True, slots=True)
class IdempotencyRecord:
    """One row: the call that holds, or held, ``key`` in ``namespace``."""

    namespace: str
    key: str
    status: IdempotencyStatus
    token: str
    result: str | None = field(repr=False)  # JSON text, once completed
    payload_hash: str | None
    expires_at: datetime
    in_progress_expires_at: datetime | None
    created_at: datetime
    updated_at: datetime

    def lapsed(self, now: datetime) -> bool:
        """True when a ``try_begin`` at ``now`` would take this row over: it expired, or it
        is in progress past its in-progress expiry (the call holding it crashed)."""
        if self.expires_at < now:
            return True
        return (
            self.status is IdempotencyStatus.IN_PROGRESS
            and self.in_progress_expires_at is not None
            and self.in_progress_expires_at < now
        )


def _record(row: Row[Any]) -> IdempotencyRecord:
    return IdempotencyRecord(
        namespace=row.namespace,
        key=row.key,
        status=IdempotencyStatus(row.status),
        token=row.token,
        result=row.result,
        payload_hash=row.payload_hash,
        expires_at=row.expires_at,
        in_progress_expires_at=row.in_progress_expires_at,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def _lapsed(now: datetime) -> ColumnElement[bool]:
    """``IdempotencyRecord.lapsed`` in SQL."""
    return or_(
        _t.c.expires_at < now,
        and_(
            _t.c.status == IdempotencyStatus.IN_PROGRESS.value,
            _t.c.in_progress_expires_at.is_not(None),
            _t.c.in_progress_expires_at < now,
        ),
    )


def _begin(dialect: str, values: dict[str, Any], now: datetime) -> Insert:
    """INSERT the in-progress row; on a conflict, take the existing row over only if it
    lapsed; RETURNING the token when this call now holds the key."""
    insert = postgresql.insert(_t) if dialect == "postgresql" else sqlite.insert(_t)
    insert = insert.values(values)
    taken_over = {
        name: insert.excluded[name] for name in values if name not in {"namespace", "key"}
    }
    return insert.on_conflict_do_update(
        index_elements=list(_KEY), set_=taken_over, where=_lapsed(now)
    ).returning(_t.c.token)


def _now(now: datetime | None) -> datetime:
    return datetime.now(UTC) if now is None else _aware("now", now)


def _aware(name: str, value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError(f"{name} must be a timezone-aware datetime, not {value!r}")
    return value


def _check(namespace: str, key: str, token: str | None = None) -> None:
    for name, value, limit in (
        ("namespace", namespace, MAX_NAMESPACE),
        ("key", key, MAX_KEY),
        ("token", token, MAX_TOKEN),
    ):
        if value is None:
            continue
        if not value:
            raise ValueError(f"idempotency {name} must not be empty")
        if len(value) > limit:
            raise ValueError(
                f"idempotency {name} {value[:60]!r}... is {len(value)} characters long; "
                f"at most {limit} fit"
            )


class IdempotencyStore:
    """Idempotency rows in a SQL database.

    ``await IdempotencyStore.connect(url)`` opens (and by default migrates) a database of its
    own; ``IdempotencyStore(engine)`` shares an engine someone else opened and closes
    (``close``) and never disposes it.
    """

    def __init__(self, engine: AsyncEngine, *, owns_engine: bool = False) -> None:
        self._engine = engine
        self._writer = writer(engine)
        self._dialect = engine.dialect.name
        self._url = redact_url(engine.url)
        self._owns_engine = owns_engine

    @classmethod
    async def connect(cls, url: str, *, migrate: bool = True) -> IdempotencyStore:
        """Open the store at ``url``; upgrade its schema, or with ``migrate=False`` require it.

        Raises what ``CheckpointStore.connect`` raises: ``ValueError`` for a URL that cannot
        be a store, ``StoreSchemaError`` for a schema missing or not at head (``migrate``
        False), ``StoreError`` when the database cannot be reached.
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
        return cls(engine, owns_engine=True)

    @property
    def url(self) -> str:
        """The database URL with its password replaced by ``***``."""
        return self._url

    async def close(self) -> None:
        """Close the pooled connections of an engine this store opened; harmless twice."""
        if self._owns_engine:
            await self._engine.dispose()

    async def __aenter__(self) -> IdempotencyStore:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"<IdempotencyStore {self._url}>"

    async def try_begin(
        self,
        namespace: str,
        key: str,
        *,
        token: str,
        expires_at: datetime,
        in_progress_expires_at: datetime | None,
        payload_hash: str | None = None,
        now: datetime | None = None,
    ) -> IdempotencyRecord | None:
        """Hold ``key`` for the call named by ``token``, unless a live row is in the way.

        Returns None when the call now holds the key: no row existed, or the row there had
        lapsed (see ``IdempotencyRecord.lapsed``) and was taken over; the row is then
        ``in_progress`` with the given expiries. Otherwise returns the live row, untouched:
        ``completed`` (hand back its result) or ``in_progress`` (another call runs). With
        ``in_progress_expires_at`` None the marker lapses only at ``expires_at``.
        """
        _check(namespace, key, token)
        now = _now(now)
        values = {
            "namespace": namespace,
            "key": key,
            "status": IdempotencyStatus.IN_PROGRESS.value,
            "token": token,
            "result": None,
            "payload_hash": payload_hash,
            "expires_at": _aware("expires_at", expires_at),
            "in_progress_expires_at": (
                None
                if in_progress_expires_at is None
                else _aware("in_progress_expires_at", in_progress_expires_at)
            ),
            "created_at": now,
            "updated_at": now,
        }
        statement = _begin(self._dialect, values, now)
        with self._errors("begin", namespace, key):
            async with self._writer.begin() as connection:
                if (await connection.execute(statement)).first() is not None:
                    return None
                existing = await self._get(connection, namespace, key)
        if existing is None:  # cannot happen: the conflicting row is locked until commit
            raise RuntimeError(f"idempotency key {key!r} in {namespace!r} conflicted but vanished")
        return existing

    async def complete(
        self,
        namespace: str,
        key: str,
        *,
        token: str | None,
        result: str | None,
        expires_at: datetime,
        payload_hash: str | None = None,
        now: datetime | None = None,
    ) -> bool:
        """Mark the key completed with ``result`` (JSON text) until ``expires_at``.

        Only while the call named by ``token`` holds the row (None: whoever does). Returns
        False when it does not: its marker lapsed and another call took it over (that call
        completes it), or the row is gone. ``payload_hash`` None leaves the stored one.
        """
        _check(namespace, key, token)
        values: dict[str, Any] = {
            "status": IdempotencyStatus.COMPLETED.value,
            "result": result,
            "expires_at": _aware("expires_at", expires_at),
            "in_progress_expires_at": None,
            "updated_at": _now(now),
        }
        if payload_hash is not None:
            values["payload_hash"] = payload_hash
        statement = update(_t).where(*self._held(namespace, key, token)).values(values)
        with self._errors("complete", namespace, key):
            async with self._writer.begin() as connection:
                return (await connection.execute(statement)).rowcount > 0

    async def release(self, namespace: str, key: str, *, token: str | None) -> bool:
        """Delete the in-progress row of the call named by ``token`` (None: of any call) so
        that the next call runs; a completed row is never deleted. True if one was."""
        _check(namespace, key, token)
        statement = delete(_t).where(
            *self._held(namespace, key, token),
            _t.c.status == IdempotencyStatus.IN_PROGRESS.value,
        )
        with self._errors("release", namespace, key):
            async with self._writer.begin() as connection:
                return (await connection.execute(statement)).rowcount > 0

    async def get(self, namespace: str, key: str) -> IdempotencyRecord | None:
        """The row of ``key``, lapsed or not; None when there is none."""
        _check(namespace, key)
        with self._errors("get", namespace, key):
            async with self._engine.connect() as connection:
                return await self._get(connection, namespace, key)

    async def delete(self, namespace: str, key: str) -> bool:
        """Delete the row of ``key`` whatever its state (the next call runs again)."""
        _check(namespace, key)
        statement = delete(_t).where(_t.c.namespace == namespace, _t.c.key == key)
        with self._errors("delete", namespace, key):
            async with self._writer.begin() as connection:
                return (await connection.execute(statement)).rowcount > 0

    async def purge_expired(
        self, *, namespace: str | None = None, now: datetime | None = None
    ) -> int:
        """Delete every row past its expiry (of one namespace, or all); return how many.

        Chunks of ``PURGE_CHUNK`` rows, each its own transaction. Rows in progress past
        only their in-progress expiry stay: the next call for the key takes them over.
        """
        now = _now(now)
        expired = [_t.c.expires_at < now]
        if namespace is not None:
            expired.append(_t.c.namespace == namespace)
        chunk = select(*_KEY).where(*expired).limit(PURGE_CHUNK)
        statement = delete(_t).where(tuple_(*_KEY).in_(chunk))
        purged = 0
        with map_store_errors("idempotency purge_expired", self._engine.url):
            while True:
                async with self._writer.begin() as connection:
                    deleted = (await connection.execute(statement)).rowcount
                purged += deleted
                if deleted < PURGE_CHUNK:
                    return purged

    @staticmethod
    def _held(namespace: str, key: str, token: str | None) -> list[ColumnElement[bool]]:
        where = [_t.c.namespace == namespace, _t.c.key == key]
        if token is not None:
            where.append(_t.c.token == token)
        return where

    @staticmethod
    async def _get(
        connection: AsyncConnection, namespace: str, key: str
    ) -> IdempotencyRecord | None:
        query = select(_t).where(_t.c.namespace == namespace, _t.c.key == key)
        row = (await connection.execute(query)).first()
        return None if row is None else _record(row)

    def _errors(
        self, operation: str, namespace: str, key: str
    ) -> contextlib.AbstractContextManager[None]:
        return map_store_errors(
            f"idempotency {operation} of key {key!r} in namespace {namespace!r}", self._engine.url
        )
