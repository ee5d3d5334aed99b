"""The Kinesis source against the project's streams server over HTTP (faults, scale, lineage).

moto cannot throttle, expire iterators, page ListShards or end a closed shard; the streams
server does all of it the way the service does.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime

import pytest
from aws_kinesis_agg.aggregator import RecordAggregator  # type: ignore[import-untyped]

from shardwise.config import AwsConfig
from shardwise.errors import (
    ExpiredIteratorError,
    ShardNotFoundError,
    SourceError,
    ThrottledError,
)
from shardwise.records import KINESIS_SHAPE, Position, ShardId, StartingPosition
from shardwise.sources.dynamodb_raw import RawStreamsClient, open_raw_client
from shardwise.sources.kinesis import KinesisSource, resolve_stream_arn
from shardwise.sources.sigv4 import KINESIS
from shardwise.testing import ScriptedKinesisStream, StreamsServer


@pytest.fixture
def server() -> Iterator[StreamsServer]:
    with StreamsServer() as streams:
        yield streams


@pytest.fixture
async def client(
    server: StreamsServer, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[RawStreamsClient]:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    aws = AwsConfig(region="us-east-1", endpoint_url=server.endpoint_url)
    async with await open_raw_client(aws, api=KINESIS) as opened:
        yield opened


def source_for(
    client: RawStreamsClient, stream: ScriptedKinesisStream, **kwargs: object
) -> KinesisSource:
    return KinesisSource(client, stream.arn, **kwargs)  # type: ignore[arg-type]


async def read_all(
    source: KinesisSource, shard_id: str, position: Position
) -> list[dict[str, object]]:
    iterator: str | None = await source.get_iterator(ShardId(shard_id), position)
    records: list[dict[str, object]] = []
    while iterator is not None:
        page = await source.get_records(ShardId(shard_id), iterator, 10_000)
        records.extend(page.records)
        iterator = page.next_iterator
        if not page.records and iterator is not None:
            break  # an open shard read to its tip
    return records


class TestListing:
    async def test_a_thousand_shards_over_pages(
        self, server: StreamsServer, client: RawStreamsClient
    ) -> None:
        stream = server.create_kinesis_stream("Wide", shards=1000)
        listing = await source_for(client, stream).describe()
        assert [s.shard_id for s in listing.shards] == stream.shard_ids
        assert listing.enabled
        # The server refuses a page request that names the stream next to a NextToken.
        assert stream.calls["ListShards"] >= 1

    async def test_paging_with_a_small_page_sends_the_token_alone(
        self, server: StreamsServer, client: RawStreamsClient, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        stream = server.create_kinesis_stream("Paged", shards=25)
        monkeypatch.setattr("shardwise.sources.kinesis.LIST_SHARDS_PAGE", 10)
        listing = await source_for(client, stream).describe()
        assert [s.shard_id for s in listing.shards] == stream.shard_ids
        assert stream.calls["ListShards"] == 3

    async def test_merge_lineage_names_both_parents(
        self, server: StreamsServer, client: RawStreamsClient
    ) -> None:
        stream = server.create_kinesis_stream("Merged", shards=2)
        a, b = stream.open_shard_ids
        child = stream.merge(a, b)
        listing = await source_for(client, stream).describe()
        [listed] = [s for s in listing.shards if s.shard_id == child]
        assert set(listed.parents) == {a, b}
        assert {s.shard_id for s in listing.shards if s.closed} == {a, b}

    async def test_a_stream_name_resolves_to_its_arn(
        self, server: StreamsServer, client: RawStreamsClient
    ) -> None:
        stream = server.create_kinesis_stream("Named")
        assert await resolve_stream_arn(client, "Named") == stream.arn
        with pytest.raises(SourceError, match="Missing"):
            await resolve_stream_arn(client, "Missing")


class TestReading:
    async def test_lambda_records_and_millis_behind_latest(
        self, server: StreamsServer, client: RawStreamsClient
    ) -> None:
        stream = server.create_kinesis_stream("Events")
        [shard] = stream.shard_ids
        sequence = stream.put(b'{"a": 1}', partition_key="pk")
        stream.put(b"\x00\x01", partition_key="pk")
        source = source_for(client, stream, identity_arn="arn:aws:iam::123456789012:role/r")
        iterator = await source.get_iterator(ShardId(shard), Position())
        page = await source.get_records(ShardId(shard), iterator, 1)
        [record] = page.records
        assert record["kinesis"]["sequenceNumber"] == sequence
        assert base64.b64decode(record["kinesis"]["data"]) == b'{"a": 1}'
        assert record["eventID"] == f"{shard}:{sequence}"
        assert record["invokeIdentityArn"] == "arn:aws:iam::123456789012:role/r"
        assert record["eventSourceARN"] == stream.arn
        assert page.millis_behind_latest is not None and page.millis_behind_latest >= 0

    async def test_a_closed_shard_ends_with_its_children(
        self, server: StreamsServer, client: RawStreamsClient
    ) -> None:
        stream = server.create_kinesis_stream("Split")
        [parent] = stream.shard_ids
        stream.put_many(parent, 3)
        children = stream.split(parent)
        records = await read_all(source_for(client, stream), parent, Position())
        assert len(records) == 3
        source = source_for(client, stream)
        iterator = await source.get_iterator(ShardId(parent), Position())
        page = await source.get_records(ShardId(parent), iterator, 10_000)
        assert page.next_iterator is None
        assert [c.shard_id for c in page.child_shards] == children
        assert all(c.parent_shard_id == parent for c in page.child_shards)

    async def test_at_timestamp_and_after_sequence(
        self, server: StreamsServer, client: RawStreamsClient
    ) -> None:
        stream = server.create_kinesis_stream("Times")
        [shard] = stream.shard_ids
        stream.put(b"old", shard_id=shard, arrival=datetime(2026, 1, 1, tzinfo=UTC))
        middle = stream.put(b"new", shard_id=shard, arrival=datetime(2026, 6, 1, tzinfo=UTC))
        stream.put(b"newer", shard_id=shard, arrival=datetime(2026, 7, 1, tzinfo=UTC))
        at = source_for(client, stream, at_timestamp=datetime(2026, 3, 1, tzinfo=UTC))
        records = await read_all(at, shard, Position(start=StartingPosition.AT_TIMESTAMP))
        assert [base64.b64decode(r["kinesis"]["data"]) for r in records] == [b"new", b"newer"]  # type: ignore[index]
        after = await read_all(source_for(client, stream), shard, Position.after_sequence(middle))
        assert [base64.b64decode(r["kinesis"]["data"]) for r in after] == [b"newer"]  # type: ignore[index]

    async def test_at_timestamp_without_a_timestamp_is_refused(
        self, server: StreamsServer, client: RawStreamsClient
    ) -> None:
        stream = server.create_kinesis_stream("NoTime")
        with pytest.raises(SourceError, match="starting_position_timestamp"):
            await source_for(client, stream).get_iterator(
                ShardId(stream.shard_ids[0]), Position(start=StartingPosition.AT_TIMESTAMP)
            )


class TestErrors:
    @pytest.mark.parametrize(
        ("code", "error"),
        [
            ("ProvisionedThroughputExceededException", ThrottledError),
            ("KMSThrottlingException", ThrottledError),
            ("InternalFailure", ThrottledError),
            ("ExpiredIteratorException", ExpiredIteratorError),
            ("ResourceNotFoundException", ShardNotFoundError),
        ],
    )
    async def test_get_records_errors_map_to_the_source_error_tree(
        self,
        server: StreamsServer,
        client: RawStreamsClient,
        code: str,
        error: type[SourceError],
    ) -> None:
        stream = server.create_kinesis_stream("Faulty")
        [shard] = stream.shard_ids
        source = source_for(client, stream)
        iterator = await source.get_iterator(ShardId(shard), Position())
        stream.fail("GetRecords", code)
        with pytest.raises(error) as caught:
            await source.get_records(ShardId(shard), iterator, 100)
        assert caught.value.code == code
        assert shard in str(caught.value)
        await source.get_records(ShardId(shard), iterator, 100)  # the fault was one call

    async def test_the_per_shard_read_limit_throttles(
        self, server: StreamsServer, client: RawStreamsClient
    ) -> None:
        stream = server.create_kinesis_stream("Limited")
        [shard] = stream.shard_ids
        source = source_for(client, stream)
        iterator = await source.get_iterator(ShardId(shard), Position())
        with pytest.raises(ThrottledError, match="ProvisionedThroughputExceeded"):
            for _ in range(10):
                await source.get_records(ShardId(shard), iterator, 100)


def aggregate(users: list[tuple[str, bytes]]) -> bytes:
    aggregator = RecordAggregator()
    for key, payload in users:
        aggregator.add_user_record(key, payload)
    contents: bytes = aggregator.clear_and_get().get_contents()[2]
    return contents


class TestDeaggregation:
    async def test_a_resume_inside_an_aggregate_skips_the_user_records_done(
        self, server: StreamsServer, client: RawStreamsClient
    ) -> None:
        stream = server.create_kinesis_stream("Kpl")
        [shard] = stream.shard_ids
        first = stream.put(
            aggregate([(f"k{i}", json.dumps(i).encode()) for i in range(5)]), shard_id=shard
        )
        stream.put(b"7", shard_id=shard, partition_key="plain")
        source = source_for(client, stream, deaggregate=True)
        records = await read_all(source, shard, Position.after_sequence(f"{first}:2"))
        assert [json.loads(base64.b64decode(r["kinesis"]["data"])) for r in records] == [3, 4, 7]  # type: ignore[index]
        assert [KINESIS_SHAPE.sequence_number(r) for r in records[:2]] == [
            f"{first}:3",
            f"{first}:4",
        ]
        # After the aggregate's last user record: the next record, not the aggregate again.
        rest = await read_all(source, shard, Position.after_sequence(f"{first}:4"))
        assert [base64.b64decode(r["kinesis"]["data"]) for r in rest] == [b"7"]  # type: ignore[index]
