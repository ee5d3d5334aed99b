"""Alembic's entry point for shardwise's migrations; see ``shardwise.store.migrate``.

``migrate.upgrade_engine`` hands over an open connection already inside a transaction (in
``config.attributes["connection"]``); the migrations run on it and commit with it. Without
one (a developer autogenerating a revision), a connection is opened from ``sqlalchemy.url``.
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.engine import Connection

from shardwise.store.engine import open_engine
from shardwise.store.migrate import VERSION_TABLE
from shardwise.store.models import metadata


def run_on(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        version_table=VERSION_TABLE,
        # SQLite cannot ALTER most things; batch mode recreates the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def run_on_url(url: str) -> None:
    engine = open_engine(url)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(run_on)
    finally:
        await engine.dispose()


def run_offline(url: str) -> None:
    context.configure(
        url=url,
        target_metadata=metadata,
        version_table=VERSION_TABLE,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def main() -> None:
    connection = context.config.attributes.get("connection")
    url = context.config.get_main_option("sqlalchemy.url")
    if isinstance(connection, Connection):
        run_on(connection)
    elif url is None:
        raise RuntimeError(
            "no connection or sqlalchemy.url: run migrations with shardwise.store.migrate"
        )
    elif context.is_offline_mode():
        run_offline(url)
    else:
        asyncio.run(run_on_url(url))


main()
