"""What a handler's return value means, by Lambda's rules for ReportBatchItemFailures.

With ``function_response_types: [ReportBatchItemFailures]``:

* success: ``None``, ``{}``, ``{"batchItemFailures": []}`` or ``{"batchItemFailures": None}``;
* partial failure: every ``itemIdentifier`` is a sequence number of the batch; the lowest
  one is where the retry starts and every record before it is done (a user record split
  out of a KPL aggregate is named exactly by ``<sequenceNumber>:<subSequenceNumber>``; the
  aggregate's plain sequence number names its first record in the batch, so the retry
  starts there: nothing skipped, earlier siblings possibly delivered again);
* whole-batch failure: an empty, null or missing ``itemIdentifier``, or one that is not in
  the batch.

Lambda treats a misspelled key (``batchItemFailure``) or a value of the wrong type as
success, silently dropping the failures the handler meant to report. shardwise treats any
malformed value as a failure of the whole batch and says why, naming processor and shard.

Without ReportBatchItemFailures the return value is ignored, as in Lambda; a value that
looks like a failure report is warned about, because the handler probably expected it to
count.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from shardwise.records import DYNAMODB_SHAPE, StreamRecord, shape_of

__all__ = ["Response", "interpret_response", "looks_like_failure_report"]

_KEY = "batchItemFailures"


@dataclass(frozen=True, slots=True)
class Response:
    """The verdict on one invocation.

    ``failed_from`` is the index (in the invoked records) of the first record to retry:
    None = every record succeeded; 0 = the whole batch failed. ``problem`` explains a
    failure that did not come from an exception (malformed or unknown identifiers).
    """

    failed_from: int | None
    problem: str | None = None

    @property
    def ok(self) -> bool:
        return self.failed_from is None


SUCCESS = Response(failed_from=None)


class _Malformed(Exception):
    """The response is not a valid failure report; the message says why."""


def interpret_response(value: Any, records: Sequence[StreamRecord]) -> Response:
    """Judge a ReportBatchItemFailures response for ``records`` (the invoked records)."""
    try:
        failures = _failure_list(value)
        if not failures:
            return SUCCESS
        return Response(failed_from=_lowest_failure(failures, records))
    except _Malformed as exc:
        return Response(failed_from=0, problem=str(exc))


def _failure_list(value: Any) -> list[Any]:
    """The batchItemFailures list; empty for every form of success."""
    if value is None:
        return []
    if not isinstance(value, dict):
        raise _Malformed(
            f"handler returned {type(value).__name__}, expected None or a dict with {_KEY!r}"
        )
    if _KEY not in value:
        if not value:
            return []
        keys = ", ".join(sorted(map(str, value)))
        near = difflib.get_close_matches(_KEY, [str(k) for k in value], n=1, cutoff=0.6)
        hint = f" (did you mean {_KEY!r} instead of {near[0]!r}?)" if near else ""
        raise _Malformed(
            f"handler returned a dict without {_KEY!r} (keys: {keys}){hint}; Lambda would "
            "silently count this as success - shardwise counts the whole batch as failed"
        )
    failures = value[_KEY]
    if failures is None:
        return []
    if not isinstance(failures, list):
        raise _Malformed(f"{_KEY} is {type(failures).__name__}, expected a list")
    return failures


def _lowest_failure(failures: list[Any], records: Sequence[StreamRecord]) -> int:
    """Index of the lowest reported record; every identifier must name a record here."""
    shape = shape_of(records[0]) if records else DYNAMODB_SHAPE
    index: dict[str, int] = {}
    for i, record in enumerate(records):
        for name in shape.identifiers(record):
            index.setdefault(name, i)
    positions = []
    for item in failures:
        identifier = item.get("itemIdentifier") if isinstance(item, dict) else None
        if identifier is None or identifier == "":
            raise _Malformed(f"{_KEY} has an item without an itemIdentifier: {item!r}")
        position = index.get(str(identifier))
        if position is None:
            raise _Malformed(f"itemIdentifier {identifier!r} is not a SequenceNumber of this batch")
        positions.append(position)
    return min(positions)


def looks_like_failure_report(value: Any) -> bool:
    """True when a handler without ReportBatchItemFailures returned failures anyway."""
    return isinstance(value, dict) and bool(value.get(_KEY))
