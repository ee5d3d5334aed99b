"""Several `shardwise run` processes on one stream, leases in PostgreSQL: real processes."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import asyncpg
import pytest

from shardwise.testing import ScriptedStream, StreamsServer
from tests.conftest import in_ci

HANDLER = """
import json, os, time
HERE = os.path.dirname(__file__)
WORKER = os.environ["WORKER_ID"]

def handler(event, context):
    time.sleep(float(os.environ.get("BATCH_SLEEP", "0.02")))
    with open(os.path.join(HERE, f"out-{WORKER}.jsonl"), "a") as f:
        for r in event["Records"]:
            seq = r["dynamodb"]["SequenceNumber"]
            f.write(json.dumps({"w": WORKER, "seq": seq, "t": time.time()}) + "\\n")
"""


@pytest.fixture
def server() -> Iterator[StreamsServer]:
    with StreamsServer() as streams:
        yield streams


class Workers:
    """Worker processes sharing one config and one PostgreSQL store."""

    def __init__(self, directory: Path, server: StreamsServer, stream: ScriptedStream, store: str):
        self.directory = directory
        self.store = store
        (directory / "mw_handler.py").write_text(textwrap.dedent(HANDLER))
        self.config = directory / "shardwise.yaml"
        self.config.write_text(
            textwrap.dedent(
                f"""
                aws: {{region: us-east-1, endpoint_url: "{server.endpoint_url}"}}
                store: {{url: "{store}"}}
                http: {{bind: "127.0.0.1:0"}}
                log: {{level: WARNING}}
                worker:
                  id: ${{WORKER_ID}}
                  lease_duration_seconds: 3
                  shutdown_timeout_seconds: 15
                  shard_sync_interval_seconds: 1
                processors:
                  - name: p
                    source: {{dynamodb: {{stream_arn: "{stream.arn}"}}}}
                    handler: mw_handler:handler
                    starting_position: TRIM_HORIZON
                    batch_size: 10
                """
            )
        )
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, worker: str, batch_sleep: float = 0.02) -> None:
        with (self.directory / f"{worker}.log").open("ab") as log:
            self.processes[worker] = subprocess.Popen(
                [sys.executable, "-m", "shardwise", "run", "-c", str(self.config)],
                cwd=self.directory,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={
                    **os.environ,
                    "WORKER_ID": worker,
                    "BATCH_SLEEP": str(batch_sleep),
                    "PYTHONUNBUFFERED": "1",
                },
            )

    def delivered(self) -> list[tuple[str, int]]:
        return [(w, seq) for w, seq, _ in self.timed()]

    def timed(self) -> list[tuple[str, int, float]]:
        """(worker, sequence number, when the handler wrote it) for every delivery."""
        found = []
        for path in sorted(self.directory.glob("out-*.jsonl")):
            text = path.read_text().rpartition("\n")[0]
            rows = [json.loads(line) for line in text.splitlines() if line]
            found += [(r["w"], int(r["seq"]), float(r["t"])) for r in rows]
        return found

    def owners(self) -> Counter[str | None]:
        return asyncio.run(self._owners())

    async def _owners(self) -> Counter[str | None]:
        conn = await asyncpg.connect(self.store.replace("postgresql+asyncpg", "postgresql"))
        try:
            rows = await conn.fetch(
                "SELECT owner FROM shardwise_checkpoints WHERE NOT finished AND processor = 'p'"
            )
        except asyncpg.UndefinedTableError:
            return Counter()  # no worker has created the schema yet
        finally:
            await conn.close()
        return Counter(row["owner"] for row in rows)

    def wait(self, predicate: Callable[[], bool], what: str, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while not predicate():
            for name, process in self.processes.items():
                if process.poll() not in (None, 0, -9):
                    log = (self.directory / f"{name}.log").read_text()
                    raise AssertionError(f"worker {name} failed: {log[-2000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            time.sleep(0.1)

    def stop_all(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            process.wait(timeout=30)


@pytest.fixture
def workers(
    tmp_path: Path, server: StreamsServer, postgres_url: str
) -> Iterator[tuple[Workers, ScriptedStream]]:
    stream = server.create_stream("Orders", shards=12)
    group = Workers(tmp_path, server, stream, postgres_url)
    try:
        yield group, stream
    finally:
        for process in group.processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()


def per_shard_order_kept(stream: ScriptedStream, delivered: list[tuple[str, int]]) -> None:
    shard_of = {
        int(r["dynamodb"]["SequenceNumber"]): shard
        for shard in stream.shard_ids
        for r in stream.records(shard)
    }
    by_worker_shard: dict[tuple[str, str], list[int]] = {}
    for worker, seq in delivered:
        by_worker_shard.setdefault((worker, shard_of[seq]), []).append(seq)
    for seqs in by_worker_shard.values():
        assert seqs == sorted(seqs)


class TestSpread:
    """Three workers split twelve shards 4/4/4; every record is delivered once, in order."""

    def test_three_workers(self, workers: tuple[Workers, ScriptedStream]) -> None:
        group, stream = workers
        for shard in stream.shard_ids:
            stream.put_many(shard, 40)
        for name in ("w1", "w2", "w3"):
            group.start(name)
        group.wait(lambda: len({s for _, s in group.delivered()}) >= 480, "all 480 records")
        group.wait(
            lambda: sorted(n for o, n in group.owners().items() if o) == [4, 4, 4],
            "an even spread",
        )
        # More records after the spread: each shard's new records go to its current owner.
        for shard in stream.shard_ids:
            stream.put_many(shard, 5)
        group.wait(lambda: len({s for _, s in group.delivered()}) >= 540, "all 540 records")
        group.stop_all()
        delivered = group.delivered()
        expected = {
            int(r["dynamodb"]["SequenceNumber"])
            for s in stream.shard_ids
            for r in stream.records(s)
        }
        assert {seq for _, seq in delivered} == expected
        assert len(delivered) == len(expected), "graceful hand-offs deliver nothing twice"
        per_shard_order_kept(stream, delivered)
        assert {w for w, _ in delivered} == {"w1", "w2", "w3"}
        # A graceful stop released every lease (owner cleared), not left them to expire.
        assert set(group.owners()) == {None}


class TestFailover:
    """kill -9: the dead worker's shards move to the survivor; nothing is lost."""

    def test_kill_9_mid_batch(self, workers: tuple[Workers, ScriptedStream]) -> None:
        group, stream = workers
        for shard in stream.shard_ids:
            stream.put_many(shard, 60)
        group.start("a", batch_sleep=0.1)
        group.start("b", batch_sleep=0.1)
        group.wait(
            lambda: sorted(n for o, n in group.owners().items() if o) == [6, 6], "6/6 spread"
        )
        held_by_a = group.owners()["a"]
        group.processes["a"].kill()
        group.processes["a"].wait()
        group.wait(lambda: group.owners() == Counter({"b": 12}), "b owns every shard")
        group.wait(lambda: len({s for _, s in group.delivered()}) >= 720, "all 720 records")
        group.stop_all()
        delivered = group.delivered()
        seqs = Counter(seq for _, seq in delivered)
        assert len(seqs) == 720  # nothing lost
        duplicates = sum(count - 1 for count in seqs.values())
        # Only batches in flight on the killed worker (one per shard it held) come again.
        assert duplicates <= 10 * held_by_a
        per_shard_order_kept(stream, [(w, s) for w, s in delivered])


class TestGracefulHandoff:
    """SIGTERM releases leases at once: the survivor takes them without waiting for expiry."""

    def test_sigterm_releases(self, workers: tuple[Workers, ScriptedStream]) -> None:
        group, stream = workers
        for shard in stream.shard_ids:
            stream.put_many(shard, 20)
        group.start("a")
        group.start("b")
        group.wait(
            lambda: sorted(n for o, n in group.owners().items() if o) == [6, 6], "6/6 spread"
        )
        group.processes["a"].send_signal(signal.SIGTERM)
        assert group.processes["a"].wait(timeout=30) == 0
        # Right after a exits, none of its leases is still owned by it.
        assert "a" not in group.owners()
        group.wait(lambda: group.owners() == Counter({"b": 12}), "b owns every shard")
        group.stop_all()
        assert len({s for _, s in group.delivered()}) == 240


class TestStaleOwner:
    """A worker paused past its lease expiry cannot checkpoint and stops its lost shards."""

    def test_sigstop_then_resume(self, workers: tuple[Workers, ScriptedStream]) -> None:
        group, stream = workers
        for shard in stream.shard_ids:
            stream.put_many(shard, 30)
        group.start("a", batch_sleep=0.2)
        group.start("b", batch_sleep=0.2)
        group.wait(
            lambda: sorted(n for o, n in group.owners().items() if o) == [6, 6], "6/6 spread"
        )
        paused = group.processes["a"]
        paused.send_signal(signal.SIGSTOP)
        try:
            group.wait(lambda: group.owners() == Counter({"b": 12}), "b takes a's shards")
        finally:
            paused.send_signal(signal.SIGCONT)
        group.wait(lambda: len({s for _, s in group.delivered()}) >= 360, "all 360 records")
        group.stop_all()
        # Resumed, a found its leases gone: its fenced checkpoint writes were refused and it
        # stopped those shards (it may take shards again later, through a fair hand-off).
        log = (group.directory / "a.log").read_text()
        assert "lease lost" in log
        seqs = Counter(seq for _, seq in group.delivered())
        assert len(seqs) == 360
        # Only the batches a had in flight when paused (one per shard, 10 records) are
        # delivered twice: b re-read them from the checkpoint, a finished them on resume.
        assert sum(count - 1 for count in seqs.values()) <= 10 * 6


class TestSplitAcrossWorkers:
    """Children wait for their parent even when another worker holds the parent."""

    def test_children_after_parent(self, workers: tuple[Workers, ScriptedStream]) -> None:
        group, stream = workers
        parent = stream.shard_ids[0]
        stream.put_many(parent, 200)
        for shard in stream.shard_ids[1:]:
            stream.put_many(shard, 5)
        children = stream.split(parent, into=2)
        for child in children:
            stream.put_many(child, 20)
        group.start("a", batch_sleep=0.05)
        group.start("b", batch_sleep=0.05)
        total = 200 + 11 * 5 + 2 * 20
        group.wait(lambda: len({s for _, s in group.delivered()}) >= total, f"{total} records")
        group.stop_all()
        when = {seq: t for _, seq, t in group.timed()}
        parent_done = max(
            when[int(r["dynamodb"]["SequenceNumber"])] for r in stream.records(parent)
        )
        for child in children:
            child_start = min(
                when[int(r["dynamodb"]["SequenceNumber"])] for r in stream.records(child)
            )
            assert child_start >= parent_done


def restart_postgres() -> None:
    versions = os.listdir("/etc/postgresql")
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", versions[0], "main", "restart"],
        check=True,
        capture_output=True,
        timeout=60,
    )


class TestStoreOutage:
    """PostgreSQL restarted mid-run: workers recover their shards and nothing is lost."""

    def test_postgres_restart(self, workers: tuple[Workers, ScriptedStream]) -> None:
        if not os.path.isdir("/etc/postgresql") or shutil.which("pg_ctlcluster") is None:
            message = "this machine's PostgreSQL is not managed by pg_ctlcluster"
            if in_ci():
                pytest.fail(message + " (CI=true: the outage test must run)")
            pytest.skip(message)
        group, stream = workers
        for shard in stream.shard_ids:
            stream.put_many(shard, 20)
        group.start("a", batch_sleep=0.05)
        group.start("b", batch_sleep=0.05)
        group.wait(lambda: len({s for _, s in group.delivered()}) >= 100, "a first part")
        restart_postgres()
        for shard in stream.shard_ids:
            stream.put_many(shard, 20)
        group.wait(lambda: len({s for _, s in group.delivered()}) >= 480, "all 480 records")
        assert all(p.poll() is None for p in group.processes.values()), "a worker died"
        group.wait(lambda: sum(n for o, n in group.owners().items() if o) == 12, "all leased")
        group.stop_all()
        assert len({s for _, s in group.delivered()}) == 480
