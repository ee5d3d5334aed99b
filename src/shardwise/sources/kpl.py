"""KPL aggregates: recognise them, decode them, split them into their user records.

The Kinesis Producer Library packs many *user records* into one Kinesis record whose data is

    F3 89 9A C2  |  AggregatedRecord (protobuf)  |  MD5 digest of the protobuf (16 bytes)

    message AggregatedRecord {
      repeated string partition_key_table     = 1;
      repeated string explicit_hash_key_table = 2;
      repeated Record records                 = 3;
    }
    message Record {
      required uint64 partition_key_index     = 1;
      optional uint64 explicit_hash_key_index = 2;
      required bytes  data                    = 3;
      repeated Tag    tags                    = 4;  // key/value pairs, not surfaced
    }

A user record names its partition key (and explicit hash key) by index into the tables, so
records sharing a key store it once. Lambda delivers an aggregate as it is; with
``deaggregate`` shardwise splits it the way the KCL does: each user record becomes a copy of
the aggregate's record with its own ``data`` and ``partitionKey`` (and ``explicitHashKey``),
the aggregate's ``sequenceNumber`` and its index as ``subSequenceNumber``.

As for the KCL, data is an aggregate only when it starts with the magic bytes and has at
least one byte between them and the digest. An aggregate that fails its MD5 check or does not
decode is delivered whole, never dropped, and so is one holding no user records (dropping it
would skip its sequence number silently); ``on_corrupt`` hears of each.

Design:

* No protobuf runtime: the three messages are decoded here, by hand, in one pass (varints,
  length-delimited fields; any other field is skipped by its wire type, groups included, so
  fields added to the format later do not break decoding; tags are skipped unread). Where
  the format is fixed decoding is strict: a known field with the wrong wire type, a missing
  required field, an index outside its table or a key that is not UTF-8 is a
  ``CorruptAggregateError`` naming the user record (by its sub-sequence number) and the
  byte (counted from the start of the data, magic bytes included).
* Cheap for the records that are not aggregates: the magic bytes fix the first five base64
  characters of the data, so a record is base64-decoded only when it starts with them.
* No copies of an aggregate's bytes: the MD5 runs over a memoryview, and each user record's
  base64 is encoded straight from a memoryview slice of the aggregate.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

from shardwise.records import StreamRecord

__all__ = [
    "AGGREGATE_MAGIC",
    "CorruptAggregateError",
    "UserRecord",
    "deaggregate",
    "decode_aggregate",
    "is_aggregate",
]

AGGREGATE_MAGIC: Final[bytes] = b"\xf3\x89\x9a\xc2"
_DIGEST_SIZE: Final = 16  # MD5
_HEAD: Final = len(AGGREGATE_MAGIC)
# The magic bytes' first 30 bits fill five base64 characters whatever follows them.
_BASE64_PREFIX: Final = base64.b64encode(AGGREGATE_MAGIC).decode("ascii")[:5]

# Protobuf wire types.
_VARINT: Final = 0
_FIXED64: Final = 1
_DELIMITED: Final = 2
_START_GROUP: Final = 3
_END_GROUP: Final = 4
_FIXED32: Final = 5
_MAX_FIELD: Final = (1 << 29) - 1  # protobuf's largest field number

# The tags (field number << 3 | wire type) the format's fields are written with.
_PARTITION_KEY_TABLE: Final = 1 << 3 | _DELIMITED
_HASH_KEY_TABLE: Final = 2 << 3 | _DELIMITED
_RECORDS: Final = 3 << 3 | _DELIMITED
_PARTITION_KEY_INDEX: Final = 1 << 3 | _VARINT
_HASH_KEY_INDEX: Final = 2 << 3 | _VARINT
_DATA: Final = 3 << 3 | _DELIMITED

# A user record while decoding: partition key index, explicit hash key index, data span.
_Entry = tuple[int, int | None, int, int]
# A decoded user record: partition key, explicit hash key, data span in the aggregate.
_Span = tuple[str, str | None, int, int]


class CorruptAggregateError(ValueError):
    """Data with the KPL magic bytes that is not a well-formed aggregate."""


@dataclass(frozen=True, slots=True)
class UserRecord:
    """One user record of an aggregate."""

    partition_key: str
    explicit_hash_key: str | None
    data: bytes


def is_aggregate(data: bytes) -> bool:
    """Whether ``data`` is framed as a KPL aggregate (magic bytes, a protobuf, a digest)."""
    return len(data) > _HEAD + _DIGEST_SIZE and data[:_HEAD] == AGGREGATE_MAGIC


def decode_aggregate(data: bytes) -> list[UserRecord]:
    """The user records of an aggregate, in order; ``CorruptAggregateError`` if it is not one."""
    return [
        UserRecord(partition_key, explicit_hash_key, data[start:stop])
        for partition_key, explicit_hash_key, start, stop in _decode(data)
    ]


def deaggregate(
    records: Sequence[StreamRecord],
    *,
    on_corrupt: Callable[[StreamRecord, str], None] | None = None,
) -> list[StreamRecord]:
    """Lambda's Kinesis records with each aggregate replaced by its user records.

    A record that is not an aggregate is passed on as the same object. A user record is a
    shallow copy of its aggregate's record with a new ``kinesis`` dict (``data``,
    ``partitionKey``, ``explicitHashKey`` when it has one, ``subSequenceNumber``); the input
    is never changed. An aggregate that does not decode, or holds no user records, is
    passed on whole and reported to ``on_corrupt(record, reason)``.
    """
    out: list[StreamRecord] = []
    for record in records:
        encoded = record["kinesis"].get("data")
        if not isinstance(encoded, str) or not encoded.startswith(_BASE64_PREFIX):
            out.append(record)
            continue
        spans: list[_Span] | None
        try:
            raw = binascii.a2b_base64(encoded)
            # The magic bytes and a digest at most are plain data (as for the KCL).
            spans = _decode(raw) if is_aggregate(raw) else None
        except CorruptAggregateError as exc:
            spans, reason = [], str(exc)
        except ValueError as exc:  # binascii.Error, or a str that is not ASCII
            spans, reason = [], f"the data is not base64: {exc}"
        else:
            reason = "the aggregate holds no user records"
        if spans:
            out.extend(_user_records(record, memoryview(raw), spans))
            continue
        out.append(record)
        if spans is not None and on_corrupt is not None:
            on_corrupt(record, reason)
    return out


def _user_records(record: StreamRecord, view: memoryview, spans: list[_Span]) -> list[StreamRecord]:
    """Copies of an aggregate's record, one per user record (the input left unchanged)."""
    body = record["kinesis"]
    # Lambda's records have no explicitHashKey; if this one has, a user record never inherits it.
    inherited_hash_key = "explicitHashKey" in body
    users: list[StreamRecord] = []
    for index, (partition_key, explicit_hash_key, start, stop) in enumerate(spans):
        user = {
            **body,
            "data": binascii.b2a_base64(view[start:stop], newline=False).decode("ascii"),
            "partitionKey": partition_key,
            "subSequenceNumber": index,
        }
        if explicit_hash_key is not None:
            user["explicitHashKey"] = explicit_hash_key
        elif inherited_hash_key:
            del user["explicitHashKey"]
        users.append({**record, "kinesis": user})
    return users


def _decode(data: bytes) -> list[_Span]:
    """Check the framing and the digest, decode the protobuf and resolve the table indexes."""
    if not is_aggregate(data):
        raise CorruptAggregateError(
            f"not a KPL aggregate: {len(data)} bytes, needing the magic bytes "
            f"{AGGREGATE_MAGIC.hex(' ').upper()}, a protobuf and a {_DIGEST_SIZE}-byte digest"
        )
    end = len(data) - _DIGEST_SIZE
    digest = hashlib.md5(memoryview(data)[_HEAD:end], usedforsecurity=False).digest()
    if digest != data[end:]:
        raise CorruptAggregateError(
            f"MD5 digest mismatch: the aggregate ends with {data[end:].hex()}, "
            f"its {end - _HEAD} protobuf bytes hash to {digest.hex()}"
        )
    partition_keys: list[str] = []
    hash_keys: list[str] = []
    entries: list[_Entry] = []
    pos = _HEAD
    while pos < end:
        at = pos
        tag, pos = _varint(data, pos, end)
        if tag == _RECORDS:
            start, pos = _delimited(data, pos, end, at)
            entries.append(_record(data, start, pos, len(entries)))
        elif tag in (_PARTITION_KEY_TABLE, _HASH_KEY_TABLE):
            start, pos = _delimited(data, pos, end, at)
            table = partition_keys if tag == _PARTITION_KEY_TABLE else hash_keys
            table.append(_text(data, start, pos, tag >> 3, len(table)))
        elif tag >> 3 in (1, 2, 3):
            raise _wire_type_error("AggregatedRecord", tag, _DELIMITED, at)
        else:
            pos = _skip(data, pos, end, at, tag)
    return _resolve(entries, partition_keys, hash_keys)


def _record(data: bytes, pos: int, end: int, index: int) -> _Entry:
    """A ``Record`` message occupying ``data[pos:end]``, its indexes not yet resolved."""
    key_index: int | None = None
    hash_index: int | None = None
    span: tuple[int, int] | None = None
    while pos < end:
        at = pos
        tag, pos = _varint(data, pos, end)
        if tag == _PARTITION_KEY_INDEX:
            key_index, pos = _varint(data, pos, end)
        elif tag == _DATA:
            span = _delimited(data, pos, end, at)
            pos = span[1]
        elif tag == _HASH_KEY_INDEX:
            hash_index, pos = _varint(data, pos, end)
        elif tag >> 3 in (1, 2, 3):
            expected = _DELIMITED if tag >> 3 == 3 else _VARINT
            raise _wire_type_error(f"record {index}", tag, expected, at)
        else:  # tags (4) and anything newer
            pos = _skip(data, pos, end, at, tag)
    if key_index is None:
        raise CorruptAggregateError(f"record {index} has no partition_key_index (required field 1)")
    if span is None:
        raise CorruptAggregateError(f"record {index} has no data (required field 3)")
    return key_index, hash_index, span[0], span[1]


def _resolve(entries: list[_Entry], partition_keys: list[str], hash_keys: list[str]) -> list[_Span]:
    """Replace table indexes by keys (the tables may follow the records in the message)."""
    spans: list[_Span] = []
    for index, (key_index, hash_index, start, stop) in enumerate(entries):
        if key_index >= len(partition_keys):
            raise CorruptAggregateError(
                f"record {index}: partition_key_index {key_index} is out of the partition "
                f"key table ({len(partition_keys)} keys)"
            )
        hash_key = None
        if hash_index is not None:
            if hash_index >= len(hash_keys):
                raise CorruptAggregateError(
                    f"record {index}: explicit_hash_key_index {hash_index} is out of the "
                    f"explicit hash key table ({len(hash_keys)} keys)"
                )
            hash_key = hash_keys[hash_index]
        spans.append((partition_keys[key_index], hash_key, start, stop))
    return spans


def _varint(data: bytes, pos: int, end: int) -> tuple[int, int]:
    """The varint at ``pos`` and the position after it."""
    if pos < end and data[pos] < 0x80:  # one byte: tags, indexes, short lengths
        return data[pos], pos + 1
    at = pos
    value = shift = 0
    while pos < end:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
        if shift == 70:  # a uint64 takes at most 10 bytes
            raise CorruptAggregateError(f"varint at byte {at} is longer than 10 bytes")
    raise CorruptAggregateError(f"truncated varint at byte {at}")


def _delimited(data: bytes, pos: int, end: int, at: int) -> tuple[int, int]:
    """The span of the length-delimited value at ``pos`` (its field's tag is at ``at``)."""
    length, pos = _varint(data, pos, end)
    if length > end - pos:
        raise CorruptAggregateError(
            f"field at byte {at} is {length} bytes long, but only {end - pos} bytes are left"
        )
    return pos, pos + length


def _skip(data: bytes, pos: int, end: int, at: int, tag: int) -> int:
    """The position after the value of the field whose tag (at ``at``) was just read.

    Groups (deprecated, never written by the KPL) are skipped to their matching end-group
    tag, iteratively, so nesting cannot exhaust the stack.
    """
    groups: list[int] = []
    while True:
        field, wire_type = tag >> 3, tag & 7
        if not 0 < field <= _MAX_FIELD:
            raise CorruptAggregateError(f"field number {field} at byte {at} is out of range")
        if wire_type == _VARINT:
            pos = _varint(data, pos, end)[1]
        elif wire_type == _DELIMITED:
            pos = _delimited(data, pos, end, at)[1]
        elif wire_type in (_FIXED64, _FIXED32):
            pos += 8 if wire_type == _FIXED64 else 4
            if pos > end:
                raise CorruptAggregateError(f"fixed-size field at byte {at} is truncated")
        elif wire_type == _START_GROUP:
            groups.append(field)
        elif wire_type == _END_GROUP and groups and groups[-1] == field:
            groups.pop()
        else:
            raise CorruptAggregateError(
                f"unexpected wire type {wire_type} (field {field}) at byte {at}"
            )
        if not groups:
            return pos
        if pos >= end:
            raise CorruptAggregateError(f"group (field {groups[-1]}) not closed at byte {end}")
        at = pos
        tag, pos = _varint(data, pos, end)


def _wire_type_error(where: str, tag: int, expected: int, at: int) -> CorruptAggregateError:
    return CorruptAggregateError(
        f"{where}: field {tag >> 3} at byte {at} has wire type {tag & 7}, not {expected}"
    )


def _text(data: bytes, start: int, stop: int, field: int, index: int) -> str:
    try:
        return data[start:stop].decode("utf-8")
    except UnicodeDecodeError as exc:
        table = "partition key" if field == 1 else "explicit hash key"
        raise CorruptAggregateError(
            f"{table} table entry {index} at byte {start} is not UTF-8: {exc.reason}"
        ) from exc
