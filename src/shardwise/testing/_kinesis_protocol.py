"""The Kinesis Data Streams JSON 1.1 protocol: a target and a body in, a status and bytes out.

``StreamsServer`` hands every request whose ``X-Amz-Target`` starts ``Kinesis_20131202.``
to ``KinesisProtocol.handle``, which knows nothing of sockets. A request names its stream
by StreamARN or by StreamName (looked up in the signing region). Shard iterators are the
DynamoDB side's stateless tokens (``_streams_protocol``), expiring after the stream's
``iterator_ttl_seconds``; ListShards' NextToken is a token of the same kind that carries
the stream, the last shard listed and the filter, which is why a call that sends one must
not name the stream, as on the service.

Before it is answered, a request the protocol can tie to a stream passes that stream's
``CallGate`` (``admit_call``): counted, then faulted or throttled if scripted so. Errors
are JSON 1.1's ``{"__type": code, "message": ...}``, HTTP 400, or 500 for InternalFailure.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, Final, TypeAlias

from shardwise.testing._kinesis_gate import OPERATIONS, admit_call
from shardwise.testing._kinesis_requests import (
    MAX_PUT_RECORDS,
    MAX_PUT_RECORDS_BYTES,
    NEXT_TOKEN_TTL_SECONDS,
    NOT_WITH_NEXT_TOKEN,
    SUMMARY_FIELDS,
    bounded_int,
    decode_next_token,
    encode_next_token,
    epoch_seconds,
    error_response,
    expired_message,
    invalid,
    record_entry,
    shard_filter_of,
    stream_fields,
    stream_not_found,
)
from shardwise.testing._kinesis_state import (
    KinesisRegistry,
    ScriptedKinesisStream,
    list_shards,
    read_page,
    shard_position,
)
from shardwise.testing._shard_log import StreamsApiError
from shardwise.testing._streams_protocol import (
    _decode_iterator,
    _encode_iterator,
    _Iterator,
    _optional_str,
    _parse_request,
    _required_str,
)
from shardwise.testing._streams_state import ACCOUNT_ID

__all__ = ["KINESIS_TARGET", "KinesisProtocol", "error_response"]

KINESIS_TARGET: Final = "Kinesis_20131202."

_Request: TypeAlias = dict[str, Any]
_Operation: TypeAlias = Callable[[_Request, str | None], bytes]

_logger = logging.getLogger(__name__)
_to_json = json.JSONEncoder(separators=(",", ":")).encode


class KinesisProtocol:
    """Answers Kinesis Data Streams requests from a registry of scripted streams."""

    def __init__(self, registry: KinesisRegistry, *, calls: Counter[str] | None = None) -> None:
        self.registry = registry
        self.calls: Counter[str] = Counter() if calls is None else calls
        self._lock = registry.lock
        self._operations: dict[str, _Operation] = {
            "DescribeStream": self._describe_stream,
            "DescribeStreamSummary": self._describe_stream_summary,
            "GetRecords": self._get_records,
            "GetShardIterator": self._get_shard_iterator,
            "ListShards": self._list_shards,
            "ListStreams": self._list_streams,
            "MergeShards": self._merge_shards,
            "PutRecord": self._put_record,
            "PutRecords": self._put_records,
            "SplitShard": self._split_shard,
            "UpdateShardCount": self._update_shard_count,
        }

    def handle(self, target: str, body: bytes, region: str | None = None) -> tuple[int, bytes]:
        """Answer one request; ``region`` (from the signature) scopes StreamName look-ups."""
        operation = target.removeprefix(KINESIS_TARGET)
        answer = self._operations.get(operation) if operation in OPERATIONS else None
        if answer is None or operation == target:
            return error_response("UnknownOperationException", f"Unknown operation {target!r}")
        with self._lock:
            self.calls[operation] += 1
        try:
            request = _parse_request(body)
            stream, shard_id = self._addressed(operation, request, region)
            if stream is not None:
                admit_call(stream, operation, shard_id)
            return 200, answer(request, region)
        except StreamsApiError as exc:
            return error_response(exc.code, exc.message)
        except Exception:
            _logger.exception("streams server failed to answer Kinesis %s", operation)
            return error_response("InternalFailure", f"{operation} failed in the server")

    def _addressed(
        self, operation: str, request: _Request, region: str | None
    ) -> tuple[ScriptedKinesisStream | None, str | None]:
        """The stream (and shard) a request addresses, if it can be told; never raises."""
        with contextlib.suppress(StreamsApiError):
            if operation == "GetRecords":
                iterator = self._iterator(request)
                return self.registry.find(iterator.arn), iterator.shard_id
            if operation == "ListShards" and request.get("NextToken") is not None:
                arn = decode_next_token(_required_str(request, "NextToken"))[0]
                return self.registry.find(arn), None
            if operation != "ListStreams":
                stream = self._stream(request, region)
                shard_id = request.get("ShardId") if operation == "GetShardIterator" else None
                return stream, shard_id if isinstance(shard_id, str) else None
        return None, None

    def _stream(self, request: _Request, region: str | None) -> ScriptedKinesisStream:
        arn = _optional_str(request, "StreamARN")
        name = _optional_str(request, "StreamName")
        if arn is not None:
            stream = self.registry.find(arn)
            if stream is None:
                raise stream_not_found(arn.rpartition("/")[2])
            if name not in {None, stream.name}:
                raise invalid(f"StreamARN {arn} does not name stream {name}")
            return stream
        if name is None:
            raise invalid("Either StreamName or StreamARN must be given")
        stream = self.registry.named(name, region)
        if stream is None:
            raise stream_not_found(name)
        return stream

    @staticmethod
    def _iterator(request: _Request) -> _Iterator:
        token = _required_str(request, "ShardIterator")
        try:
            return _decode_iterator(token)
        except StreamsApiError:
            raise invalid("Invalid ShardIterator.") from None

    def _describe_stream_summary(self, request: _Request, region: str | None) -> bytes:
        stream = self._stream(request, region)
        summary = stream_fields(stream)
        summary |= {"OpenShardCount": len(stream.open_shard_ids), "ConsumerCount": 0}
        return _to_json({"StreamDescriptionSummary": summary}).encode()

    def _describe_stream(self, request: _Request, region: str | None) -> bytes:
        stream = self._stream(request, region)
        shards, more = list_shards(
            stream,
            after=_optional_str(request, "ExclusiveStartShardId"),
            limit=bounded_int(request, "Limit", 100, 10_000),
        )
        description = stream_fields(stream) | {"Shards": shards, "HasMoreShards": more}
        return _to_json({"StreamDescription": description}).encode()

    def _list_shards(self, request: _Request, region: str | None) -> bytes:
        limit = bounded_int(request, "MaxResults", 1000, 10_000)
        token = _optional_str(request, "NextToken")
        after: str | None
        if token is not None:
            clashing = [name for name in NOT_WITH_NEXT_TOKEN if request.get(name) is not None]
            if clashing:
                raise invalid(f"NextToken and {clashing[0]} cannot be provided together.")
            arn, after, shard_filter, issued = decode_next_token(token)
            if time.monotonic() - issued > NEXT_TOKEN_TTL_SECONDS:
                raise StreamsApiError("ExpiredNextTokenException", "The NextToken has expired.")
            stream = self.registry.find(arn)
            if stream is None:
                raise stream_not_found(arn.rpartition("/")[2])
        else:
            stream = self._stream(request, region)
            after = _optional_str(request, "ExclusiveStartShardId")
            shard_filter = shard_filter_of(request.get("ShardFilter"))
        shards, more = list_shards(stream, after=after, limit=limit, shard_filter=shard_filter)
        reply: dict[str, Any] = {"Shards": shards}
        if more:
            reply["NextToken"] = encode_next_token(stream.arn, shards[-1]["ShardId"], shard_filter)
        return _to_json(reply).encode()

    def _list_streams(self, request: _Request, region: str | None) -> bytes:
        limit = bounded_int(request, "Limit", 100, 10_000)
        # The NextToken handed out is the last name listed, so both say where to go on.
        after = _optional_str(request, "NextToken") or _optional_str(
            request, "ExclusiveStartStreamName"
        )
        streams = sorted(self.registry.streams(region), key=lambda stream: stream.name)
        if after is not None:
            streams = [stream for stream in streams if stream.name > after]
        page = streams[:limit]
        summaries = []
        for stream in page:
            fields = stream_fields(stream)
            summaries.append({key: fields[key] for key in SUMMARY_FIELDS})
        reply: dict[str, Any] = {
            "StreamNames": [stream.name for stream in page],
            "HasMoreStreams": len(streams) > limit,
            "StreamSummaries": summaries,
        }
        if len(streams) > limit:
            reply["NextToken"] = page[-1].name
        return _to_json(reply).encode()

    def _get_shard_iterator(self, request: _Request, region: str | None) -> bytes:
        stream = self._stream(request, region)
        shard_id = _required_str(request, "ShardId")
        index = shard_position(
            stream,
            shard_id,
            _required_str(request, "ShardIteratorType"),
            sequence_number=_optional_str(request, "StartingSequenceNumber"),
            timestamp=epoch_seconds(request, "Timestamp"),
        )
        return _to_json({"ShardIterator": _encode_iterator(stream.arn, shard_id, index)}).encode()

    def _get_records(self, request: _Request, region: str | None) -> bytes:
        iterator = self._iterator(request)
        limit = bounded_int(request, "Limit", 10_000, 10_000)
        stream = self.registry.find(iterator.arn)
        if stream is None:
            raise stream_not_found(iterator.arn.rpartition("/")[2])
        if _optional_str(request, "StreamARN") not in {None, stream.arn}:
            raise invalid("StreamARN is not the stream of the ShardIterator")
        age = time.monotonic() - iterator.issued
        if age > stream.iterator_ttl_seconds:
            raise StreamsApiError("ExpiredIteratorException", expired_message(age, stream))
        page = read_page(stream, iterator.shard_id, iterator.index, limit)
        parts = [
            b'{"Records":[',
            b",".join(page.records),
            b'],"MillisBehindLatest":',
            str(page.millis_behind_latest).encode(),
        ]
        if page.next_index is None:
            parts += [b',"ChildShards":', _to_json(page.child_shards).encode()]
        else:
            token = _encode_iterator(iterator.arn, iterator.shard_id, page.next_index)
            parts += [b',"NextShardIterator":"', token.encode("ascii"), b'"']
        parts.append(b"}")
        return b"".join(parts)

    def _put_record(self, request: _Request, region: str | None) -> bytes:
        stream = self._stream(request, region)
        data, partition_key, explicit = record_entry(request)
        with self._lock:
            shard_id = stream.shard_for(partition_key, explicit_hash_key=explicit)
            number = stream.put(data, shard_id=shard_id, partition_key=partition_key)
        reply = {"ShardId": shard_id, "SequenceNumber": number, "EncryptionType": "NONE"}
        return _to_json(reply).encode()

    def _put_records(self, request: _Request, region: str | None) -> bytes:
        stream = self._stream(request, region)
        entries = request.get("Records")
        if not isinstance(entries, list) or not 1 <= len(entries) <= MAX_PUT_RECORDS:
            raise StreamsApiError("ValidationException", "Records must hold 1 to 500 records")
        records = [record_entry(entry) for entry in entries]
        if sum(len(data) + len(key.encode()) for data, key, _ in records) > MAX_PUT_RECORDS_BYTES:
            raise invalid("Records size exceeds 5 MB limit")
        results = []
        with self._lock:  # one write: no reshard between the records
            for data, partition_key, explicit in records:
                shard_id = stream.shard_for(partition_key, explicit_hash_key=explicit)
                number = stream.put(data, shard_id=shard_id, partition_key=partition_key)
                results.append({"SequenceNumber": number, "ShardId": shard_id})
        reply = {"FailedRecordCount": 0, "Records": results, "EncryptionType": "NONE"}
        return _to_json(reply).encode()

    def _split_shard(self, request: _Request, region: str | None) -> bytes:
        stream = self._stream(request, region)
        shard_id = _required_str(request, "ShardToSplit")
        new_key = _required_str(request, "NewStartingHashKey")
        if not new_key.isdigit():
            raise StreamsApiError("ValidationException", "NewStartingHashKey must be a decimal")
        with self._lock:
            self._reshardable(stream, shard_id)
            start, end = stream.hash_key_range(shard_id)
            # The service keeps at least two hash keys in each child.
            if not start + 1 < int(new_key) < end:
                raise invalid(
                    f"NewStartingHashKey {new_key} used in SplitShard() on shard {shard_id} in "
                    f"stream {stream.name} under account {ACCOUNT_ID} is not both greater than "
                    f"one plus the shard's StartingHashKey {start} and less than the shard's "
                    f"EndingHashKey {end}."
                )
            stream.split(shard_id, int(new_key))
        return b""

    def _merge_shards(self, request: _Request, region: str | None) -> bytes:
        stream = self._stream(request, region)
        shard_id = _required_str(request, "ShardToMerge")
        adjacent_id = _required_str(request, "AdjacentShardToMerge")
        with self._lock:
            self._reshardable(stream, shard_id)
            self._reshardable(stream, adjacent_id)
            try:
                stream.merge(shard_id, adjacent_id)
            except ValueError:
                raise invalid(
                    f"Shards {shard_id} and {adjacent_id} in stream {stream.name} under account "
                    f"{ACCOUNT_ID} are not an adjacent pair of shards eligible for merging"
                ) from None
        return b""

    def _update_shard_count(self, request: _Request, region: str | None) -> bytes:
        stream = self._stream(request, region)
        target = bounded_int(request, "TargetShardCount", 0, 10_000)
        if _required_str(request, "ScalingType") != "UNIFORM_SCALING":
            raise StreamsApiError("ValidationException", "ScalingType must be UNIFORM_SCALING")
        with self._lock:
            current = len(stream.open_shard_ids)
            if target > 2 * current or 2 * target < current:
                raise StreamsApiError(
                    "LimitExceededException",
                    "UpdateShardCount may scale to between half and double the open shard "
                    f"count. Current open shard count: {current}; target: {target}",
                )
            stream.update_shard_count(target)
        reply = {
            "StreamName": stream.name,
            "CurrentShardCount": current,
            "TargetShardCount": target,
            "StreamARN": stream.arn,
        }
        return _to_json(reply).encode()

    @staticmethod
    def _reshardable(stream: ScriptedKinesisStream, shard_id: str) -> None:
        if shard_id not in stream.shard_ids:
            raise StreamsApiError(
                "ResourceNotFoundException",
                f"Could not find shard {shard_id} in stream {stream.name} "
                f"under account {ACCOUNT_ID}.",
            )
        if shard_id not in stream.open_shard_ids:
            raise invalid(
                f"Shard {shard_id} in stream {stream.name} under account {ACCOUNT_ID} has "
                "already been merged or split, and thus is not eligible for merging or splitting."
            )
