"""What a Kinesis stream does to a call before answering it: count it, fault it, throttle it.

``CallGate`` is the part of a ``ScriptedKinesisStream`` the protocol passes each request
through (``admit_call``) once it knows which stream, and which shard, the request
addresses. Faults come first, the way an outage hits a call whatever it asks: the
stream's own ``FaultQueue`` (``_faults``, the kind the DynamoDB side scripts too). Then
the service's rate limits, each a sliding one-second window of the calls admitted (a
throttled call is not admitted, so it does not count against the next second): GetRecords
5 per second per shard, ListShards 1000 per second per stream (the service's limits). A
test can change or lift each limit at any time.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from typing import Final

from shardwise.testing._faults import FaultQueue
from shardwise.testing._shard_log import StreamsApiError
from shardwise.testing._streams_state import ACCOUNT_ID

__all__ = [
    "FAULT_CODES",
    "GET_RECORDS_PER_SECOND",
    "LIST_SHARDS_PER_SECOND",
    "OPERATIONS",
    "CallGate",
    "admit_call",
]

OPERATIONS: Final = (
    "DescribeStream",
    "DescribeStreamSummary",
    "GetRecords",
    "GetShardIterator",
    "ListShards",
    "ListStreams",
    "MergeShards",
    "PutRecord",
    "PutRecords",
    "SplitShard",
    "UpdateShardCount",
)
FAULT_CODES: Final = frozenset(
    {
        "AccessDeniedException",
        "ExpiredIteratorException",
        "ExpiredNextTokenException",
        "InternalFailure",
        "InvalidArgumentException",
        "KMSAccessDeniedException",
        "KMSDisabledException",
        "KMSInvalidStateException",
        "KMSNotFoundException",
        "KMSOptInRequired",
        "KMSThrottlingException",
        "LimitExceededException",
        "ProvisionedThroughputExceededException",
        "ResourceInUseException",
        "ResourceNotFoundException",
        "ValidationException",
    }
)
GET_RECORDS_PER_SECOND: Final = 5  # per shard
LIST_SHARDS_PER_SECOND: Final = 1000  # per stream
_STREAM_OPERATIONS: Final = tuple(op for op in OPERATIONS if op != "ListStreams")
_SHARD_OPERATIONS: Final = frozenset({"GetRecords", "GetShardIterator"})


class CallGate:
    """Call counts, injected faults and rate limits of one stream (see the module doc)."""

    def __init__(self, lock: threading.RLock, *, name: str, limits: bool) -> None:
        self._lock = lock
        self.name = name
        self.get_records_per_second: int | None = GET_RECORDS_PER_SECOND if limits else None
        self.list_shards_per_second: int | None = LIST_SHARDS_PER_SECOND if limits else None
        self.calls: Counter[str] = Counter()
        self.get_records_calls: Counter[str] = Counter()
        self._faults = FaultQueue(
            _STREAM_OPERATIONS, _SHARD_OPERATIONS, FAULT_CODES, "ScriptedKinesisStream"
        )
        self._admitted: dict[str, deque[float]] = {}  # rate-limited calls of the last second

    def fail(
        self,
        operation: str,
        code: str,
        *,
        shard_id: str | None = None,
        times: int | None = 1,
        message: str | None = None,
    ) -> None:
        """Make the next ``times`` calls of ``operation`` on this stream fail with ``code``.

        ``shard_id`` (GetRecords, GetShardIterator) limits the fault to calls on one shard;
        ``times=None`` fails every matching call until ``clear_faults()``. Faults queue in
        the order given and hit before the request is validated or rate-limited.
        InternalFailure answers HTTP 500, every other code 400.
        """
        self._faults.add(operation, code, shard_id, times, message)

    def clear_faults(self) -> None:
        self._faults.clear()

    def _admit(self, key: str, per_second: int | None, now: float) -> bool:
        """Whether a rate-limited call may go ahead: fewer than ``per_second`` admitted
        within the last second."""
        if per_second is None:
            return True
        admitted = self._admitted.setdefault(key, deque())
        while admitted and now - admitted[0] >= 1.0:
            admitted.popleft()
        if len(admitted) >= per_second:
            return False
        admitted.append(now)
        return True


def admit_call(gate: CallGate, operation: str, shard_id: str | None) -> None:
    """Count a call addressed to the gate's stream, then raise its injected fault or its
    throttle, if any."""
    with gate._lock:
        gate.calls[operation] += 1
        if operation == "GetRecords" and shard_id is not None:
            gate.get_records_calls[shard_id] += 1
        fault = gate._faults.take(operation, shard_id)
        if fault is not None:
            raise StreamsApiError(fault.code, fault.message)
        now = time.monotonic()
        if operation == "GetRecords" and shard_id is not None:
            if not gate._admit(shard_id, gate.get_records_per_second, now):
                raise StreamsApiError(
                    "ProvisionedThroughputExceededException",
                    f"Rate exceeded for Shard - {ACCOUNT_ID}/{gate.name}/{shard_id}",
                )
        elif operation == "ListShards" and not gate._admit("", gate.list_shards_per_second, now):
            raise StreamsApiError(
                "LimitExceededException",
                f"Rate exceeded for stream {gate.name} under account {ACCOUNT_ID}.",
            )
