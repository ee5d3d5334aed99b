"""Test doubles for shardwise, and the kit for testing your own processors.

``StreamsServer`` speaks the DynamoDB Streams and the Kinesis Data Streams JSON protocols
over real HTTP, on one port, with many shards, splits (and, for Kinesis, merges), trimming,
expiring iterators, rate limits and injected faults, scripted from the test through a
``ScriptedStream`` or ``ScriptedKinesisStream`` handle.

For a processor's own tests (see the README's "Testing your own processors"):

* ``events``: records in Lambda's shape from plain dicts - ``insert``, ``modify``,
  ``remove``, ``ttl_delete``, ``kinesis_record`` - and ``event(*records)``;
* ``harness``: ``run_handler`` / ``run_processor`` run a handler on records through the
  real dispatch path in process and return a ``RunResult`` (``*_sync`` for plain tests);
* ``pytest_plugin``: the ``streams_server``, ``dynamodb_stream`` and ``kinesis_stream``
  fixtures, registered with pytest when shardwise is installed.

The kit is imported on first use: the pytest plugin loads this package in every test
session, and importing the server stays as light as it was.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from shardwise.testing._kinesis_state import ScriptedKinesisStream
from shardwise.testing._streams_http import StreamsServer
from shardwise.testing._streams_state import ScriptedStream

if TYPE_CHECKING:
    from shardwise.testing.events import (
        Sequencer,
        event,
        insert,
        item_size,
        kinesis_record,
        modify,
        remove,
        ttl_delete,
    )
    from shardwise.testing.harness import (
        Invocation,
        RunResult,
        run_handler,
        run_handler_sync,
        run_processor,
        run_processor_sync,
    )

__all__ = [
    "Invocation",
    "RunResult",
    "ScriptedKinesisStream",
    "ScriptedStream",
    "Sequencer",
    "StreamsServer",
    "event",
    "insert",
    "item_size",
    "kinesis_record",
    "modify",
    "remove",
    "run_handler",
    "run_handler_sync",
    "run_processor",
    "run_processor_sync",
    "ttl_delete",
]

_LAZY = {
    **dict.fromkeys(
        [
            "Sequencer",
            "event",
            "insert",
            "item_size",
            "kinesis_record",
            "modify",
            "remove",
            "ttl_delete",
        ],
        "shardwise.testing.events",
    ),
    **dict.fromkeys(
        [
            "Invocation",
            "RunResult",
            "run_handler",
            "run_handler_sync",
            "run_processor",
            "run_processor_sync",
        ],
        "shardwise.testing.harness",
    ),
}


def __getattr__(name: str) -> Any:
    """The kit's names, imported from their module on first use."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
