"""Running shardwise's Alembic migrations from code (``shardwise db upgrade``, ``connect()``).

There is no ``alembic.ini``: ``alembic_config()`` builds the configuration, pointing at the
``migrations`` directory shipped inside the package. Alembic's bookkeeping lives in
``shardwise_alembic_version`` so shardwise can share a database with an application that
runs Alembic for its own tables.

An upgrade runs in one transaction. On PostgreSQL it first takes a transaction-scoped
advisory lock, and on SQLite it begins with ``BEGIN IMMEDIATE``, so workers that start
together upgrade one after the other instead of racing to create the same tables. Within
one process, upgrades also take turns, because Alembic keeps the running migration in
module globals.

To write the next migration (say, lease columns), from a source checkout::

    from alembic import command
    from shardwise.store.migrate import alembic_config

    config = alembic_config()
    config.set_main_option("sqlalchemy.url", "sqlite+aiosqlite:///scratch.db")
    command.upgrade(config, "head")
    command.revision(config, "leases", rev_id="0002", autogenerate=True)
"""

from __future__ import annotations

import asyncio
import functools
import weakref
from pathlib import Path
from typing import Final

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import func, select
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from shardwise.errors import StoreSchemaError
from shardwise.store.engine import map_store_errors, open_engine, redact_url, writer

__all__ = [
    "MIGRATIONS_DIR",
    "VERSION_TABLE",
    "alembic_config",
    "current_revision",
    "head_revision",
    "read_revision",
    "require_head",
    "upgrade",
    "upgrade_engine",
]

MIGRATIONS_DIR: Final = Path(__file__).resolve().parent / "migrations"
VERSION_TABLE: Final = "shardwise_alembic_version"

# pg_advisory_xact_lock key for upgrades: the bytes "shardwis" as a positive bigint.
_PG_UPGRADE_LOCK: Final = int.from_bytes(b"shardwis", "big") >> 1

_ALEMBIC_LOCKS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
    weakref.WeakKeyDictionary()
)


def alembic_config(connection: Connection | None = None) -> Config:
    """Alembic's configuration for shardwise's migrations; ``env.py`` uses ``connection``."""
    config = Config()
    # set_main_option interpolates "%": escape it in the path, double it in the template.
    config.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    config.set_main_option("path_separator", "os")
    config.set_main_option("file_template", "%%(rev)s_%%(slug)s")
    if connection is not None:
        config.attributes["connection"] = connection
    return config


@functools.cache
def _scripts() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config())


def head_revision() -> str:
    """The newest migration this release ships."""
    head = _scripts().get_current_head()
    if head is None:  # pragma: no cover - the package always ships 0001
        raise StoreSchemaError(f"no migrations found in {MIGRATIONS_DIR}")
    return head


def _is_known(revision: str) -> bool:
    try:
        _scripts().get_revision(revision)
    except CommandError:
        return False
    return True


def _newer_than_release(where: str, revision: str) -> StoreSchemaError:
    return StoreSchemaError(
        f"{where} has shardwise schema revision {revision!r}, which this release does not "
        f"know (its newest is {head_revision()!r}): the database was upgraded by a newer "
        "shardwise; upgrade shardwise"
    )


def read_revision(connection: Connection) -> str | None:
    """The revision recorded in the database, or None when it has no shardwise schema."""
    context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
    return context.get_current_revision()


def _upgrade_on(connection: Connection, revision: str, where: str) -> None:
    current = read_revision(connection)
    if current is not None and not _is_known(current):
        raise _newer_than_release(where, current)
    try:
        command.upgrade(alembic_config(connection), revision)
    except CommandError as exc:
        raise StoreSchemaError(f"cannot upgrade {where} to {revision!r}: {exc}") from exc


def _alembic_lock() -> asyncio.Lock:
    """One Alembic run at a time per event loop.

    Alembic keeps the running migration in module globals (``alembic.context``,
    ``alembic.op``), so two upgrades interleaving on one loop, even of different databases,
    would overwrite each other's.
    """
    loop = asyncio.get_running_loop()
    lock = _ALEMBIC_LOCKS.get(loop)
    if lock is None:
        lock = _ALEMBIC_LOCKS[loop] = asyncio.Lock()
    return lock


async def upgrade_engine(engine: AsyncEngine, revision: str = "head") -> None:
    """Upgrade the schema behind ``engine`` to ``revision`` in one transaction."""
    where = redact_url(engine.url)
    async with _alembic_lock():
        with map_store_errors(f"schema upgrade to {revision!r}", engine.url):
            async with writer(engine).begin() as connection:
                if connection.dialect.name == "postgresql":
                    lock = func.pg_advisory_xact_lock(_PG_UPGRADE_LOCK)
                    await connection.execute(select(lock))
                await connection.run_sync(_upgrade_on, revision, where)


async def require_head(engine: AsyncEngine) -> None:
    """Raise ``StoreSchemaError`` unless the schema behind ``engine`` is exactly at head."""
    with map_store_errors("schema check", engine.url):
        async with engine.connect() as connection:
            current = await connection.run_sync(read_revision)
    head = head_revision()
    if current == head:
        return
    where = redact_url(engine.url)
    if current is None:
        raise StoreSchemaError(
            f"{where} has no shardwise tables: run `shardwise db upgrade` to create them"
        )
    if _is_known(current):
        raise StoreSchemaError(
            f"{where} has shardwise schema revision {current!r} but this release needs "
            f"{head!r}: run `shardwise db upgrade`"
        )
    raise _newer_than_release(where, current)


async def upgrade(url: str, revision: str = "head") -> None:
    """Create or upgrade shardwise's tables at ``url`` (what ``shardwise db upgrade`` runs)."""
    engine = open_engine(url)
    try:
        await upgrade_engine(engine, revision)
    finally:
        await engine.dispose()


async def current_revision(url: str) -> str | None:
    """The schema revision at ``url``, or None when shardwise's tables are not there yet."""
    engine = open_engine(url)
    try:
        with map_store_errors("reading the schema revision", url):
            async with engine.connect() as connection:
                return await connection.run_sync(read_revision)
    finally:
        await engine.dispose()
