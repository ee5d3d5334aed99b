"""The filter pattern language: one ``Filters[].Pattern`` validated and built into a matcher.

Rejected as Lambda rejects them: text that is not a JSON object, or over 4,096 characters; empty
objects and arrays; a value not in an array (``{"eventName": "INSERT"}``); arrays in arrays;
unknown operators, or two in one rule object; ``numeric`` other than one comparison, or a lower
bound (``>``, ``>=``) then a higher upper bound (``<``, ``<=``); numbers beyond +-5.0e9 in
``numeric`` and ``anything-but``; ``exists`` other than true/false; ``anything-but`` lists that
are empty or mix strings and numbers; ``$or`` with fewer than two objects, or an operator name
as a field in one. A key given twice merges its objects and otherwise keeps the last value, as
Lambda's parser does -- AWS's DynamoDB example repeats ``"dynamodb"`` to AND two images.

Valid patterns that cannot do what they seem to -- number rules on DynamoDB's string numbers,
rules on a whole attribute rather than its ``{"S": ...}`` value, misspelt record fields --
compile, and come back as ``FilterNote``s for the caller to log.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterable, Sequence
from typing import Any, Final, NamedTuple, NoReturn

from shardwise.dispatch import filter_match as fm

__all__ = [
    "MAX_FILTERS",
    "MAX_PATTERN_LENGTH",
    "NUMERIC_LIMIT",
    "FilterNote",
    "FilterPatternError",
    "compile_pattern",
]

MAX_PATTERN_LENGTH: Final = 4096
"""Lambda's limit on one ``Filters[].Pattern``, in characters."""
MAX_FILTERS: Final = 10
"""Filters per mapping Lambda allows with a quota increase (5 by default); for the config."""
NUMERIC_LIMIT: Final = 5.0e9
"""EventBridge: numeric matching "is limited to values between -5.0e9 and +5.0e9 inclusive"."""

_RECORD_FIELDS: Final = (
    "eventID eventName eventVersion eventSource awsRegion eventSourceARN dynamodb userIdentity"
).split()
_DYNAMODB_FIELDS: Final = (
    "ApproximateCreationDateTime Keys NewImage OldImage SequenceNumber SizeBytes StreamViewType"
).split()
_IMAGES: Final = frozenset({"Keys", "NewImage", "OldImage"})
_TYPES: Final = ("S", "N", "B", "BOOL", "NULL", "M", "L", "SS", "NS", "BS")
_OPERATORS: Final = frozenset(
    "prefix suffix equals-ignore-case anything-but numeric exists".split()
)
_NOT_IN_LAMBDA: Final = frozenset({"wildcard", "cidr", "exactly"})
_BUT_OPERATORS: Final = frozenset({"prefix", "suffix", "equals-ignore-case"})
_ANY: Final = frozenset({"=", "<", "<=", ">", ">="})
_LOWER: Final = frozenset({">", ">="})
_UPPER: Final = frozenset({"<", "<="})


class FilterPatternError(ValueError):
    """A filter pattern Lambda would reject.

    ``filter_index`` is the filter's place in the list; ``position`` where in the pattern the
    problem is -- a path such as ``dynamodb.NewImage.status.S[0]``, ``line 1, column 9 (char 8)``
    for JSON syntax errors, or None for the pattern as a whole; ``reason`` says what is wrong.
    """

    def __init__(self, reason: str, *, filter_index: int, position: str | None) -> None:
        self.reason = reason
        self.filter_index = filter_index
        self.position = position
        where = f" at {position}" if position else ""
        super().__init__(f"filters[{filter_index}].pattern{where}: {reason}")


class FilterNote(NamedTuple):
    """A valid pattern that will not do what it seems to; worth a warning."""

    filter_index: int
    position: str
    message: str


def compile_pattern(pattern: object, index: int = 0) -> tuple[fm.Matcher, list[FilterNote]]:
    """Validate filter ``index``'s pattern; its matcher and notes, or FilterPatternError."""
    compiler = _Compiler(index)
    try:
        return compiler.pattern(pattern), compiler.notes
    except RecursionError:
        compiler.fail(None, "nested too deeply")


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"not valid JSON: {name} is not a JSON number")


def _merge(into: dict[str, Any], pairs: Iterable[tuple[str, Any]]) -> dict[str, Any]:
    """A repeated key merges its objects, else keeps the last value (as Lambda's parser)."""
    for key, value in pairs:
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value.items())
        else:
            into[key] = value
    return into


def _shown(value: object) -> str:
    return json.dumps(value, ensure_ascii=False)


_Rule = tuple[str, Any]  # ("test", ValueTest) or ("exists", bool)
_Keys = tuple[str, ...]  # the field names leading here in the record


class _Compiler:
    """Validates one pattern and builds its matcher, keeping positions for errors and notes."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.notes: list[FilterNote] = []

    def fail(self, position: str | None, reason: str) -> NoReturn:
        raise FilterPatternError(reason, filter_index=self.index, position=position)

    def note(self, position: str, message: str) -> None:
        self.notes.append(FilterNote(self.index, position, message))

    def pattern(self, text: object) -> fm.Matcher:
        if not isinstance(text, str):
            self.fail(None, f"must be a string of JSON, not {type(text).__name__}")
        if len(text) > MAX_PATTERN_LENGTH:
            self.fail(None, f"is {len(text)} characters; Lambda allows {MAX_PATTERN_LENGTH}")
        try:
            parsed = json.loads(
                text,
                object_pairs_hook=lambda pairs: _merge({}, pairs),
                parse_constant=_reject_constant,
            )
        except json.JSONDecodeError as exc:
            where = f"line {exc.lineno}, column {exc.colno} (char {exc.pos})"
            self.fail(where, f"not valid JSON: {exc.msg}")
        except ValueError as exc:  # NaN, Infinity: Python's json takes them, JSON does not
            self.fail(None, str(exc))
        if not isinstance(parsed, dict):
            self.fail(None, 'must be a JSON object, like {"eventName": ["INSERT"]}')
        return self.fields(parsed, "", ())[0]

    def fields(self, value: dict[str, Any], where: str, keys: _Keys) -> tuple[fm.Matcher, bool]:
        """An object: fields AND-ed, ``$or`` groups; and whether "no value" satisfies it."""
        if not value:
            self.fail(where or None, "an empty object matches nothing; name at least one field")
        leaves: list[tuple[str, fm.Matcher]] = []
        nested: list[tuple[str, fm.Matcher]] = []
        groups: list[list[fm.Matcher]] = []
        absent_ok = True
        for key, rules in value.items():
            at = f"{where}.{key}" if where else key
            if key == "$or":
                branches = self.alternatives(rules, at, keys)
                groups.append([matcher for matcher, _ in branches])
                absent_ok &= any(ok for _, ok in branches)
                continue
            path = (*keys, key)
            self.check_field(path, at, rules)
            if isinstance(rules, dict):
                matcher, ok = self.fields(rules, at, path)
                nested.append((key, matcher))
            elif isinstance(rules, list):
                matcher, ok = self.values(rules, at, path)
                leaves.append((key, matcher))
            else:
                self.fail(at, f"values to match go in an array, like [{_shown(rules)}]")
            absent_ok &= ok
        # Plain fields first: they are cheaper to test than nested objects.
        matcher = fm.node_matcher(leaves + nested, groups, matches_absent=absent_ok)
        return matcher, absent_ok

    def alternatives(self, value: object, where: str, keys: _Keys) -> list[tuple[fm.Matcher, bool]]:
        """``$or``: two or more objects at the same level, any of which may match."""
        if not isinstance(value, list) or len(value) < 2:
            self.fail(
                where, 'must be an array of two or more objects, like [{"a": [1]}, {"b": [2]}]'
            )
        branches = []
        for i, branch in enumerate(value):
            at = f"{where}[{i}]"
            if not isinstance(branch, dict):
                self.fail(at, f"must be an object of fields, not {_shown(branch)}")
            if reserved := sorted(_OPERATORS.intersection(branch)):
                self.fail(at, f"{reserved[0]!r} is an operator, not a field; put it in an array")
            branches.append(self.fields(branch, at, keys))
        return branches

    def values(self, rules: list[Any], where: str, keys: _Keys) -> tuple[fm.Matcher, bool]:
        """One field's array: exact values and rule objects, any of which may match."""
        if not rules:
            self.fail(where, "an empty array matches nothing; list at least one value")
        exact: set[object] = set()
        tests: list[fm.ValueTest] = []
        present = absent = False
        for i, item in enumerate(rules):
            at = f"{where}[{i}]"
            if isinstance(item, dict):
                kind, rule = self.rule(item, at, keys)
                if kind == "exists":
                    present, absent = present or rule, absent or not rule
                else:
                    tests.append(rule)
            elif isinstance(item, list):
                self.fail(at, "arrays do not nest in a pattern; list the values in one array")
            else:
                if fm.is_number(item):
                    self.check_number(keys, at)
                exact.add(fm.exact_key(item))
        matcher = fm.leaf_matcher(exact, tests, if_present=present, if_absent=absent)
        return matcher, absent

    def rule(self, rule: dict[str, Any], where: str, keys: _Keys) -> _Rule:
        """A rule object: exactly one operator and its argument."""
        if len(rule) != 1:
            names = ", ".join(map(repr, rule)) or "none"
            self.fail(where, f"a rule object holds exactly one operator (found {names})")
        name, argument = next(iter(rule.items()))
        at = f"{where}.{name}"
        if name in ("prefix", "suffix"):
            text, ignore_case = self.affix(name, argument, at)
            build = fm.prefix if name == "prefix" else fm.suffix
            return "test", build(text, ignore_case=ignore_case)
        if name == "equals-ignore-case":
            return "test", fm.equals_ignore_case([self.text(argument, at)])
        if name == "anything-but":
            return "test", self.anything_but(argument, at)
        if name == "numeric":
            self.check_number(keys, where)
            return "test", fm.numeric(self.comparisons(argument, at))
        if name == "exists":
            if not isinstance(argument, bool):
                self.fail(at, f"must be true or false, not {_shown(argument)}")
            return "exists", argument
        if name in _NOT_IN_LAMBDA:
            self.fail(where, f"{name!r} is an EventBridge operator Lambda's filter syntax lacks")
        close = difflib.get_close_matches(name, sorted(_OPERATORS), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        self.fail(where, f"unknown operator {name!r}{hint}")

    def text(self, value: object, where: str, *, empty: bool = True) -> str:
        if not isinstance(value, str):
            self.fail(where, f"must be a string, not {_shown(value)}")
        if not (empty or value):
            self.fail(where, "must not be empty")
        return value

    def affix(
        self, name: str, value: object, where: str, *, empty: bool = True
    ) -> tuple[str, bool]:
        """A prefix or suffix: a string, or ``{"equals-ignore-case": string}``."""
        if isinstance(value, dict) and list(value) == ["equals-ignore-case"]:
            at = f"{where}.equals-ignore-case"
            return self.text(value["equals-ignore-case"], at, empty=empty), True
        if not isinstance(value, str):
            self.fail(where, f'{name} takes a string or {{"equals-ignore-case": "..."}}')
        return self.text(value, where, empty=empty), False

    def anything_but(self, value: object, where: str) -> fm.ValueTest:
        """A string or number, a list of only one of the two, or one string operator."""
        if isinstance(value, dict):
            if len(value) != 1 or not _BUT_OPERATORS.issuperset(value):
                self.fail(where, "takes one of prefix, suffix or equals-ignore-case")
            name, argument = next(iter(value.items()))
            at = f"{where}.{name}"
            if name == "equals-ignore-case":
                texts = argument if isinstance(argument, list) and argument else [argument]
                return fm.anything_but(fm.equals_ignore_case([self.text(t, at) for t in texts]))
            text, ignore_case = self.affix(name, argument, at, empty=False)
            build = fm.prefix if name == "prefix" else fm.suffix
            return fm.anything_but(build(text, ignore_case=ignore_case))
        values = value if isinstance(value, list) else [value]
        if values and all(isinstance(v, str) for v in values):
            return fm.anything_but(fm.one_of([v for v in values if isinstance(v, str)]))
        if values and all(fm.is_number(v) for v in values):
            return fm.anything_but_numbers([self.bounded(v, where) for v in values])
        self.fail(where, "takes a string, a number, or a non-empty list of strings or of numbers")

    def comparisons(self, value: object, where: str) -> list[tuple[str, float]]:
        """``numeric``: one comparison, or a lower bound then an upper bound above it."""
        if not isinstance(value, list) or len(value) not in (2, 4):
            self.fail(where, 'must be like ["=", 100], [">", 0] or [">", 0, "<=", 5]')
        allowed = [_ANY] if len(value) == 2 else [_LOWER, _UPPER]
        pairs: list[tuple[str, float]] = []
        for i, ops in zip(range(0, len(value), 2), allowed, strict=True):
            op = value[i]
            if not (isinstance(op, str) and op in ops):
                self.fail(f"{where}[{i}]", f"expected {' or '.join(sorted(ops))}, not {_shown(op)}")
            pairs.append((op, self.bounded(value[i + 1], f"{where}[{i + 1}]")))
        if len(pairs) == 2 and pairs[0][1] >= pairs[1][1]:
            self.fail(where, "the lower bound must be below the upper bound")
        return pairs

    def bounded(self, value: object, where: str) -> float:
        if not isinstance(value, int | float) or isinstance(value, bool):
            self.fail(where, f"must be a number, not {_shown(value)}")
        if not -NUMERIC_LIMIT <= value <= NUMERIC_LIMIT:
            self.fail(where, "numbers are limited to -5.0e9..+5.0e9 in numeric matching")
        return float(value)

    # --- notes: valid, but probably not what was meant ----------------------------------------

    def check_field(self, keys: _Keys, where: str, rules: object) -> None:
        depth, key = len(keys), keys[-1]
        if depth == 1 and key not in _RECORD_FIELDS:
            self.note(where, _unknown(key, "DynamoDB stream records have no field", _RECORD_FIELDS))
        elif depth == 2 and keys[0] == "dynamodb" and key not in _DYNAMODB_FIELDS:
            self.note(
                where, _unknown(key, "a record's dynamodb object has no field", _DYNAMODB_FIELDS)
            )
        elif not _in_image(keys):
            return
        elif depth == 3 and isinstance(rules, list):
            self.note(
                where,
                f'an attribute holds a typed object like {{"S": "..."}}, never a value, so '
                f"rules here see nothing (exists only sees leaves); match {key}.S or {key}.N",
            )
        elif depth == 4 and key not in _TYPES:
            self.note(where, _unknown(key, "DynamoDB has no type", _TYPES))

    def check_number(self, keys: _Keys, where: str) -> None:
        if _in_image(keys):
            self.note(
                where,
                'DynamoDB numbers are strings in stream records ({"N": "5"}), so number rules '
                "never match them (Lambda does not support numeric filtering on them)",
            )


def _in_image(keys: _Keys) -> bool:
    """Within ``dynamodb.Keys``, ``NewImage`` or ``OldImage``: DynamoDB JSON."""
    return len(keys) >= 3 and keys[0] == "dynamodb" and keys[1] in _IMAGES


def _unknown(key: str, missing: str, known: Sequence[str]) -> str:
    close = [k for k in known if k.lower() == key.lower()]
    close = close or difflib.get_close_matches(key, known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else f" ({', '.join(known)})"
    return f"{missing} {key!r}{hint}"
