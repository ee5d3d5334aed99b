"""The orders written to the demo table: what to write next, and the writer that keeps pace."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Literal

from shardwise.clock import sleep_or_stop

if TYPE_CHECKING:
    from mypy_boto3_dynamodb.service_resource import Table

__all__ = ["NEXT_STATUS", "OrderTraffic", "OrderWriter", "Write"]

CUSTOMERS = ("ada", "barbara", "dennis", "edsger", "grace", "ken", "margaret", "radia")
PRODUCTS = {
    "KB-101 keyboard": Decimal("49.00"),
    "MS-220 mouse": Decimal("19.90"),
    "HD-330 headset": Decimal("74.50"),
    "CB-440 usb-c cable": Decimal("9.99"),
    "MN-550 monitor": Decimal("189.00"),
    "DK-660 dock": Decimal("129.95"),
}
NEXT_STATUS = {"PENDING": "PAID", "PAID": "SHIPPED"}


@dataclass(frozen=True, slots=True)
class Write:
    """One item write: a new order, a status change, or a cancellation (a delete)."""

    kind: Literal["insert", "update", "delete"]
    order_id: str
    status: str = "PENDING"
    item: dict[str, Any] = field(default_factory=dict)


class OrderTraffic:
    """What to write next: new orders, PENDING -> PAID -> SHIPPED, some orders cancelled.

    Only orders that exist are updated or deleted, so every write changes an item and puts
    exactly one record on the stream.
    """

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()
        self._open: dict[str, str] = {}  # order_id -> status, for orders not yet shipped
        self._issued = 0

    def next_write(self) -> Write:
        roll = self._rng.random()
        if len(self._open) < 5 or roll < 0.40:
            return self._new_order()
        order_id = self._rng.choice(tuple(self._open))
        if roll < 0.85:
            status = NEXT_STATUS[self._open[order_id]]
            if status in NEXT_STATUS:
                self._open[order_id] = status
            else:
                del self._open[order_id]
            return Write("update", order_id, status)
        del self._open[order_id]
        return Write("delete", order_id)

    def _new_order(self) -> Write:
        self._issued += 1
        order_id = f"ord-{self._issued:06d}"
        skus = self._rng.sample(sorted(PRODUCTS), k=self._rng.randint(1, 3))
        lines = [(sku, self._rng.randint(1, 3)) for sku in skus]
        now = _now()
        item = {
            "order_id": order_id,
            "customer": self._rng.choice(CUSTOMERS),
            "status": "PENDING",
            "amount": sum((qty * PRODUCTS[sku] for sku, qty in lines), Decimal(0)),
            "items": [{"sku": sku, "qty": qty, "price": PRODUCTS[sku]} for sku, qty in lines],
            "created_at": now,
            "updated_at": now,
        }
        self._open[order_id] = "PENDING"
        return Write("insert", order_id, item=item)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class OrderWriter:
    """Applies ``OrderTraffic`` to the table at a steady rate; boto3 runs in a thread."""

    def __init__(self, table: Table, traffic: OrderTraffic, writes_per_second: float) -> None:
        self._table = table
        self._traffic = traffic
        self._interval_s = 1.0 / writes_per_second
        self.written: Counter[str] = Counter()
        self.done = asyncio.Event()  # set once the last write has returned

    @property
    def total(self) -> int:
        return self.written.total()

    async def run(self, stop: asyncio.Event) -> None:
        """Write until ``stop`` is set; never more than a second behind schedule."""
        try:
            await self._write_until(stop)
        finally:
            self.done.set()

    async def _write_until(self, stop: asyncio.Event) -> None:
        start = time.monotonic()
        count = 0
        while True:
            due = start + count * self._interval_s
            now = time.monotonic()
            if due < now - 1.0:
                start, count, due = now, 0, now
            if await sleep_or_stop(stop, due - now):
                return
            write = self._traffic.next_write()
            await asyncio.to_thread(self._apply, write)
            self.written[write.kind] += 1
            count += 1

    def _apply(self, write: Write) -> None:
        key = {"order_id": write.order_id}
        if write.kind == "insert":
            self._table.put_item(Item=write.item)
        elif write.kind == "update":
            self._table.update_item(
                Key=key,
                UpdateExpression="SET #status = :status, updated_at = :now",
                ExpressionAttributeNames={"#status": "status"},
                ExpressionAttributeValues={":status": write.status, ":now": _now()},
            )
        else:
            self._table.delete_item(Key=key)
