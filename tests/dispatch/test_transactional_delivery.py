"""Transactional delivery, property-tested: under any mix of handler errors (before or after
writing), reported failures, bisection, retries and given-up records, every record's write
is committed exactly once if it was processed and never if it was given up, and the
checkpoint in each transaction is the last record that invocation resolved."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shardwise.destinations.base import FailedBatch
from shardwise.dispatch.delivery import Delivery, FailurePolicy
from shardwise.dispatch.protocols import Transactional
from shardwise.errors import CommitUnknownError, StoreError
from shardwise.observe.progress import ProcessorProgress
from shardwise.processors import CURRENT_TRANSACTION
from shardwise.records import Batch, SequenceNumber, ShardId
from tests.dispatch.test_delivery import ARN, NO_WAIT, NOW, make_records, seq


@dataclass
class Database:
    """Committed rows (one write per record), and the checkpoints committed with them."""

    applied: Counter[int] = field(default_factory=Counter)
    checkpoints: list[int] = field(default_factory=list)
    marked: Counter[int] = field(default_factory=Counter)  # recorded applied, in lanes


@dataclass
class MemoryTransaction:
    database: Database
    writes: list[int] = field(default_factory=list)
    checkpointed: int | None = None
    marked: list[int] = field(default_factory=list)

    @property
    def connection(self) -> MemoryTransaction:
        return self

    @property
    def broken(self) -> bool:
        return False

    def write(self, record: int) -> None:
        self.writes.append(record)

    async def checkpoint(self, sequence_number: SequenceNumber | None) -> None:
        self.checkpointed = None if sequence_number is None else int(sequence_number)

    async def checkpoint_window(
        self, sequence_number: SequenceNumber | None, window_state: str | None
    ) -> None:
        raise AssertionError("a delivery without windows never writes one")

    async def applied(
        self, sequence_numbers: Sequence[SequenceNumber], checkpointed: SequenceNumber | None
    ) -> None:
        self.marked += [int(s) for s in sequence_numbers]


@dataclass
class TransactionalHandler:
    """Writes each record through the transaction; a poison record fails the invocation,
    raising before or after the writes of the records before it, or reporting it."""

    poison: dict[int, str]  # sequence -> "raise" | "raise-after" | "report"
    heal_after: dict[int, int]
    name: str = "p"
    function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:p"
    failures: Counter[int] = field(default_factory=Counter)

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def invoke_event(self, event: dict[str, Any], shard_id: str) -> Any:
        return await self.invoke(Batch(ARN, ShardId(shard_id), event["Records"]))

    async def invoke(self, batch: Batch) -> Any:
        transaction: MemoryTransaction = CURRENT_TRANSACTION.get()
        for record in batch.records:
            s = seq(record)
            how = self.poison.get(s)
            if how is not None and self.failures[s] < self.heal_after.get(s, 10**9):
                self.failures[s] += 1
                if how == "report":
                    return {"batchItemFailures": [{"itemIdentifier": str(s)}]}
                if how == "raise-after":
                    transaction.write(s)  # written, then the invocation fails anyway
                raise RuntimeError(f"poison {s}")
            transaction.write(s)
        return None


@dataclass
class Sink:
    sent: list[FailedBatch] = field(default_factory=list)
    target: str = "memory"

    async def send(self, failed: FailedBatch) -> None:
        self.sent.append(failed)

    async def close(self) -> None:
        return None


# "begin": the store refuses to start the transaction; "commit-failed": COMMIT breaks off
# and was not applied; "commit-lost": COMMIT was applied but its acknowledgement was lost.
STORE_FAULTS = ("none", "begin", "commit-failed", "commit-lost")


def answer(landed: bool) -> Callable[[], Awaitable[bool]]:
    """A ``CommitUnknownError.landed`` that the store answers at the second time of asking."""
    asked: list[None] = []

    async def look_up() -> bool:
        asked.append(None)
        if len(asked) == 1:
            raise StoreError("still unreachable")
        return landed

    return look_up


POISON = st.dictionaries(
    st.integers(1000, 1011), st.sampled_from(["raise", "raise-after", "report"]), max_size=4
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    size=st.integers(1, 12),
    poison=POISON,
    heal=st.dictionaries(st.integers(1000, 1011), st.integers(0, 3), max_size=4),
    retries=st.integers(0, 3),
    bisect=st.booleans(),
    in_lanes=st.booleans(),
    store_faults=st.lists(st.sampled_from(STORE_FAULTS), max_size=8),
)
def test_resolved_records_commit_exactly_once(
    size: int,
    poison: dict[int, str],
    heal: dict[int, int],
    retries: int,
    bisect: bool,
    in_lanes: bool,
    store_faults: list[str],
) -> None:
    database = Database()
    handler = TransactionalHandler(poison, heal)
    sink = Sink()
    commits: list[int] = []  # the checkpoints written outside a transaction
    handed: list[int] = []  # every record handed to commit (in lanes: to the watermark)
    faults = iter(store_faults)  # what the store does to each transaction, in turn

    @contextlib.asynccontextmanager
    async def open_transaction(shard_id: ShardId) -> AsyncIterator[MemoryTransaction]:
        fault = next(faults, "none")
        if fault == "begin":
            raise StoreError("the store is unreachable")
        transaction = MemoryTransaction(database)
        yield transaction  # an exception here is a rollback: nothing applied
        if fault == "commit-failed":  # broke off before it was applied
            raise CommitUnknownError("connection lost", landed=answer(False))
        database.applied.update(transaction.writes)  # a normal exit commits, as SQL would
        database.marked.update(transaction.marked)
        if transaction.checkpointed is not None:
            database.checkpoints.append(transaction.checkpointed)
        if fault == "commit-lost":  # applied, and its acknowledgement lost
            raise CommitUnknownError("connection lost", landed=answer(True))

    async def commit(part: Batch) -> bool:
        commits.append(seq(part.records[-1]))
        handed.extend(seq(r) for r in part.records)
        return True

    records = make_records(size)
    delivery = Delivery(
        processor=handler,
        policy=FailurePolicy(
            maximum_retry_attempts=retries,
            bisect_batch_on_function_error=bisect,
            report_batch_item_failures=True,
        ),
        destination=sink,
        function_arn=handler.function_arn,
        commit=commit,
        stop=asyncio.Event(),
        progress=ProcessorProgress("p"),
        clock=lambda: NOW,
        backoff=NO_WAIT,
        transactional=Transactional(open_transaction, lambda part, started: None),
        store_backoff=NO_WAIT,
    )
    if in_lanes:
        delivery = delivery.for_lanes(commit)
    assert asyncio.run(delivery.deliver(Batch(ARN, ShardId("s"), records)))
    given_up = {seq(r) for failed in sink.sent for r in failed.records}
    every = {seq(r) for r in records}
    # The store failing is not the handler failing: no record is given up for it.
    if not poison:
        assert given_up == set()
    # Processed records applied once each; given-up records never; nothing else applied.
    assert set(database.applied) == every - given_up
    assert all(count == 1 for count in database.applied.values()), database.applied
    if in_lanes:
        # Each record's writes committed with the mark that it was applied, and every
        # record went to the lanes' watermark once, in order: no checkpoint in a transaction.
        assert database.marked == database.applied
        assert handed == sorted(every)
        assert database.checkpoints == []
        return
    assert not database.marked
    # The checkpoints moved forward only, and reached the last record one way or the other.
    written = sorted(database.checkpoints + commits)
    assert written == sorted(set(written))
    assert max(written) == seq(records[-1])
    for checkpoint in database.checkpoints:
        assert checkpoint not in given_up
