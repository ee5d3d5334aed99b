"""Schema migrations on SQLite and PostgreSQL: upgrade, revision checks, the migration chain."""

from __future__ import annotations

import asyncio
import io
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from shardwise.errors import StoreError, StoreSchemaError
from shardwise.store import CheckpointStore, current_revision, head_revision, upgrade
from shardwise.store.engine import open_engine
from shardwise.store.migrate import MIGRATIONS_DIR, VERSION_TABLE, alembic_config
from shardwise.store.models import metadata

T = TypeVar("T")


@pytest.fixture
async def engine(store_url: str) -> AsyncIterator[AsyncEngine]:
    opened = open_engine(store_url)
    yield opened
    await opened.dispose()


async def on(engine: AsyncEngine, work: Callable[[Connection], T]) -> T:
    """Run synchronous ``work`` on a connection in its own committed transaction."""
    async with engine.begin() as connection:
        return await connection.run_sync(work)


def table_names(connection: Connection) -> set[str]:
    return set(sa.inspect(connection).get_table_names())


class TestUpgrade:
    """upgrade creates shardwise's tables and records the revision in its own table."""

    async def test_upgrade_creates_schema_at_head(
        self, store_url: str, engine: AsyncEngine
    ) -> None:
        assert await current_revision(store_url) is None
        await upgrade(store_url)
        assert await current_revision(store_url) == head_revision()
        tables = await on(engine, table_names)
        assert {"shardwise_checkpoints", VERSION_TABLE} <= tables
        assert "alembic_version" not in tables

    async def test_upgrade_twice_changes_nothing(self, store_url: str) -> None:
        await upgrade(store_url)
        await upgrade(store_url)
        assert await current_revision(store_url) == head_revision()

    async def test_models_match_migrations(self, store_url: str, engine: AsyncEngine) -> None:
        await upgrade(store_url)

        def differences(connection: Connection) -> list[Any]:
            context = MigrationContext.configure(
                connection, opts={"version_table": VERSION_TABLE, "compare_type": True}
            )
            return list(compare_metadata(context, metadata))

        assert await on(engine, differences) == []

    async def test_app_alembic_version_table_is_left_alone(
        self, store_url: str, engine: AsyncEngine
    ) -> None:
        def create_app_table(connection: Connection) -> None:
            connection.exec_driver_sql("CREATE TABLE alembic_version (version_num VARCHAR(32))")
            connection.exec_driver_sql("INSERT INTO alembic_version VALUES ('app_rev_42')")

        await on(engine, create_app_table)
        await upgrade(store_url)
        assert await current_revision(store_url) == head_revision()

        def app_revision(connection: Connection) -> Any:
            return connection.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()

        assert await on(engine, app_revision) == "app_rev_42"

    async def test_concurrent_upgrades_do_not_race(self, store_url: str) -> None:
        async def connect_and_close() -> None:
            await (await CheckpointStore.connect(store_url)).close()

        await asyncio.gather(upgrade(store_url), upgrade(store_url), connect_and_close())
        assert await current_revision(store_url) == head_revision()

    async def test_upgrades_of_two_databases_at_once(self, store_url: str, tmp_path: Path) -> None:
        other = f"sqlite+aiosqlite:///{tmp_path / 'other.db'}"
        await asyncio.gather(upgrade(store_url), upgrade(other), upgrade(store_url))
        assert await current_revision(store_url) == await current_revision(other) == head_revision()

    async def test_processes_starting_together_upgrade_once(self, store_url: str) -> None:
        script = "import asyncio, sys; from shardwise.store import upgrade; "
        script += "asyncio.run(upgrade(sys.argv[1]))"
        processes = [
            await asyncio.create_subprocess_exec(
                sys.executable, "-c", script, store_url, stderr=asyncio.subprocess.PIPE
            )
            for _ in range(3)
        ]
        for process in processes:
            _, stderr = await process.communicate()
            assert process.returncode == 0, stderr.decode()
        assert await current_revision(store_url) == head_revision()

    async def test_unknown_target_revision(self, store_url: str) -> None:
        with pytest.raises(StoreSchemaError, match=r"cannot upgrade .* to 'nonsense'"):
            await upgrade(store_url, "nonsense")

    async def test_downgrade_to_base_and_up_again(
        self, store_url: str, engine: AsyncEngine
    ) -> None:
        await upgrade(store_url)
        await on(engine, lambda c: command.downgrade(alembic_config(c), "base"))
        assert "shardwise_checkpoints" not in await on(engine, table_names)
        await upgrade(store_url)
        assert await current_revision(store_url) == head_revision()

    async def test_unreachable_database_is_a_store_error(self) -> None:
        url = "postgresql+asyncpg://shardwise:s3cret-pw@127.0.0.1:1/shardwise"
        with pytest.raises(StoreError, match=r"schema upgrade to 'head' failed on .*:\*\*\*@"):
            await upgrade(url)
        with pytest.raises(StoreError) as caught:
            await current_revision(url)
        assert "s3cret-pw" not in str(caught.value)


class TestSchemaCheck:
    """A schema that is missing or newer than this release is refused with advice."""

    async def test_newer_schema_is_refused(self, store_url: str, engine: AsyncEngine) -> None:
        await upgrade(store_url)
        await on(
            engine,
            lambda c: c.exec_driver_sql(f"UPDATE {VERSION_TABLE} SET version_num = '9999'"),
        )
        assert await current_revision(store_url) == "9999"
        for migrate in (False, True):
            with pytest.raises(StoreSchemaError, match=r"'9999'.*upgrade shardwise") as caught:
                await CheckpointStore.connect(store_url, migrate=migrate)
            assert not caught.value.retriable

    async def test_missing_schema_names_the_command(self, store_url: str) -> None:
        with pytest.raises(StoreSchemaError, match=r"no shardwise tables.*shardwise db upgrade"):
            await CheckpointStore.connect(store_url, migrate=False)


class TestMigrationScripts:
    """The migration chain ships with the package and stays linear."""

    def test_chain_is_linear_from_0001(self) -> None:
        scripts = ScriptDirectory.from_config(alembic_config())
        assert scripts.get_heads() == [head_revision()]
        chain = list(scripts.walk_revisions("base", "heads"))
        assert chain[-1].revision == "0001"
        assert chain[-1].down_revision is None
        for script in chain:
            assert Path(script.path).name.startswith(f"{script.revision}_")
            assert script.module.__doc__

    def test_package_ships_alembic_files(self) -> None:
        assert (MIGRATIONS_DIR / "env.py").is_file()
        assert (MIGRATIONS_DIR / "script.py.mako").is_file()
        assert (MIGRATIONS_DIR / "versions" / "0001_checkpoints.py").is_file()

    def test_alembic_commands_without_a_connection(self, store_url: str) -> None:
        config = alembic_config()
        config.set_main_option("sqlalchemy.url", store_url)
        command.upgrade(config, "head")
        command.check(config)  # autogenerate finds nothing to add: models match 0001

    @pytest.mark.parametrize("url", ["sqlite+aiosqlite:///x.db", "postgresql+asyncpg://h/db"])
    def test_offline_sql(self, url: str) -> None:
        config = alembic_config()
        config.set_main_option("sqlalchemy.url", url)
        config.output_buffer = io.StringIO()
        command.upgrade(config, "head", sql=True)
        sql = config.output_buffer.getvalue()
        assert "CREATE TABLE shardwise_checkpoints" in sql
        assert f"CREATE TABLE {VERSION_TABLE}" in sql
