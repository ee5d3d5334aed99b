"""The test kit's record builders: Lambda's DynamoDB Streams and Kinesis record shapes, from
plain Python values."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import boto3
import pytest
from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.config import Config

from shardwise.records import DYNAMODB_SHAPE, KINESIS_SHAPE, shape_of
from shardwise.sources.dynamodb import lambda_record
from shardwise.sources.kinesis import lambda_records
from shardwise.testing import StreamsServer, event, insert, modify, remove, ttl_delete
from shardwise.testing.events import (
    DYNAMODB_FIRST_SEQUENCE,
    KINESIS_FIRST_SEQUENCE,
    Sequencer,
    dynamodb_stream_arn,
    item_size,
    kinesis_record,
    kinesis_stream_arn,
)

CREATED = datetime(2024, 6, 10, 19, 26, 16, tzinfo=UTC)
RECORD_KEYS = {
    "eventID",
    "eventName",
    "eventVersion",
    "eventSource",
    "awsRegion",
    "dynamodb",
    "eventSourceARN",
}


def python(image: dict[str, Any]) -> dict[str, Any]:
    deserializer = TypeDeserializer()
    return {name: deserializer.deserialize(value) for name, value in image.items()}


class TestDynamoDBRecords:
    def test_an_insert_is_lambdas_record(self) -> None:
        record = insert(
            {"order_id": "o-1", "amount": 12.5, "items": 3},
            table="Orders",
            region="eu-west-1",
            created=CREATED,
        )
        assert set(record) == RECORD_KEYS
        assert record["eventName"] == "INSERT"
        assert record["eventVersion"] == "1.1"
        assert record["eventSource"] == "aws:dynamodb"
        assert record["awsRegion"] == "eu-west-1"
        assert record["eventSourceARN"] == (
            "arn:aws:dynamodb:eu-west-1:123456789012:table/Orders/stream/2024-01-01T00:00:00.000"
        )
        assert len(record["eventID"]) == 32 and int(record["eventID"], 16) >= 0
        body = record["dynamodb"]
        assert list(body) == [
            "ApproximateCreationDateTime",
            "Keys",
            "NewImage",
            "SequenceNumber",
            "SizeBytes",
            "StreamViewType",
        ]
        assert body["ApproximateCreationDateTime"] == 1718047576
        assert isinstance(body["ApproximateCreationDateTime"], int)
        assert body["Keys"] == {"order_id": {"S": "o-1"}}
        assert body["NewImage"] == {
            "order_id": {"S": "o-1"},
            "amount": {"N": "12.5"},
            "items": {"N": "3"},
        }
        assert body["StreamViewType"] == "NEW_AND_OLD_IMAGES"
        assert shape_of(record) is DYNAMODB_SHAPE

    def test_awss_example_event_is_rebuilt_exactly(self) -> None:
        """Lambda's documented example (Id 101, "New item!"): images, keys and SizeBytes."""
        arn = (
            "arn:aws:dynamodb:us-east-2:123456789012:table/my-table/stream/2024-06-10T19:26:16.525"
        )
        first = {"Id": 101, "Message": "New item!"}
        changed = {"Id": 101, "Message": "This item has changed"}
        records = [
            insert(first, keys="Id", stream_arn=arn, sequence=111),
            modify(first, changed, keys="Id", stream_arn=arn, sequence=222),
            remove(changed, keys="Id", stream_arn=arn, sequence=333),
        ]
        assert [r["eventName"] for r in records] == ["INSERT", "MODIFY", "REMOVE"]
        assert [r["dynamodb"]["SizeBytes"] for r in records] == [26, 59, 38]
        assert [r["dynamodb"]["SequenceNumber"] for r in records] == ["111", "222", "333"]
        assert all(r["dynamodb"]["Keys"] == {"Id": {"N": "101"}} for r in records)
        assert records[1]["dynamodb"]["OldImage"] == {
            "Id": {"N": "101"},
            "Message": {"S": "New item!"},
        }
        assert records[1]["dynamodb"]["NewImage"]["Message"] == {"S": "This item has changed"}
        assert "NewImage" not in records[2]["dynamodb"]
        assert all(r["awsRegion"] == "us-east-2" and r["eventSourceARN"] == arn for r in records)

    @pytest.mark.parametrize(
        ("build", "size"),
        [
            # Records a real stream delivered, with the SizeBytes it gave them.
            (lambda: insert({"ID": "2", "Title": "aaa"}, keys=("ID", "Title")), 22),
            (lambda: remove({"ID": "2", "Title": "aaa"}, keys=("ID", "Title")), 22),
            (lambda: modify({"id": "1", "key": "value"}, {"id": "1", "key": "updated"}), 27),
            (lambda: insert({"id": "2", "key": "original"}), 17),
        ],
    )
    def test_size_bytes_matches_what_streams_delivered(
        self, build: Callable[[], dict[str, Any]], size: int
    ) -> None:
        assert build()["dynamodb"]["SizeBytes"] == size

    @pytest.mark.parametrize(
        ("view_type", "insert_images", "modify_images", "remove_images"),
        [
            ("KEYS_ONLY", set(), set(), set()),
            ("NEW_IMAGE", {"NewImage"}, {"NewImage"}, set()),
            ("OLD_IMAGE", set(), {"OldImage"}, {"OldImage"}),
            ("NEW_AND_OLD_IMAGES", {"NewImage"}, {"NewImage", "OldImage"}, {"OldImage"}),
        ],
    )
    def test_images_follow_the_view_type(
        self,
        view_type: Any,
        insert_images: set[str],
        modify_images: set[str],
        remove_images: set[str],
    ) -> None:
        old, new = {"Id": 1, "v": "a"}, {"Id": 1, "v": "b"}
        images = {"NewImage", "OldImage"}
        for record, expected in [
            (insert(new, view_type=view_type), insert_images),
            (modify(old, new, view_type=view_type), modify_images),
            (remove(old, view_type=view_type), remove_images),
        ]:
            body = record["dynamodb"]
            assert images & set(body) == expected
            assert body["StreamViewType"] == view_type
            keys_only = item_size(body["Keys"])
            extra = sum(item_size(body[image]) for image in expected)
            assert body["SizeBytes"] == keys_only + extra

    def test_a_view_type_dynamodb_does_not_have_is_refused(self) -> None:
        with pytest.raises(ValueError, match="view_type"):
            insert({"Id": 1}, view_type="ALL")  # type: ignore[arg-type]

    def test_keys_default_to_the_first_attribute_or_are_named(self) -> None:
        item = {"pk": "user#1", "sk": "order#9", "total": 5}
        assert insert(item)["dynamodb"]["Keys"] == {"pk": {"S": "user#1"}}
        assert insert(item, keys=("pk", "sk"))["dynamodb"]["Keys"] == {
            "pk": {"S": "user#1"},
            "sk": {"S": "order#9"},
        }
        assert insert(item, keys="sk")["dynamodb"]["Keys"] == {"sk": {"S": "order#9"}}

    def test_keys_must_be_in_the_item_and_be_key_types(self) -> None:
        with pytest.raises(ValueError, match="no key attribute 'id'"):
            insert({"pk": "1"}, keys="id")
        with pytest.raises(ValueError, match="keys are S, N or B"):
            insert({"pk": {"nested": 1}})
        with pytest.raises(ValueError, match="at most a sort key"):
            insert({"a": 1, "b": 2, "c": 3}, keys=("a", "b", "c"))
        with pytest.raises(ValueError, match="at least its key"):
            insert({})

    def test_a_modify_keeps_its_key(self) -> None:
        with pytest.raises(ValueError, match="REMOVE of the old item and an INSERT"):
            modify({"Id": 1, "v": "a"}, {"Id": 2, "v": "a"})

    def test_values_go_through_boto3s_serializer(self) -> None:
        item = {
            "Id": "x",
            "price": 19.99,
            "count": 3,
            "exact": Decimal("0.10"),
            "flag": True,
            "none": None,
            "tags": {"a", "b"},
            "scores": {1, 2.5},
            "list": [1, "two", {"three": 3.0}],
            "map": {"nested": {"deep": -1.5}},
        }
        image = insert(item)["dynamodb"]["NewImage"]
        expected_input = {
            **item,
            "price": Decimal("19.99"),
            "scores": {Decimal(1), Decimal("2.5")},
            "list": [1, "two", {"three": Decimal("3.0")}],
            "map": {"nested": {"deep": Decimal("-1.5")}},
        }
        serializer = TypeSerializer()

        def unordered(attributes: dict[str, Any]) -> dict[str, Any]:
            """Sets' members sorted: a set serializes in its iteration order, which a copy
            of the set need not share."""
            return {
                name: {kind: sorted(v) if kind in {"SS", "NS", "BS"} else v}
                for name, value in attributes.items()
                for kind, v in value.items()
            }

        expected = {k: serializer.serialize(v) for k, v in expected_input.items()}
        assert unordered(image) == unordered(expected)
        assert image["price"] == {"N": "19.99"}
        assert image["exact"] == {"N": "0.10"}
        assert python(image) == expected_input

    def test_unserializable_values_are_refused(self) -> None:
        with pytest.raises(ValueError, match="no empty sets"):
            insert({"Id": 1, "tags": set()})
        with pytest.raises(TypeError):
            insert({"Id": 1, "when": datetime.now(UTC)})

    def test_binary_is_delivered_base64_and_sized_raw(self) -> None:
        blob = bytes(range(10))
        record = insert(
            {"Id": b"\x01\x02", "blob": blob, "blobs": {b"a", b"bc"}, "m": {"b": b"\xff"}}
        )
        body = record["dynamodb"]
        assert body["Keys"] == {"Id": {"B": "AQI="}}
        image = body["NewImage"]
        assert image["blob"] == {"B": base64.b64encode(blob).decode()}
        assert sorted(image["blobs"]["BS"]) == sorted(["YQ==", "YmM="])
        assert image["m"] == {"M": {"b": {"B": "/w=="}}}
        json.dumps(record)  # as Lambda delivers it: JSON, no bytes left
        # Raw lengths: Id 2+2; blob 4+10; blobs 5+1+2; m 1+3+(1+1+1).
        assert body["SizeBytes"] == (2 + 2) + (2 + 2) + (4 + 10) + (5 + 3) + (1 + 3 + 3)

    def test_a_ttl_delete_is_a_remove_by_the_dynamodb_service(self) -> None:
        old = {"session": "s-1", "expires": 1718000000}
        record = ttl_delete(old)
        assert record["eventName"] == "REMOVE"
        assert record["userIdentity"] == {
            "type": "Service",
            "principalId": "dynamodb.amazonaws.com",
        }
        assert set(record) == RECORD_KEYS | {"userIdentity"}
        assert record["dynamodb"]["OldImage"] == {
            "session": {"S": "s-1"},
            "expires": {"N": "1718000000"},
        }
        assert "userIdentity" not in remove(old)

    def test_created_is_epoch_seconds(self) -> None:
        naive = datetime(2024, 6, 10, 19, 26, 16)  # noqa: DTZ001 - read as UTC
        assert insert({"Id": 1}, created=naive)["dynamodb"]["ApproximateCreationDateTime"] == (
            1718047576
        )
        assert insert({"Id": 1}, created=1718047576.9)["dynamodb"][
            "ApproximateCreationDateTime"
        ] == (1718047576)
        now = datetime.now(UTC).timestamp()
        stamp = insert({"Id": 1})["dynamodb"]["ApproximateCreationDateTime"]
        assert now - 2 <= stamp <= now + 2


class TestSequenceNumbers:
    def test_they_increase_per_stream_with_21_digits(self) -> None:
        sequencer = Sequencer(DYNAMODB_FIRST_SEQUENCE)
        orders = [insert({"Id": i}, sequencer=sequencer) for i in range(3)]
        other = insert({"Id": 9}, table="Other", sequencer=sequencer)
        numbers = [int(r["dynamodb"]["SequenceNumber"]) for r in orders]
        assert numbers == [10**20, 10**20 + 10, 10**20 + 20]
        assert all(len(r["dynamodb"]["SequenceNumber"]) == 21 for r in orders)
        assert other["dynamodb"]["SequenceNumber"] == str(10**20)  # a count of its own

    def test_successive_builders_are_in_stream_order(self) -> None:
        records = [
            insert({"Id": 1}),
            modify({"Id": 1, "v": 1}, {"Id": 1, "v": 2}),
            remove({"Id": 1}),
            ttl_delete({"Id": 2}),
        ]
        numbers = [int(r["dynamodb"]["SequenceNumber"]) for r in records]
        assert numbers == sorted(set(numbers))

    def test_an_explicit_number_moves_the_count_past_it(self) -> None:
        sequencer = Sequencer(100)
        assert insert({"Id": 1}, sequencer=sequencer)["dynamodb"]["SequenceNumber"] == "100"
        given = insert({"Id": 2}, sequence="5000", sequencer=sequencer)
        assert given["dynamodb"]["SequenceNumber"] == "5000"
        assert insert({"Id": 3}, sequencer=sequencer)["dynamodb"]["SequenceNumber"] == "5010"
        insert({"Id": 4}, sequence=7, sequencer=sequencer)  # lower: the count stays
        assert insert({"Id": 5}, sequencer=sequencer)["dynamodb"]["SequenceNumber"] == "5020"
        sequencer.reset()
        assert insert({"Id": 6}, sequencer=sequencer)["dynamodb"]["SequenceNumber"] == "100"

    def test_a_sequence_number_is_digits(self) -> None:
        with pytest.raises(ValueError, match="string of digits"):
            insert({"Id": 1}, sequence="12a")
        with pytest.raises(ValueError, match="first >= 0"):
            Sequencer(-1)


class TestItemSize:
    @pytest.mark.parametrize(
        ("attributes", "size"),
        [
            ({"s": {"S": "héllo"}}, 1 + 6),  # UTF-8 bytes
            ({"n": {"N": "100"}}, 1 + 1 + 1),  # one significant digit
            ({"n": {"N": "0.00120"}}, 1 + 1 + 1),  # 12: leading/trailing zeros trimmed
            ({"n": {"N": "12345"}}, 1 + 3 + 1),  # 5 digits: 3 bytes
            ({"n": {"N": "-1.5"}}, 1 + 1 + 1),
            ({"n": {"N": "0"}}, 1 + 0 + 1),
            ({"b": {"BOOL": False}}, 1 + 1),
            ({"z": {"NULL": True}}, 1 + 1),
            ({"b": {"B": "AAEC"}}, 1 + 3),  # base64 of 3 raw bytes
            ({"l": {"L": []}}, 1 + 3),
            ({"l": {"L": [{"S": "ab"}, {"N": "1"}]}}, 1 + 3 + (1 + 2) + (1 + 2)),
            ({"m": {"M": {"k": {"S": "v"}}}}, 1 + 3 + (1 + 1 + 1)),
            ({"ss": {"SS": ["a", "bc"]}}, 2 + 3),
            ({"ns": {"NS": ["1", "100"]}}, 2 + 2 + 2),
            ({"bs": {"BS": ["AA==", "AAA="]}}, 2 + 1 + 2),
        ],
    )
    def test_dynamodbs_documented_rules(self, attributes: dict[str, Any], size: int) -> None:
        assert item_size(attributes) == size

    def test_an_unknown_type_is_refused(self) -> None:
        with pytest.raises(ValueError, match="not a DynamoDB attribute value"):
            item_size({"x": {"Q": "1"}})


class TestKinesisRecords:
    def test_a_record_is_what_the_source_delivers(self) -> None:
        """Built here and converted by the Kinesis source from the same wire record: equal."""
        arn = kinesis_stream_arn("orders", region="eu-central-1")
        record = kinesis_record(
            {"order": 1},
            partition_key="customer-7",
            shard_id="shardId-000000000003",
            stream_arn=arn,
            sequence=49590338271490256608559692538361571095921575989136588898,
            arrival=1545084650.987,
            invoke_identity_arn="arn:aws:iam::123456789012:role/lambda-role",
        )
        wire = {
            "SequenceNumber": "49590338271490256608559692538361571095921575989136588898",
            "PartitionKey": "customer-7",
            "Data": base64.b64encode(b'{"order": 1}').decode(),
            "ApproximateArrivalTimestamp": 1545084650.987,
        }
        [delivered] = lambda_records(
            [wire], "shardId-000000000003", arn, "arn:aws:iam::123456789012:role/lambda-role"
        )
        assert record == delivered
        assert record["eventID"] == (
            "shardId-000000000003:49590338271490256608559692538361571095921575989136588898"
        )
        assert record["awsRegion"] == "eu-central-1"
        assert shape_of(record) is KINESIS_SHAPE

    @pytest.mark.parametrize(
        ("data", "raw"),
        [
            (b"\x00\xffpoison", b"\x00\xffpoison"),
            ("héllo", "héllo".encode()),
            ({"n": 1, "s": "x"}, b'{"n": 1, "s": "x"}'),
            ([1, 2], b"[1, 2]"),
        ],
    )
    def test_data_is_base64_of_bytes_text_or_json(self, data: Any, raw: bytes) -> None:
        record = kinesis_record(data, partition_key="k")
        assert base64.b64decode(record["kinesis"]["data"]) == raw

    def test_sequence_numbers_count_per_shard_with_56_digits(self) -> None:
        sequencer = Sequencer(KINESIS_FIRST_SEQUENCE)
        first = [kinesis_record(b"a", partition_key="k", sequencer=sequencer) for _ in range(3)]
        other = kinesis_record(
            b"b", partition_key="k", shard_id="shardId-000000000001", sequencer=sequencer
        )
        numbers = [int(r["kinesis"]["sequenceNumber"]) for r in first]
        assert numbers == [49 * 10**54, 49 * 10**54 + 10, 49 * 10**54 + 20]
        assert all(len(r["kinesis"]["sequenceNumber"]) == 56 for r in first)
        assert other["kinesis"]["sequenceNumber"] == str(49 * 10**54)
        assert other["eventID"] == f"shardId-000000000001:{49 * 10**54}"

    def test_arrival_is_epoch_seconds_to_the_millisecond(self) -> None:
        record = kinesis_record(b"x", partition_key="k", arrival=1545084650.98765)
        assert record["kinesis"]["approximateArrivalTimestamp"] == 1545084650.988
        moment = datetime(2024, 1, 1, tzinfo=UTC)
        assert kinesis_record(b"x", partition_key="k", arrival=moment)["kinesis"][
            "approximateArrivalTimestamp"
        ] == (1704067200.0)


class TestAgainstTheStreamsSource:
    def test_a_built_record_has_the_shape_the_dynamodb_source_delivers(self) -> None:
        """The same item put on the test streams server and read through boto3 and the
        DynamoDB Streams source's ``lambda_record``: the same keys and values everywhere but
        in what differs per record (eventID, SequenceNumber) and in SizeBytes, which the
        server only approximates."""
        item = {"Id": 7, "name": "x", "blob": b"\x01", "tags": ["a"]}
        built = insert(item, keys="Id", table="Orders", created=CREATED)
        with StreamsServer() as server:
            stream = server.create_stream("Orders", hash_key="Id")
            shard = stream.shard_ids[0]
            stream.put(
                shard,
                "INSERT",
                keys=built["dynamodb"]["Keys"],
                new_image=built["dynamodb"]["NewImage"],
                created=CREATED,
            )
            client = boto3.client(
                "dynamodbstreams",
                endpoint_url=server.endpoint_url,
                region_name="us-east-1",
                config=Config(retries={"total_max_attempts": 1}),
            )
            iterator = client.get_shard_iterator(
                StreamArn=stream.arn, ShardId=shard, ShardIteratorType="TRIM_HORIZON"
            )["ShardIterator"]
            [raw] = client.get_records(ShardIterator=iterator)["Records"]
        delivered = lambda_record(dict(raw), stream.arn)
        assert set(built) == set(delivered)
        assert list(built["dynamodb"]) == list(delivered["dynamodb"])
        for key in ("eventName", "eventVersion", "eventSource", "awsRegion"):
            assert built[key] == delivered[key]
        for key in ("ApproximateCreationDateTime", "Keys", "NewImage", "StreamViewType"):
            assert built["dynamodb"][key] == delivered["dynamodb"][key]


def test_event_wraps_records() -> None:
    records = [insert({"Id": 1}), insert({"Id": 2})]
    assert event(*records) == {"Records": records}
    assert event() == {"Records": []}


def test_stream_arns() -> None:
    assert dynamodb_stream_arn("T", region="ap-south-1", label="L") == (
        "arn:aws:dynamodb:ap-south-1:123456789012:table/T/stream/L"
    )
    assert kinesis_stream_arn("s") == "arn:aws:kinesis:us-east-1:123456789012:stream/s"
