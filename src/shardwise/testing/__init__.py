"""Test doubles for shardwise and for users' processor tests.

``StreamsServer`` speaks the DynamoDB Streams and the Kinesis Data Streams JSON protocols
over real HTTP, on one port, with many shards, splits (and, for Kinesis, merges), trimming,
expiring iterators, rate limits and injected faults, scripted from the test through a
``ScriptedStream`` or ``ScriptedKinesisStream`` handle.
"""

from __future__ import annotations

from shardwise.testing._kinesis_state import ScriptedKinesisStream
from shardwise.testing._streams_http import StreamsServer
from shardwise.testing._streams_state import ScriptedStream

__all__ = ["ScriptedKinesisStream", "ScriptedStream", "StreamsServer"]
