"""Kinesis handlers people already run on Lambda run unchanged: AWS's examples and Powertools.

Against moto's Kinesis over HTTP, in process; the failure paths end in a ``file://``
on-failure destination, whose records carry Lambda's ``KinesisBatchInfo``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from shardwise.records import ShardId
from tests.e2e import read_jsonl, running, settings_for, wait_until
from tests.test_run_kinesis import create_stream, put

REPO = Path(__file__).resolve().parents[1]


def _settings(tmp_path: Path, endpoint: str, arn: str, handler: str, extra: str = "") -> Any:
    return settings_for(
        tmp_path,
        endpoint_url=endpoint,
        store_url=f"sqlite+aiosqlite:///{tmp_path / 'cp.db'}",
        processors=f"""
        - name: docs
          source: {{kinesis: {{stream_arn: "{arn}"}}}}
          handler: {handler}
          starting_position: TRIM_HORIZON
          {extra}
        """,
    )


@pytest.fixture(autouse=True)
def _examples_importable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(REPO))


class TestAwsExamples:
    async def test_the_trigger_example_logs_each_records_data(
        self, tmp_path: Path, moto_endpoint: str, capfd: pytest.CaptureFixture[str]
    ) -> None:
        client, name, arn = create_stream(moto_endpoint)
        sequences = [put(client, name, "k", {"n": i}) for i in range(3)]
        printed: list[str] = []
        settings = _settings(
            tmp_path, moto_endpoint, arn, "examples.aws_docs_kinesis_handler.lambda_handler"
        )

        def seen() -> bool:
            printed.append(capfd.readouterr().out)
            return "Successfully processed 3 records." in "".join(printed)

        async with running(settings):
            await wait_until(seen, what="the handler's last line")
        text = "".join(printed)
        for i, sequence in enumerate(sequences):
            assert f"EventID: shardId-000000000000:{sequence}" in text
            assert f'Record Data: {{"n": {i}}}' in text

    async def test_the_batch_item_failures_example_sends_the_poison_record_on(
        self, tmp_path: Path, moto_endpoint: str
    ) -> None:
        client, name, arn = create_stream(moto_endpoint)
        before = [put(client, name, "k", {"n": i}) for i in range(3)]
        poison = put(client, name, "k", b"poison")
        after = [put(client, name, "k", {"n": i}) for i in range(3, 5)]
        failures = tmp_path / "failures.jsonl"
        settings = _settings(
            tmp_path,
            moto_endpoint,
            arn,
            "examples.aws_docs_kinesis_handler.batch_item_failures_handler",
            extra=(
                "function_response_types: [ReportBatchItemFailures]\n"
                "          maximum_retry_attempts: 1\n"
                f'          destination_config: {{on_failure: {{destination: "file://{failures}"}}}}'
            ),
        )
        async with running(settings) as supervisor:
            await wait_until(lambda: len(read_jsonl(failures)) >= 1, what="the failure record")
            shard = supervisor.progress["docs"].shard(ShardId("shardId-000000000000"))
            await wait_until(
                lambda: shard.checkpoint == after[-1], what="the checkpoint past every record"
            )
        [failure] = read_jsonl(failures)
        info = failure["KinesisBatchInfo"]
        assert info["shardId"] == "shardId-000000000000"
        # As Lambda: the batch retried from the reported record on is what gave up.
        assert info["startSequenceNumber"] == poison
        assert info["endSequenceNumber"] == after[-1]
        assert info["batchSize"] == 1 + len(after)
        assert info["streamArn"] == arn
        assert failure["requestContext"]["condition"] == "RetryAttemptsExhausted"
        assert "DDBStreamBatchInfo" not in failure
        assert len(before) == 3


class TestPowertools:
    async def test_a_batch_processor_handler_runs_unchanged(
        self, tmp_path: Path, moto_endpoint: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        out = tmp_path / "processed.jsonl"
        monkeypatch.setenv("POWERTOOLS_OUT", str(out))
        client, name, arn = create_stream(moto_endpoint, shards=2)
        sequences = [put(client, name, f"k{i % 4}", {"n": i, "poison": i == 7}) for i in range(20)]
        failures = tmp_path / "failures.jsonl"
        settings = _settings(
            tmp_path,
            moto_endpoint,
            arn,
            "examples.powertools_kinesis.lambda_handler",
            extra=(
                "function_response_types: [ReportBatchItemFailures]\n"
                "          maximum_retry_attempts: 2\n"
                "          batch_size: 5\n"
                f'          destination_config: {{on_failure: {{destination: "file://{failures}"}}}}'
            ),
        )
        async with running(settings):
            await wait_until(lambda: len(read_jsonl(failures)) >= 1, what="the poison record")
            await wait_until(
                lambda: {r["payload"]["n"] for r in read_jsonl(out)} >= set(range(20)) - {7},
                what="every other record",
            )
        processed = [r["payload"]["n"] for r in read_jsonl(out)]
        assert 7 not in processed
        # Per partition key, in the order written, each delivered (retries may repeat some).
        for key in range(4):
            order = [n for n in dict.fromkeys(processed) if n % 4 == key]
            assert order == sorted(order)
        [failure] = read_jsonl(failures)
        # The retried batch starts at the record Powertools reported.
        assert failure["KinesisBatchInfo"]["startSequenceNumber"] == sequences[7]
        assert failure["KinesisBatchInfo"]["streamArn"] == arn
