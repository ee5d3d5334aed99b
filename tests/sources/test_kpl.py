"""KPL aggregates, made by AWS's own aggregator (aws-kinesis-agg), split back into user records.

Well-formed aggregates come from the real ``RecordAggregator``; the malformed ones are
written field by field here, framed with the magic bytes and a correct digest so that the
decoder (not the MD5 check) is what meets them. The protobuf runtime (the aggregator's own
dependency) is the reference the hand-written decoder is checked against.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import sys
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shardwise.records import KINESIS_SHAPE, StreamRecord
from shardwise.sources.kpl import (
    AGGREGATE_MAGIC,
    CorruptAggregateError,
    UserRecord,
    deaggregate,
    decode_aggregate,
    is_aggregate,
)

SEQUENCE = "49590338271490256608559692538361571095921575989136588898"
STREAM_ARN = "arn:aws:kinesis:us-east-1:123456789012:stream/orders"

# A user record as the aggregator takes it: partition key, data, explicit hash key.
User = tuple[str, bytes, str | None]


def _aws_modules() -> tuple[Any, Any]:
    """The aggregator and its protobuf messages; their import puts the package's directory
    at the head of sys.path (for its generated code), which is undone here."""
    saved = list(sys.path)
    try:
        from aws_kinesis_agg import aggregator  # type: ignore[import-untyped]
    finally:
        sys.path[:] = saved
    return aggregator.RecordAggregator, aggregator.messages_pb2


RecordAggregator, messages_pb2 = _aws_modules()


def aggregate(users: Sequence[User]) -> bytes:
    """One aggregate holding ``users``, as the KPL (and AWS's Python aggregator) writes it."""
    aggregator = RecordAggregator()
    for partition_key, data, explicit_hash_key in users:
        full = aggregator.add_user_record(partition_key, data, explicit_hash_key)
        assert full is None, "the users must fit in one aggregate"
    _, _, data = aggregator.clear_and_get().get_contents()
    assert isinstance(data, bytes)
    return data


def kinesis_record(data: bytes, *, sequence: str = SEQUENCE) -> StreamRecord:
    """A record in the shape Lambda delivers (and shardwise's Kinesis source makes)."""
    return {
        "kinesis": {
            "kinesisSchemaVersion": "1.0",
            "partitionKey": "aggregate-key",
            "sequenceNumber": sequence,
            "data": base64.b64encode(data).decode("ascii"),
            "approximateArrivalTimestamp": 1767225600.123,
        },
        "eventSource": "aws:kinesis",
        "eventVersion": "1.0",
        "eventID": f"shardId-000000000000:{sequence}",
        "eventName": "aws:kinesis:record",
        "invokeIdentityArn": "arn:aws:iam::123456789012:role/shardwise",
        "awsRegion": "us-east-1",
        "eventSourceARN": STREAM_ARN,
    }


def as_users(records: list[StreamRecord]) -> list[User]:
    return [
        (
            r["kinesis"]["partitionKey"],
            base64.b64decode(r["kinesis"]["data"]),
            r["kinesis"].get("explicitHashKey"),
        )
        for r in records
    ]


# Protobuf, written by hand for the aggregates the aggregator would never write.


def varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def tag(field: int, wire_type: int) -> bytes:
    return varint(field << 3 | wire_type)


def delimited(field: int, payload: bytes) -> bytes:
    return tag(field, 2) + varint(len(payload)) + payload


def number(field: int, value: int) -> bytes:
    return tag(field, 0) + varint(value)


def record(*fields: bytes) -> bytes:
    """An AggregatedRecord's ``records`` entry (field 3) made of ``fields``."""
    return delimited(3, b"".join(fields))


def framed(message: bytes) -> bytes:
    """``message`` as an aggregate: magic bytes, message, its MD5 digest."""
    return AGGREGATE_MAGIC + message + hashlib.md5(message).digest()


class TestIsAggregate:
    """Data is an aggregate when it has the magic bytes, a protobuf and a digest."""

    def test_the_aggregators_output_is_one(self) -> None:
        assert is_aggregate(aggregate([("k", b"v", None)]))

    @pytest.mark.parametrize(
        ("data", "expected"),
        [
            (b"", False),
            (b'{"order": 1}', False),
            (AGGREGATE_MAGIC, False),
            (AGGREGATE_MAGIC + bytes(16), False),  # a digest and nothing to digest
            (AGGREGATE_MAGIC + bytes(17), True),
            (b"\xf3\x89\x9a\xc3" + bytes(17), False),
            (bytes(4) + AGGREGATE_MAGIC + bytes(17), False),
        ],
    )
    def test_framing(self, data: bytes, expected: bool) -> None:
        assert is_aggregate(data) is expected


class TestDecodeAggregate:
    """The user records come back exactly, in order."""

    def test_many_user_records_sharing_the_key_tables(self) -> None:
        users: list[User] = [
            (f"key-{i % 7}", f"payload {i}".encode() * (i % 5), str(i % 3) if i % 2 else None)
            for i in range(500)
        ]
        data = aggregate(users)
        # Each partition key is written once, in the table, however many records name it.
        assert data.count(b"key-3") == 1
        assert decode_aggregate(data) == [UserRecord(k, h, d) for k, d, h in users]

    def test_records_without_a_hash_key_among_records_with_one(self) -> None:
        # Record 1 has no explicit_hash_key_index: not the table's first key (index 0).
        data = aggregate(
            [("a", b"1", "170141183460469231731687303715884105728"), ("b", b"2", None)]
        )
        assert [r.explicit_hash_key for r in decode_aggregate(data)] == [
            "170141183460469231731687303715884105728",
            None,
        ]

    def test_unicode_partition_keys_and_empty_data(self) -> None:
        users: list[User] = [("ключ", b"", None), ("鍵🔑", b"\x00\xff", None), ("ключ", b"", None)]
        assert decode_aggregate(aggregate(users)) == [UserRecord(k, h, d) for k, d, h in users]

    def test_tags_and_unknown_fields_of_every_wire_type_are_skipped(self) -> None:
        unknown = (
            number(9, 2**63)
            + tag(10, 1) + bytes(8)
            + delimited(11, b"anything")
            + tag(12, 5) + bytes(4)
            + tag(13, 3) + number(1, 1) + tag(14, 3) + tag(14, 4) + tag(13, 4)  # nested groups
        )  # fmt: skip
        a_tag = delimited(4, delimited(1, b"origin") + delimited(2, b"eu"))
        message = (
            unknown
            + delimited(1, b"pk")
            + record(number(1, 0), unknown, a_tag, delimited(3, b"payload"))
            + unknown
        )
        assert decode_aggregate(framed(message)) == [UserRecord("pk", None, b"payload")]

    def test_tables_may_follow_the_records(self) -> None:
        message = (
            record(number(1, 1), number(2, 0), delimited(3, b"x"))
            + delimited(1, b"first")
            + delimited(1, b"second")
            + delimited(2, b"42")
        )
        assert decode_aggregate(framed(message)) == [UserRecord("second", "42", b"x")]

    def test_a_field_given_twice_takes_the_last_value_as_protobuf_does(self) -> None:
        message = delimited(1, b"a") + delimited(1, b"b") + record(
            number(1, 0), delimited(3, b"old"), number(1, 1), delimited(3, b"new")
        )  # fmt: skip
        assert decode_aggregate(framed(message)) == [UserRecord("b", None, b"new")]

    def test_an_aggregate_without_user_records_decodes_to_no_records(self) -> None:
        assert decode_aggregate(framed(delimited(1, b"pk"))) == []


class TestCorruptAggregates:
    """Each way an aggregate can be broken is named precisely."""

    def test_a_flipped_byte_fails_the_md5_check(self) -> None:
        data = bytearray(aggregate([("k", b"value", None)]))
        data[8] ^= 0x01
        with pytest.raises(CorruptAggregateError, match=r"^MD5 digest mismatch: the aggregate"):
            decode_aggregate(bytes(data))

    def test_a_truncated_aggregate_fails_the_md5_check(self) -> None:
        data = aggregate([("k", b"value", None), ("k", b"more", None)])
        with pytest.raises(CorruptAggregateError, match="MD5 digest mismatch"):
            decode_aggregate(data[:-5])

    def test_a_truncated_protobuf_with_a_matching_digest_is_named(self) -> None:
        body = aggregate([("k", b"value", None)])[4:-16]
        with pytest.raises(
            CorruptAggregateError,
            match=r"^field at byte 7 is 9 bytes long, but only 7 bytes are left$",
        ):
            decode_aggregate(framed(body[:-2]))

    def test_data_without_the_magic_bytes(self) -> None:
        with pytest.raises(
            CorruptAggregateError, match=r"not a KPL aggregate: 5 bytes.*F3 89 9A C2"
        ):
            decode_aggregate(b"plain")

    def test_the_error_is_a_value_error(self) -> None:
        with pytest.raises(ValueError, match="not a KPL aggregate"):
            decode_aggregate(b"plain")

    @pytest.mark.parametrize(
        ("message", "reason"),
        [
            pytest.param(b"\x1a\x80", "truncated varint at byte 5", id="truncated-varint"),
            pytest.param(
                b"\x1a" + b"\xff" * 10 + b"\x01", "longer than 10 bytes", id="long-varint"
            ),
            pytest.param(
                b"\x1a\x0a\x08\x00",
                "field at byte 4 is 10 bytes long, but only 2 bytes are left",
                id="past-the-end",
            ),
            pytest.param(
                delimited(1, b"pk") + record(delimited(3, b"x")),
                "record 0 has no partition_key_index (required field 1)",
                id="no-partition-key-index",
            ),
            pytest.param(
                delimited(1, b"pk") + record(number(1, 0)),
                "record 0 has no data (required field 3)",
                id="no-data",
            ),
            pytest.param(
                delimited(1, b"a")
                + delimited(1, b"b")
                + record(number(1, 1), delimited(3, b"x"))
                + record(number(1, 2), delimited(3, b"y")),
                "record 1: partition_key_index 2 is out of the partition key table (2 keys)",
                id="partition-key-index-out-of-table",
            ),
            pytest.param(
                delimited(1, b"a") + record(number(1, 0), number(2, 0), delimited(3, b"x")),
                "record 0: explicit_hash_key_index 0 is out of the explicit hash key table",
                id="hash-key-index-out-of-table",
            ),
            pytest.param(
                number(1, 7),
                "AggregatedRecord: field 1 at byte 4 has wire type 0, not 2",
                id="table-entry-as-a-number",
            ),
            pytest.param(
                delimited(1, b"a") + record(delimited(1, b"0"), delimited(3, b"x")),
                "record 0: field 1 at byte 9 has wire type 2, not 0",
                id="index-as-bytes",
            ),
            pytest.param(
                delimited(1, b"\xff\xfe") + record(number(1, 0), delimited(3, b"x")),
                "partition key table entry 0 at byte 6 is not UTF-8",
                id="key-not-utf8",
            ),
            pytest.param(
                delimited(2, b"\xc3") + delimited(1, b"a"),
                "explicit hash key table entry 0 at byte 6 is not UTF-8",
                id="hash-key-not-utf8",
            ),
            pytest.param(
                tag(5, 6) + b"\x00", "unexpected wire type 6 (field 5) at byte 4", id="wt6"
            ),
            pytest.param(tag(5, 4), "unexpected wire type 4 (field 5) at byte 4", id="lone-end"),
            pytest.param(tag(5, 3) + tag(6, 4), "unexpected wire type 4 (field 6)", id="bad-end"),
            pytest.param(tag(5, 3) + number(1, 1), "group (field 5) not closed", id="open-group"),
            pytest.param(
                tag(7, 1) + bytes(7), "fixed-size field at byte 4 is truncated", id="fixed64"
            ),
            pytest.param(
                tag(7, 5) + bytes(3), "fixed-size field at byte 4 is truncated", id="fixed32"
            ),
            pytest.param(b"\x00\x00", "field number 0 at byte 4 is out of range", id="field-0"),
            pytest.param(
                tag(1 << 29, 0) + b"\x00",
                f"field number {1 << 29} at byte 4 is out of range",
                id="field-too-large",
            ),
        ],
    )
    def test_undecodable_protobuf(self, message: bytes, reason: str) -> None:
        with pytest.raises(CorruptAggregateError) as raised:
            decode_aggregate(framed(message))
        assert reason in str(raised.value)


class TestDeaggregate:
    """Lambda's records in, the KCL's user records out; nothing dropped, nothing changed."""

    def test_user_records_in_lambdas_shape(self) -> None:
        aggregated = kinesis_record(aggregate([("k1", b"one", "42"), ("k2", b"two", None)]))
        first, second = deaggregate([aggregated])
        body = aggregated["kinesis"]
        assert first == {
            **aggregated,
            "kinesis": {
                "kinesisSchemaVersion": "1.0",
                "partitionKey": "k1",
                "sequenceNumber": SEQUENCE,
                "data": "b25l",
                "approximateArrivalTimestamp": body["approximateArrivalTimestamp"],
                "subSequenceNumber": 0,
                "explicitHashKey": "42",
            },
        }
        assert second["kinesis"] == {
            **body,
            "partitionKey": "k2",
            "data": "dHdv",
            "subSequenceNumber": 1,
        }
        assert second["eventID"] == f"shardId-000000000000:{SEQUENCE}"

    def test_sub_sequence_numbers_count_the_user_records_in_order(self) -> None:
        users: list[User] = [(f"k{i % 3}", str(i).encode(), None) for i in range(40)]
        out = deaggregate([kinesis_record(aggregate(users))])
        assert [r["kinesis"]["subSequenceNumber"] for r in out] == list(range(40))
        assert all(type(r["kinesis"]["subSequenceNumber"]) is int for r in out)
        assert {r["kinesis"]["sequenceNumber"] for r in out} == {SEQUENCE}
        assert as_users(out) == users
        # What dispatch checkpoints: the aggregate's sequence number and the user record's index.
        assert KINESIS_SHAPE.sequence_number(out[7]) == f"{SEQUENCE}:7"

    def test_records_that_are_not_aggregates_pass_as_the_same_objects(self) -> None:
        before = kinesis_record(b'{"order": 1}', sequence="1")
        after = kinesis_record(b"", sequence="3")
        aggregated = kinesis_record(aggregate([("a", b"x", None), ("b", b"y", None)]), sequence="2")
        out = deaggregate([before, aggregated, after])
        assert len(out) == 4
        assert out[0] is before
        assert out[3] is after
        assert "subSequenceNumber" not in before["kinesis"]
        assert [r["kinesis"]["sequenceNumber"] for r in out] == ["1", "2", "2", "3"]

    def test_the_input_is_not_changed(self) -> None:
        aggregated = kinesis_record(aggregate([("a", b"x", "7"), ("b", b"y", None)]))
        corrupt = kinesis_record(b"\xf3\x89\x9a\xc2" + bytes(40))
        records = [aggregated, corrupt]
        snapshot = copy.deepcopy(records)
        out = deaggregate(records, on_corrupt=lambda record, reason: None)
        assert records == snapshot
        assert all(r["kinesis"] is not aggregated["kinesis"] for r in out[:2])
        assert out[0]["kinesis"] is not out[1]["kinesis"]

    def test_a_user_record_never_inherits_the_aggregates_hash_key(self) -> None:
        aggregated = kinesis_record(aggregate([("a", b"x", "7"), ("b", b"y", None)]))
        aggregated["kinesis"]["explicitHashKey"] = "999"
        first, second = deaggregate([aggregated])
        assert first["kinesis"]["explicitHashKey"] == "7"
        assert "explicitHashKey" not in second["kinesis"]
        assert aggregated["kinesis"]["explicitHashKey"] == "999"

    def test_empty_user_data_is_an_empty_string(self) -> None:
        [user] = deaggregate(
            [kinesis_record(framed(delimited(1, b"k") + record(number(1, 0), delimited(3, b""))))]
        )
        assert user["kinesis"]["data"] == ""
        assert user["kinesis"]["partitionKey"] == "k"


class TestCorruptAggregatesPassThrough:
    """An aggregate that cannot be split is delivered whole, and reported."""

    @staticmethod
    def run(records: list[StreamRecord]) -> tuple[list[StreamRecord], list[tuple[Any, str]]]:
        reports: list[tuple[Any, str]] = []
        out = deaggregate(
            records, on_corrupt=lambda record, reason: reports.append((record, reason))
        )
        return out, reports

    def test_an_md5_mismatch(self) -> None:
        data = bytearray(aggregate([("k", b"value", None), ("j", b"other", None)]))
        data[10] ^= 0x40
        corrupt = kinesis_record(bytes(data))
        plain = kinesis_record(b"plain")
        out, reports = self.run([corrupt, plain])
        assert out == [corrupt, plain]
        assert out[0] is corrupt
        assert len(reports) == 1
        assert reports[0][0] is corrupt
        assert reports[0][1].startswith("MD5 digest mismatch")

    def test_a_truncated_aggregate(self) -> None:
        corrupt = kinesis_record(aggregate([("k", b"value", None)])[:-1])
        out, reports = self.run([corrupt])
        assert out == [corrupt]
        assert out[0] is corrupt
        assert len(reports) == 1
        assert reports[0][0] is corrupt
        assert "MD5" in reports[0][1]

    def test_an_undecodable_protobuf(self) -> None:
        corrupt = kinesis_record(
            framed(delimited(1, b"pk") + record(number(1, 3), delimited(3, b"x")))
        )
        out, reports = self.run([corrupt])
        assert out[0] is corrupt
        assert reports == [
            (corrupt, "record 0: partition_key_index 3 is out of the partition key table (1 keys)")
        ]

    def test_an_aggregate_without_user_records(self) -> None:
        empty = kinesis_record(framed(delimited(1, b"pk")))
        out, reports = self.run([empty])
        assert out == [empty]
        assert out[0] is empty
        assert reports == [(empty, "the aggregate holds no user records")]

    def test_data_that_is_not_base64(self) -> None:
        bad = kinesis_record(b"")
        bad["kinesis"]["data"] = "84mawg="  # the magic bytes' base64, badly padded
        out, reports = self.run([bad])
        assert out[0] is bad
        assert len(reports) == 1
        assert reports[0][1].startswith("the data is not base64")

    def test_data_that_does_not_start_like_an_aggregate_is_not_decoded(self) -> None:
        plain = kinesis_record(b"")
        plain["kinesis"]["data"] = "abc"  # not base64 either, but no business of deaggregation
        out, reports = self.run([plain])
        assert out[0] is plain
        assert reports == []

    def test_the_magic_bytes_and_a_digest_alone_are_plain_data(self) -> None:
        plain = kinesis_record(AGGREGATE_MAGIC + bytes(16))
        out, reports = self.run([plain])
        assert out[0] is plain
        assert reports == []

    def test_without_on_corrupt_the_aggregate_still_passes(self) -> None:
        data = bytearray(aggregate([("k", b"value", None)]))
        data[-1] ^= 0xFF
        corrupt = kinesis_record(bytes(data))
        assert deaggregate([corrupt]) == [corrupt]


# Kinesis partition keys: 1 to 256 Unicode characters (surrogates cannot be UTF-8).
partition_keys = st.text(st.characters(codec="utf-8"), min_size=1, max_size=256)
hash_keys = st.none() | st.integers(0, 2**128 - 1).map(str)
users_strategy = st.lists(
    st.tuples(partition_keys, st.binary(max_size=300), hash_keys), min_size=1, max_size=60
)


class TestProperties:
    """Whatever AWS's aggregator packs comes back; whatever the bytes, only one error type."""

    @given(users_strategy)
    def test_the_aggregators_output_deaggregates_to_its_input(self, users: list[User]) -> None:
        out = deaggregate([kinesis_record(aggregate(users))])
        assert as_users(out) == users
        assert [r["kinesis"]["subSequenceNumber"] for r in out] == list(range(len(users)))

    @settings(suppress_health_check=[HealthCheck.too_slow])
    @given(users_strategy, st.data())
    def test_mangled_protobufs_decode_as_protobuf_does_or_fail_cleanly(
        self, users: list[User], data: st.DataObject
    ) -> None:
        message = bytearray(aggregate(users)[4:-16])
        for _ in range(data.draw(st.integers(1, 4))):
            at = data.draw(st.integers(0, len(message) - 1))
            message[at] = data.draw(st.integers(0, 255))
        if data.draw(st.booleans()):
            del message[data.draw(st.integers(0, len(message))) :]
        mangled = bytes(message)
        try:
            decoded = decode_aggregate(framed(mangled))
        except CorruptAggregateError:
            return  # stricter than the protobuf runtime (UTF-8, required fields, indexes) is fine
        reference = messages_pb2.AggregatedRecord()
        try:
            reference.ParseFromString(mangled)
            expected = [
                UserRecord(
                    reference.partition_key_table[r.partition_key_index],
                    reference.explicit_hash_key_table[r.explicit_hash_key_index]
                    if r.HasField("explicit_hash_key_index")
                    else None,
                    r.data,
                )
                for r in reference.records
            ]
        except Exception:  # noqa: BLE001 - protobuf refused what was decoded: show it
            pytest.fail(f"decoded {decoded!r} from what protobuf refuses: {mangled!r}")
        assert decoded == expected
