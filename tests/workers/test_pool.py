"""`shardwise run` with worker.processes > 1: a parent and its worker processes, for real."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from shardwise.store.engine import open_engine
from shardwise.testing import ScriptedStream, StreamsServer
from shardwise.workers.pool import RestartBackoff
from tests.conftest import free_port

HANDLER = """
import json, os
HERE = os.path.dirname(__file__)

def handler(event, context):
    with open(os.path.join(HERE, f"out-{os.getpid()}.jsonl"), "a") as f:
        for r in event["Records"]:
            f.write(json.dumps({"pid": os.getpid(), "seq": r["dynamodb"]["SequenceNumber"]}))
            f.write("\\n")
"""

P0, P1 = "box-p0", "box-p1"


@pytest.fixture
def server() -> Iterator[StreamsServer]:
    with StreamsServer() as streams:
        yield streams


class Container:
    """One `shardwise run` with worker.processes: 2, as a container would run it."""

    def __init__(self, directory: Path, stream: ScriptedStream, endpoint: str, store: str):
        self.directory = directory
        self.stream = stream
        self.store = store
        self.port = free_port()
        (directory / "pool_handler.py").write_text(textwrap.dedent(HANDLER))
        self.config = directory / "shardwise.yaml"
        self.processors = f"""
            processors:
              - name: p
                source: {{dynamodb: {{stream_arn: "{stream.arn}"}}}}
                handler: pool_handler:handler
                starting_position: TRIM_HORIZON
                batch_size: 10
            """
        self.header = f"""
            aws: {{region: us-east-1, endpoint_url: "{endpoint}"}}
            store: {{url: "{store}"}}
            http: {{bind: "127.0.0.1:{self.port}"}}
            log: {{level: INFO}}
            worker:
              id: box
              processes: 2
              lease_duration_seconds: 3
              shutdown_timeout_seconds: 15
              shard_sync_interval_seconds: 1
            """
        self.write()
        self.process: subprocess.Popen[bytes] | None = None

    def write(self, processors: str | None = None) -> None:
        body = textwrap.dedent(self.header) + textwrap.dedent(processors or self.processors)
        self.config.write_text(body)

    def start(self) -> None:
        with (self.directory / "run.log").open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "shardwise", "run", "-c", str(self.config)],
                cwd=self.directory,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )

    @property
    def parent(self) -> subprocess.Popen[bytes]:
        assert self.process is not None
        return self.process

    def log(self) -> str:
        return (self.directory / "run.log").read_text()

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=10) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()
        except OSError:
            return 0, ""

    def health(self) -> tuple[int, dict[str, Any]]:
        status, body = self.get("/healthz")
        return status, json.loads(body) if body else {}

    def workers(self) -> dict[str, dict[str, Any]]:
        """The workers as /healthz lists them (pid, restarts, state)."""
        found: dict[str, dict[str, Any]] = self.health()[1].get("workers", {})
        return found

    def delivered(self) -> list[tuple[int, str]]:
        """(pid of the worker process, sequence number) for every delivery."""
        found = []
        for path in sorted(self.directory.glob("out-*.jsonl")):
            complete = path.read_text().rpartition("\n")[0]
            found += [json.loads(line) for line in complete.splitlines() if line]
        return [(row["pid"], row["seq"]) for row in found]

    def expected(self) -> set[str]:
        return {
            r["dynamodb"]["SequenceNumber"]
            for shard in self.stream.shard_ids
            for r in self.stream.records(shard)
        }

    def owners(self) -> Counter[str | None]:
        return asyncio.run(_owners(self.store))

    def wait(self, predicate: Callable[[], bool], what: str, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while not predicate():
            if self.parent.poll() is not None:
                raise AssertionError(f"shardwise exited with {self.parent.returncode}: {what}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}: {self.log()[-3000:]}")
            time.sleep(0.1)

    def stop(self) -> int:
        self.parent.send_signal(signal.SIGTERM)
        return self.parent.wait(timeout=40)


async def _owners(url: str) -> Counter[str | None]:
    engine = open_engine(url)
    query = "SELECT owner FROM shardwise_checkpoints WHERE NOT finished AND processor = 'p'"
    try:
        async with engine.connect() as connection:
            rows = (await connection.execute(text(query))).all()
    except DBAPIError:
        return Counter()  # no schema yet
    finally:
        await engine.dispose()
    return Counter(row.owner for row in rows)


def spread_evenly(container: Container, shards: int) -> Callable[[], bool]:
    half = shards // 2
    return lambda: container.owners() == Counter({P0: half, P1: half})


@pytest.fixture
def make_container(tmp_path: Path, server: StreamsServer) -> Iterator[Callable[..., Container]]:
    made: list[Container] = []

    def make(store: str, shards: int = 8) -> Container:
        stream = server.create_stream("Orders", shards=shards)
        container = Container(tmp_path, stream, server.endpoint_url, store)
        made.append(container)
        return container

    yield make
    for container in made:
        if container.process is not None and container.process.poll() is None:
            container.process.kill()  # its children see the parent gone and drain
            container.process.wait()


class TestSplitAndDrain:
    """Two worker processes on PostgreSQL split the shards; one endpoint shows both."""

    def test_two_processes(
        self, make_container: Callable[..., Container], postgres_url: str
    ) -> None:
        container = make_container(postgres_url)
        stream = container.stream
        for shard in stream.shard_ids:
            stream.put_many(shard, 20)
        container.start()
        container.wait(spread_evenly(container, 8), "4 shards for each worker process")
        # Half the records come after the split: the first worker up may have read the first
        # half alone before the second one started.
        for shard in stream.shard_ids:
            stream.put_many(shard, 20)
        container.wait(lambda: len({s for _, s in container.delivered()}) >= 320, "320 records")

        status, health = container.health()
        assert status == 200, health
        workers = health["workers"]
        assert set(workers) == {P0, P1}
        assert all(w["state"] == "ok" and w["restarts"] == 0 for w in workers.values())
        container.wait(lambda: container.get("/readyz")[0] == 200, "ready")

        status, metrics = container.get("/metrics")
        assert status == 200
        assert metrics.count("# HELP shardwise_records_processed_total ") == 1
        assert metrics.count("# TYPE shardwise_records_processed_total ") == 1
        processed = _samples(metrics, "shardwise_records_processed_total")
        assert set(processed) == {
            (("processor", "p"), ("worker", P0)),
            (("processor", "p"), ("worker", P1)),
        }
        up = _samples(metrics, "shardwise_worker_process_up")
        assert up == {(("worker", P0),): 1.0, (("worker", P1),): 1.0}
        # Per-process series of both, told apart by the worker label.
        assert len(_samples(metrics, "process_resident_memory_bytes")) == 2

        assert container.stop() == 0
        delivered = container.delivered()
        assert {seq for _, seq in delivered} == container.expected()
        assert len(delivered) == 320, "graceful hand-offs deliver nothing twice"
        assert {pid for pid, _ in delivered} == {w["pid"] for w in workers.values()}
        assert set(container.owners()) == {None}, "the drain released every lease"
        assert "box-p0" in container.log() and "box-p1" in container.log()


def _samples(metrics: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {
        tuple(sorted(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(metrics)
        for sample in family.samples
        if sample.name == name
    }


class TestRestart:
    """kill -9 of a worker process: it is started again, with its worker id, and works."""

    def test_kill_9_one_child(
        self, make_container: Callable[..., Container], postgres_url: str
    ) -> None:
        container = make_container(postgres_url)
        stream = container.stream
        for shard in stream.shard_ids:
            stream.put_many(shard, 30)
        container.start()
        container.wait(spread_evenly(container, 8), "4 shards for each worker process")
        container.wait(lambda: len({s for _, s in container.delivered()}) >= 240, "240 records")
        killed = container.workers()[P1]["pid"]
        os.kill(killed, signal.SIGKILL)

        def restarted() -> bool:
            p1 = container.workers().get(P1, {})
            return p1.get("restarts") == 1 and p1.get("state") == "ok"

        container.wait(restarted, "box-p1 running again")
        container.wait(spread_evenly(container, 8), "4 shards each again")
        for shard in stream.shard_ids:
            stream.put_many(shard, 20)
        container.wait(lambda: len({s for _, s in container.delivered()}) >= 400, "400 records")
        metrics = container.get("/metrics")[1]
        restarts = _samples(metrics, "shardwise_worker_process_restarts_total")
        assert restarts == {(("worker", P0),): 0.0, (("worker", P1),): 1.0}
        new_pid = container.workers()[P1]["pid"]
        assert new_pid != killed

        assert container.stop() == 0
        delivered = container.delivered()
        seqs = Counter(seq for _, seq in delivered)
        assert set(seqs) == container.expected()  # nothing lost
        # Only the batches the killed process had in flight (10 records per shard) come twice.
        assert sum(count - 1 for count in seqs.values()) <= 10 * 4
        assert any(pid == new_pid for pid, _ in delivered), "the restarted process works"
        assert "worker process exited; restarting" in container.log()
        assert set(container.owners()) == {None}


class TestSqlite:
    """One SQLite file shared by two worker processes: WAL, writers queue on the lock."""

    def test_two_processes_share_one_file(
        self, make_container: Callable[..., Container], sqlite_url: str
    ) -> None:
        container = make_container(sqlite_url, shards=6)
        stream = container.stream
        for shard in stream.shard_ids:
            stream.put_many(shard, 50)
        container.start()
        container.wait(spread_evenly(container, 6), "3 shards for each worker process")
        container.wait(lambda: len({s for _, s in container.delivered()}) >= 300, "300 records")
        for shard in stream.shard_ids:
            stream.put_many(shard, 10)
        container.wait(lambda: len({s for _, s in container.delivered()}) >= 360, "360 records")
        assert container.stop() == 0
        delivered = container.delivered()
        assert {seq for _, seq in delivered} == container.expected()
        assert len(delivered) == 360, "graceful hand-offs deliver nothing twice"
        assert len({pid for pid, _ in delivered}) == 2
        assert set(container.owners()) == {None}
        assert "database is locked" not in container.log()


class TestSighup:
    """SIGHUP to the parent reaches every worker process: an added processor runs."""

    def test_added_processor_runs(
        self, make_container: Callable[..., Container], sqlite_url: str
    ) -> None:
        container = make_container(sqlite_url, shards=4)
        stream = container.stream
        for shard in stream.shard_ids:
            stream.put_many(shard, 5)
        container.start()
        container.wait(lambda: len(container.delivered()) >= 20, "the first processor's records")
        second = f"""
              - name: second
                source: {{dynamodb: {{stream_arn: "{stream.arn}"}}}}
                handler: pool_handler:handler
                starting_position: TRIM_HORIZON
        """
        container.write(
            textwrap.dedent(container.processors) + textwrap.indent(textwrap.dedent(second), "  ")
        )
        container.parent.send_signal(signal.SIGHUP)
        container.wait(lambda: len(container.delivered()) >= 40, "the second processor's records")
        assert container.log().count('"configuration reloaded"') == 2
        assert container.stop() == 0


STUCK_HANDLER = """
import os, time

def handler(event, context):
    open(os.path.join(os.path.dirname(__file__), "stuck"), "a").close()
    time.sleep(120)  # a sync handler stuck past any drain: its thread keeps the process up
"""


class TestDrainDeadline:
    """A worker process still running past the drain grace is killed; the exit code says so."""

    def test_stuck_child_is_killed(
        self, make_container: Callable[..., Container], sqlite_url: str
    ) -> None:
        container = make_container(sqlite_url, shards=2)
        (container.directory / "stuck_handler.py").write_text(textwrap.dedent(STUCK_HANDLER))
        container.header = container.header.replace(
            "shutdown_timeout_seconds: 15", "shutdown_timeout_seconds: 1"
        )
        container.write(
            container.processors.replace("pool_handler:handler", "stuck_handler:handler")
        )
        for shard in container.stream.shard_ids:
            container.stream.put_many(shard, 1)
        container.start()
        container.wait(lambda: container.get("/readyz")[0] == 200, "ready")
        container.wait((container.directory / "stuck").exists, "a handler stuck")
        assert container.stop() == 1
        log = container.log()
        assert "worker process still running; killing it" in log
        assert "killed by SIGKILL" in log


class TestInvalidConfiguration:
    """A worker process that refuses the config (exit 2) stops the container with 2."""

    def test_missing_handler(
        self, make_container: Callable[..., Container], sqlite_url: str
    ) -> None:
        container = make_container(sqlite_url, shards=1)
        container.write(container.processors.replace("pool_handler:handler", "absent:handler"))
        container.start()
        assert container.parent.wait(timeout=60) == 2
        log = container.log()
        assert "worker process refused the configuration" in log
        assert "absent" in log
        assert "worker process exited; restarting" not in log


class TestRestartBackoff:
    """1 s, 2 s, 4 s ... up to the cap; back to the first wait after a stable run."""

    def test_doubles_to_the_cap_and_resets(self) -> None:
        backoff = RestartBackoff(first_s=1, max_s=30, stable_s=60)
        assert [backoff.after(0.5) for _ in range(7)] == [1, 2, 4, 8, 16, 30, 30]
        assert backoff.after(61) == 1
        assert backoff.after(5) == 2
