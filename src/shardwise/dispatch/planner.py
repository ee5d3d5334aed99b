"""Retry and bisection of one batch, as Lambda does it. Pure: no I/O, no clock.

The batch is kept as ordered, contiguous segments of record indexes; the first segment is
the one to invoke next, and everything before it is resolved (processed, or handed to the
destination). That is what lets the checkpoint advance inside a batch without ever passing
an unresolved record.

* success: the segment is resolved.
* partial failure at ``k`` (ReportBatchItemFailures): records before ``k`` are resolved;
  the rest is retried - as a retry attempt, or, with bisection on, as a split (Lambda
  "bisects at the returned sequence number"), which consumes no attempt.
* failure (exception, timeout, malformed response, or a partial failure at the first
  record): with bisection on and more than one record, the segment is split in two halves
  that keep their attempt count (splits do not consume retries); otherwise an attempt is
  consumed, and past ``maximum_retry_attempts`` the segment is given up on.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass

__all__ = ["Next", "RetryPlanner", "Segment"]


@dataclass(slots=True)
class Segment:
    """Records ``start:end`` of the batch, and how often they failed and were invoked."""

    start: int
    end: int
    attempts: int = 0
    invocations: int = 0

    def __len__(self) -> int:
        return self.end - self.start


class Next(enum.Enum):
    INVOKE = "invoke"  # invoke the current segment now
    RETRY = "retry"  # invoke the current segment again after a backoff
    GIVE_UP = "give_up"  # retries exhausted: hand the current segment to the destination


class RetryPlanner:
    """Decides what happens to a batch of ``size`` records after each invocation."""

    def __init__(self, size: int, *, maximum_retry_attempts: int, bisect: bool) -> None:
        if size < 1:
            raise ValueError("a batch has at least one record")
        self._size = size
        self._max_retries = maximum_retry_attempts
        self._bisect = bisect
        self._segments: deque[Segment] = deque([Segment(0, size)])

    @property
    def current(self) -> Segment | None:
        """The segment to act on next; None once every record is resolved."""
        return self._segments[0] if self._segments else None

    @property
    def resolved(self) -> int:
        """How many leading records of the batch are resolved."""
        return self._segments[0].start if self._segments else self._size

    def invoked(self) -> None:
        self._require().invocations += 1

    def succeeded(self) -> None:
        self._resolve_current()

    def discard_prefix(self, count: int) -> None:
        """The first ``count`` records of the current segment are resolved without invoking
        (e.g. too old, handed to the destination)."""
        segment = self._require()
        if not 0 < count <= len(segment):
            raise ValueError(f"cannot discard {count} of {len(segment)} records")
        segment.start += count
        if not len(segment):
            self._resolve_current()

    def give_up(self) -> None:
        """The current segment went to the destination (or was dropped): resolved."""
        self._resolve_current()

    def failed(self, failed_from: int = 0) -> Next:
        """The invocation failed from record ``failed_from`` of the current segment on."""
        segment = self._require()
        if not 0 <= failed_from < len(segment):
            raise ValueError(f"failure index {failed_from} outside a {len(segment)}-record segment")
        if failed_from > 0:
            segment.start += failed_from
            if self._bisect:
                return Next.INVOKE
            return self._consume_attempt(segment)
        if self._bisect and len(segment) > 1:
            middle = segment.start + len(segment) // 2
            self._segments.popleft()
            self._segments.extendleft(
                [
                    Segment(middle, segment.end, segment.attempts, segment.invocations),
                    Segment(segment.start, middle, segment.attempts, segment.invocations),
                ]
            )
            return Next.INVOKE
        return self._consume_attempt(segment)

    def _consume_attempt(self, segment: Segment) -> Next:
        segment.attempts += 1
        if self._max_retries >= 0 and segment.attempts > self._max_retries:
            return Next.GIVE_UP
        return Next.RETRY

    def _resolve_current(self) -> None:
        self._segments.popleft()

    def _require(self) -> Segment:
        if not self._segments:
            raise RuntimeError("every record of the batch is already resolved")
        return self._segments[0]
