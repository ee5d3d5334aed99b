"""``shardwise failures list|show|replay`` on sql (SQLite, PostgreSQL), file:/// and S3 (moto).

Each command runs as the CLI runs it (its own event loop), in a worker thread so the test's
loop stays free; a handler module written to tmp_path records every event it receives.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import textwrap
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest

from shardwise.cli.failures import add_failures_commands
from shardwise.config import load_config
from shardwise.destinations import (
    FailedBatch,
    FileDestination,
    S3Destination,
    SqlDestination,
    esm_uuid,
    s3,
)
from shardwise.destinations._aws import aws_client
from shardwise.errors import ConfigError, StoreSchemaError
from shardwise.store import CheckpointStore
from shardwise.store.failures import FailureStore
from tests.destinations import FAILED_AT, FUNCTION_ARN, SHARD, STREAM_ARN, failed_batch

HANDLER = """
import json, os

HERE = os.path.dirname(__file__)

def handler(event, context):
    if os.path.exists(os.path.join(HERE, "broken")):
        raise RuntimeError("still broken")
    with open(os.path.join(HERE, "{out}"), "a") as out:
        seen = {{"event": event, "arn": context.invoked_function_arn, "shard": context.shard_id}}
        out.write(json.dumps(seen) + "\\n")
    if os.path.exists(os.path.join(HERE, "partial")):
        last = event["Records"][-1]["dynamodb"]["SequenceNumber"]
        return {{"batchItemFailures": [{{"itemIdentifier": last}}]}}
    return None
"""


def write_config(
    directory: Path, *, destination: str, store_url: str = "", endpoint_url: str = ""
) -> Path:
    """A config with processors orders and invoices sharing ``destination``, and the handler."""
    module = f"replayed_{uuid.uuid4().hex[:8]}"
    (directory / f"{module}.py").write_text(HANDLER.format(out="received.jsonl"))
    processor = """
      - name: {name}
        source: {{dynamodb: {{stream_arn: "{arn}"}}}}
        handler: {module}:handler
        starting_position: TRIM_HORIZON
        function_response_types: [ReportBatchItemFailures]"""
    if destination:
        processor += """
        destination_config: {{on_failure: {{destination: "{destination}"}}}}"""
    text = "processors:" + "".join(
        processor.format(name=name, arn=STREAM_ARN, module=module, destination=destination)
        for name in ("orders", "invoices")
    )
    if store_url:
        text = f'store: {{url: "{store_url}"}}\n' + text
    if endpoint_url:
        text = f'aws: {{region: us-east-1, endpoint_url: "{endpoint_url}"}}\n' + text
    path = directory / "shardwise.yaml"
    path.write_text(textwrap.dedent(text))
    return path


@dataclass
class Stored:
    """What a fixture stored: orders' batches in failed_at order, with their ids."""

    config: Path
    ids: list[str]
    batches: list[FailedBatch]
    tracks_replays: bool
    lists_details: bool = True  # False: list shows what S3 keys hold, without the bodies
    received: Path = field(init=False)

    def __post_init__(self) -> None:
        self.received = self.config.parent / "received.jsonl"

    def invocations(self) -> list[dict[str, Any]]:
        if not self.received.exists():
            return []
        return [json.loads(line) for line in self.received.read_text().splitlines()]


def three_batches() -> tuple[FailedBatch, FailedBatch, FailedBatch]:
    """orders' A (failed second), invoices' C, orders' B (failed first): stored in this order."""
    a = failed_batch(first=100, size=2, failed_at=FAILED_AT + timedelta(seconds=1))
    c = failed_batch("invoices", first=50, size=1)
    b = failed_batch(first=7, size=1)
    return a, c, b


async def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """``shardwise failures ARGV``: (exit code, stdout, stderr)."""
    parser = argparse.ArgumentParser(prog="shardwise")
    add_failures_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["failures", *argv])
    code: int = await asyncio.to_thread(args.func, args)
    out, err = capsys.readouterr()
    return code, out, err


class _FailuresCommands:
    """The contract every target that keeps records meets; subclasses provide ``stored``."""

    async def test_list(self, stored: Stored, capsys: pytest.CaptureFixture[str]) -> None:
        code, out, _ = await run(capsys, "list", "-c", str(stored.config), "--processor", "orders")
        assert code == 0
        header, *rows = out.splitlines()
        assert header.split("  ")[0] == "ID"
        columns = ["FAILED AT", "CONDITION", "SHARD", "SEQUENCES", "SIZE", "REPLAYED"]
        assert [header.index(name) for name in columns] == sorted(
            header.index(name) for name in columns
        )
        assert len(rows) == 2  # invoices' batch is not listed
        replayed = "no" if stored.tracks_replays else "-"
        for row, id, batch in zip(rows, stored.ids, stored.batches, strict=True):
            sequences = f"{batch.start_sequence_number}..{batch.end_sequence_number}"
            if not stored.lists_details:  # the key's shard and second; the rest is in the body
                failed_at = batch.failed_at.strftime("%Y-%m-%dT%H:%M:%SZ")
                assert row.split() == [id, failed_at, "-", SHARD, "-", "-", replayed]
                assert row.rindex(SHARD) == header.index("SHARD")  # aligned
                continue
            assert row.split() == [
                id,
                batch.invocation_record(include_payload=False)["timestamp"],
                "RetryAttemptsExhausted",
                SHARD,
                sequences,
                str(len(batch.records)),
                replayed,
            ]
            assert row.index(sequences) == header.index("SEQUENCES")  # aligned

    async def test_show(self, stored: Stored, capsys: pytest.CaptureFixture[str]) -> None:
        config = str(stored.config)
        for id, batch in zip(stored.ids, stored.batches, strict=True):
            code, out, _ = await run(capsys, "show", id, "-c", config, "--processor", "orders")
            assert code == 0
            assert json.loads(out) == batch.invocation_record(include_payload=True)

    async def test_show_unknown_id(
        self, stored: Stored, capsys: pytest.CaptureFixture[str]
    ) -> None:
        for id in ("999", "not-an-id"):
            code, _, err = await run(
                capsys, "show", id, "-c", str(stored.config), "--processor", "orders"
            )
            assert code == 1
            assert f"has no failed batch {id}" in err

    async def test_replay_one(self, stored: Stored, capsys: pytest.CaptureFixture[str]) -> None:
        config = str(stored.config)
        code, out, _ = await run(
            capsys, "replay", stored.ids[1], "-c", config, "--processor", "orders"
        )
        assert code == 0
        assert out.startswith(f"{stored.ids[1]}: replayed 2 record(s) of {SHARD}")
        [seen] = stored.invocations()
        assert seen == {
            "event": {"Records": list(stored.batches[1].records)},
            "arn": FUNCTION_ARN,
            "shard": SHARD,
        }
        _, listing, _ = await run(capsys, "list", "-c", config, "--processor", "orders")
        marks = [row.split()[-1] for row in listing.splitlines()[1:]]
        if stored.tracks_replays:
            assert marks[0] == "no"
            assert marks[1].startswith("20")  # the replay time
        else:
            assert marks == ["-", "-"]
            assert "replays are not recorded" in out

    async def test_replay_all_in_failed_at_order(
        self, stored: Stored, capsys: pytest.CaptureFixture[str]
    ) -> None:
        code, out, _ = await run(
            capsys, "replay", "--all", "-c", str(stored.config), "--processor", "orders"
        )
        assert code == 0
        assert [line.split(":")[0] for line in out.splitlines()] == stored.ids
        events = [seen["event"] for seen in stored.invocations()]
        assert events == [{"Records": list(batch.records)} for batch in stored.batches]

    async def test_print_only(self, stored: Stored, capsys: pytest.CaptureFixture[str]) -> None:
        (stored.config.parent / "broken").touch()  # proves the handler is not invoked
        config = str(stored.config)
        code, out, _ = await run(
            capsys, "replay", "--all", "--print", "-c", config, "--processor", "orders"
        )
        assert code == 0
        events = [json.loads(line) for line in out.splitlines()]
        assert events == [{"Records": list(batch.records)} for batch in stored.batches]
        assert stored.invocations() == []
        _, listing, _ = await run(capsys, "list", "-c", config, "--processor", "orders")
        assert all(row.split()[-1] in {"no", "-"} for row in listing.splitlines()[1:])

    @pytest.mark.parametrize("marker", ["broken", "partial"])
    async def test_handler_failure_marks_nothing(
        self, stored: Stored, capsys: pytest.CaptureFixture[str], marker: str
    ) -> None:
        (stored.config.parent / marker).touch()
        config = str(stored.config)
        code, out, err = await run(capsys, "replay", "--all", "-c", config, "--processor", "orders")
        assert code == 1
        assert out == ""
        assert err.startswith(f"error: replaying {stored.ids[0]} failed: ")
        assert ("RuntimeError: still broken" if marker == "broken" else "") in err
        _, listing, _ = await run(capsys, "list", "-c", config, "--processor", "orders")
        assert all(row.split()[-1] in {"no", "-"} for row in listing.splitlines()[1:])

    async def test_replay_unknown_id(
        self, stored: Stored, capsys: pytest.CaptureFixture[str]
    ) -> None:
        config = str(stored.config)
        code, _, err = await run(
            capsys, "replay", stored.ids[0], "999", "-c", config, "--processor", "orders"
        )
        assert code == 1
        assert "has no failed batch 999" in err
        assert stored.invocations() == []

    async def test_ids_or_all(self, stored: Stored, capsys: pytest.CaptureFixture[str]) -> None:
        config = str(stored.config)
        for extra in ([], ["--all", stored.ids[0]]):
            code, _, err = await run(
                capsys, "replay", *extra, "-c", config, "--processor", "orders"
            )
            assert code == 2
            assert "or --all" in err

    async def test_unknown_processor(
        self, stored: Stored, capsys: pytest.CaptureFixture[str]
    ) -> None:
        with pytest.raises(ConfigError, match=r"no processor named 'nope'.*orders, invoices"):
            await run(capsys, "list", "-c", str(stored.config), "--processor", "nope")


async def send_all(destination: Any, batches: tuple[FailedBatch, ...]) -> None:
    for batch in batches:
        await destination.send(batch)


class TestSqlFailures(_FailuresCommands):
    """sql: ids are row ids, and replays are recorded in replayed_at."""

    @pytest.fixture
    async def stored(self, store_url: str, tmp_path: Path) -> Stored:
        a, _invoices, b = batches = three_batches()
        async with await CheckpointStore.connect(store_url) as store:
            await send_all(SqlDestination(FailureStore(store.engine)), batches)
        config = write_config(tmp_path, destination="sql", store_url=store_url)
        return Stored(config, ["3", "1"], [b, a], tracks_replays=True)

    async def test_all_skips_what_was_replayed(
        self, stored: Stored, capsys: pytest.CaptureFixture[str]
    ) -> None:
        config = str(stored.config)
        await run(capsys, "replay", stored.ids[0], "-c", config, "--processor", "orders")
        code, out, _ = await run(capsys, "replay", "--all", "-c", config, "--processor", "orders")
        assert code == 0
        assert [line.split(":")[0] for line in out.splitlines()] == [stored.ids[1]]
        code, out, _ = await run(capsys, "replay", "--all", "-c", config, "--processor", "orders")
        assert (code, out) == (0, "nothing to replay for processor 'orders'\n")
        assert len(stored.invocations()) == 2

    async def test_schema_not_upgraded(
        self, sqlite_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        config = write_config(tmp_path, destination="sql", store_url=sqlite_url)
        with pytest.raises(StoreSchemaError, match="shardwise db upgrade"):
            await run(capsys, "list", "-c", str(config), "--processor", "orders")


class TestFileFailures(_FailuresCommands):
    """file:///: ids are line numbers; processors sharing the file see only their own."""

    @pytest.fixture
    async def stored(self, tmp_path: Path) -> Stored:
        a, _invoices, b = batches = three_batches()
        target = f"file://{tmp_path}/failures/all.jsonl"
        await send_all(FileDestination(target), batches)
        config = write_config(tmp_path, destination=target)
        return Stored(config, ["3", "1"], [b, a], tracks_replays=False)

    async def test_missing_file_lists_nothing(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        target = f"file://{tmp_path}/none.jsonl"
        config = write_config(tmp_path, destination=target)
        code, out, _ = await run(capsys, "list", "-c", str(config), "--processor", "orders")
        assert (code, out) == (0, f"no failed batches of processor 'orders' in {target}\n")

    async def test_unreadable_line_is_reported(
        self, stored: Stored, capsys: pytest.CaptureFixture[str]
    ) -> None:
        with (stored.config.parent / "failures" / "all.jsonl").open("a") as lines:
            lines.write("not json\n")
        code, out, err = await run(
            capsys, "list", "-c", str(stored.config), "--processor", "orders"
        )
        assert code == 0
        assert len(out.splitlines()) == 3
        assert "line 4 is not a stored batch" in err


class TestS3Failures(_FailuresCommands):
    """S3: ids are object keys under aws/lambda/<esm uuid>/; replays are not recorded."""

    @pytest.fixture
    async def stored(self, moto_endpoint: str, tmp_path: Path) -> Stored:
        s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
        bucket = f"failures-{uuid.uuid4().hex[:12]}"
        s3.create_bucket(Bucket=bucket)
        target = f"s3://{bucket}/archive"
        config = write_config(tmp_path, destination=target, endpoint_url=moto_endpoint)
        a, _invoices, b = batches = three_batches()
        async with aws_client("s3", load_config(config)) as client:
            await send_all(S3Destination(client, target), batches)
        prefix = f"archive/aws/lambda/{esm_uuid('orders')}/"
        keys = sorted(
            o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=prefix)["Contents"]
        )
        assert len(keys) == 2  # the key's time part sorts as the time does: b, then a
        assert f"{b.failed_at:%Y-%m-%dT%H.%M.%S}-" in keys[0]
        return Stored(config, keys, [b, a], tracks_replays=False, lists_details=False)

    async def test_list_pages_through_keys_and_reads_no_body(
        self,
        stored: Stored,
        capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """ListObjectsV2 page by page (continuation tokens), never GetObject; show gets one."""
        more = [
            failed_batch(first=1000 + i, size=1, failed_at=FAILED_AT + timedelta(seconds=10 + i))
            for i in range(5)
        ]
        async with aws_client("s3", load_config(stored.config)) as client:
            target = load_config(stored.config).processors[0].destination_config
            assert target is not None
            await send_all(S3Destination(client, target.on_failure.destination), tuple(more))
        monkeypatch.setattr(s3, "LIST_PAGE_SIZE", 2)
        calls = record_s3_calls(monkeypatch)
        config = str(stored.config)

        code, out, _ = await run(capsys, "list", "-c", config, "--processor", "orders")
        assert code == 0
        rows = out.splitlines()[1:]
        assert len(rows) == 7
        assert [row.split()[1] for row in rows] == sorted(row.split()[1] for row in rows)
        operations = [name for name, _ in calls]
        assert operations == ["ListObjectsV2"] * 4  # 7 keys, 2 a page
        assert [params.get("MaxKeys") for _, params in calls] == [2] * 4
        tokens = [params.get("ContinuationToken") for _, params in calls]
        assert tokens[0] is None and all(tokens[1:])

        calls.clear()
        key = rows[-1].split()[0]
        code, out, _ = await run(capsys, "show", key, "-c", config, "--processor", "orders")
        assert code == 0
        assert json.loads(out) == more[-1].invocation_record(include_payload=True)
        assert [name for name, _ in calls] == ["GetObject"]

    async def test_a_foreign_key_under_the_prefix_is_reported(
        self, stored: Stored, capsys: pytest.CaptureFixture[str]
    ) -> None:
        settings = load_config(stored.config)
        prefix = stored.ids[0].rsplit("/", 4)[0]  # archive/aws/lambda/<uuid>/<shard>
        target = settings.processors[0].destination_config
        assert target is not None
        location = s3.parse_s3_target(target.on_failure.destination)
        async with aws_client("s3", settings) as client:
            await client.put_object(Bucket=location.bucket, Key=f"{prefix}/notes.txt", Body=b"x")
        code, out, err = await run(
            capsys, "list", "-c", str(stored.config), "--processor", "orders"
        )
        assert code == 0
        assert len(out.splitlines()) == 3
        assert f"warning: s3 object {prefix}/notes.txt is not a stored batch" in err


def record_s3_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, dict[str, Any]]]:
    """(operation, parameters) of every S3 call the failures commands make from now on."""
    calls: list[tuple[str, dict[str, Any]]] = []

    def record(params: dict[str, Any], model: Any, **_: Any) -> None:
        calls.append((model.name, dict(params)))

    @asynccontextmanager
    async def recording(service: str, settings: Any, **options: Any) -> AsyncIterator[Any]:
        async with aws_client(service, settings, **options) as client:
            client.meta.events.register("provide-client-params.s3", record)
            yield client

    monkeypatch.setattr("shardwise.destinations.archive.aws_client", recording)
    return calls


class TestMetadataOnly:
    """SQS and SNS destinations hold no records: every command explains and exits 2."""

    async def test_without_destination(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        config = write_config(tmp_path, destination="")
        code, _, err = await run(capsys, "list", "-c", str(config), "--processor", "orders")
        assert code == 2
        assert err == "error: processor 'orders' has no on-failure destination\n"

    @pytest.mark.parametrize("service", ["sqs", "sns"])
    @pytest.mark.parametrize("command", [["list"], ["show", "1"], ["replay", "--all"]])
    async def test_explains(
        self,
        tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
        service: str,
        command: list[str],
    ) -> None:
        arn = f"arn:aws:{service}:us-east-1:123456789012:failures"
        config = write_config(tmp_path, destination=arn)
        code, out, err = await run(capsys, *command, "-c", str(config), "--processor", "orders")
        assert code == 2
        assert out == ""
        assert f"sends failed batches to {arn}" in err
        assert "invocation record only" in err
        assert "24-hour retention" in err
