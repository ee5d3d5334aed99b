"""Stream records in the shape Lambda hands a handler, built from plain Python values.

DynamoDB Streams: ``insert``, ``modify``, ``remove`` and ``ttl_delete`` take items as plain
dicts (``{"order_id": "o-1", "amount": 12.5}``) and return the record Lambda delivers:
``eventID``, ``eventName``, ``eventVersion`` "1.1", ``eventSource`` "aws:dynamodb",
``awsRegion``, ``eventSourceARN`` and ``dynamodb`` with ``ApproximateCreationDateTime``
(epoch seconds), ``Keys``, the images the stream's view type carries, ``SequenceNumber``,
``SizeBytes`` and ``StreamViewType``. Values go through boto3's ``TypeSerializer``, as a
``put_item`` of the same dict would: floats become ``Decimal(str(x))`` first (the
serializer refuses floats), binary values are delivered base64-encoded, as Lambda does. A
TTL delete is a REMOVE with the ``userIdentity`` DynamoDB gives it.

Kinesis: ``kinesis_record`` takes the data (bytes, text, or a value encoded as JSON) and a
partition key and returns the record Lambda delivers (``kinesis.data`` base64).

Sequence numbers: each stream (DynamoDB) or shard (Kinesis) counts up from a realistic
start (21 digits for DynamoDB Streams, 56 for Kinesis) in the order records are built, and
a number given explicitly moves the count past it, so records built one after the other
are always in stream order. ``event(*records)`` is the event ``{"Records": [...]}``.
"""

from __future__ import annotations

import base64
import json
import math
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Final, Literal, TypeAlias

from boto3.dynamodb.types import TypeSerializer

from shardwise.records import StreamRecord

__all__ = [
    "ACCOUNT_ID",
    "DYNAMODB_FIRST_SEQUENCE",
    "KINESIS_FIRST_SEQUENCE",
    "Sequencer",
    "ViewType",
    "dynamodb_stream_arn",
    "event",
    "insert",
    "item_size",
    "kinesis_record",
    "kinesis_stream_arn",
    "modify",
    "remove",
    "ttl_delete",
]

ViewType: TypeAlias = Literal["KEYS_ONLY", "NEW_IMAGE", "OLD_IMAGE", "NEW_AND_OLD_IMAGES"]
Moment: TypeAlias = datetime | float | int | None

ACCOUNT_ID: Final = "123456789012"
DEFAULT_REGION: Final = "us-east-1"
DEFAULT_TABLE: Final = "test-table"
DEFAULT_STREAM: Final = "test-stream"
DEFAULT_KINESIS_SHARD: Final = "shardId-000000000000"
# The label a table's stream ARN ends with (the stream's creation time).
STREAM_LABEL: Final = "2024-01-01T00:00:00.000"
DYNAMODB_FIRST_SEQUENCE: Final = 10**20  # 21 digits, as DynamoDB Streams' are
KINESIS_FIRST_SEQUENCE: Final = 49 * 10**54  # 56 digits, as Kinesis' are
_STRIDE: Final = 10  # gaps between numbers, as the services leave them

_NEW_VIEWS: Final = frozenset({"NEW_IMAGE", "NEW_AND_OLD_IMAGES"})
_OLD_VIEWS: Final = frozenset({"OLD_IMAGE", "NEW_AND_OLD_IMAGES"})
_VIEW_TYPES: Final = frozenset({"KEYS_ONLY", "NEW_IMAGE", "OLD_IMAGE", "NEW_AND_OLD_IMAGES"})
_KEY_TYPES: Final = frozenset({"S", "N", "B"})
_TTL_IDENTITY: Final = {"type": "Service", "principalId": "dynamodb.amazonaws.com"}

_serializer = TypeSerializer()


class Sequencer:
    """Increasing sequence numbers, one count per key (a stream, or a stream's shard).

    ``next`` hands out the key's next number; ``seen`` moves the count past a number given
    explicitly, so later numbers are still greater. Thread-safe.
    """

    def __init__(self, first: int, *, stride: int = _STRIDE) -> None:
        if first < 0 or stride < 1:
            raise ValueError("a Sequencer counts up from first >= 0 in steps of stride >= 1")
        self._first = first
        self._stride = stride
        self._last: dict[str, int] = {}
        self._lock = threading.Lock()

    def next(self, key: str) -> str:
        with self._lock:
            number = self._last.get(key, self._first - self._stride) + self._stride
            self._last[key] = number
            return str(number)

    def seen(self, key: str, number: int) -> None:
        with self._lock:
            self._last[key] = max(number, self._last.get(key, number))

    def reset(self) -> None:
        """Start every count over."""
        with self._lock:
            self._last.clear()


_DYNAMODB_SEQUENCES = Sequencer(DYNAMODB_FIRST_SEQUENCE)
_KINESIS_SEQUENCES = Sequencer(KINESIS_FIRST_SEQUENCE)


def dynamodb_stream_arn(
    table: str = DEFAULT_TABLE, *, region: str = DEFAULT_REGION, label: str = STREAM_LABEL
) -> str:
    """A table's stream ARN: ``arn:aws:dynamodb:<region>:<account>:table/<table>/stream/<label>``
    (the account is ``ACCOUNT_ID``)."""
    return f"arn:aws:dynamodb:{region}:{ACCOUNT_ID}:table/{table}/stream/{label}"


def kinesis_stream_arn(stream: str = DEFAULT_STREAM, *, region: str = DEFAULT_REGION) -> str:
    """A Kinesis stream's ARN: ``arn:aws:kinesis:<region>:<account>:stream/<stream>``."""
    return f"arn:aws:kinesis:{region}:{ACCOUNT_ID}:stream/{stream}"


# -- DynamoDB Streams ----------------------------------------------------------------------


def insert(
    new: Mapping[str, Any],
    *,
    keys: str | Sequence[str] | None = None,
    table: str = DEFAULT_TABLE,
    region: str = DEFAULT_REGION,
    stream_arn: str | None = None,
    view_type: ViewType = "NEW_AND_OLD_IMAGES",
    sequence: int | str | None = None,
    created: Moment = None,
    event_id: str | None = None,
    sequencer: Sequencer | None = None,
) -> StreamRecord:
    """An INSERT of item ``new``.

    ``keys`` names the table's key attributes (partition key, then sort key); by default
    the item's first attribute is the partition key. ``stream_arn`` defaults to the stream
    of ``table`` in ``region``; ``created`` (ApproximateCreationDateTime) to now;
    ``sequence`` to the stream's next number.
    """
    return _dynamodb_record(
        "INSERT",
        _key_names(keys, new),
        new=new,
        old=None,
        stream_arn=stream_arn or dynamodb_stream_arn(table, region=region),
        view_type=view_type,
        sequence=sequence,
        created=created,
        event_id=event_id,
        sequencer=sequencer,
    )


def modify(
    old: Mapping[str, Any],
    new: Mapping[str, Any],
    *,
    keys: str | Sequence[str] | None = None,
    table: str = DEFAULT_TABLE,
    region: str = DEFAULT_REGION,
    stream_arn: str | None = None,
    view_type: ViewType = "NEW_AND_OLD_IMAGES",
    sequence: int | str | None = None,
    created: Moment = None,
    event_id: str | None = None,
    sequencer: Sequencer | None = None,
) -> StreamRecord:
    """A MODIFY of an item from ``old`` to ``new``; both hold the same key values (a key
    that changes is a REMOVE and an INSERT in DynamoDB). Options as ``insert``."""
    names = _key_names(keys, new)
    if _keys_of(old, names) != _keys_of(new, names):
        raise ValueError(
            f"modify: the key attributes {list(names)} differ between old and new; in DynamoDB "
            "that is a REMOVE of the old item and an INSERT of the new one"
        )
    return _dynamodb_record(
        "MODIFY",
        names,
        new=new,
        old=old,
        stream_arn=stream_arn or dynamodb_stream_arn(table, region=region),
        view_type=view_type,
        sequence=sequence,
        created=created,
        event_id=event_id,
        sequencer=sequencer,
    )


def remove(
    old: Mapping[str, Any],
    *,
    keys: str | Sequence[str] | None = None,
    table: str = DEFAULT_TABLE,
    region: str = DEFAULT_REGION,
    stream_arn: str | None = None,
    view_type: ViewType = "NEW_AND_OLD_IMAGES",
    sequence: int | str | None = None,
    created: Moment = None,
    event_id: str | None = None,
    sequencer: Sequencer | None = None,
) -> StreamRecord:
    """A REMOVE (DeleteItem) of item ``old``. Options as ``insert``."""
    return _dynamodb_record(
        "REMOVE",
        _key_names(keys, old),
        new=None,
        old=old,
        stream_arn=stream_arn or dynamodb_stream_arn(table, region=region),
        view_type=view_type,
        sequence=sequence,
        created=created,
        event_id=event_id,
        sequencer=sequencer,
    )


def ttl_delete(
    old: Mapping[str, Any],
    *,
    keys: str | Sequence[str] | None = None,
    table: str = DEFAULT_TABLE,
    region: str = DEFAULT_REGION,
    stream_arn: str | None = None,
    view_type: ViewType = "NEW_AND_OLD_IMAGES",
    sequence: int | str | None = None,
    created: Moment = None,
    event_id: str | None = None,
    sequencer: Sequencer | None = None,
) -> StreamRecord:
    """A REMOVE by Time to Live: as ``remove``, with the ``userIdentity`` DynamoDB's TTL
    service gives it (``{"type": "Service", "principalId": "dynamodb.amazonaws.com"}``)."""
    record = remove(
        old,
        keys=keys,
        table=table,
        region=region,
        stream_arn=stream_arn,
        view_type=view_type,
        sequence=sequence,
        created=created,
        event_id=event_id,
        sequencer=sequencer,
    )
    record["userIdentity"] = dict(_TTL_IDENTITY)
    return record


def _dynamodb_record(
    event_name: str,
    key_names: tuple[str, ...],
    *,
    new: Mapping[str, Any] | None,
    old: Mapping[str, Any] | None,
    stream_arn: str,
    view_type: str,
    sequence: int | str | None,
    created: Moment,
    event_id: str | None,
    sequencer: Sequencer | None,
) -> StreamRecord:
    if view_type not in _VIEW_TYPES:
        raise ValueError(f"view_type must be one of {sorted(_VIEW_TYPES)}, not {view_type!r}")
    item = new if new is not None else old
    assert item is not None
    keys = _serialized(_keys_of(item, key_names))
    for name, value in keys.items():
        kind = next(iter(value))
        if kind not in _KEY_TYPES:
            raise ValueError(f"key attribute {name!r} is of type {kind}; keys are S, N or B")
    body: dict[str, Any] = {
        "ApproximateCreationDateTime": int(_epoch(created)),
        "Keys": keys,
    }
    if new is not None and view_type in _NEW_VIEWS:
        body["NewImage"] = _serialized(new)
    if old is not None and view_type in _OLD_VIEWS:
        body["OldImage"] = _serialized(old)
    body["SequenceNumber"] = _sequence(sequencer or _DYNAMODB_SEQUENCES, stream_arn, sequence)
    body["SizeBytes"] = sum(
        item_size(body[part]) for part in ("Keys", "NewImage", "OldImage") if part in body
    )
    body["StreamViewType"] = view_type
    return {
        "eventID": event_id or uuid.uuid4().hex,
        "eventName": event_name,
        "eventVersion": "1.1",
        "eventSource": "aws:dynamodb",
        "awsRegion": _region_of(stream_arn),
        "dynamodb": body,
        "eventSourceARN": stream_arn,
    }


def _key_names(keys: str | Sequence[str] | None, item: Mapping[str, Any]) -> tuple[str, ...]:
    if keys is None:
        if not item:
            raise ValueError("an item needs at least its key attributes")
        return (next(iter(item)),)
    names = (keys,) if isinstance(keys, str) else tuple(keys)
    if not 1 <= len(names) <= 2:
        raise ValueError(f"keys names a partition key and at most a sort key, not {names}")
    return names


def _keys_of(item: Mapping[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    missing = [name for name in names if name not in item]
    if missing:
        raise ValueError(f"the item has no key attribute {missing[0]!r} (keys: {list(names)})")
    return {name: item[name] for name in names}


def _serialized(item: Mapping[str, Any]) -> dict[str, Any]:
    """A plain dict in DynamoDB JSON as Lambda delivers it (binary base64)."""
    return {str(name): _lambda_json(_serializer.serialize(_plain(v))) for name, v in item.items()}


def _plain(value: Any) -> Any:
    """What TypeSerializer takes: floats as ``Decimal(str(x))``, at any depth."""
    if isinstance(value, float):
        return Decimal(str(value))
    if isinstance(value, Mapping):
        return {key: _plain(inner) for key, inner in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(inner) for inner in value]
    if isinstance(value, set | frozenset):
        if not value:
            raise ValueError("DynamoDB has no empty sets")
        return {_plain(inner) for inner in value}
    return value


def _b64(value: bytes | bytearray) -> str:
    return base64.b64encode(bytes(value)).decode("ascii")


def _lambda_json(value: Mapping[str, Any]) -> dict[str, Any]:
    """boto3's serialized value with its binaries base64-encoded, as Lambda delivers them."""
    kind, inner = next(iter(value.items()))
    if kind == "B":
        return {"B": _b64(inner)}
    if kind == "BS":
        return {"BS": [_b64(b) for b in inner]}
    if kind == "M":
        return {"M": {name: _lambda_json(v) for name, v in inner.items()}}
    if kind == "L":
        return {"L": [_lambda_json(v) for v in inner]}
    return dict(value)


# -- SizeBytes --------------------------------------------------------------------------------


def item_size(attributes: Mapping[str, Any]) -> int:
    """The size of attributes in DynamoDB JSON, by DynamoDB's documented rules ("Item sizes
    and formats"): each attribute's name (UTF-8) plus its value - a string's UTF-8 bytes,
    a binary's raw bytes, a number's 1 byte per two significant digits plus 1, 1 for a
    boolean or null, 3 for a list or map plus each element (1 byte each, and a map
    element's name). Sets count their elements, with no overhead (the documentation says
    nothing of them). A record's ``SizeBytes`` is this for its Keys and its images.

    An estimate as the documentation's is (DynamoDB stores numbers in a packed form whose
    size the rule approximates); for AWS's example events it gives AWS's numbers."""
    return sum(len(str(name).encode()) + _value_size(value) for name, value in attributes.items())


def _value_size(value: Mapping[str, Any]) -> int:
    kind, inner = next(iter(value.items()))
    size = _SIZES.get(kind)
    if size is None:
        raise ValueError(f"not a DynamoDB attribute value: {dict(value)!r}")
    return size(inner)


def _number_size(text: str) -> int:
    digits = "".join(str(d) for d in Decimal(text).as_tuple().digits).strip("0")
    return math.ceil(len(digits) / 2) + 1


def _binary_size(value: Any) -> int:
    if isinstance(value, bytes | bytearray):
        return len(value)
    return len(base64.b64decode(str(value)))


_SIZES: Final[dict[str, Callable[[Any], int]]] = {
    "S": lambda s: len(str(s).encode()),
    "N": lambda n: _number_size(str(n)),
    "B": _binary_size,
    "BOOL": lambda _: 1,
    "NULL": lambda _: 1,
    "SS": lambda ss: sum(len(str(s).encode()) for s in ss),
    "NS": lambda ns: sum(_number_size(str(n)) for n in ns),
    "BS": lambda bs: sum(_binary_size(b) for b in bs),
    "L": lambda items: 3 + sum(1 + _value_size(v) for v in items),
    "M": lambda m: 3 + sum(1 + len(str(k).encode()) + _value_size(v) for k, v in m.items()),
}


# -- Kinesis ----------------------------------------------------------------------------------


def kinesis_record(
    data: bytes | str | Mapping[str, Any] | list[Any],
    *,
    partition_key: str,
    shard_id: str = DEFAULT_KINESIS_SHARD,
    stream: str = DEFAULT_STREAM,
    region: str = DEFAULT_REGION,
    stream_arn: str | None = None,
    sequence: int | str | None = None,
    arrival: Moment = None,
    invoke_identity_arn: str = "",
    sequencer: Sequencer | None = None,
) -> StreamRecord:
    """A Kinesis record as Lambda delivers it: ``data`` base64-encoded (text as UTF-8, a
    dict or list as its JSON), ``eventID`` ``<shard_id>:<sequenceNumber>``.

    ``stream_arn`` defaults to the ARN of ``stream`` in ``region``; ``arrival``
    (approximateArrivalTimestamp) to now; ``sequence`` to the shard's next number.
    ``invoke_identity_arn`` is what shardwise's ``source.kinesis.invoke_identity_arn`` sets
    (Lambda puts the function's execution role there)."""
    arn = stream_arn or kinesis_stream_arn(stream, region=region)
    if isinstance(data, bytes):
        raw = data
    elif isinstance(data, str):
        raw = data.encode()
    else:
        raw = json.dumps(data).encode()
    number = _sequence(sequencer or _KINESIS_SEQUENCES, f"{arn}/{shard_id}", sequence)
    return {
        "kinesis": {
            "kinesisSchemaVersion": "1.0",
            "partitionKey": partition_key,
            "sequenceNumber": number,
            "data": base64.b64encode(raw).decode("ascii"),
            "approximateArrivalTimestamp": round(_epoch(arrival), 3),
        },
        "eventSource": "aws:kinesis",
        "eventVersion": "1.0",
        "eventID": f"{shard_id}:{number}",
        "eventName": "aws:kinesis:record",
        "invokeIdentityArn": invoke_identity_arn,
        "awsRegion": _region_of(arn),
        "eventSourceARN": arn,
    }


# -- shared -----------------------------------------------------------------------------------


def event(*records: StreamRecord) -> dict[str, Any]:
    """The event a handler receives for ``records``: ``{"Records": [...]}``."""
    return {"Records": list(records)}


def _sequence(sequencer: Sequencer, key: str, given: int | str | None) -> str:
    if given is None:
        return sequencer.next(key)
    text = str(given)
    if not text.isdigit():
        raise ValueError(f"a sequence number is a string of digits, not {given!r}")
    sequencer.seen(key, int(text))
    return text


def _epoch(moment: Moment) -> float:
    if moment is None:
        return datetime.now(UTC).timestamp()
    if isinstance(moment, datetime):
        aware = moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
        return aware.timestamp()
    return float(moment)


def _region_of(arn: str) -> str:
    parts = arn.split(":")
    return parts[3] if len(parts) > 3 else ""
