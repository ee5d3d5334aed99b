"""The per-record half of event filtering: closures that test one record against one pattern.

``filter_patterns`` validates a pattern once and assembles it from the builders here; what runs for
each record is a small tree of closures that look fields up with ``dict.get`` and compare with
``str`` methods, set membership and plain comparisons -- no JSON and no regular expressions.

How a record's values are seen (Lambda's rules, which are EventBridge's):

- Only *leaves* are values: strings, numbers, ``true``/``false`` and ``null``. An object is
  never a value, so a missing field, an object and an empty array all mean "no value here";
  that is why ``exists`` only sees leaves (AWS: "Exists only works on leaf nodes").
- An array offers each of its elements (arrays in arrays too); a rule matches if any element
  does. A nested pattern applied to an array of objects must match within one element, as
  EventBridge's array-consistent matching does.
- Exact values compare by JSON type and text: ``"5"`` is not ``5``, ``true`` is not ``1``, and
  ``300`` is not ``300.0`` (AWS: "300, 300.0, and 3.0e2 are not considered equal"); ``numeric``
  compares values, of JSON numbers only -- never DynamoDB's ``{"N": "5"}`` strings.
- ``anything-but`` needs a value, like every rule but ``exists: false``. Excluding strings (or a
  prefix, suffix, any case) lets every other value through, numbers and null too; excluding
  numbers matches other numbers only.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Collection, Sequence
from typing import Final

__all__ = [
    "MISSING",
    "Matcher",
    "ValueTest",
    "anything_but",
    "anything_but_numbers",
    "equals_ignore_case",
    "exact_key",
    "is_number",
    "leaf_matcher",
    "node_matcher",
    "numeric",
    "one_of",
    "prefix",
    "suffix",
]

Matcher = Callable[[object], bool]
"""Tests the value found at one place in a record (``MISSING`` when there is none)."""
ValueTest = Callable[[object], bool]
"""Tests one leaf value."""

MISSING: Final = object()
"""What a field lookup yields when the record has no such field."""

_COMPARE: Final[dict[str, Callable[[float, float], bool]]] = {
    "=": operator.eq,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


def exact_key(value: object) -> object:
    """What an exact rule compares: a string as itself, any other leaf tagged with its type."""
    if isinstance(value, str):
        return value
    if value is None:
        return ("null",)
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, int):
        return ("number", str(value))
    if isinstance(value, float):
        return ("number", repr(value))
    return ("other", repr(value))


def is_number(value: object) -> bool:
    """A JSON number: int or float, but not bool (which Python counts as an int)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def _leaves(value: object, found: list[object]) -> list[object]:
    """The leaf values at one place: none, the value itself, or an array's leaves."""
    if isinstance(value, list):
        for item in value:
            if isinstance(item, list):
                _leaves(item, found)
            elif not isinstance(item, dict):
                found.append(item)
    elif value is not MISSING and not isinstance(value, dict):
        found.append(value)
    return found


def _objects(value: list[object], found: list[dict[str, object]]) -> list[dict[str, object]]:
    """The objects in an array (arrays in arrays too), in order."""
    for item in value:
        if isinstance(item, dict):
            found.append(item)
        elif isinstance(item, list):
            _objects(item, found)
    return found


def leaf_matcher(
    exact: Collection[object],
    tests: Sequence[ValueTest],
    *,
    if_present: bool = False,
    if_absent: bool = False,
) -> Matcher:
    """One field's array of rules: exact values (see ``exact_key``), value tests, ``exists``."""
    values = frozenset(exact)
    checks = tuple(tests)

    def passes(leaf: object) -> bool:
        return exact_key(leaf) in values or any(check(leaf) for check in checks)

    def match(value: object) -> bool:
        if value.__class__ is not str:  # missing, an array, an object, or another leaf
            leaves = _leaves(value, [])
            return (if_present or any(map(passes, leaves))) if leaves else if_absent
        if if_present or value in values:  # the common case: one string, no list to build
            return True
        for check in checks:
            if check(value):
                return True
        return False

    return match


def node_matcher(
    fields: Sequence[tuple[str, Matcher]],
    alternatives: Sequence[Sequence[Matcher]] = (),
    *,
    matches_absent: bool = False,
) -> Matcher:
    """An object of the pattern: every field matches (AND) and, for each ``$or``, one branch.

    ``matches_absent`` is the answer where the record has no object here (only ``exists:
    false`` rules can be satisfied by nothing); ``filter_patterns`` works it out.
    """
    checks = tuple(fields)
    groups = tuple(tuple(group) for group in alternatives)

    def holds(value: dict[str, object]) -> bool:
        get = value.get
        for key, check in checks:
            if not check(get(key, MISSING)):
                return False
        return all(_any_branch(group, value) for group in groups) if groups else True

    def match(value: object) -> bool:
        if isinstance(value, dict):
            return holds(value)
        if isinstance(value, list):
            objects = _objects(value, [])
            return any(map(holds, objects)) if objects else matches_absent
        return matches_absent

    if len(checks) == 1 and not groups:  # most objects in a pattern hold one field
        only_key, only_check = checks[0]

        def match_one(value: object) -> bool:
            if value.__class__ is dict:
                return only_check(value.get(only_key, MISSING))
            return match(value)

        return match_one
    return match


def _any_branch(group: tuple[Matcher, ...], value: object) -> bool:
    for branch in group:
        if branch(value):
            return True
    return False


# --- value tests: each takes one leaf ------------------------------------------------------------


def prefix(text: str, *, ignore_case: bool = False) -> ValueTest:
    """``{"prefix": text}``, or ``{"prefix": {"equals-ignore-case": text}}``."""
    if ignore_case:
        folded = text.lower()
        return lambda value: isinstance(value, str) and value.lower().startswith(folded)
    return lambda value: isinstance(value, str) and value.startswith(text)


def suffix(text: str, *, ignore_case: bool = False) -> ValueTest:
    """``{"suffix": text}``, or ``{"suffix": {"equals-ignore-case": text}}``."""
    if ignore_case:
        folded = text.lower()
        return lambda value: isinstance(value, str) and value.lower().endswith(folded)
    return lambda value: isinstance(value, str) and value.endswith(text)


def one_of(texts: Collection[str]) -> ValueTest:
    """Equal to one of ``texts`` (the positive side of ``anything-but`` with strings)."""
    strings = frozenset(texts)
    return lambda value: isinstance(value, str) and value in strings


def equals_ignore_case(texts: Collection[str]) -> ValueTest:
    """``{"equals-ignore-case": text}``: equal to one of ``texts``, both lower-cased."""
    folded = frozenset(text.lower() for text in texts)
    return lambda value: isinstance(value, str) and value.lower() in folded


def anything_but(excluded: ValueTest) -> ValueTest:
    """``anything-but`` of strings, a prefix, a suffix or equals-ignore-case: any value the
    positive test rejects -- a value must still be present, and a non-string always passes."""
    return lambda value: not excluded(value)


def anything_but_numbers(numbers: Collection[float]) -> ValueTest:
    """``{"anything-but": 123}`` or a list of numbers: any *number* not among them."""
    excluded = frozenset(numbers)
    return lambda value: is_number(value) and value not in excluded


def numeric(comparisons: Sequence[tuple[str, float]]) -> ValueTest:
    """``{"numeric": [">", 0, "<=", 5]}`` as ``[(">", 0), ("<=", 5)]``; JSON numbers only."""
    checks = tuple((_COMPARE[op], bound) for op, bound in comparisons)

    def test(value: object) -> bool:
        if not isinstance(value, int | float) or isinstance(value, bool):
            return False
        return all(compare(value, bound) for compare, bound in checks)

    return test
