"""Effectively once into SQL: a transactional handler's writes commit with the checkpoint.

End to end on moto's DynamoDB stream, on SQLite and PostgreSQL: increments (which an upsert
alone cannot make idempotent) are applied exactly once per record through handler errors,
retries, a partial failure and a restart.
"""

from __future__ import annotations

import asyncio
import decimal
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from shardwise.errors import ConfigError, HandlerImportError
from shardwise.functions import prepare
from tests.e2e import create_table, read_jsonl, running, settings_for, wait_until, write_module

HANDLER = """
import os
from sqlalchemy import text

HERE = os.path.dirname(__file__)
UPSERT = text(
    "INSERT INTO tx_totals (customer, total) VALUES (:customer, :amount) "
    "ON CONFLICT (customer) DO UPDATE SET total = tx_totals.total + excluded.total"
)

async def handler(event, context):
    connection = context.transaction
    for record in event["Records"]:
        image = record["dynamodb"].get("NewImage")
        if image is None:
            continue
        if "poison" in image:
            return {"batchItemFailures": [{"itemIdentifier": record["dynamodb"]["SequenceNumber"]}]}
        await connection.execute(
            UPSERT, {"customer": image["customer"]["S"], "amount": int(image["amount"]["N"])}
        )
        # Fail once after writing, as a crash or a timeout would: nothing may be kept.
        flag = os.path.join(HERE, "fail-once")
        if os.path.exists(flag) and image["id"]["S"] == "o7":
            os.remove(flag)
            raise RuntimeError("failed after writing")
    return {"batchItemFailures": []}
"""


async def totals(store_url: str) -> dict[str, int]:
    engine = create_async_engine(store_url)
    try:
        async with engine.connect() as connection:
            rows = (await connection.execute(text("SELECT customer, total FROM tx_totals"))).all()
    finally:
        await engine.dispose()
    return {row.customer: row.total for row in rows}


async def create_sink(store_url: str) -> None:
    engine = create_async_engine(store_url)
    try:
        async with engine.begin() as connection:
            await connection.execute(text("DROP TABLE IF EXISTS tx_totals"))
            await connection.execute(
                text("CREATE TABLE tx_totals (customer VARCHAR(50) PRIMARY KEY, total INTEGER)")
            )
    finally:
        await engine.dispose()


def _settings(tmp_path: Path, moto: str, store_url: str, table: str, extra: str = "") -> object:
    write_module(tmp_path, "tx_handler", HANDLER)
    return settings_for(
        tmp_path,
        endpoint_url=moto,
        store_url=store_url,
        processors=f"""
        - name: totals
          source: {{dynamodb: {{table: {table}}}}}
          handler: tx_handler.handler
          starting_position: TRIM_HORIZON
          transactional: true
          batch_size: 4
          function_response_types: [ReportBatchItemFailures]
          {extra}
        """,
    )


class TestEffectivelyOnce:
    async def test_increments_survive_a_failure_after_writing(
        self, tmp_path: Path, moto_endpoint: str, store_url: str
    ) -> None:
        await create_sink(store_url)
        table, name = create_table(moto_endpoint)
        (tmp_path / "fail-once").touch()
        amounts = {f"o{n}": (f"c{n % 3}", n + 1) for n in range(12)}
        for order, (customer, amount) in amounts.items():
            table.put_item(
                Item={"id": order, "customer": customer, "amount": decimal.Decimal(amount)}
            )
        expected: dict[str, int] = {}
        for customer, amount in amounts.values():
            expected[customer] = expected.get(customer, 0) + amount
        settings = _settings(tmp_path, moto_endpoint, store_url, name)
        async with running(settings) as supervisor:  # type: ignore[arg-type]
            await wait_until(
                lambda: supervisor.progress["totals"].records_processed >= 12, what="12 records"
            )
        assert not (tmp_path / "fail-once").exists()  # the failure happened
        assert await totals(store_url) == expected
        # Restarted from its checkpoint: nothing applied twice.
        table.put_item(Item={"id": "o99", "customer": "c0", "amount": decimal.Decimal(100)})
        expected["c0"] += 100
        async with running(settings) as supervisor:  # type: ignore[arg-type]
            await wait_until(
                lambda: supervisor.progress["totals"].records_processed >= 1, what="1 record"
            )
        assert await totals(store_url) == expected

    async def test_a_reported_failure_commits_the_prefix_only(
        self, tmp_path: Path, moto_endpoint: str, store_url: str
    ) -> None:
        await create_sink(store_url)
        table, name = create_table(moto_endpoint)
        items = [("o1", 1), ("o2", 2), ("o3", 0), ("o4", 4)]
        for order, amount in items:
            item: dict[str, object] = {
                "id": order,
                "customer": "c",
                "amount": decimal.Decimal(amount),
            }
            if order == "o3":
                item["poison"] = True
            table.put_item(Item=item)
        failures = tmp_path / "failures.jsonl"
        extra = (
            "maximum_retry_attempts: 1\n"
            f'          destination_config: {{on_failure: {{destination: "file://{failures}"}}}}'
        )
        settings = _settings(tmp_path, moto_endpoint, store_url, name, extra)
        async with running(settings):  # type: ignore[arg-type]
            await wait_until(lambda: len(read_jsonl(failures)) >= 1, what="the failure record")
        # o1 and o2 resolved by the first invocation; o3 and o4 (the batch retried from o3)
        # were given up: their writes were rolled back with each failed invocation.
        assert await totals(store_url) == {"c": 3}
        [failure] = read_jsonl(failures)
        assert failure["DDBStreamBatchInfo"]["batchSize"] == 2


class TestStoreTrouble:
    async def test_connections_killed_between_batches_cost_no_retry_attempt(
        self, tmp_path: Path, moto_endpoint: str, store_url: str
    ) -> None:
        """PostgreSQL ends every connection of the store (a failover, an idle timeout): the
        next transactions fail at BEGIN on dead pooled connections. That is the store's
        failure, not the handler's: with maximum_retry_attempts 0 nothing goes to the
        destination, and every order is counted once."""
        if store_url.startswith("sqlite"):
            pytest.skip("a server ending connections is a PostgreSQL matter")
        await create_sink(store_url)
        table, name = create_table(moto_endpoint)
        failures = tmp_path / "failures.jsonl"
        extra = (
            "maximum_retry_attempts: 0\n"
            f'          destination_config: {{on_failure: {{destination: "file://{failures}"}}}}'
        )
        settings = _settings(tmp_path, moto_endpoint, store_url, name, extra)
        expected: dict[str, int] = {}

        def put(first: int, count: int) -> None:
            for n in range(first, first + count):
                customer = f"c{n % 3}"
                table.put_item(Item={"id": f"k{n}", "customer": customer, "amount": n})
                expected[customer] = expected.get(customer, 0) + n

        engine = create_async_engine(store_url)
        try:
            async with running(settings) as supervisor:  # type: ignore[arg-type]
                stats = supervisor.progress["totals"]
                put(1, 8)
                await wait_until(lambda: stats.records_processed >= 8, what="8 records")
                async with engine.connect() as connection:
                    ended = await connection.execute(
                        text(
                            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                        )
                    )
                    assert len(ended.all()) > 0
                put(9, 8)
                await wait_until(lambda: stats.records_processed >= 16, what="16 records")
        finally:
            await engine.dispose()
        assert await totals(store_url) == expected
        assert read_jsonl(failures) == []


LANES_HANDLER = """
import os
from sqlalchemy import text

HERE = os.path.dirname(__file__)
UPSERT = text(
    "INSERT INTO tx_totals (customer, total) VALUES (:customer, :amount) "
    "ON CONFLICT (customer) DO UPDATE SET total = tx_totals.total + excluded.total"
)

async def handler(event, context):
    for record in event["Records"]:
        image = record["dynamodb"]["NewImage"]
        await context.transaction.execute(
            UPSERT, {"customer": image["customer"]["S"], "amount": int(image["amount"]["N"])}
        )
        if image["id"]["S"] == "o3" and os.path.exists(os.path.join(HERE, "hold-o3")):
            raise RuntimeError("o3 fails after writing while hold-o3 exists")
"""


class TestLanes:
    async def test_records_applied_past_the_checkpoint_are_not_applied_again(
        self, tmp_path: Path, moto_endpoint: str, store_url: str
    ) -> None:
        """o3 fails in its lane and holds the shard's checkpoint before it, while the other
        lanes apply the records after it. Stopped there and restarted, those records are
        not applied again: their transactions recorded them with their writes."""
        await create_sink(store_url)
        table, name = create_table(moto_endpoint)
        (tmp_path / "hold-o3").touch()
        write_module(tmp_path, "tx_lanes", LANES_HANDLER)
        settings = settings_for(
            tmp_path,
            endpoint_url=moto_endpoint,
            store_url=store_url,
            processors=f"""
            - name: lanes
              source: {{dynamodb: {{table: {name}}}}}
              handler: tx_lanes.handler
              starting_position: TRIM_HORIZON
              transactional: true
              parallelization_factor: 4
              batch_size: 1
            """,
        )
        orders = {f"o{n}": n for n in range(1, 21)}
        for order, amount in orders.items():
            # Each order its own customer: one lane per key hash, so most go to other lanes.
            table.put_item(Item={"id": order, "customer": order, "amount": decimal.Decimal(amount)})

        async def applied() -> dict[str, int]:
            return await totals(store_url)

        async with running(settings) as supervisor:
            deadline = asyncio.get_running_loop().time() + 20
            while len(await applied()) < 10:
                assert asyncio.get_running_loop().time() < deadline, await applied()
                await asyncio.sleep(0.1)
            await asyncio.sleep(0.5)
            stats = supervisor.progress["lanes"]
            assert stats.records_processed < 20  # o3's lane is stuck, the checkpoint too
        before = await applied()
        assert "o3" not in before and len(before) >= 10
        (tmp_path / "hold-o3").unlink()
        async with running(settings) as supervisor:
            deadline = asyncio.get_running_loop().time() + 20
            while len(await applied()) < 20:
                assert asyncio.get_running_loop().time() < deadline, await applied()
                await asyncio.sleep(0.1)
            await asyncio.sleep(1)
        # Every order applied exactly once: no total is doubled.
        assert await applied() == orders


WINDOWED_HANDLER = """
import os
from sqlalchemy import text

HERE = os.path.dirname(__file__)
ROW = text("INSERT INTO tx_windows (start, orders, amount) VALUES (:start, :orders, :amount)")

async def handler(event, context):
    state = dict(event["state"]) or {"orders": 0, "amount": 0}
    if event["isFinalInvokeForWindow"]:
        await context.transaction.execute(ROW, {"start": event["window"]["start"], **state})
        flag = os.path.join(HERE, "fail-final-once")
        if os.path.exists(flag):  # fails after writing the window's row: rolled back
            os.remove(flag)
            raise RuntimeError("final invocation failed after writing")
        return {}
    for record in event["Records"]:
        state["orders"] += 1
        state["amount"] += int(record["dynamodb"]["NewImage"]["amount"]["N"])
    return {"state": state}
"""


async def window_rows(store_url: str) -> list[tuple[str, int, int]]:
    engine = create_async_engine(store_url)
    try:
        async with engine.connect() as connection:
            rows = (await connection.execute(text("SELECT * FROM tx_windows"))).all()
    finally:
        await engine.dispose()
    return [(row.start, row.orders, row.amount) for row in rows]


class TestTumblingWindows:
    async def test_the_final_invocation_commits_with_the_window_closing(
        self, tmp_path: Path, moto_endpoint: str, store_url: str
    ) -> None:
        engine = create_async_engine(store_url)
        async with engine.begin() as connection:
            await connection.execute(text("DROP TABLE IF EXISTS tx_windows"))
            await connection.execute(
                text(
                    "CREATE TABLE tx_windows "
                    "(start VARCHAR(30) PRIMARY KEY, orders INT, amount INT)"
                )
            )
        await engine.dispose()
        table, name = create_table(moto_endpoint)
        (tmp_path / "fail-final-once").touch()
        write_module(tmp_path, "tx_windows", WINDOWED_HANDLER)
        settings = settings_for(
            tmp_path,
            endpoint_url=moto_endpoint,
            store_url=store_url,
            processors=f"""
            - name: windows
              source: {{dynamodb: {{table: {name}}}}}
              handler: tx_windows.handler
              starting_position: TRIM_HORIZON
              transactional: true
              tumbling_window_in_seconds: 2
            """,
        )
        for n in range(1, 4):
            table.put_item(Item={"id": f"o{n}", "amount": decimal.Decimal(n)})
        async with running(settings) as supervisor:
            await wait_until(
                lambda: supervisor.progress["windows"].records_processed >= 3, what="3 records"
            )
        # Stopped with the window open (or closed): its state is in the store either way.
        async with running(settings):
            await wait_until(
                lambda: not (tmp_path / "fail-final-once").exists(), what="the final failure"
            )
            rows: list[tuple[str, int, int]] = []
            deadline = asyncio.get_running_loop().time() + 20
            while sum(orders for _, orders, _ in rows) < 3:
                assert asyncio.get_running_loop().time() < deadline, rows
                await asyncio.sleep(0.1)
                rows = await window_rows(store_url)
        # The window closed once: its row written once, with every order in it.
        await asyncio.sleep(0.5)
        rows = await window_rows(store_url)
        assert sum(orders for _, orders, _ in rows) == 3
        assert sum(amount for _, _, amount in rows) == 1 + 2 + 3
        assert len({start for start, _, _ in rows}) == len(rows)


class TestConfiguration:
    def test_a_sync_handler_is_refused(self, tmp_path: Path) -> None:
        write_module(tmp_path, "sync_tx", "def handler(event, context):\n    return None\n")
        settings = settings_for(
            tmp_path,
            endpoint_url="http://127.0.0.1:1",
            store_url="sqlite+aiosqlite:///x.db",
            processors="""
            - name: p
              source: {dynamodb: {table: Orders}}
              handler: sync_tx.handler
              starting_position: TRIM_HORIZON
              transactional: true
            """,
        )
        with pytest.raises(HandlerImportError, match="needs an async handler"):
            prepare(settings.processors[0], tmp_path)

    def test_a_function_outside_the_process_is_refused(self, tmp_path: Path) -> None:
        with pytest.raises(ConfigError, match="needs a Python handler run in process"):
            settings_for(
                tmp_path,
                endpoint_url="http://127.0.0.1:1",
                store_url="sqlite+aiosqlite:///x.db",
                processors="""
                - name: p
                  source: {dynamodb: {table: Orders}}
                  starting_position: TRIM_HORIZON
                  transactional: true
                  runtime: {command: [node, index.mjs]}
                """,
            )
