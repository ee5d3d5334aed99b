"""Per-customer order totals, exactly once: a transactional handler (``transactional: true``).

The Orders view (``orders_view.py``) copies each order: "make the row match the new image"
is idempotent, so a batch delivered twice leaves the view as it was. Totals are not a copy:
every order adds to its customer's count and amount, and an increment applied twice counts
twice. No upsert fixes that - only knowing whether this record was applied already does.

Run with ``transactional: true`` (``customer_totals.yaml``), the handler writes through
``context.transaction``, a connection to shardwise's own store, and shardwise commits those
writes together with the shard's checkpoint for the records the invocation resolved. A crash,
a timeout, a retry or a lease moved to another worker re-runs a batch only if its writes were
rolled back: every order is counted exactly once.

Each record turns into deltas from its images (the stream needs NEW_AND_OLD_IMAGES):
INSERT adds the new order, REMOVE takes the old one away, MODIFY does both (an order moved to
another customer, or its amount changed). A batch's deltas are summed per customer first, so
a batch costs one upsert per customer it touches. Amounts are kept in cents.
"""

from __future__ import annotations

from collections import defaultdict
from decimal import Decimal
from typing import Any

from sqlalchemy import text

__all__ = ["ADD", "SCHEMA", "deltas", "handler"]

SCHEMA = text(
    "CREATE TABLE IF NOT EXISTS customer_totals ("
    " customer VARCHAR(200) PRIMARY KEY,"
    " orders INTEGER NOT NULL,"
    " amount_cents BIGINT NOT NULL)"
)
ADD = text(
    "INSERT INTO customer_totals (customer, orders, amount_cents)"
    " VALUES (:customer, :orders, :amount_cents)"
    " ON CONFLICT (customer) DO UPDATE SET"
    " orders = customer_totals.orders + excluded.orders,"
    " amount_cents = customer_totals.amount_cents + excluded.amount_cents"
)


def _order(image: dict[str, Any], record: dict[str, Any]) -> tuple[str, int]:
    """(customer, amount in cents) of an order image."""
    try:
        customer = image["customer"]["S"]
        cents = Decimal(image["amount"]["N"]) * 100
    except KeyError as missing:
        raise ValueError(
            f"record {record.get('eventID')}: the order image has no {missing} attribute"
        ) from None
    if cents != cents.to_integral_value():
        raise ValueError(f"record {record.get('eventID')}: amount {cents / 100} has sub-cents")
    return customer, int(cents)


def deltas(record: dict[str, Any]) -> list[tuple[str, int, int]]:
    """(customer, orders, cents) to add for one stream record."""
    stream = record["dynamodb"]
    name = record["eventName"]
    old, new = stream.get("OldImage"), stream.get("NewImage")
    needed = {"INSERT": (new,), "MODIFY": (old, new), "REMOVE": (old,)}[name]
    if any(image is None for image in needed):
        raise ValueError(
            f"record {record.get('eventID')} ({name}) lacks an image: the table's stream "
            "must be NEW_AND_OLD_IMAGES"
        )
    found: list[tuple[str, int, int]] = []
    if old is not None and name != "INSERT":
        customer, cents = _order(old, record)
        found.append((customer, -1, -cents))
    if new is not None and name != "REMOVE":
        customer, cents = _order(new, record)
        found.append((customer, 1, cents))
    return found


async def handler(event: dict[str, Any], context: Any) -> None:
    connection = context.transaction  # committed with the checkpoint, or rolled back
    totals: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for record in event["Records"]:
        for customer, orders, cents in deltas(record):
            totals[customer][0] += orders
            totals[customer][1] += cents
    await connection.execute(SCHEMA)
    for customer, (orders, cents) in totals.items():
        await connection.execute(
            ADD, {"customer": customer, "orders": orders, "amount_cents": cents}
        )
