"""The scripted DynamoDB Streams server, driven through real botocore clients over HTTP."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import boto3
import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from shardwise.testing import ScriptedStream, StreamsServer
from tests.testing.conftest import (
    JSON_1_0,
    NO_RETRIES,
    command_line_server,
    error_code,
    raw_call,
    read_to_end,
)

if TYPE_CHECKING:
    from mypy_boto3_dynamodbstreams import DynamoDBStreamsClient
    from mypy_boto3_dynamodbstreams.literals import ShardIteratorTypeType

KEY = {"Id": {"N": "1"}}
NEW = {"Id": {"N": "1"}, "Status": {"S": "NEW"}}
OLD = {"Id": {"N": "1"}, "Status": {"S": "OLD"}}


def streams_client(server: StreamsServer, region: str = "us-east-1") -> DynamoDBStreamsClient:
    return boto3.client(
        "dynamodbstreams", endpoint_url=server.endpoint_url, region_name=region, config=NO_RETRIES
    )


@pytest.fixture
def client(server: StreamsServer) -> Iterator[DynamoDBStreamsClient]:
    streams = streams_client(server)
    yield streams
    streams.close()


@pytest.fixture
def stream(server: StreamsServer) -> ScriptedStream:
    return server.create_stream("Orders", shards=1)


def iterator(
    client: DynamoDBStreamsClient,
    stream: ScriptedStream,
    shard_id: str,
    kind: ShardIteratorTypeType = "TRIM_HORIZON",
    sequence_number: str | None = None,
) -> str:
    extra = {} if sequence_number is None else {"SequenceNumber": sequence_number}
    return client.get_shard_iterator(
        StreamArn=stream.arn, ShardId=shard_id, ShardIteratorType=kind, **extra
    )["ShardIterator"]


def sequence_numbers(records: Sequence[Mapping[str, Any]]) -> list[str]:
    return [record["dynamodb"]["SequenceNumber"] for record in records]


class TestDescribeStream:
    """DescribeStream: stream metadata and shard pagination."""

    def test_pages_through_250_shards_in_creation_order(
        self, server: StreamsServer, client: DynamoDBStreamsClient
    ) -> None:
        stream = server.create_stream("Wide", shards=250)
        seen: list[str] = []
        page_sizes: list[int] = []
        start: dict[str, Any] = {}
        while True:
            description = client.describe_stream(StreamArn=stream.arn, Limit=100, **start)[
                "StreamDescription"
            ]
            page_sizes.append(len(description["Shards"]))
            seen += [shard["ShardId"] for shard in description["Shards"]]
            if "LastEvaluatedShardId" not in description:
                break
            assert description["LastEvaluatedShardId"] == seen[-1]
            start = {"ExclusiveStartShardId": description["LastEvaluatedShardId"]}
        assert page_sizes == [100, 100, 50]
        assert seen == stream.shard_ids
        assert len(set(seen)) == 250

    def test_returns_at_most_100_shards_by_default(
        self, server: StreamsServer, client: DynamoDBStreamsClient
    ) -> None:
        stream = server.create_stream("Wide", shards=101)
        description = client.describe_stream(StreamArn=stream.arn)["StreamDescription"]
        assert len(description["Shards"]) == 100
        assert description["LastEvaluatedShardId"] == stream.shard_ids[99]

    def test_describes_the_stream(
        self, server: StreamsServer, client: DynamoDBStreamsClient
    ) -> None:
        stream = server.create_stream("Orders", view_type="NEW_IMAGE", range_key="Sort")
        description = client.describe_stream(StreamArn=stream.arn)["StreamDescription"]
        assert re.fullmatch(
            r"arn:aws:dynamodb:us-east-1:123456789012:table/Orders/stream/"
            r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}",
            description["StreamArn"],
        )
        assert description["StreamArn"].endswith("/" + description["StreamLabel"])
        assert description["StreamStatus"] == "ENABLED"
        assert description["StreamViewType"] == "NEW_IMAGE"
        assert description["TableName"] == "Orders"
        assert description["KeySchema"] == [
            {"AttributeName": "Id", "KeyType": "HASH"},
            {"AttributeName": "Sort", "KeyType": "RANGE"},
        ]
        assert description["CreationRequestDateTime"].timestamp() == pytest.approx(
            time.time(), abs=60
        )
        (shard,) = description["Shards"]
        assert re.fullmatch(r"shardId-\d{20}-[0-9a-f]{8}", shard["ShardId"])
        assert "ParentShardId" not in shard
        assert "EndingSequenceNumber" not in shard["SequenceNumberRange"]
        assert "LastEvaluatedShardId" not in description

    def test_unknown_stream_is_resource_not_found(self, client: DynamoDBStreamsClient) -> None:
        arn = "arn:aws:dynamodb:us-east-1:123456789012:table/Nope/stream/2020-01-01T00:00:00.000"
        with pytest.raises(ClientError) as info:
            client.describe_stream(StreamArn=arn)
        assert error_code(info) == "ResourceNotFoundException"

    def test_limit_above_100_is_a_validation_error(
        self, client: DynamoDBStreamsClient, stream: ScriptedStream
    ) -> None:
        with pytest.raises(ClientError) as info:
            client.describe_stream(StreamArn=stream.arn, Limit=101)
        assert error_code(info) == "ValidationException"

    def test_disabled_stream_closes_its_shards(
        self, client: DynamoDBStreamsClient, stream: ScriptedStream
    ) -> None:
        stream.disable()
        description = client.describe_stream(StreamArn=stream.arn)["StreamDescription"]
        assert description["StreamStatus"] == "DISABLED"
        assert all(
            "EndingSequenceNumber" in s["SequenceNumberRange"] for s in description["Shards"]
        )

    def test_removed_shard_vanishes(
        self, client: DynamoDBStreamsClient, stream: ScriptedStream
    ) -> None:
        (old,) = stream.shard_ids
        (new,) = stream.split(old, into=1)
        stream.remove_shard(old)
        description = client.describe_stream(StreamArn=stream.arn)["StreamDescription"]
        assert [shard["ShardId"] for shard in description["Shards"]] == [new]
        assert description["Shards"][0]["ParentShardId"] == old
        with pytest.raises(ClientError) as info:
            iterator(client, stream, old)
        assert error_code(info) == "ResourceNotFoundException"


class TestLineage:
    """Splits, rollovers and closing: the shard tree consumers must follow."""

    def test_split_closes_the_parent_and_names_it_in_the_children(
        self, client: DynamoDBStreamsClient, stream: ScriptedStream
    ) -> None:
        (parent,) = stream.shard_ids
        last = [stream.put(parent, keys={"Id": {"N": str(n)}}) for n in range(3)][-1]
        children = stream.split(parent)
        assert stream.shard_ids == [parent, *children]
        shards = client.describe_stream(StreamArn=stream.arn)["StreamDescription"]["Shards"]
        assert [shard["ShardId"] for shard in shards] == [parent, *children]
        assert shards[0]["SequenceNumberRange"]["EndingSequenceNumber"] == last
        for child in shards[1:]:
            assert child["ParentShardId"] == parent
            assert "EndingSequenceNumber" not in child["SequenceNumberRange"]
            assert int(child["SequenceNumberRange"]["StartingSequenceNumber"]) > int(last)

    def test_child_shards_filter_lists_one_parents_children(
        self, client: DynamoDBStreamsClient, stream: ScriptedStream
    ) -> None:
        (parent,) = stream.shard_ids
        left, right = stream.split(parent)
        grandchildren = stream.split(left, into=3)
        description = client.describe_stream(
            StreamArn=stream.arn, ShardFilter={"Type": "CHILD_SHARDS", "ShardId": left}
        )["StreamDescription"]
        assert [shard["ShardId"] for shard in description["Shards"]] == grandchildren
        assert right not in grandchildren

    def test_an_empty_closed_shard_ends_where_it_starts(
        self, client: DynamoDBStreamsClient, stream: ScriptedStream
    ) -> None:
        (shard_id,) = stream.shard_ids
        stream.close_shard(shard_id)
        (shard,) = client.describe_stream(StreamArn=stream.arn)["StreamDescription"]["Shards"]
        sequence_range = shard["SequenceNumberRange"]
        assert sequence_range["EndingSequenceNumber"] == sequence_range["StartingSequenceNumber"]
        assert read_to_end(client, iterator(client, stream, shard_id))[0] == []

    def test_closed_shards_take_no_records(self, stream: ScriptedStream) -> None:
        (shard_id,) = stream.shard_ids
        stream.close_shard(shard_id)
        with pytest.raises(ValueError, match="closed"):
            stream.put(shard_id, keys=KEY)


class TestGetRecords:
    """GetRecords: pages, the end of a shard, and the 1 MB cap."""

    def test_a_closed_shard_read_to_its_end_has_no_next_iterator(
        self, client: DynamoDBStreamsClient, stream: ScriptedStream
    ) -> None:
        (shard_id,) = stream.shard_ids
        written = stream.put_many(shard_id, 5)
        stream.close_shard(shard_id)
        page = client.get_records(ShardIterator=iterator(client, stream, shard_id))
        assert sequence_numbers(page["Records"]) == written
        assert "NextShardIterator" not in page

    def test_an_open_shard_at_its_end_returns_an_empty_page_and_an_iterator(
        self, client: DynamoDBStreamsClient, stream: ScriptedStream
    ) -> None:
        (shard_id,) = stream.shard_ids
        stream.put_many(shard_id, 2)
        first = client.get_records(ShardIterator=iterator(client, stream, shard_id))
        empty = client.get_records(ShardIterator=first["NextShardIterator"])
        assert empty["Records"] == []
        later = stream.put(shard_id, keys=KEY)
        page = client.get_records(ShardIterator=empty["NextShardIterator"])
        assert sequence_numbers(page["Records"]) == [later]

    def test_an_iterator_can_be_used_again(
        self, client: DynamoDBStreamsClient, stream: ScriptedStream
    ) -> None:
        (shard_id,) = stream.shard_ids
        stream.put_many(shard_id, 3)
        shard_iterator = iterator(client, stream, shard_id)
        first = client.get_records(ShardIterator=shard_iterator, Limit=2)["Records"]
        again = client.get_records(ShardIterator=shard_iterator, Limit=2)["Records"]
        assert first == again
        assert len(first) == 2

    def test_pages_hold_1000_records_and_follow_on_in_order(
        self, client: DynamoDBStreamsClient, stream: ScriptedStream
    ) -> None:
        (shard_id,) = stream.shard_ids
        written = stream.put_many(shard_id, 2500)
        stream.close_shard(shard_id)
        first = client.get_records(ShardIterator=iterator(client, stream, shard_id))
        assert len(first["Records"]) == 1000
        rest, _ = read_to_end(client, first["NextShardIterator"])
        assert sequence_numbers(first["Records"]) + sequence_numbers(rest) == written
        assert [int(n) for n in written] == sorted({int(n) for n in written})

    def test_a_page_stops_before_1_mb(
        self, client: DynamoDBStreamsClient, stream: ScriptedStream
    ) -> None:
        (shard_id,) = stream.shard_ids
        written = stream.put_many(shard_id, 25, payload_bytes=100_000)
        stream.close_shard(shard_id)
        pages: list[int] = []
        shard_iterator: str | None = iterator(client, stream, shard_id)
        seen: list[str] = []
        while shard_iterator is not None:
            page = client.get_records(ShardIterator=shard_iterator)
            pages.append(len(page["Records"]))
            seen += sequence_numbers(page["Records"])
            shard_iterator = page.get("NextShardIterator")
        assert pages == [10, 10, 5]  # each record's JSON is a little over 100 kB
        assert seen == written

    def test_a_record_over_1_mb_still_comes_alone(
        self, client: DynamoDBStreamsClient, stream: ScriptedStream
    ) -> None:
        (shard_id,) = stream.shard_ids
        stream.put_many(shard_id, 2, payload_bytes=1_200_000)
        page = client.get_records(ShardIterator=iterator(client, stream, shard_id))
        assert len(page["Records"]) == 1

    def test_an_iterator_older_than_its_ttl_has_expired(self) -> None:
        with StreamsServer(iterator_ttl_seconds=0.2) as server:
            stream = server.create_stream("Orders")
            (shard_id,) = stream.shard_ids
            client = streams_client(server)
            shard_iterator = iterator(client, stream, shard_id)
            fresh = client.get_records(ShardIterator=shard_iterator)["NextShardIterator"]
            time.sleep(0.25)
            with pytest.raises(ClientError) as info:
                client.get_records(ShardIterator=fresh)
            assert error_code(info) == "ExpiredIteratorException"
            client.close()

    def test_an_iterator_into_trimmed_records_fails(
        self, client: DynamoDBStreamsClient, stream: ScriptedStream
    ) -> None:
        (shard_id,) = stream.shard_ids
        written = stream.put_many(shard_id, 5)
        stale = iterator(client, stream, shard_id)
        stream.trim(shard_id, 2)
        with pytest.raises(ClientError) as info:
            client.get_records(ShardIterator=stale)
        assert error_code(info) == "TrimmedDataAccessException"
        page = client.get_records(ShardIterator=iterator(client, stream, shard_id))
        assert sequence_numbers(page["Records"]) == written[2:]
        assert sequence_numbers(stream.records(shard_id)) == written[2:]

    def test_a_garbled_iterator_is_a_validation_error(self, client: DynamoDBStreamsClient) -> None:
        with pytest.raises(ClientError) as info:
            client.get_records(ShardIterator="not-an-iterator")
        assert error_code(info) == "ValidationException"

    def test_an_iterator_into_a_removed_shard_is_not_found(
        self, client: DynamoDBStreamsClient, stream: ScriptedStream
    ) -> None:
        (shard_id,) = stream.shard_ids
        shard_iterator = iterator(client, stream, shard_id)
        stream.split(shard_id)
        stream.remove_shard(shard_id)
        with pytest.raises(ClientError) as info:
            client.get_records(ShardIterator=shard_iterator)
        assert error_code(info) == "ResourceNotFoundException"


class TestShardIterators:
    """GetShardIterator: every iterator type, and sequence numbers that cannot be served."""

    @pytest.fixture
    def written(self, stream: ScriptedStream) -> list[str]:
        return stream.put_many(stream.shard_ids[0], 4)

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
        client: DynamoDBStreamsClient,
        stream: ScriptedStream,
        kind: ShardIteratorTypeType,
        at: int | None,
        expected: slice,
    ) -> None:
        shard_id = stream.shard_ids[0]
        written = stream.put_many(shard_id, 4)
        number = None if at is None else written[at]
        shard_iterator = iterator(client, stream, shard_id, kind, number)
        later = stream.put(shard_id, keys=KEY)
        records = client.get_records(ShardIterator=shard_iterator)["Records"]
        assert sequence_numbers(records) == [*written, later][expected]

    def test_at_timestamp_starts_at_the_first_record_not_older(
        self, client: DynamoDBStreamsClient, stream: ScriptedStream
    ) -> None:
        shard_id = stream.shard_ids[0]
        stream.put(shard_id, keys=KEY, created=1_700_000_000)
        newer = stream.put(shard_id, keys=KEY, created=1_700_000_100)
        shard_iterator = client.get_shard_iterator(
            StreamArn=stream.arn,
            ShardId=shard_id,
            ShardIteratorType="AT_TIMESTAMP",
            Timestamp=datetime.fromtimestamp(1_700_000_050, UTC),
        )["ShardIterator"]
        records = client.get_records(ShardIterator=shard_iterator)["Records"]
        assert sequence_numbers(records) == [newer]

    @pytest.mark.parametrize("kind", ["AT_SEQUENCE_NUMBER", "AFTER_SEQUENCE_NUMBER"])
    def test_a_trimmed_sequence_number_is_trimmed_data(
        self,
        client: DynamoDBStreamsClient,
        stream: ScriptedStream,
        written: list[str],
        kind: ShardIteratorTypeType,
    ) -> None:
        stream.trim(stream.shard_ids[0], 2)
        with pytest.raises(ClientError) as info:
            iterator(client, stream, stream.shard_ids[0], kind, written[1])
        assert error_code(info) == "TrimmedDataAccessException"

    def test_a_sequence_number_of_another_shard_is_a_validation_error(
        self, client: DynamoDBStreamsClient, stream: ScriptedStream, written: list[str]
    ) -> None:
        other = stream.add_shard()
        with pytest.raises(ClientError) as info:
            iterator(client, stream, other, "AT_SEQUENCE_NUMBER", written[0])
        assert error_code(info) == "ValidationException"

    def test_an_unknown_shard_is_not_found(
        self, client: DynamoDBStreamsClient, stream: ScriptedStream
    ) -> None:
        with pytest.raises(ClientError) as info:
            iterator(client, stream, "shardId-00000001700000000000-00000000")
        assert error_code(info) == "ResourceNotFoundException"


class TestRecordShape:
    """Records look like the API's: view types, TTL deletes, sequence numbers, raw JSON."""

    @pytest.mark.parametrize(
        ("view_type", "images"),
        [
            ("KEYS_ONLY", set()),
            ("NEW_IMAGE", {"NewImage"}),
            ("OLD_IMAGE", {"OldImage"}),
            ("NEW_AND_OLD_IMAGES", {"NewImage", "OldImage"}),
        ],
    )
    def test_view_type_decides_the_images(
        self,
        server: StreamsServer,
        client: DynamoDBStreamsClient,
        view_type: str,
        images: set[str],
    ) -> None:
        stream = server.create_stream("Orders", view_type=view_type)
        shard_id = stream.shard_ids[0]
        stream.put(shard_id, "MODIFY", keys=KEY, new_image=NEW, old_image=OLD)
        (record,) = client.get_records(ShardIterator=iterator(client, stream, shard_id))["Records"]
        dynamodb = record["dynamodb"]
        assert {"NewImage", "OldImage"} & set(dynamodb) == images
        assert dynamodb.get("NewImage", NEW) == NEW
        assert dynamodb.get("OldImage", OLD) == OLD
        assert dynamodb["Keys"] == KEY
        assert dynamodb["StreamViewType"] == view_type

    def test_ttl_deletes_carry_the_service_identity(
        self, client: DynamoDBStreamsClient, stream: ScriptedStream
    ) -> None:
        shard_id = stream.shard_ids[0]
        stream.put(shard_id, "REMOVE", keys=KEY, old_image=OLD)
        stream.put(shard_id, "REMOVE", keys=KEY, old_image=OLD, ttl_delete=True)
        user, ttl = client.get_records(ShardIterator=iterator(client, stream, shard_id))["Records"]
        assert "userIdentity" not in user
        assert ttl["userIdentity"] == {"PrincipalId": "dynamodb.amazonaws.com", "Type": "Service"}

    def test_ttl_delete_is_for_removes_only(self, stream: ScriptedStream) -> None:
        with pytest.raises(ValueError, match="REMOVE"):
            stream.put(stream.shard_ids[0], "INSERT", keys=KEY, ttl_delete=True)

    def test_raw_record_json(self, server: StreamsServer, stream: ScriptedStream) -> None:
        shard_id = stream.shard_ids[0]
        number = stream.put(shard_id, keys=KEY, new_image=NEW, created=1_700_000_000.9)
        status, _, answer = raw_call(
            server,
            "DynamoDBStreams_20120810.GetShardIterator",
            {"StreamArn": stream.arn, "ShardId": shard_id, "ShardIteratorType": "TRIM_HORIZON"},
            content_type=JSON_1_0,
        )
        assert status == 200
        status, _, page = raw_call(
            server,
            "DynamoDBStreams_20120810.GetRecords",
            {"ShardIterator": answer["ShardIterator"]},
            content_type=JSON_1_0,
        )
        assert status == 200
        (record,) = page["Records"]
        assert record == stream.records(shard_id)[0]
        assert list(record) == [
            "eventID",
            "eventName",
            "eventVersion",
            "eventSource",
            "awsRegion",
            "dynamodb",
        ]
        assert re.fullmatch(r"[0-9a-f]{32}", record["eventID"])
        assert record["eventName"] == "INSERT"
        assert record["eventVersion"] == "1.1"
        assert record["eventSource"] == "aws:dynamodb"
        assert record["awsRegion"] == "us-east-1"
        assert re.fullmatch(r"\d{21}", number)
        compact = json.JSONEncoder(separators=(",", ":")).encode
        assert record["dynamodb"] == {
            "ApproximateCreationDateTime": 1_700_000_000,  # whole seconds, a JSON integer
            "Keys": KEY,
            "NewImage": NEW,
            "SequenceNumber": number,
            "SizeBytes": len(compact(KEY)) + len(compact(NEW)),
            "StreamViewType": "NEW_AND_OLD_IMAGES",
        }
        assert isinstance(record["dynamodb"]["ApproximateCreationDateTime"], int)

    def test_any_attribute_text_survives_encoding(self, stream: ScriptedStream) -> None:
        shard_id = stream.shard_ids[0]
        image = {"Id": {"S": 'quote " backslash \\ tab \t é 日本 \u2028'}, "B": {"B": "AAE="}}
        stream.put(shard_id, "MODIFY", keys={"Id": image["Id"]}, new_image=image, old_image=image)
        (record,) = stream.records(shard_id)
        assert record["dynamodb"]["NewImage"] == image
        assert record["dynamodb"]["OldImage"] == image

    def test_sequence_numbers_increase_across_the_stream(self, stream: ScriptedStream) -> None:
        first = stream.shard_ids[0]
        second = stream.add_shard()
        numbers = [int(stream.put(shard, keys=KEY)) for shard in [first, second, first, second]]
        assert numbers == sorted(set(numbers))

    def test_errors_have_the_dynamodb_error_type(self, server: StreamsServer) -> None:
        status, _, body = raw_call(
            server,
            "DynamoDBStreams_20120810.DescribeStream",
            {"StreamArn": "arn:nope"},
            content_type=JSON_1_0,
        )
        assert status == 400
        assert body["__type"] == "com.amazonaws.dynamodb.v20120810#ResourceNotFoundException"
        assert body["message"]


class TestFaults:
    """Injected faults reach botocore as the right ClientError, then stop."""

    CODES = (
        "ExpiredIteratorException",
        "LimitExceededException",
        "TrimmedDataAccessException",
        "ResourceNotFoundException",
        "InternalServerError",
        "ValidationException",
    )

    @pytest.mark.parametrize("code", CODES)
    def test_get_records_fault_arrives_as_its_code(
        self,
        server: StreamsServer,
        client: DynamoDBStreamsClient,
        stream: ScriptedStream,
        code: str,
    ) -> None:
        shard_iterator = iterator(client, stream, stream.shard_ids[0])
        server.fail("GetRecords", code)
        with pytest.raises(ClientError) as info:
            client.get_records(ShardIterator=shard_iterator)
        assert error_code(info) == code
        status = info.value.response["ResponseMetadata"]["HTTPStatusCode"]
        assert status == (500 if code == "InternalServerError" else 400)
        assert client.get_records(ShardIterator=shard_iterator)["Records"] == []
        assert server.calls["GetRecords"] == 2

    def test_faults_count_down_and_match_one_shard(
        self, server: StreamsServer, client: DynamoDBStreamsClient, stream: ScriptedStream
    ) -> None:
        throttled = stream.shard_ids[0]
        healthy = stream.add_shard()
        server.fail("GetShardIterator", "LimitExceededException", shard_id=throttled, times=2)
        iterator(client, stream, healthy)
        for _ in range(2):
            with pytest.raises(ClientError) as info:
                iterator(client, stream, throttled)
            assert error_code(info) == "LimitExceededException"
        iterator(client, stream, throttled)
        assert server.calls["GetShardIterator"] == 4

    def test_get_records_fault_for_one_shard(
        self, server: StreamsServer, client: DynamoDBStreamsClient, stream: ScriptedStream
    ) -> None:
        expired = stream.shard_ids[0]
        healthy = stream.add_shard()
        server.fail("GetRecords", "ExpiredIteratorException", shard_id=expired)
        client.get_records(ShardIterator=iterator(client, stream, healthy))
        with pytest.raises(ClientError) as info:
            client.get_records(ShardIterator=iterator(client, stream, expired))
        assert error_code(info) == "ExpiredIteratorException"

    def test_an_endless_fault_lasts_until_cleared(
        self, server: StreamsServer, client: DynamoDBStreamsClient, stream: ScriptedStream
    ) -> None:
        server.fail("DescribeStream", "InternalServerError", times=None)
        for _ in range(3):
            with pytest.raises(ClientError) as info:
                client.describe_stream(StreamArn=stream.arn)
            assert error_code(info) == "InternalServerError"
        server.clear_faults()
        client.describe_stream(StreamArn=stream.arn)

    @pytest.mark.parametrize(
        ("operation", "code", "shard_id", "times"),
        [
            ("PutItem", "InternalServerError", None, 1),
            ("GetRecords", "AccessDeniedException", None, 1),
            ("DescribeStream", "InternalServerError", "shardId-1", 1),
            ("GetRecords", "InternalServerError", None, 0),
        ],
    )
    def test_bad_fault_requests_are_refused(
        self, server: StreamsServer, operation: str, code: str, shard_id: str | None, times: int
    ) -> None:
        with pytest.raises(ValueError, match=r"operation|code|shard_id|times"):
            server.fail(operation, code, shard_id=shard_id, times=times)


class TestTables:
    """DescribeTable and ListStreams resolve a table's streams."""

    def test_describe_table_resolves_the_latest_stream(self, server: StreamsServer) -> None:
        first = server.create_stream("Orders", view_type="NEW_IMAGE")
        dynamodb = boto3.client(
            "dynamodb", endpoint_url=server.endpoint_url, region_name="us-east-1", config=NO_RETRIES
        )
        table = dynamodb.describe_table(TableName="Orders")["Table"]
        assert table["LatestStreamArn"] == first.arn
        assert table["LatestStreamLabel"] == first.label
        assert table["TableStatus"] == "ACTIVE"
        assert table["StreamSpecification"] == {
            "StreamEnabled": True,
            "StreamViewType": "NEW_IMAGE",
        }
        second = server.create_stream("Orders")
        assert second.arn != first.arn
        assert dynamodb.describe_table(TableName="Orders")["Table"]["LatestStreamArn"] == second.arn
        with pytest.raises(ClientError) as info:
            dynamodb.describe_table(TableName="Missing")
        assert error_code(info) == "ResourceNotFoundException"
        dynamodb.close()

    def test_list_streams_by_table_and_region(
        self, server: StreamsServer, client: DynamoDBStreamsClient
    ) -> None:
        orders = server.create_stream("Orders")
        users = server.create_stream("Users")
        server.create_stream("Orders", region="eu-west-1")
        listed = client.list_streams()["Streams"]
        assert [(s["StreamArn"], s["TableName"]) for s in listed] == [
            (orders.arn, "Orders"),
            (users.arn, "Users"),
        ]
        assert [s["StreamArn"] for s in client.list_streams(TableName="Users")["Streams"]] == [
            users.arn
        ]
        assert listed[0]["StreamLabel"] == orders.label
        first = client.list_streams(Limit=1)
        assert [s["StreamArn"] for s in first["Streams"]] == [orders.arn]
        rest = client.list_streams(ExclusiveStartStreamArn=first["LastEvaluatedStreamArn"])
        assert [s["StreamArn"] for s in rest["Streams"]] == [users.arn]
        assert "LastEvaluatedStreamArn" not in rest


class TestConcurrency:
    """Scripting while clients read: readers on their own threads see every record in order."""

    def test_readers_follow_shards_being_written(self, server: StreamsServer) -> None:
        stream = server.create_stream("Busy", shards=4)
        clients = [streams_client(server) for _ in stream.shard_ids]
        iterators = [iterator(c, stream, s) for c, s in zip(clients, stream.shard_ids, strict=True)]
        results: dict[str, list[str]] = {}

        def follow(client: DynamoDBStreamsClient, shard_id: str, shard_iterator: str) -> None:
            numbers: list[str] = []
            deadline = time.monotonic() + 20
            next_iterator: str | None = shard_iterator
            while next_iterator is not None and time.monotonic() < deadline:
                page: Mapping[str, Any] = client.get_records(ShardIterator=next_iterator)
                numbers += sequence_numbers(page["Records"])
                next_iterator = page.get("NextShardIterator")
                if not page["Records"]:
                    time.sleep(0.002)  # an open shard's end: poll again shortly
            results[shard_id] = numbers

        readers = [
            threading.Thread(target=follow, args=args)
            for args in zip(clients, stream.shard_ids, iterators, strict=True)
        ]
        for reader in readers:
            reader.start()
        written: dict[str, list[str]] = {shard_id: [] for shard_id in stream.shard_ids}
        for _ in range(20):
            for shard_id in stream.shard_ids:
                written[shard_id] += stream.put_many(shard_id, 50)
        for shard_id in stream.shard_ids:
            stream.close_shard(shard_id)
        for reader in readers:
            reader.join(timeout=30)
            assert not reader.is_alive()
        for client in clients:
            client.close()
        assert results == written


class TestAsyncAccess:
    """aiobotocore reads the server from an event loop."""

    async def test_aiobotocore_reads_records(self, server: StreamsServer) -> None:
        from aiobotocore.session import get_session

        stream = server.create_stream("Orders")
        shard_id = stream.shard_ids[0]
        written = stream.put_many(shard_id, 3)
        session = get_session()
        async with session.create_client(
            "dynamodbstreams",
            endpoint_url=server.endpoint_url,
            region_name="us-east-1",
            config=NO_RETRIES,
        ) as client:
            description = await client.describe_stream(StreamArn=stream.arn)
            assert description["StreamDescription"]["Shards"][0]["ShardId"] == shard_id
            answer = await client.get_shard_iterator(
                StreamArn=stream.arn, ShardId=shard_id, ShardIteratorType="TRIM_HORIZON"
            )
            page = await client.get_records(ShardIterator=answer["ShardIterator"])
            assert [r["dynamodb"]["SequenceNumber"] for r in page["Records"]] == written
            server.fail("GetRecords", "LimitExceededException")
            with pytest.raises(ClientError) as info:
                await client.get_records(ShardIterator=answer["ShardIterator"])
            assert error_code(info) == "LimitExceededException"


class TestLifecycle:
    """Starting, stopping and running the server as its own process."""

    def test_misuse_is_a_runtime_error(self) -> None:
        server = StreamsServer()
        with pytest.raises(RuntimeError, match="not running"):
            _ = server.endpoint_url
        with server:
            with pytest.raises(RuntimeError, match="starts once"):
                server.start()
        server.stop()
        with pytest.raises(RuntimeError, match="stopped"):
            _ = server.endpoint_url

    def test_nothing_is_served_after_stop(self) -> None:
        server = StreamsServer().start()
        stream = server.create_stream("Orders")
        client = streams_client(server)
        client.describe_stream(StreamArn=stream.arn)  # leaves a keep-alive connection open
        server.stop()
        with pytest.raises(EndpointConnectionError):
            client.describe_stream(StreamArn=stream.arn)
        client.close()

    def test_command_line_serves_a_stream(self) -> None:
        with command_line_server("--port=0", "--shards=2", "--records=10", lines=2) as lines:
            arn = lines["stream_arn"]
            client = boto3.client(
                "dynamodbstreams",
                endpoint_url=lines["endpoint_url"],
                region_name="us-east-1",
                config=NO_RETRIES,
            )
            shards = client.describe_stream(StreamArn=arn)["StreamDescription"]["Shards"]
            assert len(shards) == 2
            shard_iterator = client.get_shard_iterator(
                StreamArn=arn, ShardId=shards[1]["ShardId"], ShardIteratorType="TRIM_HORIZON"
            )["ShardIterator"]
            assert len(client.get_records(ShardIterator=shard_iterator)["Records"]) == 10
            client.close()
