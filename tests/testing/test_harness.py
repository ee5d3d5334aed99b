"""The test kit's harness: a handler run through the real dispatch path, in process."""

from __future__ import annotations

import asyncio
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from shardwise.clock import HANDLER_BACKOFF
from shardwise.config import ProcessorConfig
from shardwise.errors import HandlerTimeoutError
from shardwise.processors import LambdaContext
from shardwise.records import StreamRecord
from shardwise.testing import (
    RunResult,
    event,
    insert,
    kinesis_record,
    modify,
    remove,
    run_handler,
    run_handler_sync,
    run_processor,
)
from shardwise.testing.events import Sequencer
from shardwise.testing.harness import DEFAULT_SHARD_ID

REPORT = ["ReportBatchItemFailures"]
LONG_AGO = 1_700_000_000  # 2023-11-14T22:13:20Z, a multiple of 20 s


def orders(count: int, **options: Any) -> list[StreamRecord]:
    return [insert({"order_id": f"o-{i}", "n": i}, **options) for i in range(count)]


def seq(record: StreamRecord) -> str:
    return str(record["dynamodb"]["SequenceNumber"])


def n_of(record: StreamRecord) -> int:
    return int(record["dynamodb"]["NewImage"]["n"]["N"])


def ns(records: list[StreamRecord]) -> list[int]:
    return [n_of(r) for r in records]


class Recorder:
    """A Lambda handler that records each event's records and fails on ``poison`` items:
    by raising, or with ``batchItemFailures`` when ``report`` is set."""

    def __init__(self, poison: frozenset[int] = frozenset(), *, report: bool = False) -> None:
        self.poison = poison
        self.report = report
        self.batches: list[list[int]] = []

    def __call__(self, event: dict[str, Any], context: LambdaContext) -> Any:
        self.batches.append(ns(event["Records"]))
        for record in event["Records"]:
            if n_of(record) in self.poison:
                if self.report:
                    return {"batchItemFailures": [{"itemIdentifier": seq(record)}]}
                raise ValueError(f"poison {n_of(record)}")
        return None


class TestDelivery:
    async def test_every_record_reaches_the_handler_in_batches_and_is_checkpointed(self) -> None:
        records = orders(7)
        handler = Recorder()
        result = await run_handler(handler, records, batch_size=3)
        assert handler.batches == [[0, 1, 2], [3, 4, 5], [6]]
        assert [len(call.records) for call in result.invocations] == [3, 3, 1]
        assert all(call.outcome == "succeeded" for call in result.invocations)
        assert result.invocations[0].records == records[:3]  # exactly as built
        assert result.processed == records
        assert result.checkpoint == seq(records[-1])
        assert result.checkpoints == (seq(records[2]), seq(records[5]), seq(records[6]))
        assert result.finished
        assert result.failures == ()
        assert result.filtered == ()
        assert result.progress.records_processed == 7

    async def test_the_handler_gets_lambdas_context(self) -> None:
        contexts: list[LambdaContext] = []

        def handler(event: dict[str, Any], context: LambdaContext) -> None:
            contexts.append(context)

        await run_handler(handler, orders(1), name="orders-view", timeout_seconds=30)
        [context] = contexts
        assert context.function_name == "orders-view"
        assert context.invoked_function_arn == (
            "arn:aws:lambda:us-east-1:123456789012:function:orders-view"
        )
        assert context.shard_id == DEFAULT_SHARD_ID
        assert 25_000 < context.get_remaining_time_in_millis() <= 30_000

    async def test_an_async_handler_and_an_event_as_input(self) -> None:
        seen: list[int] = []

        async def handler(event: dict[str, Any], context: LambdaContext) -> None:
            await asyncio.sleep(0)
            seen.extend(ns(event["Records"]))

        result = await run_handler(handler, event(*orders(4)))
        assert seen == [0, 1, 2, 3]
        assert result.finished

    async def test_pages_cut_batches_as_getrecords_pages_do(self) -> None:
        """With no batching window, what one GetRecords call returned is a batch."""
        handler = Recorder()
        await run_handler(handler, orders(5), batch_size=10, page_size=2)
        assert handler.batches == [[0, 1], [2, 3], [4]]

    async def test_the_invocation_is_a_copy_taken_before_the_call(self) -> None:
        def handler(event: dict[str, Any], context: LambdaContext) -> None:
            event["Records"][0]["dynamodb"]["NewImage"]["n"] = {"N": "999"}

        records = orders(1)
        result = await run_handler(handler, records)
        assert n_of(result.invocations[0].records[0]) == 0

    async def test_a_class_processor_is_set_up_once_and_torn_down(self) -> None:
        calls: list[str] = []

        class Processor:
            def setup(self) -> None:
                calls.append("setup")

            def process(self, event: dict[str, Any], context: LambdaContext) -> None:
                calls.append(f"process {len(event['Records'])}")

            def teardown(self) -> None:
                calls.append("teardown")

        await run_handler(Processor, orders(3), batch_size=2)
        assert calls == ["setup", "process 2", "process 1", "teardown"]

    async def test_a_handler_reference_is_imported_from_the_task_root(self, tmp_path: Path) -> None:
        (tmp_path / "kit_handler_module.py").write_text(
            textwrap.dedent(
                """
                SEEN = []

                def handler(event, context):
                    SEEN.extend(r["eventName"] for r in event["Records"])
                """
            )
        )
        records = [insert({"Id": 1}), modify({"Id": 1, "v": 1}, {"Id": 1, "v": 2})]
        records.append(remove({"Id": 1}))
        result = await run_handler("kit_handler_module.handler", records, task_root=tmp_path)
        import kit_handler_module  # type: ignore[import-not-found]

        assert kit_handler_module.SEEN == ["INSERT", "MODIFY", "REMOVE"]
        assert result.finished

    async def test_parallelization_keeps_each_items_order(self) -> None:
        sequencer = Sequencer(10**20)
        records = [
            insert({"order_id": f"o-{i % 3}", "n": i}, sequencer=sequencer) for i in range(30)
        ]
        seen: list[int] = []
        running = 0
        most = 0

        async def handler(event: dict[str, Any], context: LambdaContext) -> None:
            nonlocal running, most
            running += 1
            most = max(most, running)
            await asyncio.sleep(0.01)
            seen.extend(ns(event["Records"]))
            running -= 1

        result = await run_handler(handler, records, batch_size=2, parallelization_factor=3)
        assert sorted(seen) == list(range(30))
        for key in range(3):
            mine = [n for n in seen if n % 3 == key]
            assert mine == sorted(mine)
        assert most > 1  # lanes ran side by side
        assert result.checkpoint == seq(records[-1])
        assert result.finished


class TestFailures:
    async def test_a_reported_record_is_retried_then_sent_to_the_destination(self) -> None:
        records = orders(6)
        handler = Recorder(frozenset({3}), report=True)
        result = await run_handler(
            handler,
            records,
            batch_size=6,
            function_response_types=REPORT,
            maximum_retry_attempts=2,
        )
        # The first call resolves 0-2; the retries start at the reported record.
        assert handler.batches == [[0, 1, 2, 3, 4, 5], [3, 4, 5], [3, 4, 5]]
        # Reporting the first record of the batch fails all of it.
        assert [call.outcome for call in result.invocations] == ["partial", "failed", "failed"]
        assert result.invocations[0].failed_from == 3
        assert ns(result.invocations[0].done) == [0, 1, 2]
        assert ns(result.processed) == [0, 1, 2]
        [failure] = result.on_failure
        info = failure["DDBStreamBatchInfo"]
        assert info["startSequenceNumber"] == seq(records[3])
        assert info["endSequenceNumber"] == seq(records[5])
        assert info["batchSize"] == 3
        assert info["shardId"] == DEFAULT_SHARD_ID
        assert info["streamArn"] == records[0]["eventSourceARN"]
        assert failure["requestContext"]["condition"] == "RetryAttemptsExhausted"
        assert failure["requestContext"]["approximateInvokeCount"] == 3
        assert failure["requestContext"]["functionArn"].endswith(":function:test-processor")
        assert ns(result.failed_records) == [3, 4, 5]
        assert result.checkpoint == seq(records[5])
        assert result.finished

    async def test_bisection_isolates_a_poison_record(self) -> None:
        records = orders(8)
        handler = Recorder(frozenset({5}))
        result = await run_handler(
            handler,
            records,
            batch_size=8,
            bisect_batch_on_function_error=True,
            maximum_retry_attempts=1,
        )
        assert ns(result.failed_records) == [5]
        assert ns(result.processed) == [0, 1, 2, 3, 4, 6, 7]
        # Halves down to the poison record, which alone is retried once; then the rest.
        assert [ns(call.records) for call in result.invocations] == [
            [0, 1, 2, 3, 4, 5, 6, 7],
            [0, 1, 2, 3],
            [4, 5, 6, 7],
            [4, 5],
            [4],
            [5],
            [5],
            [6, 7],
        ]
        assert [call.outcome for call in result.invocations].count("succeeded") == 3
        [failure] = result.failures
        assert failure.approximate_invoke_count >= 2
        assert result.checkpoint == seq(records[-1])

    @pytest.mark.parametrize("retries", [0, 1, 3])
    async def test_maximum_retry_attempts_bounds_the_calls(self, retries: int) -> None:
        records = orders(2)
        handler = Recorder(frozenset({0, 1}))
        result = await run_handler(handler, records, maximum_retry_attempts=retries)
        assert len(result.invocations) == retries + 1
        assert all(call.outcome == "failed" for call in result.invocations)
        assert isinstance(result.invocations[0].error, ValueError)
        [failure] = result.on_failure
        assert failure["requestContext"]["approximateInvokeCount"] == retries + 1
        assert failure["shardwise"]["error"] == "ValueError: poison 0"
        assert result.processed == []
        assert result.checkpoint == seq(records[-1])

    async def test_retries_take_no_wall_clock_time(self) -> None:
        """Four failures then success: the handler backoff would sleep >= 3.75 s."""
        attempts = 0

        def flaky(event: dict[str, Any], context: LambdaContext) -> None:
            nonlocal attempts
            attempts += 1
            if attempts <= 4:
                raise RuntimeError("not yet")

        assert sum(HANDLER_BACKOFF.delay(n) for n in range(1, 5)) >= 3.75
        started = time.monotonic()
        result = await run_handler(flaky, orders(1))
        assert time.monotonic() - started < 1.5
        assert [call.outcome for call in result.invocations] == ["failed"] * 4 + ["succeeded"]
        assert result.failures == ()
        assert len(result.processed) == 1

    async def test_endless_retries_stop_at_max_invocations(self) -> None:
        records = orders(3)
        handler = Recorder(frozenset({1}))
        result = await run_handler(handler, records, batch_size=1, max_invocations=20)
        assert len(result.invocations) == 20
        assert not result.finished
        assert result.checkpoint == seq(records[0])  # stuck behind the poison record
        assert ns(result.processed) == [0]
        assert result.failures == ()

    async def test_a_poison_record_is_retried_past_a_thousand_attempts(self) -> None:
        async def poison(event: dict[str, Any], context: LambdaContext) -> None:
            raise ValueError("poison")

        result = await run_handler(poison, orders(1), max_invocations=1100)
        assert len(result.invocations) == 1100
        assert not result.finished

    async def test_a_malformed_failure_report_fails_the_whole_batch(self) -> None:
        def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
            return {"batchItemFailure": [{"itemIdentifier": seq(event["Records"][0])}]}

        result = await run_handler(
            handler, orders(2), function_response_types=REPORT, maximum_retry_attempts=0
        )
        [call] = result.invocations
        assert call.outcome == "failed"
        assert call.failed_from == 0
        assert ns(result.failed_records) == [0, 1]

    async def test_without_report_batch_item_failures_the_response_is_ignored(self) -> None:
        def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
            return {"batchItemFailures": [{"itemIdentifier": seq(event["Records"][0])}]}

        result = await run_handler(handler, orders(2))
        assert [call.outcome for call in result.invocations] == ["succeeded"]
        assert len(result.processed) == 2

    async def test_old_records_go_to_the_destination_without_a_call(self) -> None:
        records = orders(2, created=time.time() - 3600) + orders(1)
        handler = Recorder()
        result = await run_handler(handler, records, maximum_record_age_in_seconds=60)
        assert handler.batches == [[0]]  # only the fresh record
        [failure] = result.on_failure
        assert failure["requestContext"]["condition"] == "RecordAgeExceeded"
        assert failure["requestContext"]["approximateInvokeCount"] == 0
        assert failure["DDBStreamBatchInfo"]["batchSize"] == 2
        assert result.checkpoint == seq(records[-1])

    @pytest.mark.parametrize(
        "lanes",
        [
            1,
            2,
        ],
    )
    async def test_a_record_over_the_payload_limit_is_not_invoked(self, lanes: int) -> None:
        records = orders(1)
        big = insert({"order_id": "big", "n": 99, "blob": "x" * 2000})
        records += [big, *orders(1)]
        handler = Recorder()
        result = await run_handler(
            handler, records, payload_limit_bytes=1024, parallelization_factor=lanes
        )
        assert [r["dynamodb"]["Keys"] for r in result.failed_records] == [big["dynamodb"]["Keys"]]
        assert result.on_failure[0]["requestContext"]["condition"] == "MaximumPayloadSizeExceeded"
        assert 99 not in [n for batch in handler.batches for n in batch]
        assert result.finished

    async def test_a_handler_past_its_timeout_fails_the_batch(self) -> None:
        async def slow(event: dict[str, Any], context: LambdaContext) -> None:
            await asyncio.sleep(30)

        result = await run_handler(slow, orders(1), timeout_seconds=1, maximum_retry_attempts=0)
        [call] = result.invocations
        assert isinstance(call.error, HandlerTimeoutError)
        assert len(result.failures) == 1


class TestFilters:
    async def test_records_no_filter_matches_are_consumed_without_a_call(self) -> None:
        records = [
            insert({"order_id": "o-1", "status": "NEW"}),
            modify({"order_id": "o-1", "status": "NEW"}, {"order_id": "o-1", "status": "SHIPPED"}),
            remove({"order_id": "o-1", "status": "SHIPPED"}),
            insert({"order_id": "o-2", "status": "NEW"}),
        ]
        seen: list[str] = []

        def handler(event: dict[str, Any], context: LambdaContext) -> None:
            seen.extend(r["eventName"] for r in event["Records"])

        result = await run_handler(
            handler,
            records,
            filter_criteria=[
                {"eventName": ["MODIFY"]},
                '{"dynamodb": {"OldImage": {"status": {"S": ["SHIPPED"]}}}}',
            ],
        )
        assert seen == ["MODIFY", "REMOVE"]
        assert result.filtered == (records[0], records[3])
        assert result.processed == records[1:3]
        assert result.progress.records_filtered == 2
        assert result.checkpoint == seq(records[-1])  # the filtered tail is consumed too

    async def test_kinesis_data_is_matched_as_json(self) -> None:
        records = [
            kinesis_record({"type": "buy", "n": 1}, partition_key="a"),
            kinesis_record({"type": "sell", "n": 2}, partition_key="a"),
            kinesis_record(b"not json", partition_key="a"),
        ]
        result = await run_handler(
            lambda event, context: None,
            records,
            filter_criteria=[{"data": {"type": ["buy"]}}],
        )
        assert result.processed == records[:1]
        assert list(result.filtered) == records[1:]

    async def test_an_invalid_pattern_is_refused_as_the_config_refuses_it(self) -> None:
        with pytest.raises(ValueError, match="filter_criteria"):
            await run_handler(Recorder(), orders(1), filter_criteria=['{"eventName": "INSERT"}'])


class TestTumblingWindows:
    @staticmethod
    def counter(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
        state = dict(event["state"])
        if event["isFinalInvokeForWindow"]:
            return {}
        state["count"] = state.get("count", 0) + len(event["Records"])
        return {"state": state}

    async def test_state_is_carried_through_a_window_and_closed(self) -> None:
        records = [
            insert({"order_id": "a", "n": 0}, created=LONG_AGO + 1),
            insert({"order_id": "b", "n": 1}, created=LONG_AGO + 2),
            insert({"order_id": "c", "n": 2}, created=LONG_AGO + 3),
            insert({"order_id": "d", "n": 3}, created=LONG_AGO + 25),  # the next window
        ]
        result = await run_handler(
            self.counter, records, batch_size=2, tumbling_window_in_seconds=20
        )
        calls = result.invocations
        assert [(len(c.records), c.final) for c in calls] == [
            (2, False),
            (1, False),
            (0, True),
            (1, False),
            (0, True),
        ]
        assert calls[1].event["state"] == {"count": 2}
        assert calls[2].event["state"] == {"count": 3}
        assert calls[2].event["window"] == {
            "start": "2023-11-14T22:13:20Z",
            "end": "2023-11-14T22:13:40Z",
        }
        assert calls[4].event["state"] == {"count": 1}
        assert calls[0].event["shardId"] == DEFAULT_SHARD_ID
        assert result.processed == records
        assert result.open_window is None
        assert result.checkpoint == seq(records[-1])

    async def test_a_window_still_running_is_left_open_with_its_state(self) -> None:
        ahead = time.time() + 3600  # a window whose end is an hour away
        records = [insert({"order_id": str(i), "n": i}, created=ahead) for i in range(3)]
        result = await run_handler(self.counter, records, tumbling_window_in_seconds=60)
        assert not any(call.final for call in result.invocations)
        assert result.open_window is not None
        assert result.open_window.state == {"count": 3}
        assert result.open_window.start == int(ahead) - int(ahead) % 60

    async def test_a_response_without_state_fails_the_invocation(self) -> None:
        result = await run_handler(
            lambda event, context: None,
            orders(1, created=LONG_AGO),
            tumbling_window_in_seconds=60,
            maximum_retry_attempts=1,
        )
        assert [call.outcome for call in result.invocations[:2]] == ["failed", "failed"]
        assert len(result.failures) == 1
        assert result.processed == []


class TestKinesis:
    async def test_records_are_served_on_their_shard(self) -> None:
        records = [
            kinesis_record({"n": i}, partition_key="k", shard_id="shardId-000000000002")
            for i in range(3)
        ]

        def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
            failed = event["Records"][1]["kinesis"]["sequenceNumber"]
            return {"batchItemFailures": [{"itemIdentifier": failed}]}

        result = await run_handler(
            handler, records, function_response_types=REPORT, maximum_retry_attempts=0
        )
        [failure] = result.on_failure
        assert "DDBStreamBatchInfo" not in failure
        info = failure["KinesisBatchInfo"]
        assert info["shardId"] == "shardId-000000000002"
        assert info["startSequenceNumber"] == records[1]["kinesis"]["sequenceNumber"]
        assert result.processed == records[:1]
        assert result.checkpoint == records[-1]["kinesis"]["sequenceNumber"]


class TestInputs:
    async def test_records_of_two_streams_are_refused(self) -> None:
        with pytest.raises(ValueError, match="more than one stream"):
            await run_handler(Recorder(), [insert({"Id": 1}), insert({"Id": 1}, table="Other")])

    async def test_records_out_of_order_are_refused(self) -> None:
        first, second = orders(2)
        with pytest.raises(ValueError, match="does not come after"):
            await run_handler(Recorder(), [second, first])
        with pytest.raises(ValueError, match="does not come after"):
            await run_handler(Recorder(), [first, first])

    async def test_kinesis_records_of_two_shards_are_refused(self) -> None:
        records = [
            kinesis_record(b"a", partition_key="k", shard_id="shardId-000000000000"),
            kinesis_record(b"b", partition_key="k", shard_id="shardId-000000000001"),
        ]
        with pytest.raises(ValueError, match="more than one shard"):
            await run_handler(Recorder(), records)

    async def test_an_event_without_records_is_refused(self) -> None:
        with pytest.raises(ValueError, match='no "Records"'):
            await run_handler(Recorder(), {"records": []})

    async def test_settings_lambda_refuses_are_refused(self) -> None:
        with pytest.raises(ValueError, match="batch_size"):
            await run_handler(Recorder(), orders(1), batch_size=0)
        with pytest.raises(ValueError, match="maximum_record_age_in_seconds"):
            await run_handler(Recorder(), orders(1), maximum_record_age_in_seconds=5)

    async def test_no_records_is_an_empty_finished_run(self) -> None:
        result = await run_handler(Recorder(), [])
        assert result.invocations == ()
        assert result.checkpoint is None
        assert result.finished

    async def test_the_sync_form_refuses_a_running_loop(self) -> None:
        with pytest.raises(RuntimeError, match="await run_handler"):
            run_handler_sync(Recorder(), orders(1))


def test_the_sync_form_runs_on_a_loop_of_its_own() -> None:
    handler = Recorder()
    result = run_handler_sync(handler, orders(3), batch_size=2)
    assert isinstance(result, RunResult)
    assert handler.batches == [[0, 1], [2]]
    assert threading.active_count() >= 1


class TestRunProcessor:
    async def test_a_processor_entry_runs_with_its_own_settings(self) -> None:
        config = ProcessorConfig.model_validate(
            {
                "name": "views",
                "source": {"dynamodb": {"table": "Orders"}},
                "handler": "app.views.handler",  # replaced by handler= below
                "starting_position": "LATEST",
                "batch_size": 2,
                "function_response_types": REPORT,
                "maximum_retry_attempts": 0,
                "destination_config": {"on_failure": {"destination": "sql"}},
            }
        )
        handler = Recorder(frozenset({2}), report=True)
        result = await run_processor(config, orders(4), handler=handler)
        assert handler.batches == [[0, 1], [2, 3]]
        assert ns(result.failed_records) == [2, 3]
        assert (
            result.invocations[0]
            .event["Records"][0]["eventSourceARN"]
            .endswith("/stream/2024-01-01T00:00:00.000")
        )

    async def test_records_of_another_kind_of_stream_are_refused(self) -> None:
        config = ProcessorConfig.model_validate(
            {
                "name": "views",
                "source": {"kinesis": {"stream_name": "orders"}},
                "handler": "app.views.handler",
                "starting_position": "TRIM_HORIZON",
            }
        )
        with pytest.raises(ValueError, match="reads a kinesis stream"):
            await run_processor(config, orders(1), handler=Recorder())
