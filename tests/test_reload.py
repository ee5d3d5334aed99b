"""SIGHUP: added, removed and changed processors apply without disturbing the others."""

from __future__ import annotations

import asyncio
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from shardwise.config import load_config
from shardwise.supervisor import Supervisor
from shardwise.testing import StreamsServer
from tests.e2e import one_shard_stream, read_jsonl, recording_handler, wait_until, write_module

# A class processor whose invocations never finish (the drain deadline cancels them) and
# whose teardown takes a moment: each step is noted, in order, in one file.
STUCK_HANDLER = """
import asyncio, os

OUT = os.path.join(os.path.dirname(__file__), "{out}")


def note(step):
    with open(OUT, "a") as f:
        f.write(step + "\\n")


class Stuck:
    async def setup(self):
        note("setup")

    async def process(self, event, context):
        note("process")
        await asyncio.sleep(3600)

    async def teardown(self):
        await asyncio.sleep(0.2)
        note("teardown")
"""


@pytest.fixture
def server() -> Iterator[StreamsServer]:
    with StreamsServer() as streams:
        yield streams


def has(path: Path, count: int) -> Callable[[], bool]:
    return lambda: len(read_jsonl(path)) == count


def write_config(
    path: Path, endpoint: str, store: str, processors: str, grace_s: float = 10
) -> None:
    path.write_text(
        textwrap.dedent(
            f"""
            aws: {{region: us-east-1, endpoint_url: "{endpoint}"}}
            store: {{url: "{store}"}}
            worker: {{shutdown_timeout_seconds: {grace_s}, shard_sync_interval_seconds: 1}}
            processors:
            """
        )
        + textwrap.indent(textwrap.dedent(processors), "  ")
    )


def processor(name: str, handler: str, arn: str, extra: str = "") -> str:
    return f"""
- name: {name}
  source: {{dynamodb: {{stream_arn: "{arn}"}}}}
  handler: {handler}
  starting_position: TRIM_HORIZON
  {extra}
"""


class TestReload:
    """Reload keeps unaffected processors running and their positions intact."""

    async def test_add_remove_change(
        self, tmp_path: Path, server: StreamsServer, sqlite_url: str
    ) -> None:
        stream, shard = one_shard_stream(server, 10)
        keep_handler, keep_out = recording_handler(tmp_path, "keep.jsonl")
        drop_handler, drop_out = recording_handler(tmp_path, "drop.jsonl")
        change_handler, change_out = recording_handler(tmp_path, "change.jsonl")
        add_handler, add_out = recording_handler(tmp_path, "add.jsonl")
        config = tmp_path / "shardwise.yaml"
        write_config(
            config,
            server.endpoint_url,
            sqlite_url,
            processor("keep", keep_handler, stream.arn)
            + processor("drop", drop_handler, stream.arn)
            + processor("change", change_handler, stream.arn, "batch_size: 5"),
        )
        supervisor = Supervisor(load_config(config), config_path=config)
        task = asyncio.create_task(supervisor.run(install_signal_handlers=False))
        try:
            for out in (keep_out, drop_out, change_out):
                await wait_until(has(out, 10), what=str(out))
            keep_task = supervisor._running["keep"].task
            write_config(
                config,
                server.endpoint_url,
                sqlite_url,
                processor("keep", keep_handler, stream.arn)
                + processor("change", change_handler, stream.arn, "batch_size: 2")
                + processor("add", add_handler, stream.arn),
            )
            await supervisor.reload()
            assert set(supervisor._running) == {"keep", "change", "add"}
            assert supervisor._running["keep"].task is keep_task  # untouched
            assert supervisor.settings.processors[1].batch_size == 2
            stream.put_many(shard, 4)
            for out in (keep_out, change_out, add_out):
                await wait_until(has(out, 14), what=str(out))
        finally:
            supervisor.request_stop()
            await asyncio.wait_for(task, timeout=30)
        seqs = [r["dynamodb"]["SequenceNumber"] for r in stream.records(shard)]
        # The kept and the changed processor went on from their checkpoints: no re-delivery.
        assert [r["dynamodb"]["SequenceNumber"] for r in read_jsonl(keep_out)] == seqs
        assert [r["dynamodb"]["SequenceNumber"] for r in read_jsonl(change_out)] == seqs
        # The added one started at TRIM_HORIZON; the removed one saw nothing more.
        assert [r["dynamodb"]["SequenceNumber"] for r in read_jsonl(add_out)] == seqs
        assert len(read_jsonl(drop_out)) == 10

    async def test_invalid_config_keeps_running(
        self, tmp_path: Path, server: StreamsServer, sqlite_url: str
    ) -> None:
        stream = server.create_stream("Orders")
        [shard] = stream.shard_ids
        handler, out = recording_handler(tmp_path)
        config = tmp_path / "shardwise.yaml"
        write_config(config, server.endpoint_url, sqlite_url, processor("p", handler, stream.arn))
        supervisor = Supervisor(load_config(config), config_path=config)
        task = asyncio.create_task(supervisor.run(install_signal_handlers=False))
        try:
            await wait_until(lambda: "p" in supervisor._running, what="started")
            config.write_text("processors: [{name: broken}]")
            await supervisor.reload()
            assert set(supervisor._running) == {"p"}
            stream.put_many(shard, 3)
            await wait_until(lambda: len(read_jsonl(out)) == 3, what="still processing")
        finally:
            supervisor.request_stop()
            await asyncio.wait_for(task, timeout=30)

    async def test_retired_runner_finishes_before_its_replacement_starts(
        self, tmp_path: Path, server: StreamsServer, sqlite_url: str
    ) -> None:
        """A changed processor whose drain runs past the deadline is cancelled, and its old
        runner has released everything and torn down before the new one sets up."""
        stream, _ = one_shard_stream(server, 2)
        module = write_module(tmp_path, "stuck_handler", STUCK_HANDLER.format(out="steps.txt"))
        steps = tmp_path / "steps.txt"
        config = tmp_path / "shardwise.yaml"

        def configure(batch_size: int) -> None:
            handler = f"{module}:Stuck"
            extra = f"batch_size: {batch_size}"
            processors = processor("p", handler, stream.arn, extra)
            write_config(config, server.endpoint_url, sqlite_url, processors, 0.3)

        def noted() -> list[str]:
            return steps.read_text().splitlines() if steps.exists() else []

        configure(batch_size=10)
        supervisor = Supervisor(load_config(config), config_path=config)
        task = asyncio.create_task(supervisor.run(install_signal_handlers=False))
        try:
            await wait_until(lambda: noted() == ["setup", "process"], what="first invocation")
            old = supervisor._running["p"].task
            configure(batch_size=5)
            await supervisor.reload()
            assert old.done()  # drained (here: cancelled at the deadline) and awaited
            assert supervisor._running["p"].task is not old
            await wait_until(lambda: len(noted()) == 5, what="second invocation")
        finally:
            supervisor.request_stop()
            await asyncio.wait_for(task, timeout=30)
        assert noted()[:5] == ["setup", "process", "teardown", "setup", "process"]
