"""How big each case runs: the full run (``make bench``, ~5 min on 2 cores) and ``--quick``.

Every size lives here so that the two modes differ in numbers only, never in code path.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bench.kinesis import KinesisPlan
from bench.processes import ProcessesPlan
from bench.runtimes import RuntimesPlan
from bench.throughput import ThroughputPlan
from bench.transactional import TransactionalPlan

__all__ = [
    "FULL",
    "QUICK",
    "CheckpointPlan",
    "CostPlan",
    "LatencyPlan",
    "PagesPlan",
    "Plan",
    "ScalePlan",
    "SoakPlan",
]


@dataclass(frozen=True, slots=True)
class LatencyPlan:
    hot_seconds: float
    hot_rate: float  # records/s written to the hot shard
    idle_seconds: float
    idle_shards: int  # streams server shards written once after the idle period
    moto_tables: int  # each a stream of one shard; all but the first stay idle


@dataclass(frozen=True, slots=True)
class ScalePlan:
    shards: int
    window_seconds: float
    light_rate: float  # records/s across all shards under "light load"
    settle_seconds: float  # after every shard was polled: long enough for idle back-off
    warmup_timeout_s: float = 120.0


@dataclass(frozen=True, slots=True)
class CostPlan:
    shards: int
    idle_before_s: float  # how long the shards have been idle when counting starts
    window_seconds: float


@dataclass(frozen=True, slots=True)
class CheckpointPlan:
    records: int
    batch_sizes: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class PagesPlan:
    pages: int  # decodes timed per figure
    alive: tuple[int, ...] = (1, 2, 4, 8, 16)  # decoded pages kept alive; the first is the baseline
    payload_bytes: int = 100


@dataclass(frozen=True, slots=True)
class SoakPlan:
    seconds: float  # how long the supervisor consumes under load
    sample_seconds: float  # RSS sampled this often
    window_seconds: float  # the first and the last this long are compared ("a minute")
    shards: int
    rate: float  # records/s the server's writer puts, round-robin over the shards


@dataclass(frozen=True, slots=True)
class Plan:
    throughput: list[ThroughputPlan] = field(default_factory=list)
    latency: LatencyPlan = LatencyPlan(6.0, 20.0, 20.0, 10, 4)
    scale: ScalePlan = ScalePlan(1000, 12.0, 100.0, 8.0)
    cost: CostPlan = CostPlan(10, 60.0, 10.0)
    checkpoints: CheckpointPlan = CheckpointPlan(3000, (10, 100, 1000))
    pages: PagesPlan = PagesPlan(400)
    soak: SoakPlan = SoakPlan(600.0, 10.0, 60.0, 4, 20_000.0)  # only with --only soak
    processes: ProcessesPlan = field(
        default_factory=lambda: ProcessesPlan(shards=8, records_per_shard=8_000)
    )
    runtimes: RuntimesPlan = field(
        default_factory=lambda: RuntimesPlan(invocations=2000, batch_sizes=(1, 100))
    )
    kinesis: KinesisPlan = field(
        default_factory=lambda: KinesisPlan(
            layouts=(
                ThroughputPlan(shards=1, records_per_shard=300_000),
                ThroughputPlan(shards=4, records_per_shard=100_000),
            )
        )
    )
    transactional: TransactionalPlan = field(
        default_factory=lambda: TransactionalPlan(20_000, (10, 100, 1000), 3)
    )


FULL = Plan(
    throughput=[
        ThroughputPlan(shards=1, records_per_shard=200_000),
        ThroughputPlan(shards=4, records_per_shard=60_000),
        ThroughputPlan(shards=64, records_per_shard=4_000),
    ],
)

QUICK = Plan(
    throughput=[
        ThroughputPlan(shards=1, records_per_shard=3_000, ceiling_seconds=0.5, timeout_s=30),
        ThroughputPlan(shards=4, records_per_shard=500, ceiling_seconds=0.5, timeout_s=30),
    ],
    latency=LatencyPlan(1.5, 20.0, 1.5, 3, 2),
    scale=ScalePlan(20, 1.5, 20.0, 0.5, warmup_timeout_s=30.0),
    cost=CostPlan(5, 2.0, 2.0),
    checkpoints=CheckpointPlan(100, (10, 100)),
    pages=PagesPlan(10, alive=(1, 8)),
    soak=SoakPlan(4.0, 0.5, 1.0, 4, 2_000.0),
    processes=ProcessesPlan(shards=8, records_per_shard=100, timeout_s=60.0),
    runtimes=RuntimesPlan(invocations=50, batch_sizes=(1, 10), rounds=1),
    transactional=TransactionalPlan(300, (10, 100), 1),
    kinesis=KinesisPlan(
        layouts=(
            ThroughputPlan(shards=1, records_per_shard=30_000, ceiling_seconds=0.5, timeout_s=30),
            ThroughputPlan(shards=4, records_per_shard=10_000, ceiling_seconds=0.5, timeout_s=30),
        ),
        idle_shards=8,
        settle_seconds=0.5,
        idle_window_seconds=1.5,
        busy_shards=2,
        busy_rate=100.0,
        busy_warmup_seconds=1.0,
        busy_window_seconds=1.5,
        backlog_shards=1,
        backlog_records=20_000,
        timeout_s=30.0,
    ),
)
