"""A stock AWS Lambda handler for a DynamoDB stream: a materialized view of the Orders table.

Deploy it to Lambda as it is (Handler ``orders_view.handler``), or run it with shardwise as
``shardwise.examples.orders_view.handler`` (``shardwise demo`` does): it reads only what
Lambda hands a stream handler - ``event["Records"]``, each with its ``eventName`` and
``dynamodb.Keys`` / ``dynamodb.NewImage`` in DynamoDB JSON. It keeps two SQLite tables, in the
file named by the ``ORDERS_VIEW_DB`` environment variable (default ``orders_view.db``):

* ``orders``: one row per live order, written on INSERT and MODIFY, deleted on REMOVE;
* ``order_status_counts``: how many live orders are in each status.

Stream delivery is at least once: after a failure the same batch comes again, in order. So
every change is written as "make the row look like this image", and a count moves only when
the order's status differs from the status the view already holds for it - the view's own
state, never ``OldImage`` - so a record applied twice leaves the view as applying it once.
A batch is one transaction: the view never holds half a batch, and a failed batch leaves no
trace before it is retried.

The table's stream must include new images (NEW_IMAGE or NEW_AND_OLD_IMAGES).
"""

from __future__ import annotations

import os
import sqlite3
from contextlib import closing
from typing import Any

from boto3.dynamodb.types import TypeDeserializer

DB_PATH_ENV = "ORDERS_VIEW_DB"
DEFAULT_DB_PATH = "orders_view.db"

SCHEMA = """
CREATE TABLE IF NOT EXISTS orders (
    order_id   TEXT PRIMARY KEY,
    customer   TEXT NOT NULL,
    status     TEXT NOT NULL,
    amount     TEXT NOT NULL,  -- exact decimal text, as DynamoDB holds the number
    item_count INTEGER NOT NULL,
    updated_at TEXT
);
CREATE TABLE IF NOT EXISTS order_status_counts (
    status TEXT PRIMARY KEY,
    orders INTEGER NOT NULL
);
"""

_deserializer = TypeDeserializer()


def handler(event: dict[str, Any], context: object) -> None:
    """Apply one batch of stream records to the view, all or nothing."""
    path = os.environ.get(DB_PATH_ENV, DEFAULT_DB_PATH)
    with closing(sqlite3.connect(path, timeout=10)) as db:
        db.executescript(SCHEMA)
        with db:  # commit if every record applied, roll back if any raised
            for record in event["Records"]:
                apply(db, record)


def apply(db: sqlite3.Connection, record: dict[str, Any]) -> None:
    """Make the view agree with one stream record."""
    change = record["dynamodb"]
    order_id = str(python_values(change["Keys"])["order_id"])
    if record["eventName"] == "REMOVE":
        _move_count(db, order_id, None)
        db.execute("DELETE FROM orders WHERE order_id = ?", (order_id,))
        return
    if "NewImage" not in change:
        raise ValueError("orders_view needs a stream with NEW_IMAGE or NEW_AND_OLD_IMAGES")
    order = python_values(change["NewImage"])
    status = str(order.get("status", "UNKNOWN"))
    _move_count(db, order_id, status)
    db.execute(
        """
        INSERT INTO orders (order_id, customer, status, amount, item_count, updated_at)
        VALUES (?, ?, ?, ?, ?, ?)
        ON CONFLICT (order_id) DO UPDATE SET
            customer = excluded.customer,
            status = excluded.status,
            amount = excluded.amount,
            item_count = excluded.item_count,
            updated_at = excluded.updated_at
        """,
        (
            order_id,
            str(order.get("customer", "")),
            status,
            str(order.get("amount", 0)),
            len(order.get("items", [])),
            order.get("updated_at") or order.get("created_at"),
        ),
    )


def python_values(image: dict[str, Any]) -> dict[str, Any]:
    """DynamoDB JSON (``{"amount": {"N": "12.50"}}``) to Python values (``Decimal("12.50")``)."""
    return {name: _deserializer.deserialize(value) for name, value in image.items()}


def _move_count(db: sqlite3.Connection, order_id: str, new_status: str | None) -> None:
    """Move the order from the status the view holds for it to ``new_status`` (None: gone)."""
    row = db.execute("SELECT status FROM orders WHERE order_id = ?", (order_id,)).fetchone()
    old_status: str | None = row[0] if row else None
    if old_status == new_status:
        return
    if old_status is not None:
        db.execute(
            "UPDATE order_status_counts SET orders = orders - 1 WHERE status = ?", (old_status,)
        )
    if new_status is not None:
        db.execute(
            """
            INSERT INTO order_status_counts (status, orders) VALUES (?, 1)
            ON CONFLICT (status) DO UPDATE SET orders = orders + 1
            """,
            (new_status,),
        )
