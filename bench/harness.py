"""What every case needs: servers in their own processes, scratch stores, running pipelines.

* ``streams_process``: ``python -m bench.load_server`` (``shardwise.testing``'s server
  plus a writer) in a child process, so the server's CPU is never counted as ours.
* ``scratch_postgres``: a database ``shardwise_bench_<pid>`` created for the run and
  dropped after it; None when PostgreSQL does not answer (the case says so).
* ``run_supervisor`` / ``run_raw_supervisor``: shardwise end to end in a real
  ``Supervisor``, reading through its aiobotocore source or ``RawDynamoDBStreamsSource``.
* ``ProcessClock`` and ``rss_mb``: CPU time over wall time, and RSS, of this process.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from shardwise.config import AwsConfig, Settings, parse_config
from shardwise.leases import Lease, LeaseCoordinator
from shardwise.observe.progress import ProcessorProgress
from shardwise.records import ShardId, StartingPosition
from shardwise.sources.dynamodb_raw import RawDynamoDBStreamsSource, open_raw_source
from shardwise.store import CheckpointStore, ShardRegistration
from shardwise.supervisor import Supervisor
from shardwise.testing import StreamsServer

__all__ = [
    "PG_ADMIN_DSN",
    "ProcessClock",
    "Stopwatch",
    "StreamsProcess",
    "Timed",
    "counting_events",
    "free_port",
    "leased_shard",
    "migrated",
    "percentile",
    "pipeline_settings",
    "processed",
    "rss_mb",
    "run_raw_supervisor",
    "run_supervisor",
    "scratch_postgres",
    "streams_process",
    "wait_for",
]

PG_ADMIN_DSN: Final = os.environ.get(
    "SHARDWISE_BENCH_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test"
)
REGION: Final = "us-east-1"


# -- servers in child processes ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StreamsProcess:
    """A streams server running in a child process."""

    endpoint_url: str
    stream_arn: str
    process: subprocess.Popen[str]

    def command(self, line: str) -> None:
        """Send one control line (``bench.load_server`` only)."""
        assert self.process.stdin is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def query(self, line: str) -> str:
        """Send one control line that answers with one line (``calls``); its value, the
        text after ``=``."""
        self.command(line)
        assert self.process.stdout is not None
        answer = self.process.stdout.readline()
        if not answer:
            raise RuntimeError(
                f"the server did not answer {line!r} (exit code {self.process.poll()})"
            )
        return answer.strip().partition("=")[2]


@contextmanager
def streams_process(
    *args: str, module: str = "bench.load_server", timeout_s: float = 120.0
) -> Iterator[StreamsProcess]:
    """Start ``python -m module --port 0 *args``; wait for its endpoint and stream lines."""
    process = subprocess.Popen(  # the module path is ours, the arguments are numbers
        [sys.executable, "-m", module, "--port", "0", *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        found: dict[str, str] = {}
        deadline = time.monotonic() + timeout_s
        assert process.stdout is not None
        while len(found) < 2:
            line = process.stdout.readline()
            if not line or time.monotonic() > deadline:
                raise RuntimeError(f"{module} did not start (exit code {process.poll()})")
            key, _, value = line.strip().partition("=")
            if key in {"endpoint_url", "stream_arn"}:
                found[key] = value
        yield StreamsProcess(found["endpoint_url"], found["stream_arn"], process)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        for stream in (process.stdin, process.stdout):
            if stream is not None:
                stream.close()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# -- stores ----------------------------------------------------------------------------------


async def _pg_admin(statement: str) -> None:
    import asyncpg

    connection = await asyncpg.connect(PG_ADMIN_DSN, timeout=5)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


@asynccontextmanager
async def scratch_postgres() -> AsyncIterator[str | None]:
    """A PostgreSQL database of this run's own, dropped afterwards; None if unreachable."""
    name = f"shardwise_bench_{os.getpid()}"
    try:
        await _pg_admin(f'CREATE DATABASE "{name}"')
    except (OSError, TimeoutError):
        yield None
        return
    base = PG_ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
    try:
        yield f"{base}/{name}"
    finally:
        await _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@asynccontextmanager
async def leased_shard(
    server: StreamsServer, store: CheckpointStore, name: str, records: int
) -> AsyncIterator[tuple[RawDynamoDBStreamsSource, LeaseCoordinator, Lease]]:
    """One closed shard of ``records`` generated records, on a new stream ``name`` of
    ``server``, registered for processor ``name`` in ``store`` and leased by a coordinator
    whose clock stands still (never run: no renewal comes between batches): (its source,
    the coordinator, the lease), released and closed afterwards."""
    stream = server.create_stream(name)
    [shard] = stream.shard_ids
    stream.put_many(shard, records)
    stream.close_shard(shard)
    source = await open_raw_source(
        AwsConfig(region=REGION, endpoint_url=server.endpoint_url), stream.arn
    )
    leases = LeaseCoordinator(
        store, processor=name, stream_arn=stream.arn, worker_id="bench", clock=lambda: 0.0
    )
    try:
        registration = ShardRegistration(ShardId(shard), None, StartingPosition.TRIM_HORIZON)
        await store.register_shards(name, stream.arn, [registration])
        [lease] = await leases.take_once()
        yield source, leases, lease
    finally:
        await leases.release_all()
        await source.close()


async def migrated(url: str) -> str:
    """Bring the schema to head before anything is timed; return ``url``."""
    store = await CheckpointStore.connect(url)
    await store.close()
    return url


# -- pipelines -------------------------------------------------------------------------------


def pipeline_settings(
    *,
    endpoint_url: str,
    streams: Mapping[str, str],
    store_url: str,
    handler: str = "bench.handlers:noop",
    batch_size: int = 1000,
    worker_yaml: str = "",
    source: Literal["dynamodb", "kinesis"] = "dynamodb",
) -> Settings:
    """One processor per ``name -> stream ARN`` (of a DynamoDB stream, or of a Kinesis data
    stream with ``source="kinesis"``), Lambda's defaults except ``batch_size``;
    ``worker_yaml`` adds lines to the ``worker:`` section (``gc: {thresholds: python}``)."""
    processors = "".join(
        f"""
      - name: {name}
        source: {{{source}: {{stream_arn: "{arn}"}}}}
        handler: {handler}
        starting_position: TRIM_HORIZON
        batch_size: {batch_size}"""
        for name, arn in streams.items()
    )
    worker = "".join(f"\n      {line}" for line in worker_yaml.splitlines())
    text = f"""
    aws:
      region: {REGION}
      endpoint_url: {endpoint_url}
    store:
      url: "{store_url}"
    worker:
      shutdown_timeout_seconds: 10{worker}
    processors:{processors}
    """
    return parse_config(textwrap.dedent(text), source="bench", config_dir=Path.cwd())


def processed(progress: dict[str, ProcessorProgress]) -> int:
    return sum(p.records_processed for p in progress.values())


async def wait_for(
    predicate: Callable[[], bool], *, timeout_s: float, interval_s: float = 0.005
) -> bool:
    """Poll ``predicate`` until it holds (True) or ``timeout_s`` passes (False)."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(interval_s)
    return True


@dataclass(slots=True)
class Timed:
    """Records handled from the first page handled to the last, start-up apart.

    Start-up (connecting the store, listing shards, taking leases, the first page) costs
    once, whatever the stream holds: it is reported, not averaged into the rate.
    ``complete`` is False when the reader timed out first.
    """

    records: int
    seconds: float
    complete: bool
    startup_s: float

    @property
    def rate(self) -> float:
        return self.records / self.seconds if self.seconds > 0 else 0.0


class Stopwatch:
    """Times a reader: ``handled(n)`` after each page with the running total."""

    def __init__(self) -> None:
        self._started = time.perf_counter()
        self._first: tuple[float, int] | None = None

    def handled(self, total: int) -> None:
        if self._first is None and total > 0:
            self._first = (time.perf_counter(), total)

    def timed(self, total: int, expected: int) -> Timed:
        now = time.perf_counter()
        first_at, first = self._first or (now, total)
        return Timed(total - first, now - first_at, total >= expected, first_at - self._started)


@asynccontextmanager
async def run_supervisor(
    settings: Settings, *, transport: Literal["raw", "aiobotocore"] = "aiobotocore"
) -> AsyncIterator[Supervisor]:
    """A ``Supervisor`` running in the background, reading through ``transport``; drained
    on exit, its failure re-raised."""
    aws = settings.aws.model_copy(update={"transport": transport})
    supervisor = Supervisor(settings.model_copy(update={"aws": aws}))
    task = asyncio.create_task(supervisor.run(install_signal_handlers=False))
    try:
        await wait_for(lambda: supervisor.started.is_set() or task.done(), timeout_s=60)
        if task.done():
            await task
        yield supervisor
    finally:
        supervisor.request_stop()
        await asyncio.wait_for(task, timeout=60)


@asynccontextmanager
async def run_raw_supervisor(settings: Settings) -> AsyncIterator[Supervisor]:
    """The same ``Supervisor``, reading through the raw-JSON source (``aws.transport: raw``,
    the default)."""
    async with run_supervisor(settings, transport="raw") as supervisor:
        yield supervisor


class _EventCounter(logging.Handler):
    """Counts log events of one logger whose event text starts with a prefix."""

    def __init__(self, prefix: str) -> None:
        super().__init__(logging.WARNING)
        self.prefix = prefix
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        # structlog hands the stdlib its event dict as the message.
        event = record.msg.get("event") if isinstance(record.msg, dict) else record.msg
        if str(event).startswith(self.prefix):
            self.count += 1


@contextmanager
def counting_events(logger: str, prefix: str) -> Iterator[Callable[[], int]]:
    """While inside, count WARNING+ events of ``logger`` starting with ``prefix``."""
    counter = _EventCounter(prefix)
    target = logging.getLogger(logger)
    target.addHandler(counter)
    try:
        yield lambda: counter.count
    finally:
        target.removeHandler(counter)


# -- this process ----------------------------------------------------------------------------


def rss_mb() -> tuple[float, float]:
    """(current, peak) resident set size in MB, from /proc/self/status."""
    values = {"VmRSS": 0.0, "VmHWM": 0.0}
    with open("/proc/self/status") as status:
        for line in status:
            key, _, rest = line.partition(":")
            if key in values:
                values[key] = int(rest.split()[0]) / 1024
    return values["VmRSS"], values["VmHWM"]


class ProcessClock:
    """CPU seconds (user + system, all threads) of this process over a wall-clock window."""

    def __init__(self) -> None:
        self._wall = time.monotonic()
        self._cpu = self._cpu_now()

    @staticmethod
    def _cpu_now() -> float:
        times = os.times()
        return times.user + times.system

    def cpu_fraction(self) -> float:
        """CPU time per wall time since construction: 1.0 is one core busy."""
        wall = time.monotonic() - self._wall
        return (self._cpu_now() - self._cpu) / wall if wall > 0 else 0.0


def percentile(values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile (``fraction`` in 0..1); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(fraction * len(ordered) + 0.5) - 1))
    return ordered[rank]
