"""The scripted Kinesis Data Streams server, driven through real botocore clients over HTTP."""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import boto3
import pytest
from botocore.exceptions import ClientError

from shardwise.testing import ScriptedKinesisStream, StreamsServer
from tests.testing.conftest import (
    JSON_1_1,
    NO_RETRIES,
    command_line_server,
    error_code,
    raw_call,
    read_to_end,
)

if TYPE_CHECKING:
    from mypy_boto3_kinesis import KinesisClient
    from mypy_boto3_kinesis.literals import ShardIteratorTypeType

HASH_KEYS = 2**128


def kinesis_client(server: StreamsServer, region: str = "us-east-1") -> KinesisClient:
    return boto3.client(
        "kinesis",
        endpoint_url=server.endpoint_url,
        region_name=region,
        aws_access_key_id="x",
        aws_secret_access_key="x",
        config=NO_RETRIES,
    )


@pytest.fixture
def client(server: StreamsServer) -> Iterator[KinesisClient]:
    kinesis = kinesis_client(server)
    yield kinesis
    kinesis.close()


@pytest.fixture
def stream(server: StreamsServer) -> ScriptedKinesisStream:
    """One shard, without rate limits: tests of the limits make their own streams."""
    return server.create_kinesis_stream("Events", limits=False)


def iterator(
    client: KinesisClient,
    stream: ScriptedKinesisStream,
    shard_id: str,
    kind: ShardIteratorTypeType = "TRIM_HORIZON",
    sequence_number: str | None = None,
) -> str:
    extra: dict[str, Any] = {}
    if sequence_number is not None:
        extra["StartingSequenceNumber"] = sequence_number
    return client.get_shard_iterator(
        StreamARN=stream.arn, ShardId=shard_id, ShardIteratorType=kind, **extra
    )["ShardIterator"]


def sequence_numbers(records: Sequence[Mapping[str, Any]]) -> list[str]:
    return [record["SequenceNumber"] for record in records]


def md5_hash_key(partition_key: str) -> int:
    return int.from_bytes(hashlib.md5(partition_key.encode()).digest(), "big")


def hash_range(shard: Mapping[str, Any]) -> tuple[int, int]:
    keys = shard["HashKeyRange"]
    return int(keys["StartingHashKey"]), int(keys["EndingHashKey"])


def all_shards(client: KinesisClient, stream: ScriptedKinesisStream) -> list[Mapping[str, Any]]:
    reply = client.list_shards(StreamARN=stream.arn, MaxResults=10_000)
    assert "NextToken" not in reply
    return list(reply["Shards"])


class TestListShards:
    """ListShards: pages of up to 10,000 shards, NextToken rules, filters."""

    def test_pages_through_1000_shards(self, server: StreamsServer, client: KinesisClient) -> None:
        started = time.perf_counter()
        stream = server.create_kinesis_stream("Wide", shards=1000)
        assert time.perf_counter() - started < 1.0
        seen: list[Mapping[str, Any]] = []
        reply = client.list_shards(StreamName="Wide", MaxResults=100)
        pages = 1
        seen += reply["Shards"]
        while "NextToken" in reply:
            # With a NextToken the stream must not be named: the token names it.
            reply = client.list_shards(NextToken=reply["NextToken"], MaxResults=100)
            seen += reply["Shards"]
            pages += 1
        assert pages == 10
        ids = [shard["ShardId"] for shard in seen]
        assert ids == stream.shard_ids
        assert ids[0] == "shardId-000000000000"
        assert ids[-1] == "shardId-000000000999"
        ranges = [hash_range(shard) for shard in seen]
        assert ranges[0][0] == 0
        assert ranges[-1][1] == HASH_KEYS - 1
        assert all(end + 1 == start for (_, end), (start, _) in itertools.pairwise(ranges))
        # Equal ranges, as CreateStream gives them.
        assert max(end - start for start, end in ranges) - min(e - s for s, e in ranges) <= 1

    def test_returns_1000_shards_by_default_and_10000_at_most(
        self, server: StreamsServer, client: KinesisClient
    ) -> None:
        stream = server.create_kinesis_stream("Wide", shards=1001)
        first = client.list_shards(StreamARN=stream.arn)
        assert len(first["Shards"]) == 1000
        rest = client.list_shards(NextToken=first["NextToken"])
        assert [shard["ShardId"] for shard in rest["Shards"]] == [stream.shard_ids[-1]]
        assert "NextToken" not in rest
        with pytest.raises(ClientError) as info:
            client.list_shards(StreamARN=stream.arn, MaxResults=10_001)
        assert error_code(info) == "ValidationException"

    @pytest.mark.parametrize(
        "named", [{"StreamName": "Wide"}, {"ExclusiveStartShardId": "shardId-000000000001"}]
    )
    def test_a_next_token_with_the_stream_named_is_an_invalid_argument(
        self, server: StreamsServer, client: KinesisClient, named: dict[str, Any]
    ) -> None:
        stream = server.create_kinesis_stream("Wide", shards=3)
        token = client.list_shards(StreamARN=stream.arn, MaxResults=1)["NextToken"]
        with pytest.raises(ClientError) as info:
            client.list_shards(NextToken=token, **named)
        assert error_code(info) == "InvalidArgumentException"
        with pytest.raises(ClientError) as info:
            client.list_shards(NextToken=token, StreamARN=stream.arn)
        assert error_code(info) == "InvalidArgumentException"

    def test_exclusive_start_and_filters(
        self, server: StreamsServer, client: KinesisClient
    ) -> None:
        stream = server.create_kinesis_stream("Wide", shards=3, limits=False)
        first, second, third = stream.shard_ids
        children = stream.split(second)
        after = client.list_shards(StreamARN=stream.arn, ExclusiveStartShardId=first)["Shards"]
        assert [shard["ShardId"] for shard in after] == [second, third, *children]
        latest = client.list_shards(StreamARN=stream.arn, ShardFilter={"Type": "AT_LATEST"})
        assert [shard["ShardId"] for shard in latest["Shards"]] == [first, third, *children]
        horizon = client.list_shards(StreamARN=stream.arn, ShardFilter={"Type": "AT_TRIM_HORIZON"})
        assert [shard["ShardId"] for shard in horizon["Shards"]] == [first, second, third]
        after_third = client.list_shards(
            StreamARN=stream.arn, ShardFilter={"Type": "AFTER_SHARD_ID", "ShardId": third}
        )
        assert [shard["ShardId"] for shard in after_third["Shards"]] == children

    def test_timestamp_filters_list_the_shards_open_then(
        self, server: StreamsServer, client: KinesisClient
    ) -> None:
        stream = server.create_kinesis_stream("Wide", shards=2, limits=False)
        first, second = stream.shard_ids
        time.sleep(0.01)
        before_split = time.time()
        time.sleep(0.01)
        children = stream.split(first)
        time.sleep(0.01)
        after_split = time.time()

        def listed(kind: str, at: float) -> list[str]:
            shard_filter: Any = {"Type": kind, "Timestamp": datetime.fromtimestamp(at, UTC)}
            reply = client.list_shards(StreamARN=stream.arn, ShardFilter=shard_filter)
            return [shard["ShardId"] for shard in reply["Shards"]]

        assert listed("AT_TIMESTAMP", before_split) == [first, second]
        assert listed("AT_TIMESTAMP", after_split) == [second, *children]
        assert listed("FROM_TIMESTAMP", before_split) == [first, second, *children]
        assert listed("FROM_TIMESTAMP", after_split) == [second, *children]

    def test_a_filter_holds_across_pages(
        self, server: StreamsServer, client: KinesisClient
    ) -> None:
        stream = server.create_kinesis_stream("Wide", shards=4, limits=False)
        for shard_id in stream.shard_ids[:2]:
            stream.split(shard_id)
        reply = client.list_shards(
            StreamARN=stream.arn, ShardFilter={"Type": "AT_LATEST"}, MaxResults=3
        )
        listed = [shard["ShardId"] for shard in reply["Shards"]]
        reply = client.list_shards(NextToken=reply["NextToken"], MaxResults=3)
        listed += [shard["ShardId"] for shard in reply["Shards"]]
        assert "NextToken" not in reply
        assert sorted(listed) == sorted(stream.open_shard_ids)

    def test_an_unknown_stream_is_resource_not_found(self, client: KinesisClient) -> None:
        with pytest.raises(ClientError) as info:
            client.list_shards(StreamName="Missing")
        assert error_code(info) == "ResourceNotFoundException"
        with pytest.raises(ClientError) as info:
            client.list_shards(StreamARN="arn:aws:kinesis:us-east-1:123456789012:stream/Missing")
        assert error_code(info) == "ResourceNotFoundException"

    def test_a_stream_name_is_looked_up_in_the_signing_region(self, server: StreamsServer) -> None:
        east = server.create_kinesis_stream("Events", region="us-east-1")
        west = server.create_kinesis_stream("Events", region="eu-west-1", shards=2)
        assert east.arn != west.arn
        client = kinesis_client(server, region="eu-west-1")
        summary = client.describe_stream_summary(StreamName="Events")["StreamDescriptionSummary"]
        assert summary["StreamARN"] == west.arn
        assert summary["OpenShardCount"] == 2
        client.close()


class TestDescribe:
    """DescribeStreamSummary, DescribeStream and ListStreams."""

    def test_describe_stream_summary(
        self, client: KinesisClient, stream: ScriptedKinesisStream
    ) -> None:
        stream.split(stream.shard_ids[0])
        summary = client.describe_stream_summary(StreamName="Events")["StreamDescriptionSummary"]
        assert summary["StreamARN"] == "arn:aws:kinesis:us-east-1:123456789012:stream/Events"
        assert summary["StreamARN"] == stream.arn
        assert summary["StreamName"] == "Events"
        assert summary["StreamStatus"] == "ACTIVE"
        assert summary["OpenShardCount"] == 2
        assert summary["EncryptionType"] == "NONE"
        assert summary["RetentionPeriodHours"] == 24
        assert summary["StreamModeDetails"] == {"StreamMode": "PROVISIONED"}
        created = summary["StreamCreationTimestamp"].timestamp()
        assert created == pytest.approx(time.time(), abs=60)

    def test_describe_stream_pages_shards(
        self, server: StreamsServer, client: KinesisClient
    ) -> None:
        stream = server.create_kinesis_stream("Wide", shards=150)
        first = client.describe_stream(StreamName="Wide")["StreamDescription"]
        assert len(first["Shards"]) == 100
        assert first["HasMoreShards"] is True
        rest = client.describe_stream(
            StreamName="Wide", ExclusiveStartShardId=first["Shards"][-1]["ShardId"]
        )["StreamDescription"]
        assert rest["HasMoreShards"] is False
        ids = [shard["ShardId"] for shard in [*first["Shards"], *rest["Shards"]]]
        assert ids == stream.shard_ids

    def test_list_streams_in_the_signing_region(
        self, server: StreamsServer, client: KinesisClient
    ) -> None:
        server.create_kinesis_stream("b-events")
        server.create_kinesis_stream("a-events")
        server.create_kinesis_stream("c-events", region="eu-west-1")
        first = client.list_streams(Limit=1)
        assert first["StreamNames"] == ["a-events"]
        assert first["HasMoreStreams"] is True
        rest = client.list_streams(NextToken=first["NextToken"])
        assert rest["StreamNames"] == ["b-events"]
        assert rest["HasMoreStreams"] is False
        assert rest["StreamSummaries"][0]["StreamARN"].endswith(":stream/b-events")


class TestGetRecords:
    """GetRecords: pages, MillisBehindLatest, the 10,000-record and 10 MB caps, iterators."""

    def test_pages_follow_on_in_order(
        self, client: KinesisClient, stream: ScriptedKinesisStream
    ) -> None:
        (shard_id,) = stream.shard_ids
        written = stream.put_many(shard_id, 25)
        shard_iterator = iterator(client, stream, shard_id)
        seen: list[str] = []
        for _ in range(3):
            page = client.get_records(ShardIterator=shard_iterator, Limit=10)
            seen += sequence_numbers(page["Records"])
            shard_iterator = page["NextShardIterator"]
        assert seen == written
        assert [int(n) for n in written] == sorted({int(n) for n in written})
        empty = client.get_records(ShardIterator=shard_iterator)
        assert empty["Records"] == []
        assert empty["MillisBehindLatest"] == 0
        later = stream.put(b"later", shard_id=shard_id)
        page = client.get_records(ShardIterator=empty["NextShardIterator"])
        assert sequence_numbers(page["Records"]) == [later]

    def test_records_carry_data_key_and_arrival(
        self, client: KinesisClient, stream: ScriptedKinesisStream
    ) -> None:
        (shard_id,) = stream.shard_ids
        number = stream.put(
            b"\x00\xffbinary", shard_id=shard_id, partition_key="user-7", arrival=1_700_000_000.25
        )
        (record,) = client.get_records(ShardIterator=iterator(client, stream, shard_id))["Records"]
        assert record["SequenceNumber"] == number
        assert record["Data"] == b"\x00\xffbinary"
        assert record["PartitionKey"] == "user-7"
        assert record["ApproximateArrivalTimestamp"].timestamp() == 1_700_000_000.25
        assert re.fullmatch(r"\d{56}", number)

    def test_a_page_holds_10000_records_by_default(
        self, client: KinesisClient, stream: ScriptedKinesisStream
    ) -> None:
        (shard_id,) = stream.shard_ids
        stream.put_many(shard_id, 10_001)
        page = client.get_records(ShardIterator=iterator(client, stream, shard_id))
        assert len(page["Records"]) == 10_000
        with pytest.raises(ClientError) as info:
            client.get_records(ShardIterator=page["NextShardIterator"], Limit=10_001)
        assert error_code(info) == "ValidationException"

    def test_a_page_stays_within_10_mb(
        self, client: KinesisClient, stream: ScriptedKinesisStream
    ) -> None:
        (shard_id,) = stream.shard_ids
        written = [stream.put(b"x" * 700_000, shard_id=shard_id) for _ in range(20)]
        sizes: list[int] = []
        seen: list[str] = []
        shard_iterator = iterator(client, stream, shard_id)
        while len(seen) < len(written):
            page = client.get_records(ShardIterator=shard_iterator)
            sizes.append(sum(len(record["Data"]) for record in page["Records"]))
            seen += sequence_numbers(page["Records"])
            shard_iterator = page["NextShardIterator"]
        assert seen == written
        assert len(sizes) > 1
        assert max(sizes) <= 10 * 1024 * 1024

    def test_millis_behind_latest_counts_from_the_first_record_not_read(
        self, client: KinesisClient, stream: ScriptedKinesisStream
    ) -> None:
        (shard_id,) = stream.shard_ids
        stream.put(b"old", shard_id=shard_id, arrival=time.time() - 120)
        stream.put(b"older-than-a-minute", shard_id=shard_id, arrival=time.time() - 60)
        stream.put(b"new", shard_id=shard_id)
        first = client.get_records(ShardIterator=iterator(client, stream, shard_id), Limit=1)
        assert 59_000 <= first["MillisBehindLatest"] <= 70_000
        rest = client.get_records(ShardIterator=first["NextShardIterator"])
        assert len(rest["Records"]) == 2
        assert rest["MillisBehindLatest"] == 0

    def test_an_iterator_can_be_used_again(
        self, client: KinesisClient, stream: ScriptedKinesisStream
    ) -> None:
        (shard_id,) = stream.shard_ids
        stream.put_many(shard_id, 3)
        shard_iterator = iterator(client, stream, shard_id)
        first = client.get_records(ShardIterator=shard_iterator, Limit=2)["Records"]
        again = client.get_records(ShardIterator=shard_iterator, Limit=2)["Records"]
        assert first == again
        assert len(first) == 2

    def test_an_iterator_older_than_its_ttl_has_expired(
        self, server: StreamsServer, client: KinesisClient
    ) -> None:
        stream = server.create_kinesis_stream("Events")
        assert stream.iterator_ttl_seconds == 300.0
        stream.iterator_ttl_seconds = 0.2
        (shard_id,) = stream.shard_ids
        shard_iterator = iterator(client, stream, shard_id)
        fresh = client.get_records(ShardIterator=shard_iterator)["NextShardIterator"]
        time.sleep(0.25)
        with pytest.raises(ClientError) as info:
            client.get_records(ShardIterator=fresh)
        assert error_code(info) == "ExpiredIteratorException"
        assert "Iterator expired" in info.value.response["Error"]["Message"]
        assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
        client.get_records(ShardIterator=iterator(client, stream, shard_id))

    def test_a_garbled_iterator_is_an_invalid_argument(self, client: KinesisClient) -> None:
        with pytest.raises(ClientError) as info:
            client.get_records(ShardIterator="not-an-iterator")
        assert error_code(info) == "InvalidArgumentException"


class TestShardIterators:
    """GetShardIterator: every iterator type, and positions that cannot be served."""

    @pytest.mark.parametrize(
        ("kind", "at", "expected"),
        [
            ("TRIM_HORIZON", None, slice(0, None)),
            ("AT_SEQUENCE_NUMBER", 1, slice(1, None)),
            ("AFTER_SEQUENCE_NUMBER", 1, slice(2, None)),
            ("AFTER_SEQUENCE_NUMBER", 3, slice(4, None)),
            ("LATEST", None, slice(4, None)),
        ],
    )
    def test_positions(
        self,
        client: KinesisClient,
        stream: ScriptedKinesisStream,
        kind: ShardIteratorTypeType,
        at: int | None,
        expected: slice,
    ) -> None:
        (shard_id,) = stream.shard_ids
        written = stream.put_many(shard_id, 4)
        number = None if at is None else written[at]
        shard_iterator = iterator(client, stream, shard_id, kind, number)
        later = stream.put(b"later", shard_id=shard_id)
        records = client.get_records(ShardIterator=shard_iterator)["Records"]
        assert sequence_numbers(records) == [*written, later][expected]

    @pytest.mark.parametrize(
        ("timestamp", "expected"),
        [(1_699_999_000, slice(0, None)), (1_700_000_050, slice(1, None)), (2e9, slice(2, None))],
    )
    def test_at_timestamp_starts_at_the_first_record_not_older(
        self,
        client: KinesisClient,
        stream: ScriptedKinesisStream,
        timestamp: float,
        expected: slice,
    ) -> None:
        (shard_id,) = stream.shard_ids
        older = stream.put(b"a", shard_id=shard_id, arrival=1_700_000_000)
        newer = stream.put(
            b"b", shard_id=shard_id, arrival=datetime.fromtimestamp(1_700_000_100, UTC)
        )
        shard_iterator = client.get_shard_iterator(
            StreamName="Events",
            ShardId=shard_id,
            ShardIteratorType="AT_TIMESTAMP",
            Timestamp=datetime.fromtimestamp(timestamp, UTC),
        )["ShardIterator"]
        records = client.get_records(ShardIterator=shard_iterator)["Records"]
        assert sequence_numbers(records) == [older, newer][expected]

    def test_a_sequence_number_of_another_shard_is_an_invalid_argument(
        self, server: StreamsServer, client: KinesisClient
    ) -> None:
        stream = server.create_kinesis_stream("Events", shards=2, limits=False)
        first, second = stream.shard_ids
        number = stream.put(b"a", shard_id=first)
        with pytest.raises(ClientError) as info:
            iterator(client, stream, second, "AT_SEQUENCE_NUMBER", number)
        assert error_code(info) == "InvalidArgumentException"
        with pytest.raises(ClientError) as info:
            iterator(client, stream, first, "AFTER_SEQUENCE_NUMBER")  # no number given
        assert error_code(info) == "InvalidArgumentException"

    def test_an_unknown_shard_is_not_found(
        self, client: KinesisClient, stream: ScriptedKinesisStream
    ) -> None:
        with pytest.raises(ClientError) as info:
            iterator(client, stream, "shardId-000000000042")
        assert error_code(info) == "ResourceNotFoundException"


class TestLineage:
    """Splits and merges: records stay in the closed parents, children follow them."""

    def test_a_split_parent_keeps_its_records_and_ends_with_its_children(
        self, client: KinesisClient, stream: ScriptedKinesisStream
    ) -> None:
        (parent,) = stream.shard_ids
        written = stream.put_many(parent, 5)
        lower, upper = stream.split(parent)
        shards = {shard["ShardId"]: shard for shard in all_shards(client, stream)}
        assert list(shards) == [parent, lower, upper]
        assert shards[parent]["SequenceNumberRange"]["EndingSequenceNumber"] == written[-1]
        assert hash_range(shards[lower]) == (0, HASH_KEYS // 2 - 1)
        assert hash_range(shards[upper]) == (HASH_KEYS // 2, HASH_KEYS - 1)
        for child in (lower, upper):
            assert shards[child]["ParentShardId"] == parent
            assert "AdjacentParentShardId" not in shards[child]
            assert "EndingSequenceNumber" not in shards[child]["SequenceNumberRange"]
            starting = shards[child]["SequenceNumberRange"]["StartingSequenceNumber"]
            assert int(starting) > int(written[-1])
        records, last_page = read_to_end(client, iterator(client, stream, parent))
        assert sequence_numbers(records) == written  # nothing moved into the children
        assert last_page["ChildShards"] == [
            {
                "ShardId": lower,
                "ParentShards": [parent],
                "HashKeyRange": shards[lower]["HashKeyRange"],
            },
            {
                "ShardId": upper,
                "ParentShards": [parent],
                "HashKeyRange": shards[upper]["HashKeyRange"],
            },
        ]
        empty_child = client.get_records(ShardIterator=iterator(client, stream, lower))
        assert empty_child["Records"] == []
        child_record = stream.put(b"after", shard_id=upper)
        assert int(child_record) > int(written[-1])

    def test_a_parent_read_after_its_last_record_ends_at_once(
        self, client: KinesisClient, stream: ScriptedKinesisStream
    ) -> None:
        (parent,) = stream.shard_ids
        written = stream.put_many(parent, 3)
        children = stream.split(parent)
        page: Mapping[str, Any] = client.get_records(
            ShardIterator=iterator(client, stream, parent, "AFTER_SEQUENCE_NUMBER", written[-1])
        )
        assert page["Records"] == []
        assert page.get("NextShardIterator") is None
        assert page["MillisBehindLatest"] == 0
        assert [child["ShardId"] for child in page["ChildShards"]] == children
        latest: Mapping[str, Any] = client.get_records(
            ShardIterator=iterator(client, stream, parent, "LATEST")
        )
        assert latest.get("NextShardIterator") is None

    def test_an_open_shard_never_ends(
        self, client: KinesisClient, stream: ScriptedKinesisStream
    ) -> None:
        (shard_id,) = stream.shard_ids
        page = client.get_records(ShardIterator=iterator(client, stream, shard_id))
        assert page["NextShardIterator"]
        assert "ChildShards" not in page

    def test_a_merge_names_both_parents(self, server: StreamsServer, client: KinesisClient) -> None:
        stream = server.create_kinesis_stream("Events", shards=3, limits=False)
        first, second, third = stream.shard_ids
        kept = stream.put_many(second, 2)
        child = stream.merge(second, first)
        shards = {shard["ShardId"]: shard for shard in all_shards(client, stream)}
        assert shards[child]["ParentShardId"] == second
        assert shards[child]["AdjacentParentShardId"] == first
        assert hash_range(shards[child]) == (
            hash_range(shards[first])[0],
            hash_range(shards[second])[1],
        )
        for parent in (first, second):
            records, last_page = read_to_end(client, iterator(client, stream, parent))
            assert sequence_numbers(records) == (kept if parent == second else [])
            assert last_page["ChildShards"] == [
                {
                    "ShardId": child,
                    "ParentShards": [second, first],
                    "HashKeyRange": shards[child]["HashKeyRange"],
                }
            ]
        with pytest.raises(ValueError, match="adjacent"):
            stream.merge(child, child)
        with pytest.raises(ValueError, match="closed"):
            stream.merge(first, third)

    def test_split_and_merge_through_the_api(
        self, server: StreamsServer, client: KinesisClient
    ) -> None:
        stream = server.create_kinesis_stream("Events", shards=2, limits=False)
        first, second = stream.shard_ids
        middle = HASH_KEYS // 4
        client.split_shard(StreamName="Events", ShardToSplit=first, NewStartingHashKey=str(middle))
        lower, upper = stream.shard_ids[2:]
        assert stream.hash_key_range(upper) == (middle, HASH_KEYS // 2 - 1)
        client.merge_shards(StreamARN=stream.arn, ShardToMerge=upper, AdjacentShardToMerge=second)
        (merged,) = stream.shard_ids[4:]
        assert stream.open_shard_ids == [lower, merged]
        assert stream.hash_key_range(merged) == (middle, HASH_KEYS - 1)
        cases = [
            (first, "1", "InvalidArgumentException"),  # closed
            (lower, "1", "InvalidArgumentException"),  # keeps under two keys in a child
            ("shardId-000000000099", "5", "ResourceNotFoundException"),
        ]
        for shard_id, new_key, code in cases:
            with pytest.raises(ClientError) as info:
                client.split_shard(
                    StreamName="Events", ShardToSplit=shard_id, NewStartingHashKey=new_key
                )
            assert error_code(info) == code
        with pytest.raises(ClientError) as info:
            client.merge_shards(StreamName="Events", ShardToMerge=lower, AdjacentShardToMerge=lower)
        assert error_code(info) == "InvalidArgumentException"

    def test_update_shard_count_splits_and_merges_uniformly(
        self, server: StreamsServer, client: KinesisClient
    ) -> None:
        stream = server.create_kinesis_stream("Events", shards=4, limits=False)
        originals = stream.shard_ids
        written = {shard_id: stream.put_many(shard_id, 3) for shard_id in originals}
        reply = client.update_shard_count(
            StreamName="Events", TargetShardCount=8, ScalingType="UNIFORM_SCALING"
        )
        assert (reply["CurrentShardCount"], reply["TargetShardCount"]) == (4, 8)
        doubled = stream.open_shard_ids
        assert [stream.hash_key_range(s) for s in doubled] == [
            (i * HASH_KEYS // 8, (i + 1) * HASH_KEYS // 8 - 1) for i in range(8)
        ]
        shards = {shard["ShardId"]: shard for shard in all_shards(client, stream)}
        assert all(shards[s]["ParentShardId"] in originals for s in doubled)
        client.update_shard_count(
            StreamARN=stream.arn, TargetShardCount=4, ScalingType="UNIFORM_SCALING"
        )
        halved = stream.open_shard_ids
        shards = {shard["ShardId"]: shard for shard in all_shards(client, stream)}
        assert [
            sorted([shards[s]["ParentShardId"], shards[s]["AdjacentParentShardId"]]) for s in halved
        ] == [sorted(doubled[i : i + 2]) for i in range(0, 8, 2)]
        for shard_id, numbers in written.items():  # records stay where they were written
            assert sequence_numbers(stream.records(shard_id)) == numbers
        with pytest.raises(ClientError) as info:
            client.update_shard_count(
                StreamName="Events", TargetShardCount=9, ScalingType="UNIFORM_SCALING"
            )
        assert error_code(info) == "LimitExceededException"

    def test_uneven_rescaling_leaves_uniform_ranges_and_whole_lineage(
        self, server: StreamsServer, client: KinesisClient
    ) -> None:
        stream = server.create_kinesis_stream("Events", shards=3, limits=False)
        stream.split(stream.shard_ids[0])
        targets = stream.update_shard_count(5)
        assert targets == stream.open_shard_ids
        assert [stream.hash_key_range(s) for s in targets] == [
            (i * HASH_KEYS // 5, (i + 1) * HASH_KEYS // 5 - 1) for i in range(5)
        ]
        shards = {shard["ShardId"]: shard for shard in all_shards(client, stream)}
        for shard in shards.values():
            parents = [
                shards[p]
                for p in (shard.get("ParentShardId"), shard.get("AdjacentParentShardId"))
                if p
            ]
            if not parents:
                continue
            start, end = hash_range(shard)
            covered = sorted(hash_range(parent) for parent in parents)
            if len(parents) == 2:  # a merge: exactly both parents' keys
                assert covered[0][1] + 1 == covered[1][0]
                assert (covered[0][0], covered[1][1]) == (start, end)
            else:  # a split: part of the parent's keys
                assert covered[0][0] <= start <= end <= covered[0][1]
            assert all(
                "EndingSequenceNumber" in parent["SequenceNumberRange"] for parent in parents
            )


class TestPutRecords:
    """PutRecord and PutRecords route by the partition key's MD5, as the service does."""

    def test_put_records_hash_into_the_shard_owning_the_key(
        self, server: StreamsServer, client: KinesisClient
    ) -> None:
        stream = server.create_kinesis_stream("Events", shards=7, limits=False)
        shards = all_shards(client, stream)
        keys = [f"user-{n}" for n in range(200)]
        reply = client.put_records(
            StreamName="Events",
            Records=[{"Data": key.encode(), "PartitionKey": key} for key in keys],
        )
        assert reply["FailedRecordCount"] == 0
        used: set[str] = set()
        for key, result in zip(keys, reply["Records"], strict=True):
            (owner,) = [
                s["ShardId"]
                for s in shards
                if hash_range(s)[0] <= md5_hash_key(key) <= hash_range(s)[1]
            ]
            assert result["ShardId"] == owner
            assert stream.shard_for(key) == owner
            used.add(owner)
        assert len(used) == 7
        for shard_id in used:
            records = client.get_records(ShardIterator=iterator(client, stream, shard_id))[
                "Records"
            ]
            assert [r["PartitionKey"] for r in records] == [
                key
                for key, result in zip(keys, reply["Records"], strict=True)
                if result["ShardId"] == shard_id
            ]
            assert all(record["Data"] == record["PartitionKey"].encode() for record in records)
        numbers = [int(result["SequenceNumber"]) for result in reply["Records"]]
        assert numbers == sorted(set(numbers))

    def test_put_record_follows_the_open_shards_and_an_explicit_hash_key(
        self, client: KinesisClient, stream: ScriptedKinesisStream
    ) -> None:
        (parent,) = stream.shard_ids
        lower, upper = stream.split(parent)
        explicit = client.put_record(
            StreamName="Events", Data=b"x", PartitionKey="k", ExplicitHashKey=str(HASH_KEYS - 1)
        )
        assert explicit["ShardId"] == upper
        hashed = client.put_record(StreamARN=stream.arn, Data=b"y", PartitionKey="user-1")
        expected = lower if md5_hash_key("user-1") < HASH_KEYS // 2 else upper
        assert hashed["ShardId"] == expected
        assert stream.records(parent) == []
        assert sequence_numbers(stream.records(expected))[-1] == hashed["SequenceNumber"]
        with pytest.raises(ClientError) as info:
            client.put_record(
                StreamName="Events", Data=b"x", PartitionKey="k", ExplicitHashKey=str(HASH_KEYS)
            )
        assert error_code(info) == "InvalidArgumentException"

    def test_oversized_records_are_refused(
        self, client: KinesisClient, stream: ScriptedKinesisStream
    ) -> None:
        with pytest.raises(ClientError) as info:
            client.put_record(StreamName="Events", Data=b"x" * (1024 * 1024), PartitionKey="k")
        assert error_code(info) == "ValidationException"
        with pytest.raises(ClientError) as info:
            client.put_records(
                StreamName="Events", Records=[{"Data": b"x", "PartitionKey": "k"}] * 501
            )
        assert error_code(info) == "ValidationException"
        assert stream.records(stream.shard_ids[0]) == []


class TestLimits:
    """The service's rate limits, on by default and switchable off."""

    def test_get_records_is_throttled_at_5_calls_per_second_per_shard(
        self, server: StreamsServer, client: KinesisClient
    ) -> None:
        stream = server.create_kinesis_stream("Events", shards=2)
        busy, quiet = stream.shard_ids
        busy_iterator = iterator(client, stream, busy)
        started = time.monotonic()
        for _ in range(5):
            client.get_records(ShardIterator=busy_iterator)
        with pytest.raises(ClientError) as info:
            client.get_records(ShardIterator=busy_iterator)
        assert time.monotonic() - started < 1.0  # else the window slid: the test proves nothing
        assert error_code(info) == "ProvisionedThroughputExceededException"
        assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
        assert info.value.response["Error"]["Message"] == (
            f"Rate exceeded for Shard - 123456789012/Events/{busy}"
        )
        client.get_records(ShardIterator=iterator(client, stream, quiet))
        assert stream.get_records_calls == {busy: 6, quiet: 1}
        time.sleep(1.05)
        client.get_records(ShardIterator=busy_iterator)

    def test_limits_switched_off(self, server: StreamsServer, client: KinesisClient) -> None:
        unlimited = server.create_kinesis_stream("Fast", limits=False)
        lifted = server.create_kinesis_stream("Lifted")
        lifted.get_records_per_second = None
        for stream in (unlimited, lifted):
            shard_iterator = iterator(client, stream, stream.shard_ids[0])
            for _ in range(20):
                client.get_records(ShardIterator=shard_iterator)
            assert stream.get_records_calls[stream.shard_ids[0]] == 20

    def test_list_shards_is_limited_per_stream(
        self, server: StreamsServer, client: KinesisClient
    ) -> None:
        stream = server.create_kinesis_stream("Events")
        other = server.create_kinesis_stream("Other")
        assert stream.list_shards_per_second == 1000  # the service's limit per stream
        stream.list_shards_per_second = 3
        for _ in range(3):
            client.list_shards(StreamName="Events")
        with pytest.raises(ClientError) as info:
            client.list_shards(StreamName="Events")
        assert error_code(info) == "LimitExceededException"
        client.list_shards(StreamName="Other")
        assert other.calls["ListShards"] == 1
        time.sleep(1.05)
        client.list_shards(StreamName="Events")
        assert stream.calls["ListShards"] == 5


class TestFaults:
    """Injected faults reach botocore as the right ClientError, then stop."""

    CODES = (
        "ProvisionedThroughputExceededException",
        "KMSThrottlingException",
        "ExpiredIteratorException",
        "InternalFailure",
        "ResourceNotFoundException",
        "LimitExceededException",
    )

    @pytest.mark.parametrize("code", CODES)
    def test_get_records_fault_arrives_as_its_code(
        self, client: KinesisClient, stream: ScriptedKinesisStream, code: str
    ) -> None:
        shard_iterator = iterator(client, stream, stream.shard_ids[0])
        stream.fail("GetRecords", code)
        with pytest.raises(ClientError) as info:
            client.get_records(ShardIterator=shard_iterator)
        assert error_code(info) == code
        status = info.value.response["ResponseMetadata"]["HTTPStatusCode"]
        assert status == (500 if code == "InternalFailure" else 400)
        assert client.get_records(ShardIterator=shard_iterator)["Records"] == []
        assert stream.calls["GetRecords"] == 2

    def test_faults_count_down_and_match_one_shard(
        self, server: StreamsServer, client: KinesisClient
    ) -> None:
        stream = server.create_kinesis_stream("Events", shards=2, limits=False)
        throttled, healthy = stream.shard_ids
        stream.fail(
            "GetShardIterator",
            "ProvisionedThroughputExceededException",
            shard_id=throttled,
            times=2,
        )
        iterator(client, stream, healthy)
        for _ in range(2):
            with pytest.raises(ClientError) as info:
                iterator(client, stream, throttled)
            assert error_code(info) == "ProvisionedThroughputExceededException"
        iterator(client, stream, throttled)
        assert stream.calls["GetShardIterator"] == 4

    def test_an_endless_fault_lasts_until_cleared(
        self, server: StreamsServer, client: KinesisClient, stream: ScriptedKinesisStream
    ) -> None:
        stream.fail("ListShards", "InternalFailure", times=None, message="try again")
        for _ in range(3):
            with pytest.raises(ClientError) as info:
                client.list_shards(StreamARN=stream.arn)
            assert error_code(info) == "InternalFailure"
            assert info.value.response["Error"]["Message"] == "try again"
        server.create_kinesis_stream("Other").fail("ListShards", "LimitExceededException")
        stream.clear_faults()
        client.list_shards(StreamARN=stream.arn)
        assert server.calls["ListShards"] == 4

    def test_a_fault_hits_a_next_token_page(
        self, server: StreamsServer, client: KinesisClient
    ) -> None:
        stream = server.create_kinesis_stream("Wide", shards=3, limits=False)
        token = client.list_shards(StreamName="Wide", MaxResults=1)["NextToken"]
        stream.fail("ListShards", "ExpiredNextTokenException")
        with pytest.raises(ClientError) as info:
            client.list_shards(NextToken=token)
        assert error_code(info) == "ExpiredNextTokenException"
        assert len(client.list_shards(NextToken=token)["Shards"]) == 2

    @pytest.mark.parametrize(
        ("operation", "code", "shard_id", "times"),
        [
            ("PutItem", "InternalFailure", None, 1),
            ("ListStreams", "InternalFailure", None, 1),
            ("GetRecords", "InternalServerError", None, 1),
            ("ListShards", "InternalFailure", "shardId-000000000000", 1),
            ("GetRecords", "InternalFailure", None, 0),
        ],
    )
    def test_bad_fault_requests_are_refused(
        self,
        stream: ScriptedKinesisStream,
        operation: str,
        code: str,
        shard_id: str | None,
        times: int,
    ) -> None:
        with pytest.raises(ValueError, match=r"operation|code|shard_id|times"):
            stream.fail(operation, code, shard_id=shard_id, times=times)


class TestWire:
    """The JSON 1.1 protocol as sent, and one port serving both protocols."""

    def test_errors_have_the_json_1_1_shape(self, server: StreamsServer) -> None:
        status, content_type, body = raw_call(
            server,
            "Kinesis_20131202.DescribeStreamSummary",
            {"StreamName": "Missing"},
            content_type=JSON_1_1,
        )
        assert (status, content_type) == (400, "application/x-amz-json-1.1")
        assert body == {
            "__type": "ResourceNotFoundException",
            "message": "Stream Missing under account 123456789012 not found.",
        }
        status, _, body = raw_call(server, "Kinesis_20131202.Nope", {}, content_type=JSON_1_1)
        assert (status, body["__type"]) == (400, "UnknownOperationException")

    def test_one_port_serves_dynamodb_streams_and_kinesis(self, server: StreamsServer) -> None:
        table_stream = server.create_stream("Orders")
        kinesis_stream = server.create_kinesis_stream("Orders")
        streams = boto3.client(
            "dynamodbstreams",
            endpoint_url=server.endpoint_url,
            region_name="us-east-1",
            aws_access_key_id="x",
            aws_secret_access_key="x",
            config=NO_RETRIES,
        )
        kinesis = kinesis_client(server)
        description = streams.describe_stream(StreamArn=table_stream.arn)["StreamDescription"]
        assert description["TableName"] == "Orders"
        shards = kinesis.list_shards(StreamName="Orders")["Shards"]
        assert [shard["ShardId"] for shard in shards] == kinesis_stream.shard_ids
        assert server.kinesis_streams == [kinesis_stream]
        assert server.streams == [table_stream]
        streams.close()
        kinesis.close()


class TestAsyncAccess:
    """aiobotocore reads the Kinesis server from an event loop."""

    async def test_aiobotocore_reads_records(self, server: StreamsServer) -> None:
        from aiobotocore.session import get_session

        stream = server.create_kinesis_stream("Events", limits=False)
        (shard_id,) = stream.shard_ids
        written = stream.put_many(shard_id, 3, payload_bytes=10)
        session = get_session()
        async with session.create_client(
            "kinesis",
            endpoint_url=server.endpoint_url,
            region_name="us-east-1",
            aws_access_key_id="x",
            aws_secret_access_key="x",
            config=NO_RETRIES,
        ) as client:
            answer = await client.get_shard_iterator(
                StreamARN=stream.arn, ShardId=shard_id, ShardIteratorType="TRIM_HORIZON"
            )
            page = await client.get_records(ShardIterator=answer["ShardIterator"])
            assert [r["SequenceNumber"] for r in page["Records"]] == written
            assert json.loads(page["Records"][0]["Data"]) == {"n": 1, "payload": "x" * 10}
            stream.fail("GetRecords", "KMSThrottlingException")
            with pytest.raises(ClientError) as info:
                await client.get_records(ShardIterator=answer["ShardIterator"])
            assert error_code(info) == "KMSThrottlingException"


class TestCommandLine:
    """``python -m shardwise.testing.streams_server --kinesis`` serves a stream on its own."""

    def test_serves_a_kinesis_stream(self) -> None:
        with command_line_server(
            "--kinesis",
            "--stream-name=Bench",
            "--shards=4",
            "--records=20000",
            "--no-limits",
            lines=3,
        ) as lines:
            assert lines["stream_name"] == "Bench"
            assert lines["stream_arn"] == "arn:aws:kinesis:us-east-1:123456789012:stream/Bench"
            client = boto3.client(
                "kinesis",
                endpoint_url=lines["endpoint_url"],
                region_name="us-east-1",
                aws_access_key_id="x",
                aws_secret_access_key="x",
                config=NO_RETRIES,
            )
            shards = client.list_shards(StreamARN=lines["stream_arn"])["Shards"]
            assert len(shards) == 4
            shard_iterator = client.get_shard_iterator(
                StreamName="Bench", ShardId=shards[3]["ShardId"], ShardIteratorType="TRIM_HORIZON"
            )["ShardIterator"]
            page = client.get_records(ShardIterator=shard_iterator)
            assert len(page["Records"]) == 10_000
            assert page["MillisBehindLatest"] > 0
            client.close()
