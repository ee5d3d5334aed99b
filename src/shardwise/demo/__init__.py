"""``shardwise demo``: an embedded DynamoDB, orders written continuously, consumed live.

Everything runs in this process. moto's server, on a free local port, stands in for DynamoDB
and DynamoDB Streams (real HTTP, the same API calls as AWS). A writer inserts, updates and
deletes orders in a table ``Orders`` at a steady rate, and a ``Supervisor`` runs the stock
Lambda handler ``shardwise.examples.orders_view.handler`` (shipped in the package, so the demo
works from an installed wheel) on the table's stream, keeping a materialized view in SQLite.
Once a second a progress line shows what was written, processed and checkpointed.

Stopping: on Ctrl-C or SIGTERM writing stops and the supervisor drains at once; after
``--seconds`` writing stops and the processor gets a few seconds to catch up first. Then moto
stops and a summary is printed. Every run starts from an empty table, so the view and the
checkpoint files in the work directory are replaced.

- ``dynamodb``: moto's server and the ``Orders`` table with its stream
- ``settings``: the processor's settings, the work directory, the handler's environment
- ``writer``: what to write next (``OrderTraffic``) and the writer (``OrderWriter``)
- ``display``: the progress line and the summary
- ``run``: ``run_demo``, the timeline that runs the others
"""

from __future__ import annotations

from shardwise.demo.run import _timeline as _timeline  # the tests drive the timeline alone
from shardwise.demo.run import run_demo
from shardwise.demo.settings import (
    CHECKPOINTS_DB,
    DRAIN_S,
    PROCESSOR,
    VIEW_DB,
    VIEW_DB_ENV,
    demo_settings,
)
from shardwise.demo.writer import NEXT_STATUS, OrderTraffic, OrderWriter

__all__ = [
    "CHECKPOINTS_DB",
    "DRAIN_S",
    "NEXT_STATUS",
    "PROCESSOR",
    "VIEW_DB",
    "VIEW_DB_ENV",
    "OrderTraffic",
    "OrderWriter",
    "demo_settings",
    "run_demo",
]
