"""The project's own examples, tested the way a user tests a processor: records from the test
kit's builders, run through the real dispatch path with ``shardwise.testing``'s harness, and
each example's documented behaviour asserted."""

from __future__ import annotations

import base64
import json
import os
import re
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any, ClassVar

import pytest

from shardwise.config import load_config
from shardwise.records import StreamRecord
from shardwise.testing import (
    insert,
    kinesis_record,
    modify,
    remove,
    run_handler,
    run_processor,
)

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
REPORT = ["ReportBatchItemFailures"]


@pytest.fixture(autouse=True)
def _examples_importable(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The repository root on sys.path (``examples.*``) and examples/ (the config's task
    root), both taken off again after the test, with the modules imported from them."""
    monkeypatch.syspath_prepend(str(REPO))
    monkeypatch.syspath_prepend(str(EXAMPLES))
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        if name == "orders_view" or name.startswith("examples"):
            del sys.modules[name]


class TestOrdersView:
    """examples/orders_view.py: a materialized view of the Orders table, one transaction per
    batch, applying a record twice leaves the view as applying it once."""

    @pytest.fixture
    def view(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
        path = tmp_path / "orders_view.db"
        monkeypatch.setenv("ORDERS_VIEW_DB", str(path))
        return path

    @staticmethod
    def rows(path: Path) -> tuple[list[tuple[Any, ...]], dict[str, int]]:
        with closing(sqlite3.connect(path)) as db:
            orders = db.execute(
                "SELECT order_id, customer, status, amount, item_count FROM orders ORDER BY 1"
            ).fetchall()
            counts = dict(db.execute("SELECT status, orders FROM order_status_counts").fetchall())
        return orders, counts

    @staticmethod
    def order(order_id: str, status: str, amount: str = "12.50") -> dict[str, Any]:
        return {
            "order_id": order_id,
            "customer": "c-1",
            "status": status,
            "amount": amount,
            "items": ["sku-1", "sku-2"],
            "created_at": "2026-01-01T00:00:00Z",
        }

    def changes(self) -> list[StreamRecord]:
        first, second = self.order("o-1", "PENDING"), self.order("o-2", "PENDING", "3")
        shipped = self.order("o-1", "SHIPPED")
        return [
            insert(first, table="Orders"),
            insert(second, table="Orders"),
            modify(first, shipped, table="Orders"),
            remove(second, table="Orders"),
        ]

    async def test_the_config_runs_the_view(self, view: Path) -> None:
        """The processor of examples/shardwise.yaml, its handler found from its directory."""
        [config] = load_config(EXAMPLES / "shardwise.yaml", env={}).processors
        result = await run_processor(config, self.changes(), config_dir=EXAMPLES)
        assert result.finished and not result.failures
        orders, counts = self.rows(view)
        assert orders == [("o-1", "c-1", "SHIPPED", "12.50", 2)]
        assert counts == {"PENDING": 0, "SHIPPED": 1}

    async def test_a_batch_applied_twice_leaves_the_view_as_once(self, view: Path) -> None:
        from examples.orders_view import handler

        records = self.changes()
        await run_handler(handler, records)
        once = self.rows(view)
        await run_handler(handler, records)
        await run_handler(handler, records[2:])
        assert self.rows(view) == once

    async def test_a_failed_batch_leaves_no_trace(self, view: Path) -> None:
        """KEYS_ONLY records carry no NewImage: the handler raises, and the batch it was in
        is rolled back whole; later batches apply."""
        from examples.orders_view import handler

        records = [
            insert(self.order("o-1", "PENDING")),
            insert(self.order("o-2", "PENDING"), view_type="KEYS_ONLY"),
            insert(self.order("o-3", "NEW")),
        ]
        result = await run_handler(handler, records, batch_size=2, maximum_retry_attempts=1)
        assert [len(call.records) for call in result.invocations] == [2, 2, 1]
        assert "NEW_IMAGE or NEW_AND_OLD_IMAGES" in str(result.invocations[0].error)
        assert result.failed_records == records[:2]
        orders, counts = self.rows(view)
        assert [row[0] for row in orders] == ["o-3"]
        assert counts == {"NEW": 1}


class TestAwsDocsHandler:
    """examples/aws_docs_handler.py: prints the event, then each record's eventID,
    eventName and DynamoDB part."""

    async def test_it_prints_what_it_received(self, capsys: pytest.CaptureFixture[str]) -> None:
        records = [
            insert({"Id": 101, "Message": "New item!"}),
            remove({"Id": 101, "Message": "New item!"}),
        ]
        result = await run_handler("examples.aws_docs_handler.lambda_handler", records)
        printed = capsys.readouterr().out
        start = printed.index('{\n  "Records"')
        shown, _ = json.JSONDecoder().raw_decode(printed[start:])
        assert shown == result.invocations[0].event
        for record in records:
            assert f"{record['eventID']}\n{record['eventName']}\n" in printed
            assert f"DynamoDB Record: {json.dumps(record['dynamodb'])}" in printed
        assert result.processed == records


class TestAwsKinesisExamples:
    """examples/aws_docs_kinesis_handler.py: AWS's Kinesis examples for Lambda."""

    async def test_the_trigger_example_logs_each_records_data(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        from examples.aws_docs_kinesis_handler import lambda_handler

        records = [kinesis_record({"n": i}, partition_key="k") for i in range(3)]
        result = await run_handler(lambda_handler, records)
        printed = capsys.readouterr().out
        for i, record in enumerate(records):
            assert f"Processed Kinesis Event - EventID: {record['eventID']}" in printed
            assert f'Record Data: {{"n": {i}}}' in printed
        assert "Successfully processed 3 records." in printed
        assert result.processed == records

    async def test_the_trigger_example_fails_the_batch_on_bad_data(self) -> None:
        from examples.aws_docs_kinesis_handler import lambda_handler

        records = [kinesis_record(b"\xff\xfe", partition_key="k")]
        result = await run_handler(lambda_handler, records, maximum_retry_attempts=0)
        assert isinstance(result.invocations[0].error, UnicodeDecodeError)
        assert result.failed_records == records

    async def test_the_batch_item_failures_example_sends_the_poison_record_on(self) -> None:
        from examples.aws_docs_kinesis_handler import batch_item_failures_handler

        before = [kinesis_record({"n": i}, partition_key="k") for i in range(3)]
        poison = kinesis_record(b"poison", partition_key="k")
        after = [kinesis_record({"n": i}, partition_key="k") for i in range(3, 5)]
        result = await run_handler(
            batch_item_failures_handler,
            [*before, poison, *after],
            function_response_types=REPORT,
            maximum_retry_attempts=1,
        )
        assert result.processed == before
        [failure] = result.on_failure
        info = failure["KinesisBatchInfo"]
        # As Lambda: the batch retried from the reported record on is what gave up.
        assert info["startSequenceNumber"] == poison["kinesis"]["sequenceNumber"]
        assert info["endSequenceNumber"] == after[-1]["kinesis"]["sequenceNumber"]
        assert info["batchSize"] == 1 + len(after)
        assert failure["requestContext"]["condition"] == "RetryAttemptsExhausted"
        assert failure["requestContext"]["approximateInvokeCount"] == 2
        assert result.checkpoint == after[-1]["kinesis"]["sequenceNumber"]


class TestPowertools:
    """examples/powertools_kinesis.py: Powertools' BatchProcessor reports a record whose
    data says ``{"poison": true}``; the others are written to ``POWERTOOLS_OUT``."""

    async def test_a_batch_processor_handler_runs_unchanged(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        from examples.powertools_kinesis import lambda_handler

        out = tmp_path / "processed.jsonl"
        monkeypatch.setenv("POWERTOOLS_OUT", str(out))
        records = [
            kinesis_record({"n": i, "poison": i == 7}, partition_key=f"k{i % 4}") for i in range(20)
        ]
        result = await run_handler(
            lambda_handler,
            records,
            batch_size=5,
            function_response_types=REPORT,
            maximum_retry_attempts=2,
        )
        processed = [json.loads(line) for line in out.read_text().splitlines()]
        assert 7 not in {p["payload"]["n"] for p in processed}
        assert {p["payload"]["n"] for p in processed} == set(range(20)) - {7}
        assert processed[0] == {"key": "k0", "payload": {"n": 0, "poison": False}}
        [failure] = result.on_failure
        # The retried batch starts at the record Powertools reported: 7, 8, 9.
        info = failure["KinesisBatchInfo"]
        assert info["startSequenceNumber"] == records[7]["kinesis"]["sequenceNumber"]
        assert info["batchSize"] == 3
        assert [
            json.loads(base64.b64decode(r["kinesis"]["data"]))["n"] for r in result.failed_records
        ] == [7, 8, 9]
        assert result.invocations[1].response == {
            "batchItemFailures": [{"itemIdentifier": records[7]["kinesis"]["sequenceNumber"]}]
        }
        assert result.finished


class TestReadme:
    """The worked test in the README's "Testing your own processors", run as a user runs
    it: a file of its own, in a directory of its own, under pytest with the installed
    plugin and without AWS settings in the environment."""

    def test_the_worked_test_passes(self, tmp_path: Path) -> None:
        text = (REPO / "README.md").read_text()
        section = text[text.index("## Testing your own processors") :]
        block = re.search(r"```python\n(.*?)```", section, re.DOTALL)
        assert block is not None
        assert "def test_" in block.group(1)
        (tmp_path / "test_worked.py").write_text(block.group(1))
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_worked.py"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert re.search(r"\b2 passed\b", done.stdout), done.stdout[-3000:]


class TestCustomerTotals:
    """examples/customer_totals.py: per-customer totals, exactly once with
    ``transactional: true`` - and why an upsert alone would count twice."""

    @staticmethod
    def orders() -> list[StreamRecord]:
        first = {"order_id": "o-1", "customer": "c-1", "amount": 10}
        moved = {"order_id": "o-1", "customer": "c-2", "amount": 12}
        return [
            insert(first, keys="order_id"),
            insert({"order_id": "o-2", "customer": "c-1", "amount": 5.25}, keys="order_id"),
            insert({"order_id": "o-3", "customer": "c-2", "amount": 7}, keys="order_id"),
            modify(first, moved, keys="order_id"),  # moved to c-2, and 2.00 more
            remove({"order_id": "o-3", "customer": "c-2", "amount": 7}, keys="order_id"),
        ]

    @staticmethod
    def totals(url: str) -> dict[str, tuple[int, int]]:
        path = url.removeprefix("sqlite+aiosqlite:///")
        with closing(sqlite3.connect(path)) as db:
            rows = db.execute("SELECT customer, orders, amount_cents FROM customer_totals")
            return {customer: (orders, cents) for customer, orders, cents in rows}

    EXPECTED: ClassVar[dict[str, tuple[int, int]]] = {"c-1": (1, 525), "c-2": (1, 1200)}

    async def test_the_config_keeps_exact_totals_through_a_retried_batch(
        self, tmp_path: Path
    ) -> None:
        from examples.customer_totals import handler

        failed: list[None] = []

        async def fails_once_after_writing(event: dict[str, Any], context: Any) -> None:
            await handler(event, context)  # its writes are in the transaction...
            if not failed:
                failed.append(None)
                raise RuntimeError("crashed after writing")  # ...and rolled back with it

        url = f"sqlite+aiosqlite:///{tmp_path / 'shardwise.db'}"
        [config] = load_config(EXAMPLES / "customer_totals.yaml", env={}).processors
        assert config.transactional
        result = await run_processor(
            config, self.orders(), handler=fails_once_after_writing, database_url=url
        )
        assert failed and result.finished and not result.failures
        assert [i.outcome for i in result.invocations] == ["failed", "succeeded"]
        assert self.totals(url) == self.EXPECTED

    async def test_without_the_transaction_a_redelivered_batch_counts_twice(
        self, tmp_path: Path
    ) -> None:
        """The same handler, its writes committed on their own (what an at-least-once
        consumer does): a batch delivered again after a crash adds its orders again."""
        from examples.customer_totals import handler
        from sqlalchemy.ext.asyncio import create_async_engine

        url = f"sqlite+aiosqlite:///{tmp_path / 'plain.db'}"
        engine = create_async_engine(url)
        event = {"Records": self.orders()}

        class Context:
            transaction: Any = None

        try:
            for _ in range(2):  # delivered, the checkpoint lost in a crash, delivered again
                async with engine.begin() as connection:
                    Context.transaction = connection
                    await handler(event, Context())
        finally:
            await engine.dispose()
        assert self.totals(url) == {"c-1": (2, 1050), "c-2": (2, 2400)}

    def test_a_record_without_its_old_image_is_named(self) -> None:
        from examples.customer_totals import deltas

        record = modify(
            {"order_id": "o-1", "customer": "c", "amount": 1},
            {"order_id": "o-1", "customer": "c", "amount": 2},
            keys="order_id",
            view_type="NEW_IMAGE",
        )
        with pytest.raises(ValueError, match=r"lacks an image: .*NEW_AND_OLD_IMAGES") as caught:
            deltas(record)
        assert record["eventID"] in str(caught.value)
