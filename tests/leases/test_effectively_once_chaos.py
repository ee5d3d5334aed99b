"""Effectively once under chaos, with real processes: two `shardwise run` workers on
PostgreSQL, one of them killed with SIGKILL every few seconds and the other paused with
SIGSTOP past its lease expiry, while 10,000 records arrive on four shards.

Three processors read the same stream. ``tx`` is transactional: it adds one to its item's
counter and logs the record's sequence number through ``context.transaction``; ``lanes``
does the same with parallelization_factor 3 (lanes' records are committed ahead of the
shard's checkpoint). ``plain`` is an ordinary at-least-once handler appending the same
facts to a file. At the end every counter of both transactional processors equals the
number of records of its key and every record was applied once, while ``plain`` saw
records twice - the duplicates the transaction kept out.
"""

from __future__ import annotations

import asyncio
import json
import os
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

RECORDS = 10_000
KEYS = 97
SHARDS = 4
LEASE_S = 3

HANDLERS = """
import asyncio, json, os, time
from sqlalchemy import text

HERE = os.path.dirname(__file__)
OUT = os.path.join(HERE, f"plain-{os.environ['WORKER_ID']}-{os.getpid()}.jsonl")


def facts(event):
    return [
        {"item": r["dynamodb"]["Keys"]["id"]["S"], "seq": r["dynamodb"]["SequenceNumber"]}
        for r in event["Records"]
    ]


def counting_into(prefix):
    add = text(
        f"INSERT INTO {prefix}_counters (item, n) VALUES (:item, 1) "
        f"ON CONFLICT (item) DO UPDATE SET n = {prefix}_counters.n + 1"
    )
    applied = text(f"INSERT INTO {prefix}_applied (seq) VALUES (:seq)")

    async def handler(event, context):
        rows = facts(event)
        for row in rows:  # one statement per record: a kill lands between them too
            await context.transaction.execute(add, {"item": row["item"]})
        await context.transaction.execute(applied, [{"seq": row["seq"]} for row in rows])
        await asyncio.sleep(0.2)  # the transaction stays open a while: kills land inside it

    return handler


transactional = counting_into("tx")
transactional_lanes = counting_into("lanes")


def plain(event, context):
    with open(OUT, "a") as out:
        for row in facts(event):
            out.write(json.dumps(row) + "\\n")
            out.flush()
    time.sleep(0.2)
"""


class Chaos:
    """Worker processes sharing one config and one PostgreSQL database."""

    def __init__(self, directory: Path, server: StreamsServer, stream_arn: str, store: str):
        self.directory = directory
        self.dsn = store.replace("postgresql+asyncpg", "postgresql")
        (directory / "chaos_handlers.py").write_text(textwrap.dedent(HANDLERS))
        processors = "".join(
            f"""
                  - name: {name}
                    source: {{dynamodb: {{stream_arn: "{stream_arn}"}}}}
                    handler: chaos_handlers:{handler}
                    starting_position: TRIM_HORIZON
                    batch_size: 25
                    transactional: {str(name != "plain").lower()}
                    parallelization_factor: {3 if name == "lanes" else 1}
            """
            for name, handler in (
                ("tx", "transactional"),
                ("lanes", "transactional_lanes"),
                ("plain", "plain"),
            )
        )
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
                  lease_duration_seconds: {LEASE_S}
                  shutdown_timeout_seconds: 15
                  shard_sync_interval_seconds: 1
                processors:
                """
            )
            + textwrap.indent(textwrap.dedent(processors), "  ")
        )
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.kills = 0

    def start(self, worker: str) -> None:
        with (self.directory / f"{worker}.log").open("ab") as log:
            self.processes[worker] = subprocess.Popen(
                [sys.executable, "-m", "shardwise", "run", "-c", str(self.config)],
                cwd=self.directory,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "WORKER_ID": worker, "PYTHONUNBUFFERED": "1"},
            )

    def kill_and_restart(self, worker: str) -> None:
        self.processes[worker].kill()
        self.processes[worker].wait()
        self.kills += 1
        self.start(worker)

    def pause(self, worker: str, seconds: float) -> None:
        process = self.processes[worker]
        process.send_signal(signal.SIGSTOP)
        try:
            self.sleep(seconds)
        finally:
            process.send_signal(signal.SIGCONT)

    def sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.check_alive()
            time.sleep(0.1)

    def check_alive(self) -> None:
        for name, process in self.processes.items():
            if process.poll() not in (None, 0, -9):
                log = (self.directory / f"{name}.log").read_text()
                raise AssertionError(f"worker {name} failed: {log[-3000:]}")

    def wait(self, predicate: Callable[[], bool], what: str, timeout_s: float = 180) -> None:
        deadline = time.monotonic() + timeout_s
        while not predicate():
            self.check_alive()
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            time.sleep(0.2)

    def stop_all(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            process.wait(timeout=30)

    def sql(self, query: str) -> list[asyncpg.Record]:
        async def run() -> list[asyncpg.Record]:
            connection = await asyncpg.connect(self.dsn)
            try:
                return list(await connection.fetch(query))
            finally:
                await connection.close()

        return asyncio.run(run())

    def plain_deliveries(self) -> list[dict[str, str]]:
        """Every record the plain handler wrote (a line cut by a kill is left out)."""
        found = []
        for path in sorted(self.directory.glob("plain-*.jsonl")):
            text = path.read_text().rpartition("\n")[0]
            found += [json.loads(line) for line in text.splitlines() if line]
        return found


@pytest.fixture
def chaos(tmp_path: Path, postgres_url: str) -> Iterator[tuple[Chaos, ScriptedStream]]:
    with StreamsServer() as server:
        stream = server.create_stream("Orders", shards=SHARDS)
        group = Chaos(tmp_path, server, stream.arn, postgres_url)
        for prefix in ("tx", "lanes"):
            group.sql(f"CREATE TABLE {prefix}_counters (item TEXT PRIMARY KEY, n INTEGER NOT NULL)")
            group.sql(f"CREATE TABLE {prefix}_applied (seq TEXT NOT NULL)")
        try:
            yield group, stream
        finally:
            for process in group.processes.values():
                if process.poll() is None:
                    process.send_signal(signal.SIGCONT)
                    process.kill()
                    process.wait()


@pytest.mark.timeout(400)
def test_counters_stay_exact_through_kills_and_pauses(
    chaos: tuple[Chaos, ScriptedStream],
) -> None:
    group, stream = chaos
    expected: Counter[str] = Counter()

    def put(count: int) -> None:
        for _ in range(count):
            n = sum(expected.values())
            item = f"item-{n % KEYS}"
            shard = stream.shard_ids[n % SHARDS]
            stream.put(
                shard, keys={"id": {"S": item}}, new_image={"id": {"S": item}, "n": {"N": str(n)}}
            )
            expected[item] += 1

    put(2_000)
    group.start("a")
    group.start("b")
    # Records keep arriving while a is killed every few seconds and b is paused past its
    # lease expiry (its shards are taken over while it sleeps; it wakes with stale leases).
    for round_ in range(8):
        group.sleep(2.5)
        put(1_000)
        if round_ % 3 == 2:
            group.pause("b", LEASE_S + 2)
        else:
            group.kill_and_restart("a")
    assert sum(expected.values()) == RECORDS

    def all_applied(prefix: str) -> Callable[[], bool]:
        def check() -> bool:
            rows = group.sql(f"SELECT count(*) AS n FROM {prefix}_applied")
            return int(rows[0]["n"]) >= RECORDS

        return check

    for prefix in ("tx", "lanes"):
        group.wait(all_applied(prefix), f"{prefix} applying {RECORDS} records")
    group.wait(
        lambda: len({row["seq"] for row in group.plain_deliveries()}) >= RECORDS,
        f"plain seeing {RECORDS} records",
    )
    group.sleep(2)  # anything still to come (a double apply) has time to land
    group.stop_all()

    for prefix in ("tx", "lanes"):
        counters = {r["item"]: r["n"] for r in group.sql(f"SELECT * FROM {prefix}_counters")}
        assert counters == dict(expected), prefix
        sequences = Counter(r["seq"] for r in group.sql(f"SELECT seq FROM {prefix}_applied"))
        assert len(sequences) == RECORDS, prefix
        assert [seq for seq, count in sequences.items() if count > 1] == [], prefix
    # Rows of records the lanes' checkpoints have passed are deleted as they go.
    assert len(group.sql("SELECT id FROM shardwise_applied")) < RECORDS / 25
    # The plain processor lived through the same kills and pauses: it lost nothing, and
    # the batches in flight at each kill or pause came again.
    plain = Counter(row["seq"] for row in group.plain_deliveries())
    assert set(plain) == set(sequences)
    plain_duplicates = sum(count - 1 for count in plain.values())
    assert plain_duplicates > 0
    assert group.kills == 6
    print(f"plain processor: {plain_duplicates} duplicate deliveries; transactional: 0")
