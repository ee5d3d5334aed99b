"""run_handler(database_url=...): a transactional handler through the kit, on a real SQLite
database - each invocation's writes kept with its checkpoint, or not at all."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from shardwise.testing import insert, run_handler

ADD = text(
    "INSERT INTO totals (customer, total) VALUES (:customer, :amount) "
    "ON CONFLICT (customer) DO UPDATE SET total = totals.total + excluded.total"
)


async def database(tmp_path: Path) -> str:
    url = f"sqlite+aiosqlite:///{tmp_path / 'sink.db'}"
    engine = create_async_engine(url)
    async with engine.begin() as connection:
        await connection.execute(text("CREATE TABLE totals (customer TEXT PRIMARY KEY, total INT)"))
    await engine.dispose()
    return url


async def totals(url: str) -> dict[str, int]:
    engine = create_async_engine(url)
    async with engine.connect() as connection:
        rows = (await connection.execute(text("SELECT customer, total FROM totals"))).all()
    await engine.dispose()
    return {row.customer: row.total for row in rows}


class FailsOnceAfterWriting:
    """Adds each order to its customer's total; the first time it sees order o3 it fails
    after having written, as a crash or a timeout would."""

    def __init__(self) -> None:
        self.failed = False

    async def __call__(self, event: dict[str, Any], context: Any) -> None:
        for record in event["Records"]:
            image = record["dynamodb"]["NewImage"]
            await context.transaction.execute(
                ADD, {"customer": image["customer"]["S"], "amount": int(image["amount"]["N"])}
            )
            if image["id"]["S"] == "o3" and not self.failed:
                self.failed = True
                raise RuntimeError("failed after writing")


async def test_a_retried_batch_applies_once(tmp_path: Path) -> None:
    url = await database(tmp_path)
    records = [
        insert({"id": f"o{n}", "customer": f"c{n % 2}", "amount": n}, keys="id")
        for n in range(1, 7)
    ]
    handler = FailsOnceAfterWriting()
    result = await run_handler(handler.__call__, records, batch_size=3, database_url=url)
    assert handler.failed
    assert result.checkpoint == records[-1]["dynamodb"]["SequenceNumber"]
    assert await totals(url) == {"c1": 1 + 3 + 5, "c0": 2 + 4 + 6}
    assert [i.outcome for i in result.invocations] == ["failed", "succeeded", "succeeded"]


async def test_a_sync_handler_is_refused(tmp_path: Path) -> None:
    def handler(event: dict[str, Any], context: Any) -> None:
        return None

    with pytest.raises(ValueError, match="async def"):
        await run_handler(handler, [insert({"id": "a"})], database_url=await database(tmp_path))


WINDOW_ROW = text("INSERT INTO windows (start, orders, amount) VALUES (:start, :orders, :amount)")
LONG_AGO = 1_700_000_000  # windows that ended long ago close as soon as a later one starts


class WindowedTotals:
    """A tumbling-window handler that writes each order's row as it sees it and the
    window's totals on its final invocation, failing once after writing in both kinds of
    invocation (the crash that would, without the transaction, duplicate rows or lose state)."""

    def __init__(self) -> None:
        self.failed: set[str] = set()

    async def __call__(self, event: dict[str, Any], context: Any) -> dict[str, Any]:
        state = dict(event["state"]) or {"orders": 0, "amount": 0}
        if event["isFinalInvokeForWindow"]:
            await context.transaction.execute(
                WINDOW_ROW, {"start": event["window"]["start"], **state}
            )
            self._fail_once(f"final {event['window']['start']}")
            return {}
        for record in event["Records"]:
            image = record["dynamodb"]["NewImage"]
            await context.transaction.execute(
                ADD, {"customer": image["id"]["S"], "amount": int(image["amount"]["N"])}
            )
            state["orders"] += 1
            state["amount"] += int(image["amount"]["N"])
        self._fail_once(f"run {event['Records'][0]['dynamodb']['NewImage']['id']['S']}")
        return {"state": state}

    def _fail_once(self, what: str) -> None:
        if what not in self.failed:
            self.failed.add(what)
            raise RuntimeError(f"{what}: failed after writing")


async def test_window_state_commits_with_the_rows_written_from_it(tmp_path: Path) -> None:
    url = await database(tmp_path)
    engine = create_async_engine(url)
    async with engine.begin() as connection:
        await connection.execute(
            text("CREATE TABLE windows (start TEXT PRIMARY KEY, orders INT, amount INT)")
        )
    await engine.dispose()
    amounts = {f"o{n}": n for n in range(1, 9)}
    records = [
        insert({"id": order, "amount": amount}, created=LONG_AGO + (0 if n < 5 else 30))
        for n, (order, amount) in enumerate(amounts.items(), start=1)
    ]
    handler = WindowedTotals()
    result = await run_handler(
        handler.__call__, records, batch_size=2, tumbling_window_in_seconds=20, database_url=url
    )
    # Every run and both final invocations failed once after writing and were retried.
    assert len(handler.failed) == 4 + 2
    # Each order once, each window's totals once and right: what a failed invocation wrote
    # was rolled back with it, and the state it returned was never stored.
    assert await totals(url) == amounts
    engine = create_async_engine(url)
    async with engine.connect() as connection:
        windows = (await connection.execute(text("SELECT * FROM windows ORDER BY start"))).all()
    await engine.dispose()
    assert [tuple(row) for row in windows] == [
        ("2023-11-14T22:13:20Z", 4, 1 + 2 + 3 + 4),
        ("2023-11-14T22:13:40Z", 4, 5 + 6 + 7 + 8),
    ]
    assert result.open_window is None
    assert result.checkpoint == records[-1]["dynamodb"]["SequenceNumber"]
