"""Lambda's failure model, property-tested with in-memory parts (no I/O, no sleeping)."""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shardwise.clock import Backoff
from shardwise.destinations.base import DestinationError, FailedBatch, FailureCondition
from shardwise.dispatch.delivery import Delivery, FailurePolicy
from shardwise.observe.progress import ProcessorProgress
from shardwise.records import Batch, ShardId, StreamRecord

ARN = "arn:aws:dynamodb:us-east-1:123456789012:table/T/stream/2026-01-01T00:00:00.000"
NOW = 1_800_000_000.0
NO_WAIT = Backoff(base_s=0.0, cap_s=0.0)


def make_records(count: int, *, age_s: float = 0.0) -> list[StreamRecord]:
    return [
        {
            "eventName": "INSERT",
            "dynamodb": {
                "SequenceNumber": str(1000 + i),
                "ApproximateCreationDateTime": NOW - age_s,
            },
        }
        for i in range(count)
    ]


def seq(record: StreamRecord) -> int:
    return int(record["dynamodb"]["SequenceNumber"])


@dataclass
class ScriptedHandler:
    """Fails on poison records: raises, or reports them with ReportBatchItemFailures.

    A transient poison record succeeds after ``heal_after`` failed invocations.
    """

    poison: set[int]
    report: bool = False
    heal_after: dict[int, int] = field(default_factory=dict)
    name: str = "p"
    function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:p"
    invocations: list[list[int]] = field(default_factory=list)
    processed: list[int] = field(default_factory=list)
    failures_seen: Counter[int] = field(default_factory=Counter)

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def invoke_event(self, event: dict[str, Any], shard_id: str) -> Any:
        return await self.invoke(Batch(ARN, ShardId(shard_id), event["Records"]))

    async def invoke(self, batch: Batch) -> Any:
        seqs = [seq(r) for r in batch.records]
        self.invocations.append(seqs)
        bad = [s for s in seqs if s in self.poison and self.failures_seen[s] < self._heal(s)]
        if not bad:
            self.processed.extend(seqs)
            return None
        for s in bad:
            self.failures_seen[s] += 1
        if self.report:
            first_bad = seqs.index(bad[0])
            self.processed.extend(seqs[:first_bad])
            return {"batchItemFailures": [{"itemIdentifier": str(s)} for s in bad]}
        raise RuntimeError(f"poison {bad}")

    def _heal(self, s: int) -> float:
        return self.heal_after.get(s, math.inf)


@dataclass
class MemoryDestination:
    fail_times: int = 0
    target: str = "memory"
    sent: list[FailedBatch] = field(default_factory=list)

    async def send(self, failed: FailedBatch) -> None:
        if self.fail_times:
            self.fail_times -= 1
            raise DestinationError("memory destination is down")
        self.sent.append(failed)

    async def close(self) -> None:
        return None


@dataclass
class Harness:
    handler: ScriptedHandler
    policy: FailurePolicy
    destination: MemoryDestination | None
    commits: list[int] = field(default_factory=list)
    progress: ProcessorProgress = field(default_factory=lambda: ProcessorProgress("p"))

    async def commit(self, part: Batch) -> bool:
        # Invariant 2: nothing reaches the handler after a later record was checkpointed.
        assert not self.commits or seq(part.records[0]) > self.commits[-1]
        self.commits.append(seq(part.records[-1]))
        return True

    async def run(self, records: list[StreamRecord]) -> bool:
        return await self.run_batch(Batch(ARN, ShardId("shard-1"), records))

    async def run_batch(self, batch: Batch) -> bool:
        delivery = Delivery(
            processor=self.handler,
            policy=self.policy,
            destination=self.destination,
            function_arn=self.handler.function_arn,
            commit=self.commit,
            stop=asyncio.Event(),
            progress=self.progress,
            clock=lambda: NOW,
            backoff=NO_WAIT,
        )
        return await delivery.deliver(batch)


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[list[StreamRecord], ScriptedHandler, FailurePolicy, bool]:
    size = draw(st.integers(1, 40))
    records = make_records(size)
    seqs = [seq(r) for r in records]
    poison = set(draw(st.lists(st.sampled_from(seqs), max_size=4)))
    heal = {s: draw(st.integers(1, 4)) for s in poison if draw(st.booleans())}
    policy = FailurePolicy(
        maximum_retry_attempts=draw(st.integers(0, 3)),
        bisect_batch_on_function_error=draw(st.booleans()),
        report_batch_item_failures=draw(st.booleans()),
    )
    handler = ScriptedHandler(poison, report=policy.report_batch_item_failures, heal_after=heal)
    return records, handler, policy, draw(st.booleans())


class TestInvariants:
    """For any records, handler behaviour and settings, nothing is lost or reordered."""

    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(scenarios())
    async def test_every_record_resolved_exactly_once(
        self, scenario: tuple[list[StreamRecord], ScriptedHandler, FailurePolicy, bool]
    ) -> None:
        records, handler, policy, with_destination = scenario
        harness = Harness(handler, policy, MemoryDestination() if with_destination else None)
        assert await harness.run(records)
        # 1. processed, or in the destination, or dropped and counted - exactly one of them.
        destined = [
            seq(r) for f in (harness.destination or MemoryDestination()).sent for r in f.records
        ]
        processed = set(handler.processed)
        all_seqs = [seq(r) for r in records]
        assert not processed & set(destined)
        if with_destination:
            assert sorted(processed | set(destined)) == all_seqs
            assert harness.progress.records_dropped == 0
        else:
            dropped = set(all_seqs) - processed
            assert harness.progress.records_dropped == len(dropped)
        # Poison records that never healed are never counted as processed.
        for s in handler.poison:
            if s not in handler.heal_after:
                assert s not in processed
        # 2. every invocation sees consecutive records in order.
        for invocation in handler.invocations:
            assert invocation == sorted(invocation)
            assert invocation == list(range(invocation[0], invocation[0] + len(invocation)))
        # 3. the final checkpoint is the last record; checkpoints only move forward.
        assert harness.commits[-1] == all_seqs[-1]
        assert harness.commits == sorted(set(harness.commits))

    @settings(max_examples=50, deadline=None)
    @given(size=st.integers(2, 256), poison_at=st.data())
    async def test_bisection_isolates_a_poison_record_cheaply(
        self, size: int, poison_at: st.DataObject
    ) -> None:
        """4. One poison record costs O(log n) extra invocations; the others are processed."""
        records = make_records(size)
        poison = seq(records[poison_at.draw(st.integers(0, size - 1))])
        handler = ScriptedHandler({poison})
        policy = FailurePolicy(maximum_retry_attempts=2, bisect_batch_on_function_error=True)
        harness = Harness(handler, policy, MemoryDestination())
        assert await harness.run(records)
        assert sorted(handler.processed) == [seq(r) for r in records if seq(r) != poison]
        [failed] = harness.destination.sent if harness.destination else []
        assert [seq(r) for r in failed.records] == [poison]
        assert failed.condition is FailureCondition.RETRY_ATTEMPTS_EXHAUSTED
        depth = math.ceil(math.log2(size))
        # each bisection level costs at most 2 invocations; then 1 + 2 retries of the record
        assert len(handler.invocations) <= 2 * depth + 1 + 3


class TestRetries:
    """maximum_retry_attempts, partial failures, destinations."""

    async def test_retries_then_destination_with_lambda_record(self) -> None:
        records = make_records(5)
        handler = ScriptedHandler({seq(records[2])})
        destination = MemoryDestination()
        harness = Harness(handler, FailurePolicy(maximum_retry_attempts=2), destination)
        assert await harness.run(records)
        assert len(handler.invocations) == 3  # first try + 2 retries
        [failed] = destination.sent
        assert [seq(r) for r in failed.records] == [seq(r) for r in records]
        body = failed.invocation_record(include_payload=False)
        assert body["requestContext"]["condition"] == "RetryAttemptsExhausted"
        assert body["requestContext"]["approximateInvokeCount"] == 3
        assert body["responseContext"]["functionError"] == "Unhandled"
        info = body["DDBStreamBatchInfo"]
        assert (info["startSequenceNumber"], info["endSequenceNumber"]) == ("1000", "1004")
        assert info["batchSize"] == 5
        assert info["shardId"] == "shard-1"
        assert info["streamArn"] == ARN
        assert "payload" not in body
        assert harness.commits == [1004]

    async def test_partial_failure_checkpoints_before_the_failed_record(self) -> None:
        records = make_records(6)
        handler = ScriptedHandler({seq(records[3])}, report=True, heal_after={seq(records[3]): 1})
        policy = FailurePolicy(report_batch_item_failures=True)
        harness = Harness(handler, policy, None)
        assert await harness.run(records)
        assert handler.invocations == [[1000, 1001, 1002, 1003, 1004, 1005], [1003, 1004, 1005]]
        assert harness.commits == [1002, 1005]

    async def test_destination_outage_blocks_the_checkpoint_until_stored(self) -> None:
        records = make_records(3)
        handler = ScriptedHandler({seq(r) for r in records})
        destination = MemoryDestination(fail_times=3)
        harness = Harness(handler, FailurePolicy(maximum_retry_attempts=0), destination)
        assert await harness.run(records)
        assert len(destination.sent) == 1
        assert harness.progress.destination_failures == 3
        assert harness.commits == [1002]

    async def test_no_destination_drops_counts_and_moves_on(self) -> None:
        records = make_records(4)
        handler = ScriptedHandler({seq(records[0])})
        harness = Harness(handler, FailurePolicy(maximum_retry_attempts=1), None)
        assert await harness.run(records)
        assert harness.progress.records_dropped == 4
        assert harness.commits == [1003]

    async def test_stop_during_retries_leaves_records_unresolved(self) -> None:
        records = make_records(2)
        handler = ScriptedHandler({seq(records[0])})
        harness = Harness(handler, FailurePolicy(), None)
        stop = asyncio.Event()
        delivery = Delivery(
            processor=handler,
            policy=FailurePolicy(),
            destination=None,
            function_arn="arn",
            commit=harness.commit,
            stop=stop,
            progress=harness.progress,
            clock=lambda: NOW,
            backoff=Backoff(base_s=0.05, cap_s=0.05),
        )
        task = asyncio.create_task(delivery.deliver(Batch(ARN, ShardId("s"), records)))
        await asyncio.sleep(0.2)
        stop.set()
        assert await task is False
        assert harness.commits == []
        assert len(handler.invocations) >= 2


class TestRecordAge:
    """maximum_record_age_in_seconds: old records skip the handler."""

    @pytest.mark.parametrize("with_destination", [True, False])
    async def test_too_old_records_go_to_the_destination(self, with_destination: bool) -> None:
        old = make_records(3, age_s=120)
        fresh = make_records(5)[3:]
        handler = ScriptedHandler(set())
        destination = MemoryDestination() if with_destination else None
        policy = FailurePolicy(maximum_record_age_s=60)
        harness = Harness(handler, policy, destination)
        assert await harness.run(old + fresh)
        assert handler.invocations == [[1003, 1004]]
        if destination:
            [failed] = destination.sent
            assert failed.condition is FailureCondition.RECORD_AGE_EXCEEDED
            assert failed.approximate_invoke_count == 0
            body = failed.invocation_record(include_payload=True)
            assert body["requestContext"]["condition"] == "RecordAgeExceeded"
            assert "functionError" not in body["responseContext"]
            assert [r["dynamodb"]["SequenceNumber"] for r in body["payload"]["Records"]] == [
                "1000",
                "1001",
                "1002",
            ]
        else:
            assert harness.progress.records_dropped == 3
        assert harness.commits == [1002, 1004]

    @pytest.mark.parametrize("age_s", [25 * 3600, 30 * 3600, 7 * 86400, 400 * 86400])
    async def test_default_never_discards_old_records(self, age_s: float) -> None:
        """-1 is Lambda's infinite age: records days old, or from a clock running behind, still
        reach the handler; nothing is dropped or sent anywhere for its age."""
        records = make_records(5, age_s=age_s)
        handler = ScriptedHandler(set())
        harness = Harness(handler, FailurePolicy(), MemoryDestination())
        assert await harness.run(records)
        assert handler.processed == [1000, 1001, 1002, 1003, 1004]
        assert harness.destination is not None and harness.destination.sent == []
        assert harness.progress.records_dropped == 0

    async def test_infinite_age_and_retries_keep_retrying_an_old_record(self) -> None:
        """With both -1, a failing old record is retried - never given up for its age."""
        records = make_records(2, age_s=25 * 3600)
        handler = ScriptedHandler({1000}, heal_after={1000: 5})
        harness = Harness(handler, FailurePolicy(), MemoryDestination())
        assert await harness.run(records)
        assert handler.failures_seen[1000] == 5
        assert handler.processed == [1000, 1001]
        assert harness.destination is not None and harness.destination.sent == []

    @settings(max_examples=200, deadline=None)
    @given(
        ages=st.lists(st.floats(0, 40 * 86400, allow_nan=False), min_size=1, max_size=30),
        max_age=st.one_of(st.just(-1), st.integers(60, 604_800)),
        with_destination=st.booleans(),
    )
    async def test_age_decides_only_with_a_positive_maximum(
        self, ages: list[float], max_age: int, with_destination: bool
    ) -> None:
        """Any ages, any setting: with -1 every record is processed; with a maximum, the
        records older than it skip the handler and are given up as RecordAgeExceeded, every
        younger one is processed, none both or neither. A shard's records are in creation
        order, so the ages of a batch never increase."""
        ages.sort(reverse=True)
        records = make_records(len(ages))
        for record, age in zip(records, ages, strict=True):
            record["dynamodb"]["ApproximateCreationDateTime"] = NOW - age
        handler = ScriptedHandler(set())
        destination = MemoryDestination() if with_destination else None
        harness = Harness(handler, FailurePolicy(maximum_record_age_s=max_age), destination)
        assert await harness.run(records)
        all_seqs = [seq(r) for r in records]
        given_up = [seq(r) for f in (destination.sent if destination else []) for r in f.records]
        if max_age == -1:
            assert handler.processed == all_seqs
            assert given_up == [] and harness.progress.records_dropped == 0
            return
        too_old = {seq(r) for r, age in zip(records, ages, strict=True) if age > max_age}
        assert set(handler.processed) == set(all_seqs) - too_old
        if destination:
            assert set(given_up) == too_old
            conditions = {f.condition for f in destination.sent}
            assert conditions <= {FailureCondition.RECORD_AGE_EXCEEDED}
        else:
            assert harness.progress.records_dropped == len(too_old)
        assert harness.commits[-1] == all_seqs[-1]


class TestPayloadLimit:
    """A record larger than the payload limit is never invoked."""

    async def test_oversized_record_goes_to_the_destination(self) -> None:
        records = make_records(1)
        handler = ScriptedHandler(set())
        destination = MemoryDestination()
        policy = FailurePolicy(payload_limit_bytes=100)
        harness = Harness(handler, policy, destination)
        assert await harness.run_batch(Batch(ARN, ShardId("s"), records, payload_bytes=500))
        assert handler.invocations == []
        [failed] = destination.sent
        assert failed.condition is FailureCondition.MAXIMUM_PAYLOAD_SIZE_EXCEEDED
        assert "500 bytes" in (failed.error_message or "")
        assert harness.commits == [1000]
