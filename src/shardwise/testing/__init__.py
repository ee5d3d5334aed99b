"""Test doubles for shardwise and for users' processor tests.

``StreamsServer`` speaks the DynamoDB Streams JSON protocol over real HTTP, with many
shards, splits, trimming, expiring iterators and injected faults, scripted from the test.
"""

from __future__ import annotations

from shardwise.testing._streams_http import StreamsServer
from shardwise.testing._streams_state import ScriptedStream

__all__ = ["ScriptedStream", "StreamsServer"]
