"""Opening the checkpoint database: which URLs we accept, engine settings, the error boundary.

Two backends are supported, each through one asyncio driver:

* SQLite files via aiosqlite (``sqlite+aiosqlite:///path/to/shardwise.db``). Every connection
  runs in WAL mode with ``synchronous=FULL`` so a committed checkpoint survives a power cut,
  and waits up to ``SQLITE_BUSY_TIMEOUT_MS`` for another writer instead of failing. SQLAlchemy
  emits BEGIN itself (the sqlite3 module's own transaction handling skips DDL and SELECT), and
  writers ask for ``BEGIN IMMEDIATE`` so they queue for the write lock up front. That makes
  one file safe for several processes on one machine (``worker.processes``): WAL lets
  readers run beside the one writer, and a writer never upgrades a read transaction (which
  fails at once with SQLITE_BUSY instead of waiting). WAL needs a local file system.
* PostgreSQL via asyncpg (``postgresql+asyncpg://user:password@host/db``).

``sqlite://`` and ``postgresql://`` URLs are accepted too and get the driver above. In-memory
SQLite is refused: checkpoints that vanish with the process are not checkpoints.

SQLAlchemy and driver exceptions never leave this package: ``map_store_errors`` turns them
into ``StoreError`` naming the operation, the processor and shard, and the URL with its
password replaced by ``***``.
"""

from __future__ import annotations

import contextlib
import re
import sqlite3
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import Any, Final, TypeAlias

import asyncpg
from sqlalchemy import Column, Executable, Table, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, Connection, CursorResult, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.sql.dml import Insert

from shardwise.errors import StoreError

__all__ = [
    "SQLITE_BUSY_TIMEOUT_MS",
    "Execute",
    "failure",
    "insert_unless_present",
    "map_store_errors",
    "open_engine",
    "parse_store_url",
    "redact_url",
    "transactions_engine",
    "writer",
]

SQLITE_BUSY_TIMEOUT_MS: Final = 10_000
PG_CONNECT_TIMEOUT_S: Final = 10.0
PG_COMMAND_TIMEOUT_S: Final = 60.0

_DRIVERS: Final = {
    "sqlite": "sqlite+aiosqlite",
    "sqlite+aiosqlite": "sqlite+aiosqlite",
    "postgres": "postgresql+asyncpg",
    "postgresql": "postgresql+asyncpg",
    "postgresql+asyncpg": "postgresql+asyncpg",
}

# How the parts of a store send a statement: through the store's own execute, which counts
# it (``CheckpointStore.statements``).
Execute: TypeAlias = Callable[[AsyncConnection, Executable], Awaitable[CursorResult[Any]]]

# Execution option read by the SQLite "begin" hook: which BEGIN to emit.
_SQLITE_BEGIN: Final = "shardwise_sqlite_begin"

_USERINFO_PASSWORD = re.compile(r"^(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^:@/]*):[^?#]*@")
_QUERY_PASSWORD = re.compile(r"([?&]password=)[^&#]*", re.IGNORECASE)


def redact_url(url: str | URL) -> str:
    """The URL with any password (``user:pw@`` or ``?password=``) replaced by ``***``.

    Works on the text, without parsing, so even a URL SQLAlchemy cannot parse (or one whose
    password holds an unescaped ``@``) never leaks into a message or a log line.
    """
    text = url.render_as_string(hide_password=False) if isinstance(url, URL) else url
    text = _USERINFO_PASSWORD.sub(r"\g<head>:***@", text)
    return _QUERY_PASSWORD.sub(r"\1***", text)


def parse_store_url(url: str) -> URL:
    """Parse and check a store URL; raise ``ValueError`` for anything we cannot store in."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError) as exc:
        raise ValueError(f"not a database URL: {redact_url(url)}") from exc
    driver = _DRIVERS.get(parsed.drivername)
    if driver is None:
        raise ValueError(
            f"unsupported checkpoint store {redact_url(parsed)}: use "
            "sqlite+aiosqlite:///path/to/file.db or postgresql+asyncpg://user@host/db"
        )
    parsed = parsed.set(drivername=driver)
    if parsed.get_backend_name() == "sqlite" and _is_memory(parsed):
        raise ValueError(
            f"in-memory SQLite ({redact_url(parsed)}) cannot hold checkpoints: they would be "
            "lost when the process exits; use a file, e.g. sqlite+aiosqlite:///shardwise.db"
        )
    return parsed


def _is_memory(url: URL) -> bool:
    database = url.database or ""
    return (
        database in {"", ":memory:"}
        or database.startswith("file::memory:")
        or "mode=memory" in database
        or url.query.get("mode") == "memory"
    )


def transactions_engine(engine: AsyncEngine) -> AsyncEngine:
    """The engine transactional processors' transactions run on: ``engine`` itself for
    SQLite; for PostgreSQL a pool of their own without the pre-ping. A transaction is one
    per invocation, so the ping's round trip was a third of what shardwise adds to one. A
    pooled connection the server ended fails the transaction (at BEGIN, or under the
    handler's first statement: SQLAlchemy invalidates it), which rolls back and runs again
    on a fresh one without counting as the handler's failure (``dispatch.transacting``)."""
    if engine.dialect.name == "sqlite":
        return engine
    return open_engine(engine.url.render_as_string(hide_password=False), pre_ping=False)


def open_engine(url: str, *, pre_ping: bool = True) -> AsyncEngine:
    """An engine for a checked store URL, tuned for its backend. Connects lazily."""
    parsed = parse_store_url(url)
    if parsed.get_backend_name() == "sqlite":
        engine = create_async_engine(parsed, pool_size=5, max_overflow=5)
        event.listen(engine.sync_engine, "connect", _sqlite_on_connect)
        event.listen(engine.sync_engine, "begin", _sqlite_on_begin)
        return engine
    return create_async_engine(
        parsed,
        pool_pre_ping=pre_ping,
        pool_size=5,
        max_overflow=5,
        pool_timeout=30,
        pool_recycle=1800,
        connect_args={
            "timeout": PG_CONNECT_TIMEOUT_S,
            "command_timeout": PG_COMMAND_TIMEOUT_S,
            "server_settings": {"application_name": "shardwise"},
        },
    )


def writer(engine: AsyncEngine) -> AsyncEngine:
    """The same engine (and pool) with transactions that take SQLite's write lock up front."""
    return engine.execution_options(**{_SQLITE_BEGIN: "IMMEDIATE"})


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    # Let SQLAlchemy emit BEGIN (see _sqlite_on_begin) instead of the sqlite3 module.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        # The busy timeout first: switching a new file to WAL takes a lock that another
        # process (worker.processes) opening the same file at the same moment may hold.
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS:d}")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
    finally:
        cursor.close()


def _sqlite_on_begin(connection: Connection) -> None:
    mode = connection.get_execution_options().get(_SQLITE_BEGIN, "DEFERRED")
    connection.exec_driver_sql(f"BEGIN {mode}")


# What the drivers raise when used directly (store/fenced_writes.py), beside OSError.
# InternalClientError: a statement sent on a connection the server has just ended.
_DRIVER_ERRORS: Final = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.InternalClientError,
)


@contextlib.contextmanager
def map_store_errors(
    operation: str,
    url: str | URL,
    *,
    processor: str | None = None,
    shard_id: str | None = None,
) -> Iterator[None]:
    """Re-raise SQLAlchemy and driver errors as ``StoreError`` that say what failed and where."""
    try:
        yield
    except (SQLAlchemyError, OSError, sqlite3.Error, *_DRIVER_ERRORS) as exc:
        message = f"{failure(operation, processor, shard_id)} on {redact_url(url)}: {_reason(exc)}"
        raise StoreError(_scrub(message, url)) from exc


def failure(operation: str, processor: str | None = None, shard_id: str | None = None) -> str:
    """The start of every store error message: ``save failed (processor 'p', shard 's')``."""
    where = ", ".join(
        f"{name} {value!r}"
        for name, value in (("processor", processor), ("shard", shard_id))
        if value is not None
    )
    return f"{operation} failed ({where})" if where else f"{operation} failed"


def _reason(exc: BaseException) -> str:
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        exc = exc.orig
    if isinstance(exc, ConnectionRefusedError):
        return f"connection refused ({exc}); is the database server running and reachable?"
    if isinstance(exc, TimeoutError):
        return "timed out; is the database server reachable?"
    text = str(exc).strip() or type(exc).__name__
    if isinstance(exc, SQLAlchemyError):
        # Our own message only: SQLAlchemy appends the statement and a documentation link.
        text = text.split("\n", 1)[0]
    return text


def _scrub(message: str, url: str | URL) -> str:
    """Belt and braces: no driver message may leak the password, even if it quotes it.

    Passwords under four characters are left alone: replacing every "a" in a message would
    hide more than it protects.
    """
    try:
        parsed = url if isinstance(url, URL) else make_url(url)
    except (ArgumentError, ValueError):
        return message
    for password in (parsed.password, parsed.query.get("password")):
        if isinstance(password, str) and len(password) >= 4:
            message = message.replace(password, "***")
    return message


def insert_unless_present(dialect: str, table: Table, key: Iterable[Column[Any]]) -> Insert:
    """INSERT ... ON CONFLICT (key) DO NOTHING, in ``dialect``'s words (PostgreSQL or SQLite):
    a row whose key is already there is left as it is and no error is raised. Only that
    key's conflict is ignored (unlike SQLite's INSERT OR IGNORE, which would also drop a row
    breaking a NOT NULL)."""
    insert = postgresql.insert(table) if dialect == "postgresql" else sqlite.insert(table)
    return insert.on_conflict_do_nothing(index_elements=list(key))
