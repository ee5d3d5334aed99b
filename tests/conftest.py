"""Shared fixtures: real services only (moto server over HTTP, PostgreSQL, SQLite files).

PostgreSQL tests skip when no server answers at 127.0.0.1:5432 on a developer machine, but
fail under ``CI=true``: a skipped PostgreSQL suite is not a green build.
"""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from shardwise.store import CheckpointStore

# botocore must never look for real credentials or a real region in tests.
os.environ["AWS_ACCESS_KEY_ID"] = "testing"
os.environ["AWS_SECRET_ACCESS_KEY"] = "testing"
os.environ["AWS_SESSION_TOKEN"] = "testing"
os.environ["AWS_DEFAULT_REGION"] = "us-east-1"
os.environ.pop("AWS_PROFILE", None)

PG_ADMIN_DSN = os.environ.get("SHARDWISE_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def _pg_execute(statement: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(PG_ADMIN_DSN, timeout=5)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


def _pg_admin(statement: str) -> None:
    """Run one admin statement on a loop of its own (callers may be inside a running loop)."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(asyncio.run, _pg_execute(statement)).result()


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """A database of its own for this test session; dropped at the end."""
    name = f"shardwise_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    try:
        _pg_admin(f'CREATE DATABASE "{name}"')
    except (TimeoutError, OSError) as exc:
        message = f"PostgreSQL is not reachable at {PG_ADMIN_DSN}: {exc}"
        if in_ci():
            pytest.fail(message + " (CI=true: PostgreSQL tests must run)")
        pytest.skip(message)
    base = PG_ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
    yield f"{base}/{name}"
    _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def _reset_schema(url: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"), timeout=5)
    try:
        await conn.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
    finally:
        await conn.close()


@pytest.fixture
async def postgres_url(postgres_database: str) -> str:
    """An empty PostgreSQL database (the public schema is recreated for every test)."""
    await _reset_schema(postgres_database)
    return postgres_database


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'shardwise.db'}"


@pytest.fixture(params=["sqlite", "postgres"])
async def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Both supported stores: every store test runs on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'shardwise.db'}"
    database: str = request.getfixturevalue("postgres_database")
    await _reset_schema(database)
    return database


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[CheckpointStore]:
    """A migrated store, on SQLite and on PostgreSQL; closed after the test."""
    async with await CheckpointStore.connect(store_url) as opened:
        yield opened


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """moto's server over real HTTP on a free port (DynamoDB + DynamoDB Streams)."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()
