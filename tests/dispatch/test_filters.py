"""Lambda's event filtering: AWS's documented examples as a conformance table, every operator's
edges, filters OR-ed, and the position named for each kind of invalid pattern.

Where the conformance examples come from (the ``id`` of each case starts with its source):

- ``lambda``: "Control which events Lambda sends to your function" (Lambda Developer Guide,
  invocation-eventfiltering): the filter rule syntax table, the multi-level DynamoDB ``Keys``
  example, the note that 300, 300.0 and 3.0e2 differ, the exists-on-leaves example and the
  console's ``{"Metadata": [1, 2]}``.
- ``ddb``: "Using event filtering with a DynamoDB event source" (with-ddb-filtering): its record,
  table keys, table attributes, the Boolean AND (which repeats the ``dynamodb`` key), the note
  that numeric operators do not apply to DynamoDB numbers, and the Exists example.
- ``eb``: Amazon EventBridge's pages that Lambda's syntax section points to ("uses the same
  syntax as EventBridge"): content filtering, comparison operators, arrays, null and empty.
- ``cdk``: the ``FilterCriteria`` DynamoDB example in the AWS CDK API reference.
"""

from __future__ import annotations

import base64
import json
from typing import Any, ClassVar

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shardwise.dispatch.filters import (
    MAX_PATTERN_LENGTH,
    FilterPatternError,
    RecordFilter,
    compile_filters,
    validate_pattern,
)

# The record in AWS's DynamoDB filtering page.
DDB_RECORD: dict[str, Any] = {
    "eventID": "1",
    "eventVersion": "1.0",
    "dynamodb": {
        "ApproximateCreationDateTime": "1678831218.0",
        "Keys": {"CustomerName": {"S": "AnyCompany Industries"}},
        "NewImage": {
            "AccountManager": {"S": "Pat Candella"},
            "PaymentTerms": {"S": "60 days"},
            "CustomerName": {"S": "AnyCompany Industries"},
        },
        "SequenceNumber": "111",
        "SizeBytes": 26,
        "StreamViewType": "NEW_IMAGE",
    },
}
WITH_OLD_IMAGE = {
    **DDB_RECORD,
    "dynamodb": {**DDB_RECORD["dynamodb"], "OldImage": {"AccountManager": {"S": "Terry Whitlock"}}},
}
# The item in the Exists example, as a record's NewImage.
ORGANIZATIONS = {
    "dynamodb": {
        "NewImage": {
            "UserID": {"S": "12345"},
            "Name": {"S": "John Doe"},
            "Organizations": {"L": [{"S": "Sales"}, {"S": "Marketing"}, {"S": "Support"}]},
        }
    }
}
PERSON = {
    "person": {
        "name": "John Doe",
        "age": 30,
        "address": {"street": "123 Main St", "city": "Anytown", "country": "USA"},
    }
}
# EventBridge's running example (content filtering, comparison operators).
EC2 = {
    "time": "2017-10-02T16:24:49Z",
    "detail": {"c-count": 5, "d-count": 3, "x-limit": 301.8, "state": "running"},
}
ACCOUNT_A = "arn:aws:ec2:us-east-1:123456789012:instance/i-b188560f"
ACCOUNT_B = "arn:aws:ec2:us-east-1:111122223333:instance/i-b188560f"
ASG = "arn:aws:autoscaling:us-east-1:123456789012:autoScalingGroup:eb56d16b"
NULLS = {"detail": {"eventVersion": "", "responseElements": None}}


def doc(pattern: dict[str, Any] | str, record: dict[str, Any], expected: bool, id: str) -> Any:
    text = pattern if isinstance(pattern, str) else json.dumps(pattern)
    return pytest.param(text, record, expected, id=id)


def new_image(**attributes: Any) -> dict[str, Any]:
    return {"eventName": "INSERT", "dynamodb": {"NewImage": attributes}}


CONFORMANCE = [
    # lambda: the filter rule syntax table
    doc({"UserID": [None]}, {"UserID": None}, True, "lambda-null"),
    doc({"UserID": [None]}, {}, False, "lambda-null-not-missing"),
    doc({"LastName": [""]}, {"LastName": ""}, True, "lambda-empty"),
    doc({"Name": ["Alice"]}, {"Name": "Alice"}, True, "lambda-equals"),
    doc({"Name": ["Alice"]}, {"Name": "alice"}, False, "lambda-equals-no-case-folding"),
    doc({"Name": [{"equals-ignore-case": "alice"}]}, {"Name": "Alice"}, True, "lambda-eq-ic"),
    doc(
        {"Location": ["New York"], "Day": ["Monday"]},
        {"Location": "New York", "Day": "Monday"},
        True,
        "lambda-and",
    ),
    doc(
        {"Location": ["New York"], "Day": ["Monday"]},
        {"Location": "New York", "Day": "Friday"},
        False,
        "lambda-and-one-fails",
    ),
    doc({"PaymentType": ["Credit", "Debit"]}, {"PaymentType": "Debit"}, True, "lambda-or"),
    doc({"PaymentType": ["Credit", "Debit"]}, {"PaymentType": "Cash"}, False, "lambda-or-none"),
    doc(
        {"$or": [{"Location": ["New York"]}, {"Day": ["Monday"]}]},
        {"Location": "Boston", "Day": "Monday"},
        True,
        "lambda-or-fields",
    ),
    doc(
        {"$or": [{"Location": ["New York"]}, {"Day": ["Monday"]}]},
        {"Location": "Boston", "Day": "Friday"},
        False,
        "lambda-or-fields-none",
    ),
    doc({"Weather": [{"anything-but": ["Raining"]}]}, {"Weather": "Sunny"}, True, "lambda-not"),
    doc(
        {"Weather": [{"anything-but": ["Raining"]}]}, {"Weather": "Raining"}, False, "lambda-not-2"
    ),
    doc({"Price": [{"numeric": ["=", 100]}]}, {"Price": 100}, True, "lambda-numeric-equals"),
    doc({"Price": [{"numeric": [">", 10, "<=", 20]}]}, {"Price": 20}, True, "lambda-range-top"),
    doc({"Price": [{"numeric": [">", 10, "<=", 20]}]}, {"Price": 10}, False, "lambda-range-open"),
    doc({"ProductName": [{"exists": True}]}, {"ProductName": "x"}, True, "lambda-exists"),
    doc({"ProductName": [{"exists": False}]}, {}, True, "lambda-does-not-exist"),
    doc({"ProductName": [{"exists": False}]}, {"ProductName": "x"}, False, "lambda-exists-false"),
    doc({"Region": [{"prefix": "us-"}]}, {"Region": "us-east-1"}, True, "lambda-begins-with"),
    doc({"Region": [{"prefix": "us-"}]}, {"Region": "eu-west-1"}, False, "lambda-begins-no"),
    doc({"FileName": [{"suffix": ".png"}]}, {"FileName": "cat.png"}, True, "lambda-ends-with"),
    doc({"FileName": [{"suffix": ".png"}]}, {"FileName": "cat.jpg"}, False, "lambda-ends-no"),
    # lambda: multi-level filtering on a sort key, numbers as strings
    doc(
        {"dynamodb": {"Keys": {"Number": {"N": ["4567"]}}}},
        {"dynamodb": {"Keys": {"ID": {"S": "ABCD"}, "Number": {"N": "1234"}}}},
        False,
        "lambda-multi-level",
    ),
    doc(
        {"dynamodb": {"Keys": {"Number": {"N": ["4567"]}}}},
        {"dynamodb": {"Keys": {"ID": {"S": "ABCD"}, "Number": {"N": "4567"}}}},
        True,
        "lambda-multi-level-match",
    ),
    # lambda: "300, 300.0, and 3.0e2 are not considered equal"
    doc({"Price": [300]}, {"Price": 300}, True, "lambda-number-text"),
    doc({"Price": [300]}, {"Price": 300.0}, False, "lambda-300-is-not-300.0"),
    doc({"Price": [300.0]}, {"Price": 300}, False, "lambda-300.0-is-not-300"),
    # lambda: exists only works on leaf nodes
    doc({"person": {"address": [{"exists": True}]}}, PERSON, False, "lambda-exists-intermediate"),
    doc({"person": {"address": {"city": [{"exists": True}]}}}, PERSON, True, "lambda-exists-leaf"),
    # lambda: the console example
    doc({"Metadata": [1, 2]}, {"Metadata": 2}, True, "lambda-console"),
    doc({"Metadata": [1, 2]}, {"Metadata": "1"}, False, "lambda-console-string"),
    # ddb: table keys, attributes, Boolean AND, numbers, Exists
    doc(
        {"dynamodb": {"Keys": {"CustomerName": {"S": ["AnyCompany Industries"]}}}},
        DDB_RECORD,
        True,
        "ddb-table-keys",
    ),
    doc(
        {
            "dynamodb": {
                "NewImage": {"AccountManager": {"S": ["Pat Candella", "Shirley Rodriguez"]}}
            }
        },
        DDB_RECORD,
        True,
        "ddb-table-attributes",
    ),
    doc(
        {"dynamodb": {"NewImage": {"AccountManager": {"S": ["Shirley Rodriguez"]}}}},
        DDB_RECORD,
        False,
        "ddb-table-attributes-other",
    ),
    doc(
        '{ "dynamodb" : { "NewImage" : { "AccountManager" : { "S" : [ "Pat Candella" ] } } } ,'
        ' "dynamodb" : { "OldImage" : { "AccountManager" : { "S" : [ "Terry Whitlock" ] } } } }',
        WITH_OLD_IMAGE,
        True,
        "ddb-boolean-and",
    ),
    doc(
        '{ "dynamodb" : { "NewImage" : { "AccountManager" : { "S" : [ "Pat Candella" ] } } } ,'
        ' "dynamodb" : { "OldImage" : { "AccountManager" : { "S" : [ "Terry Whitlock" ] } } } }',
        DDB_RECORD,
        False,
        "ddb-boolean-and-no-old-image",
    ),
    doc(
        {"dynamodb": {"NewImage": {"Id": {"N": [{"numeric": ["=", 101]}]}}}},
        new_image(Id={"N": "101"}),
        False,
        "ddb-numeric-not-supported",
    ),
    doc(
        {"dynamodb": {"NewImage": {"Organizations": [{"exists": True}]}}},
        ORGANIZATIONS,
        False,
        "ddb-exists-intermediate",
    ),
    doc(
        {"dynamodb": {"NewImage": {"Organizations": {"L": {"S": [{"exists": True}]}}}}},
        ORGANIZATIONS,
        True,
        "ddb-exists-leaf",
    ),
    # eb: content filtering and comparison operators
    doc({"time": [{"prefix": "2017-10-02"}]}, EC2, True, "eb-prefix"),
    doc({"detail": {"state": [{"anything-but": "initializing"}]}}, EC2, True, "eb-but-string"),
    doc({"detail": {"x-limit": [{"anything-but": 123}]}}, EC2, True, "eb-but-number"),
    doc(
        {"detail": {"state": [{"anything-but": ["stopped", "overloaded"]}]}},
        EC2,
        True,
        "eb-but-strings",
    ),
    doc({"detail": {"x-limit": [{"anything-but": [100, 200, 301.8]}]}}, EC2, False, "eb-but-nums"),
    doc({"detail": {"state": [{"anything-but": {"prefix": "run"}}]}}, EC2, False, "eb-but-prefix"),
    doc({"detail": {"state": [{"anything-but": {"suffix": ".png"}}]}}, EC2, True, "eb-but-suffix"),
    doc(
        {"detail": {"state": [{"anything-but": {"equals-ignore-case": "RUNNING"}}]}},
        EC2,
        False,
        "eb-but-ignore-case",
    ),
    doc(
        {"detail": {"state": [{"prefix": {"equals-ignore-case": "RUN"}}]}},
        EC2,
        True,
        "eb-prefix-ignore-case",
    ),
    doc(
        {"detail": {"state": [{"suffix": {"equals-ignore-case": "NING"}}]}},
        EC2,
        True,
        "eb-suffix-ignore-case",
    ),
    doc(
        {
            "detail": {
                "c-count": [{"numeric": [">", 0, "<=", 5]}],
                "d-count": [{"numeric": ["<", 10]}],
                "x-limit": [{"numeric": ["=", 3.018e2]}],
            }
        },
        EC2,
        True,
        "eb-numeric",
    ),
    doc({"detail": {"c-count": [{"exists": False}]}}, EC2, False, "eb-exists-false"),
    doc(
        {"detail": {"c-count": [{"exists": False}]}},
        {"detail": {"state": "running", "c-count": {"c1": 100}}},
        True,
        "eb-exists-false-intermediate",
    ),
    doc(
        {
            "time": [{"prefix": "2017-10-02"}],
            "detail": {
                "state": [{"anything-but": "initializing"}],
                "c-count": [{"numeric": [">", 0, "<=", 5]}],
                "d-count": [{"numeric": ["<", 10]}],
                "x-limit": [{"anything-but": [100, 200, 300]}],
            },
        },
        EC2,
        True,
        "eb-complex",
    ),
    doc({"resources": [ACCOUNT_A, ACCOUNT_B]}, {"resources": [ASG, ACCOUNT_A]}, True, "eb-arrays"),
    doc({"resources": [ACCOUNT_B]}, {"resources": [ASG, ACCOUNT_A]}, False, "eb-arrays-disjoint"),
    doc({"detail": {"eventVersion": [""]}}, NULLS, True, "eb-empty-string"),
    doc({"detail": {"responseElements": [None]}}, NULLS, True, "eb-null"),
    doc({"detail": {"eventVersion": [None]}}, NULLS, False, "eb-empty-is-not-null"),
    doc({"detail": {"responseElements": [""]}}, NULLS, False, "eb-null-is-not-empty"),
    # cdk: eventName and a BOOL attribute
    doc(
        {"eventName": ["INSERT"], "dynamodb": {"NewImage": {"id": {"BOOL": [True]}}}},
        new_image(id={"BOOL": True}),
        True,
        "cdk-bool",
    ),
    doc(
        {"eventName": ["INSERT"], "dynamodb": {"NewImage": {"id": {"BOOL": [True]}}}},
        new_image(id={"BOOL": False}),
        False,
        "cdk-bool-false",
    ),
]


def matches(pattern: dict[str, Any] | str, record: object) -> bool:
    text = pattern if isinstance(pattern, str) else json.dumps(pattern)
    return compile_filters([text]).matches(record)  # type: ignore[arg-type]  # any JSON


def error(pattern: dict[str, Any] | list[Any] | str) -> FilterPatternError:
    text = pattern if isinstance(pattern, str) else json.dumps(pattern)
    with pytest.raises(FilterPatternError) as caught:
        compile_filters([text])
    return caught.value


class TestConformance:
    """Every DynamoDB and generic-JSON example in AWS's filtering documentation."""

    @pytest.mark.parametrize(("pattern", "record", "expected"), CONFORMANCE)
    def test_documented_example(self, pattern: str, record: dict[str, Any], expected: bool) -> None:
        assert compile_filters([pattern]).matches(record) is expected


class TestExactValues:
    """Exact values compare by JSON type; arrays in the record offer every element."""

    @pytest.mark.parametrize(
        ("rule", "value", "expected"),
        [
            ("5", 5, False),
            (5, "5", False),
            (True, 1, False),
            (1, True, False),
            (None, "", False),
            ("", None, False),
            (False, False, True),
            (-0.5, -0.5, True),
        ],
    )
    def test_types_never_mix(self, rule: object, value: object, expected: bool) -> None:
        assert matches({"f": [rule]}, {"f": value}) is expected

    def test_any_element_of_an_array_matches(self) -> None:
        assert matches({"tags": ["b"]}, {"tags": ["a", ["c", "b"]]})
        assert not matches({"tags": ["b"]}, {"tags": []})

    def test_an_object_is_never_a_value(self) -> None:
        assert not matches({"f": ["x"]}, {"f": {"x": "x"}})

    def test_a_nested_pattern_sees_no_value_below_a_string(self) -> None:
        assert not matches({"f": {"g": ["x"]}}, {"f": "x"})


class TestStringOperators:
    """prefix, suffix and equals-ignore-case apply to strings only."""

    @pytest.mark.parametrize(
        ("rule", "value", "expected"),
        [
            ({"prefix": "us-"}, "us-", True),
            ({"prefix": ""}, "anything", True),
            ({"prefix": ""}, 5, False),
            ({"prefix": "1"}, 12, False),
            ({"prefix": {"equals-ignore-case": "US-"}}, "us-east-1", True),
            ({"suffix": ".png"}, "PNG.jpg", False),
            ({"suffix": {"equals-ignore-case": ".PNG"}}, "cat.png", True),
            ({"equals-ignore-case": "Straße"}, "STRASSE", False),
            ({"equals-ignore-case": "ÉTÉ"}, "été", True),
            ({"equals-ignore-case": "true"}, True, False),
        ],
    )
    def test_rule(self, rule: dict[str, Any], value: object, expected: bool) -> None:
        assert matches({"f": [rule]}, {"f": value}) is expected


class TestAnythingBut:
    """anything-but needs a value present, and matches if any element is not excluded."""

    def test_a_missing_field_does_not_match(self) -> None:
        assert not matches({"f": [{"anything-but": "x"}]}, {})
        assert not matches({"f": [{"anything-but": "x"}]}, {"f": []})

    def test_any_element_not_excluded_matches(self) -> None:
        assert matches({"f": [{"anything-but": "x"}]}, {"f": ["x", "y"]})
        assert not matches({"f": [{"anything-but": "x"}]}, {"f": ["x", "x"]})

    def test_numbers_exclude_by_value_and_only_match_numbers(self) -> None:
        assert not matches({"f": [{"anything-but": [100]}]}, {"f": 100.0})
        assert not matches({"f": [{"anything-but": [100]}]}, {"f": "5"})
        assert matches({"f": [{"anything-but": [100]}]}, {"f": 5})

    def test_strings_exclude_strings_only(self) -> None:
        assert matches({"f": [{"anything-but": ["5"]}]}, {"f": 5})
        assert matches({"f": [{"anything-but": ["x"]}]}, {"f": None})

    def test_equals_ignore_case_takes_a_list(self) -> None:
        rule = {"anything-but": {"equals-ignore-case": ["a", "B"]}}
        assert not matches({"f": [rule]}, {"f": "b"})
        assert matches({"f": [rule]}, {"f": "c"})


class TestNumeric:
    """numeric compares JSON numbers only, with open and closed bounds."""

    @pytest.mark.parametrize(
        ("comparison", "value", "expected"),
        [
            ([">=", 10], 10, True),
            ([">", 10], 10, False),
            (["<", 10], 9.999, True),
            (["<=", 10], 10.0, True),
            (["=", 0], -0.0, True),
            ([">=", 0, "<", 1], 1, False),
            ([">=", 0, "<", 1], 0, True),
            ([">", -5e9, "<=", 5e9], 5e9, True),
            ([">", 0], "5", False),
            ([">", 0], True, False),
            ([">", 0], None, False),
        ],
    )
    def test_comparison(self, comparison: list[Any], value: object, expected: bool) -> None:
        assert matches({"f": [{"numeric": comparison}]}, {"f": value}) is expected

    def test_numeric_and_exact_values_or_together(self) -> None:
        pattern = {"f": [{"numeric": [">", 100]}, 7, "many"]}
        assert [matches(pattern, {"f": v}) for v in (101, 7, "many", 50)] == [1, 1, 1, 0]


class TestExists:
    """exists sees leaves only: null is a value; objects and empty arrays are not."""

    @pytest.mark.parametrize(
        ("record", "exists"),
        [({"f": None}, True), ({"f": ""}, True), ({"f": [1]}, True), ({"f": []}, False)],
    )
    def test_what_exists(self, record: dict[str, Any], exists: bool) -> None:
        assert matches({"f": [{"exists": True}]}, record) is exists
        assert matches({"f": [{"exists": False}]}, record) is not exists

    def test_a_missing_parent_satisfies_exists_false(self) -> None:
        pattern = {"dynamodb": {"OldImage": {"status": {"S": [{"exists": False}]}}}}
        assert matches(pattern, new_image(status={"S": "NEW"}))
        assert not matches(pattern, {"dynamodb": {"OldImage": {"status": {"S": "OLD"}}}})

    def test_true_or_false_together_always_match(self) -> None:
        assert matches({"f": [{"exists": True}, {"exists": False}]}, {})


class TestOr:
    """$or at any level, with AND inside branches, beside other fields and other $or."""

    PATTERN: ClassVar[dict[str, Any]] = {
        "eventName": ["MODIFY"],
        "dynamodb": {
            "$or": [
                {"NewImage": {"status": {"S": ["SHIPPED"]}}},
                {"OldImage": {"status": {"S": ["PLACED"]}}, "SizeBytes": [{"numeric": [">", 9]}]},
            ]
        },
        "$or": [{"awsRegion": ["eu-west-1"]}, {"eventSource": ["aws:dynamodb"]}],
    }

    def record(self, new: str, old: str, size: int, region: str = "us-east-1") -> dict[str, Any]:
        return {
            "eventName": "MODIFY",
            "awsRegion": region,
            "eventSource": "aws:dynamodb",
            "dynamodb": {
                "NewImage": {"status": {"S": new}},
                "OldImage": {"status": {"S": old}},
                "SizeBytes": size,
            },
        }

    def test_branches(self) -> None:
        assert matches(self.PATTERN, self.record("SHIPPED", "x", 1))
        assert matches(self.PATTERN, self.record("x", "PLACED", 10))
        assert not matches(self.PATTERN, self.record("x", "PLACED", 9))

    def test_every_or_group_must_hold(self) -> None:
        record = self.record("SHIPPED", "x", 1)
        record["eventSource"] = "aws:kinesis"
        assert not matches(self.PATTERN, record)
        record["awsRegion"] = "eu-west-1"
        assert matches(self.PATTERN, record)

    def test_nested_or(self) -> None:
        pattern = {"a": ["1"], "$or": [{"b": ["2"]}, {"c": ["3"], "$or": [{"d": [4]}, {"e": [5]}]}]}
        assert matches(pattern, {"a": "1", "c": "3", "e": 5})
        assert not matches(pattern, {"a": "1", "c": "3", "e": 4})


class TestArrays:
    """A nested pattern on an array of objects must match within one element."""

    PEOPLE: ClassVar[dict[str, Any]] = {
        "people": [{"first": "Ana", "last": "Diaz"}, {"first": "Bo", "last": "Ek"}]
    }

    def test_fields_from_one_element(self) -> None:
        assert matches({"people": {"first": ["Bo"], "last": ["Ek"]}}, self.PEOPLE)
        assert not matches({"people": {"first": ["Ana"], "last": ["Ek"]}}, self.PEOPLE)

    def test_dynamodb_list_of_maps(self) -> None:
        lines = {"L": [{"M": {"sku": {"S": "A-1"}}}, {"M": {"sku": {"S": "B-2"}}}]}
        pattern = {
            "dynamodb": {"NewImage": {"lines": {"L": {"M": {"sku": {"S": [{"prefix": "B"}]}}}}}}
        }
        assert matches(pattern, new_image(lines=lines))


class TestFilters:
    """Filters are OR-ed; none keeps everything; patterns compile once."""

    def test_no_filters_keep_every_record(self) -> None:
        keep_all = compile_filters([])
        assert not keep_all.active
        assert keep_all.matches({"eventName": "REMOVE"})

    def test_filters_are_ored(self) -> None:
        either = compile_filters(['{"eventName": ["INSERT"]}', '{"eventName": ["REMOVE"]}'])
        records = [{"eventName": name} for name in ("INSERT", "MODIFY", "REMOVE")]
        assert either.keep(records) == [records[0], records[2]]
        assert either.active

    def test_error_names_the_filter(self) -> None:
        with pytest.raises(FilterPatternError) as caught:
            compile_filters(['{"eventName": ["INSERT"]}', '{"eventName": "REMOVE"}'])
        assert caught.value.filter_index == 1
        assert str(caught.value).startswith("filters[1].pattern at eventName: ")

    def test_a_single_string_is_refused(self) -> None:
        with pytest.raises(TypeError):
            compile_filters('{"eventName": ["INSERT"]}')

    def test_repr_shows_patterns(self) -> None:
        assert "INSERT" in repr(compile_filters(['{"eventName": ["INSERT"]}']))
        assert isinstance(compile_filters([]), RecordFilter)


class TestRepeatedKeys:
    """A repeated key merges objects, else the last value wins, as Lambda's parser does."""

    def test_objects_merge(self) -> None:
        pattern = '{"d": {"a": ["1"]}, "d": {"b": ["2"]}}'
        assert matches(pattern, {"d": {"a": "1", "b": "2"}})
        assert not matches(pattern, {"d": {"a": "1"}})

    def test_last_value_wins(self) -> None:
        assert matches('{"a": ["1"], "a": ["2"]}', {"a": "2"})
        assert not matches('{"a": ["1"], "a": ["2"]}', {"a": "1"})


INVALID = [
    ('{"eventName": "INSERT"}', "eventName", 'values to match go in an array, like ["INSERT"]'),
    ('{"a": {"b": 5}}', "a.b", "like [5]"),
    ('{"dynamodb": {"NewImage": {"s": {"S": [["x"]]}}}}', "dynamodb.NewImage.s.S[0]", "nest"),
    ('{"a": []}', "a", "empty array"),
    ('{"a": {}}', "a", "empty object"),
    ("{}", None, "empty object"),
    ('["INSERT"]', None, "must be a JSON object"),
    ('"x"', None, "must be a JSON object"),
    ('{"a": [{}]}', "a[0]", "exactly one operator (found none)"),
    ('{"a": [{"prefix": "x", "suffix": "y"}]}', "a[0]", "exactly one operator"),
    ('{"a": [{"prefx": "x"}]}', "a[0]", "unknown operator 'prefx' (did you mean 'prefix'?)"),
    ('{"a": [{"wildcard": "*.png"}]}', "a[0]", "Lambda's filter syntax lacks"),
    ('{"a": [{"cidr": "10.0.0.0/24"}]}', "a[0]", "Lambda's filter syntax lacks"),
    ('{"a": [{"prefix": 5}]}', "a[0].prefix", "prefix takes a string"),
    ('{"a": [{"suffix": {"equals-ignore-case": 1}}]}', "a[0].suffix.equals-ignore-case", "string"),
    ('{"a": [{"equals-ignore-case": ["x"]}]}', "a[0].equals-ignore-case", "must be a string"),
    ('{"a": [{"exists": "true"}]}', "a[0].exists", "true or false"),
    ('{"a": [{"exists": 1}]}', "a[0].exists", "true or false"),
    ('{"a": [{"numeric": 5}]}', "a[0].numeric", "must be like"),
    ('{"a": [{"numeric": [">", 1, "<"]}]}', "a[0].numeric", "must be like"),
    ('{"a": [{"numeric": ["!=", 1]}]}', "a[0].numeric[0]", 'not "!="'),
    ('{"a": [{"numeric": ["=", 1, "<", 5]}]}', "a[0].numeric[0]", "expected > or >="),
    ('{"a": [{"numeric": ["<", 5, ">", 1]}]}', "a[0].numeric[0]", "expected > or >="),
    ('{"a": [{"numeric": [">", 1, ">=", 5]}]}', "a[0].numeric[2]", "expected < or <="),
    ('{"a": [{"numeric": [">", 5, "<", 5]}]}', "a[0].numeric", "lower bound must be below"),
    ('{"a": [{"numeric": [">", "1"]}]}', "a[0].numeric[1]", 'must be a number, not "1"'),
    ('{"a": [{"numeric": [">", true]}]}', "a[0].numeric[1]", "must be a number, not true"),
    ('{"a": [{"numeric": ["<", 5000000001]}]}', "a[0].numeric[1]", "-5.0e9..+5.0e9"),
    ('{"a": [{"anything-but": []}]}', "a[0].anything-but", "non-empty list"),
    ('{"a": [{"anything-but": ["x", 1]}]}', "a[0].anything-but", "strings or of numbers"),
    ('{"a": [{"anything-but": null}]}', "a[0].anything-but", "takes a string, a number"),
    ('{"a": [{"anything-but": [true]}]}', "a[0].anything-but", "takes a string, a number"),
    ('{"a": [{"anything-but": [6e9]}]}', "a[0].anything-but", "-5.0e9..+5.0e9"),
    ('{"a": [{"anything-but": {"numeric": [">", 1]}}]}', "a[0].anything-but", "takes one of"),
    ('{"a": [{"anything-but": {"prefix": ""}}]}', "a[0].anything-but.prefix", "not be empty"),
    ('{"$or": [{"a": ["1"]}]}', "$or", "two or more objects"),
    ('{"$or": {"a": ["1"], "b": ["2"]}}', "$or", "two or more objects"),
    ('{"x": {"$or": [{"a": ["1"]}, "b"]}}', "x.$or[1]", 'not "b"'),
    ('{"$or": [{"a": ["1"]}, {"prefix": ["x"]}]}', "$or[1]", "'prefix' is an operator"),
    ('{"$or": [{"a": ["1"]}, {"b": "2"}]}', "$or[1].b", "go in an array"),
    ('{"a": [NaN]}', None, "NaN is not a JSON number"),
]


class TestInvalidPatterns:
    """What Lambda rejects, with the position of the problem inside the pattern."""

    @pytest.mark.parametrize(("pattern", "position", "reason"), INVALID)
    def test_rejected(self, pattern: str, position: str | None, reason: str) -> None:
        problem = error(pattern)
        assert problem.position == position
        assert reason in problem.reason
        assert problem.filter_index == 0

    def test_json_syntax_error_gives_line_and_column(self) -> None:
        problem = error('{"eventName":\n  ["INSERT",]}')
        assert problem.position == "line 2, column 13 (char 26)"
        assert problem.reason.startswith("not valid JSON: ")

    def test_config_validator_says_where(self) -> None:
        assert validate_pattern('{"eventName": ["INSERT"]}') == '{"eventName": ["INSERT"]}'
        with pytest.raises(ValueError, match=r"^at eventName: values to match go in an array"):
            validate_pattern('{"eventName": "INSERT"}')
        with pytest.raises(ValueError, match=r"^an empty object matches nothing"):
            validate_pattern("{}")

    def test_a_pattern_must_be_text(self) -> None:
        with pytest.raises(FilterPatternError, match="must be a string of JSON, not dict"):
            compile_filters([{"eventName": ["INSERT"]}])  # type: ignore[list-item]  # on purpose


class TestLimits:
    """4,096 characters per pattern is Lambda's documented limit; depth is bounded by it."""

    def test_longest_pattern(self) -> None:
        padding = "x" * (MAX_PATTERN_LENGTH - len('{"a": [""]}'))
        assert matches(f'{{"a": ["{padding}"]}}', {"a": padding})
        problem = error(f'{{"a": ["{padding}x"]}}')
        assert problem.position is None
        assert "4097 characters" in problem.reason

    def test_deepest_pattern_that_fits(self) -> None:
        depth = (MAX_PATTERN_LENGTH - len('["x"]')) // len('{"":}')
        pattern = '{"":' * depth + '["x"]' + "}" * depth
        record: object = "x"
        for _ in range(depth):
            record = {"": record}
        assert compile_filters([pattern]).matches(record)  # type: ignore[arg-type]  # nested
        assert not compile_filters([pattern]).matches({"": {}})


class TestNotes:
    """Valid patterns that cannot do what they seem to come back as notes."""

    @pytest.mark.parametrize(
        ("pattern", "position", "says"),
        [
            (
                {"dynamodb": {"NewImage": {"n": {"N": [{"numeric": [">", 1]}]}}}},
                "dynamodb.NewImage.n.N[0]",
                "numbers are strings",
            ),
            (
                {"dynamodb": {"Keys": {"id": {"N": [101]}}}},
                "dynamodb.Keys.id.N[0]",
                "numbers are strings",
            ),
            (
                {"dynamodb": {"NewImage": {"status": ["SHIPPED"]}}},
                "dynamodb.NewImage.status",
                "match status.S",
            ),
            (
                {"dynamodb": {"NewImage": {"status": {"s": ["x"]}}}},
                "dynamodb.NewImage.status.s",
                "did you mean 'S'",
            ),
            ({"eventname": ["INSERT"]}, "eventname", "did you mean 'eventName'"),
            ({"dynamodb": {"newImage": {"a": {"S": ["x"]}}}}, "dynamodb.newImage", "'NewImage'"),
        ],
    )
    def test_note(self, pattern: dict[str, Any], position: str, says: str) -> None:
        (note,) = compile_filters([json.dumps(pattern)]).notes
        assert note.position == position
        assert says in note.message

    def test_sound_patterns_have_no_notes(self) -> None:
        pattern = {
            "eventName": ["MODIFY"],
            "dynamodb": {
                "NewImage": {"total": {"N": [{"prefix": "1"}]}},
                "SizeBytes": [{"numeric": [">", 0]}],
            },
        }
        assert compile_filters([json.dumps(pattern)]).notes == ()


class TestProperties:
    """Negations agree with the rules they negate, for any present string."""

    @given(value=st.text(max_size=8), excluded=st.text(max_size=8))
    def test_anything_but_is_the_complement_of_equals(self, value: str, excluded: str) -> None:
        record = {"f": value}
        assert matches({"f": [{"anything-but": [excluded]}]}, record) is not matches(
            {"f": [excluded]}, record
        )

    @given(value=st.text(max_size=8), start=st.text(min_size=1, max_size=3))
    def test_anything_but_prefix_is_the_complement_of_prefix(self, value: str, start: str) -> None:
        record = {"f": [value]}
        assert matches({"f": [{"anything-but": {"prefix": start}}]}, record) is not matches(
            {"f": [{"prefix": start}]}, record
        )

    @given(value=st.text(max_size=8), other=st.text(max_size=8))
    def test_equals_ignore_case_agrees_with_lower(self, value: str, other: str) -> None:
        expected = value.lower() == other.lower()
        assert matches({"f": [{"equals-ignore-case": other}]}, {"f": value}) is expected


def kinesis_record(data: bytes, partition_key: str = "pk-1") -> dict[str, Any]:
    """A Kinesis record in Lambda's shape (AWS's documented example, with ``data``)."""
    return {
        "kinesis": {
            "kinesisSchemaVersion": "1.0",
            "partitionKey": partition_key,
            "sequenceNumber": "49590338271490256608559692538361571095921575989136588898",
            "data": base64.b64encode(data).decode(),
            "approximateArrivalTimestamp": 1545084650.987,
        },
        "eventSource": "aws:kinesis",
        "eventVersion": "1.0",
        "eventID": "shardId-000000000006:49590338271490256608559692538361571095921575989136588898",
        "eventName": "aws:kinesis:record",
        "invokeIdentityArn": "arn:aws:iam::123456789012:role/lambda-role",
        "awsRegion": "us-east-2",
        "eventSourceARN": "arn:aws:kinesis:us-east-2:123456789012:stream/lambda-stream",
    }


class TestKinesis:
    """Lambda filters Kinesis records on ``data`` parsed as JSON (AWS's documented example)."""

    ORDER = json.dumps(
        {"record": 12345, "order": {"type": "buy", "stock": "ANYCO", "quantity": 1000}}
    ).encode()

    def test_the_documented_buy_filter(self) -> None:
        pattern = {"data": {"order": {"type": ["buy"]}}}
        assert matches(pattern, kinesis_record(self.ORDER))
        sell = self.ORDER.replace(b'"buy"', b'"sell"')
        assert not matches(pattern, kinesis_record(sell))

    def test_numeric_rules_apply_to_json_numbers_in_data(self) -> None:
        assert matches(
            {"data": {"order": {"quantity": [{"numeric": [">", 999]}]}}}, kinesis_record(self.ORDER)
        )
        assert not matches(
            {"data": {"order": {"quantity": [{"numeric": [">", 1000]}]}}},
            kinesis_record(self.ORDER),
        )

    def test_data_that_is_not_json_is_filtered_out_by_a_data_pattern(self) -> None:
        assert not matches({"data": {"order": {"type": ["buy"]}}}, kinesis_record(b"buy \xff"))
        assert not matches({"data": [{"exists": True}]}, kinesis_record(b"plain text"))

    def test_metadata_patterns_apply_whatever_the_data(self) -> None:
        assert matches({"partitionKey": [{"prefix": "pk-"}]}, kinesis_record(b"\x00\x01"))
        assert not matches({"partitionKey": ["other"]}, kinesis_record(b"\x00\x01"))

    def test_the_record_itself_is_not_changed(self) -> None:
        record = kinesis_record(self.ORDER)
        before = json.dumps(record, sort_keys=True)
        matches({"data": {"order": {"type": ["buy"]}}}, record)
        assert json.dumps(record, sort_keys=True) == before
