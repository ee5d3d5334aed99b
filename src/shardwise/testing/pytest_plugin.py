"""pytest fixtures for testing stream processors, registered with pytest by shardwise's
``pytest11`` entry point: installing shardwise makes them available to every test
(``-p no:shardwise`` turns them off; a fixture of the same name in a conftest wins).

* ``streams_server``: a ``StreamsServer`` (DynamoDB Streams and Kinesis over HTTP on a
  free port of 127.0.0.1), started for the test and stopped after it;
* ``dynamodb_stream``: a stream of table ``test-table`` (key ``Id``, view type
  NEW_AND_OLD_IMAGES, one shard) on that server;
* ``kinesis_stream``: a Kinesis stream ``test-stream`` with one shard on that server.

Point code under test at ``streams_server.endpoint_url`` (``aws.endpoint_url`` in a
shardwise config, ``endpoint_url=`` of a boto3 client).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from shardwise.testing._kinesis_state import ScriptedKinesisStream
from shardwise.testing._streams_http import StreamsServer
from shardwise.testing._streams_state import ScriptedStream

__all__ = ["dynamodb_stream", "kinesis_stream", "streams_server"]


@pytest.fixture
def streams_server() -> Iterator[StreamsServer]:
    """A running ``StreamsServer``, stopped when the test ends."""
    with StreamsServer() as server:
        yield server


@pytest.fixture
def dynamodb_stream(streams_server: StreamsServer) -> ScriptedStream:
    """Table ``test-table``'s stream on ``streams_server``: write with ``put``."""
    return streams_server.create_stream("test-table")


@pytest.fixture
def kinesis_stream(streams_server: StreamsServer) -> ScriptedKinesisStream:
    """Kinesis stream ``test-stream`` on ``streams_server``: write with ``put``."""
    return streams_server.create_kinesis_stream("test-stream")
