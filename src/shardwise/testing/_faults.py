"""Injected faults: the queue behind ``StreamsServer.fail`` and ``ScriptedKinesisStream.fail``.

A fault is an operation, an error code and, for an operation that addresses a shard, that
shard; it hits the next ``times`` matching calls, or every one until cleared. Faults queue
in the order given, and a call takes the first that matches it. Each protocol holds its
own ``FaultQueue``, made with its operations, error codes and the name of the ``fail``
that scripts it: the DynamoDB Streams protocol one for the whole server, each Kinesis
stream one for the calls addressed to it. A protocol takes a call's fault before it
validates the request, and raises it as the ``StreamsApiError`` it names.
"""

from __future__ import annotations

import threading
from collections.abc import Collection
from dataclasses import dataclass

__all__ = ["Fault", "FaultQueue"]


@dataclass(slots=True)
class Fault:
    operation: str
    code: str
    shard_id: str | None
    remaining: int | None  # None: until cleared
    message: str


class FaultQueue:
    """The faults scripted for one protocol's calls (see the module doc); thread-safe.

    ``operations`` may be faulted, those of them in ``shard_operations`` on one shard;
    ``codes`` are the error codes a fault may answer with; ``who`` names, in the default
    message, the ``fail()`` that scripted the fault.
    """

    def __init__(
        self,
        operations: tuple[str, ...],
        shard_operations: Collection[str],
        codes: Collection[str],
        who: str,
    ) -> None:
        self._operations = operations
        self._shard_operations = shard_operations
        self._codes = codes
        self._who = who
        self._lock = threading.Lock()
        self._faults: list[Fault] = []

    def __len__(self) -> int:
        return len(self._faults)

    def add(
        self,
        operation: str,
        code: str,
        shard_id: str | None,
        times: int | None,
        message: str | None,
    ) -> None:
        """Queue a fault for the next ``times`` calls (None: until cleared); ``ValueError``
        if the operation, code, shard or count is not one this queue takes."""
        if operation not in self._operations:
            raise ValueError(f"operation must be one of {self._operations}, not {operation!r}")
        if code not in self._codes:
            raise ValueError(f"code must be one of {sorted(self._codes)}, not {code!r}")
        if shard_id is not None and operation not in self._shard_operations:
            raise ValueError(f"{operation} addresses no shard; shard_id must be None")
        if times is not None and times < 1:
            raise ValueError("times must be at least 1 (or None for until cleared)")
        text = message or f"{code} injected by {self._who}.fail()"
        with self._lock:
            self._faults.append(Fault(operation, code, shard_id, times, text))

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    def take(self, operation: str, shard_id: str | None) -> Fault | None:
        """The first fault queued for a call of ``operation`` on ``shard_id`` (None: a call
        on no shard, or one the protocol cannot tell), counted down and dropped once spent;
        None if no fault matches the call."""
        with self._lock:
            for fault in self._faults:
                if fault.operation != operation or fault.shard_id not in {None, shard_id}:
                    continue
                if fault.remaining is not None:
                    fault.remaining -= 1
                    if fault.remaining == 0:
                        self._faults.remove(fault)
                return fault
            return None
