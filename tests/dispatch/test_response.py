"""ReportBatchItemFailures responses judged by Lambda's rules, plus loud malformed values."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest

from shardwise.dispatch.response import interpret_response, looks_like_failure_report
from shardwise.records import StreamRecord

RECORDS: list[StreamRecord] = [{"dynamodb": {"SequenceNumber": s}} for s in ("10", "20", "30")]


class TestSuccess:
    """Lambda's forms of full success."""

    @pytest.mark.parametrize(
        "value", [None, {}, {"batchItemFailures": []}, {"batchItemFailures": None}]
    )
    def test_full_success(self, value: Any) -> None:
        response = interpret_response(value, RECORDS)
        assert response.ok
        assert response.problem is None


class TestPartialFailure:
    """The lowest reported sequence number is where the retry starts."""

    def test_lowest_identifier_wins(self) -> None:
        value = {"batchItemFailures": [{"itemIdentifier": "30"}, {"itemIdentifier": "20"}]}
        response = interpret_response(value, RECORDS)
        assert response.failed_from == 1
        assert response.problem is None

    def test_first_record_fails_the_whole_batch(self) -> None:
        assert (
            interpret_response(
                {"batchItemFailures": [{"itemIdentifier": "10"}]}, RECORDS
            ).failed_from
            == 0
        )


def user_record(sequence: str, sub: int | None = None) -> StreamRecord:
    body: dict[str, Any] = {"sequenceNumber": sequence, "partitionKey": "k", "data": ""}
    if sub is not None:
        body["subSequenceNumber"] = sub
    return {"kinesis": body}


class TestDeaggregatedRecords:
    """User records split out of one KPL aggregate share its sequence number."""

    # A plain record, then the user records 1..3 of aggregate "20" (0 was resolved before).
    BATCH: ClassVar[list[StreamRecord]] = [
        user_record("10"),
        *(user_record("20", sub) for sub in (1, 2, 3)),
        user_record("30"),
    ]

    def test_a_user_record_is_named_exactly_by_sequence_and_sub_sequence(self) -> None:
        value = {"batchItemFailures": [{"itemIdentifier": "20:2"}]}
        assert interpret_response(value, self.BATCH).failed_from == 2

    def test_the_plain_sequence_number_names_the_aggregates_first_record_here(self) -> None:
        # What an unchanged handler reports: the retry starts at the first sibling in the
        # batch, so nothing after it is skipped.
        value = {"batchItemFailures": [{"itemIdentifier": "20"}]}
        assert interpret_response(value, self.BATCH).failed_from == 1

    def test_a_sub_sequence_not_in_the_batch_fails_the_whole_batch(self) -> None:
        response = interpret_response(
            {"batchItemFailures": [{"itemIdentifier": "20:0"}]}, self.BATCH
        )
        assert response.failed_from == 0
        assert response.problem is not None and "20:0" in response.problem


class TestWholeBatchFailure:
    """Invalid identifiers and malformed values fail the whole batch, with a reason."""

    @pytest.mark.parametrize(
        ("value", "reason"),
        [
            ({"batchItemFailures": [{"itemIdentifier": ""}]}, "without an itemIdentifier"),
            ({"batchItemFailures": [{"itemIdentifier": None}]}, "without an itemIdentifier"),
            ({"batchItemFailures": [{"itemIdentifer": "20"}]}, "without an itemIdentifier"),
            ({"batchItemFailures": [{"itemIdentifier": "99"}]}, "not a SequenceNumber of this"),
            ({"batchItemFailures": ["20"]}, "without an itemIdentifier"),
            ({"batchItemFailures": "20"}, "expected a list"),
            ({"batchItemFailure": [{"itemIdentifier": "20"}]}, "did you mean 'batchItemFailures'"),
            ({"status": "ok"}, "without 'batchItemFailures'"),
            ("ok", "handler returned str"),
            ([{"itemIdentifier": "20"}], "handler returned list"),
        ],
    )
    def test_malformed(self, value: Any, reason: str) -> None:
        response = interpret_response(value, RECORDS)
        assert response.failed_from == 0
        assert response.problem is not None
        assert reason in response.problem


class TestUnreported:
    """A failure report without ReportBatchItemFailures is recognised (to warn about it)."""

    def test_detects_a_report(self) -> None:
        assert looks_like_failure_report({"batchItemFailures": [{"itemIdentifier": "10"}]})
        assert not looks_like_failure_report({"batchItemFailures": []})
        assert not looks_like_failure_report(None)
