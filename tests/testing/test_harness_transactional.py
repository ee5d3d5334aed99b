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
