"""Lambda's event filtering: ``filter_criteria.filters[].pattern`` compiled once, tested per record.

A pattern is the JSON text Lambda takes in ``FilterCriteria.Filters[].Pattern``, matched against
the whole record in Lambda's shape (``eventName``, ``dynamodb.Keys``/``NewImage``/``OldImage``
in DynamoDB JSON, ...). Filters are OR-ed; no filters keeps every record. The rule syntax is
Lambda's, which is EventBridge's: values in an array are OR-ed, fields AND-ed, objects nest;
``null``, ``""``, ``prefix``, ``suffix``, ``equals-ignore-case`` (also inside ``prefix`` and
``suffix``), ``anything-but`` (values, or a ``prefix``/``suffix``/``equals-ignore-case``),
``numeric``, ``exists`` and ``$or``.

Kinesis records are matched as Lambda matches them: against the fields of their ``kinesis``
object, with ``data`` decoded from base64 and parsed as JSON (``{"data": {"order": {"type":
["buy"]}}}``). When ``data`` is not JSON it is absent from what is matched, so a pattern on
``data`` filters the record out, as Lambda does, and a pattern on metadata alone still applies.

Three modules, one job each: ``filter_patterns`` validates a pattern and builds its matcher
(what Lambda rejects, and notes on valid patterns that cannot match); ``filter_match`` holds
what runs per record (how record values are seen); this module is the door.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Sequence
from typing import Any

import orjson

from shardwise.dispatch.filter_match import Matcher
from shardwise.dispatch.filter_patterns import (
    MAX_FILTERS,
    MAX_PATTERN_LENGTH,
    FilterNote,
    FilterPatternError,
    compile_pattern,
)
from shardwise.records import StreamRecord

__all__ = [
    "MAX_FILTERS",
    "MAX_PATTERN_LENGTH",
    "FilterNote",
    "FilterPatternError",
    "RecordFilter",
    "compile_filters",
    "validate_pattern",
]


class RecordFilter:
    """Compiled filters: ``matches`` is True if any filter matches, or if there are none."""

    __slots__ = ("_matchers", "notes", "patterns")

    def __init__(
        self, patterns: Sequence[str], matchers: Sequence[Matcher], notes: Sequence[FilterNote]
    ) -> None:
        self.patterns = tuple(patterns)
        self.notes = tuple(notes)
        self._matchers = tuple(matchers)

    @property
    def active(self) -> bool:
        """False when there are no filters, so every record is kept."""
        return bool(self._matchers)

    def matches(self, record: StreamRecord) -> bool:
        seen = _kinesis_view(record) if "kinesis" in record else record
        for matcher in self._matchers:
            if matcher(seen):
                return True
        return not self._matchers

    def keep(self, records: Iterable[StreamRecord]) -> list[StreamRecord]:
        """The records that match, in order."""
        if not self._matchers:
            return list(records)
        return [record for record in records if self.matches(record)]

    def __repr__(self) -> str:
        return f"RecordFilter({list(self.patterns)!r})"


def _kinesis_view(record: StreamRecord) -> dict[str, Any]:
    """What a Kinesis record is matched as: its ``kinesis`` fields, ``data`` as JSON."""
    body: dict[str, Any] = record["kinesis"]
    view = {key: value for key, value in body.items() if key != "data"}
    try:
        view["data"] = orjson.loads(base64.b64decode(body.get("data", ""), validate=True))
    except (binascii.Error, ValueError, TypeError):
        pass  # not JSON: patterns on data cannot match it
    return view


def compile_filters(patterns: Sequence[str]) -> RecordFilter:
    """Compile the patterns of ``filter_criteria.filters``; FilterPatternError names a bad one."""
    if isinstance(patterns, str):
        raise TypeError("compile_filters takes a list of patterns, not one pattern")
    matchers: list[Matcher] = []
    notes: list[FilterNote] = []
    for index, pattern in enumerate(patterns):
        matcher, found = compile_pattern(pattern, index)
        matchers.append(matcher)
        notes.extend(found)
    return RecordFilter(patterns, matchers, notes)


def validate_pattern(pattern: str) -> str:
    """``pattern`` if Lambda would take it, else ValueError saying where and why: a validator
    for the config's ``filter_criteria.filters[].pattern``, which names the YAML path itself."""
    try:
        compile_pattern(pattern)
    except FilterPatternError as exc:
        where = f"at {exc.position}: " if exc.position else ""
        raise ValueError(where + exc.reason) from None
    return pattern
