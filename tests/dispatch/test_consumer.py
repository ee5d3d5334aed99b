"""``ShardConsumer`` with in-memory parts: one batch in flight per shard. The next batch
is invoked only once the previous one's checkpoint is durable, so a worker that dies
re-delivers at most the batch it was running; stopping waits for the write in flight."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest

from shardwise.dispatch.consumer import ConsumerSettings, ShardConsumer, ShardOutcome
from shardwise.errors import ExpiredIteratorError, LeaseLostError
from shardwise.observe.progress import ProcessorProgress
from shardwise.records import (
    Batch,
    Position,
    ReadLimits,
    RecordPage,
    SequenceNumber,
    ShardId,
    ShardListing,
    StreamRecord,
)

# DynamoDB Streams' limits: 1000 records a page, 4 polls a second while busy.
READ_LIMITS = ReadLimits(records_per_call=1000, poll_interval_s=0.25)
ARN = "arn:aws:dynamodb:us-east-1:123456789012:table/T/stream/2026-01-01T00:00:00.000"
SHARD = ShardId("shardId-1")


def records(first: int, count: int) -> list[StreamRecord]:
    return [
        {"eventName": "INSERT", "dynamodb": {"SequenceNumber": str(n)}}
        for n in range(first, first + count)
    ]


@dataclass
class PagedSource:
    """A closed shard served as fixed pages, one per GetRecords call."""

    pages: list[list[StreamRecord]]
    stream_arn: str = ARN
    read_limits: ReadLimits = READ_LIMITS

    async def describe(self) -> ShardListing:
        raise NotImplementedError

    async def get_iterator(self, shard_id: ShardId, position: Position) -> str:
        return "0"

    async def get_records(self, shard_id: ShardId, iterator: str, limit: int) -> RecordPage:
        n = int(iterator)
        last = n + 1 == len(self.pages)
        return RecordPage(records=self.pages[n], next_iterator=None if last else str(n + 1))


class _Lifecycle:
    """The parts of the Processor protocol these tests' processors do nothing with."""

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def invoke_event(self, event: dict[str, Any], shard_id: str) -> Any:
        raise NotImplementedError


@dataclass
class Handler(_Lifecycle):
    """Records each invocation together with the checkpoints durable at that moment."""

    store: GatedCheckpointer
    name: str = "p"
    function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:p"
    seen: list[tuple[int, list[str]]] = field(default_factory=list)

    async def invoke(self, batch: Batch) -> Any:
        last = int(batch.last_sequence_number)
        self.seen.append((last, list(self.store.durable)))
        return None


class _NoWindows:
    """The tumbling-window part of the Checkpointer protocol, unused by these tests."""

    async def save_window(
        self, shard_id: ShardId, sequence_number: SequenceNumber | None, window_state: str | None
    ) -> None:
        raise NotImplementedError

    async def window_state(self) -> str | None:
        return None


@dataclass
class GatedCheckpointer(_NoWindows):
    """Each save waits until the test opens its gate; ``durable`` lists completed saves."""

    gates: dict[str, asyncio.Event] = field(default_factory=dict)
    started: list[str] = field(default_factory=list)
    durable: list[str] = field(default_factory=list)
    lose_lease_at: str | None = None

    def gate(self, sequence: str) -> asyncio.Event:
        return self.gates.setdefault(sequence, asyncio.Event())

    async def save(self, shard_id: ShardId, sequence_number: SequenceNumber) -> None:
        self.started.append(sequence_number)
        await self.gate(sequence_number).wait()
        if sequence_number == self.lose_lease_at:
            raise LeaseLostError(f"lease of {shard_id} lost", shard_id=shard_id)
        self.durable.append(sequence_number)

    async def finish(self, shard_id: ShardId, sequence_number: SequenceNumber | None) -> None:
        self.durable.append(f"finished after {sequence_number}")


def consumer(
    pages: list[list[StreamRecord]], store: GatedCheckpointer
) -> tuple[ShardConsumer, Handler, asyncio.Event]:
    handler = Handler(store)
    stop = asyncio.Event()
    shard_consumer = ShardConsumer(
        source=PagedSource(pages),
        shard_id=SHARD,
        start=Position(),
        processor=handler,
        checkpointer=store,
        settings=ConsumerSettings(batch_size=2, window_s=0.0),
        stop=stop,
        progress=ProcessorProgress("p"),
    )
    return shard_consumer, handler, stop


async def until(condition: Any) -> None:
    async with asyncio.timeout(5):
        while not condition():  # noqa: ASYNC110 - the state belongs to the code under test
            await asyncio.sleep(0.001)


async def test_next_batch_waits_for_the_checkpoint() -> None:
    store = GatedCheckpointer()
    shard_consumer, handler, _ = consumer([records(1, 2), records(3, 2), records(5, 2)], store)
    run = asyncio.create_task(shard_consumer.run())
    await until(lambda: store.started == ["2"])
    await asyncio.sleep(0.05)
    assert handler.seen == [(2, [])]  # 3-4 waits while the checkpoint of 1-2 is written
    store.gate("2").set()
    await until(lambda: len(handler.seen) == 2)
    store.gate("4").set()
    store.gate("6").set()
    assert await run == ShardOutcome.FINISHED
    # Every invocation saw the checkpoint of the batch before it durable.
    assert handler.seen == [(2, []), (4, ["2"]), (6, ["2", "4"])]
    assert store.durable == ["2", "4", "6", "finished after 6"]


async def test_stopping_waits_for_the_checkpoint_in_flight() -> None:
    store = GatedCheckpointer()
    pages = [records(1, 2), records(3, 2), records(5, 2)]
    shard_consumer, handler, stop = consumer(pages, store)
    run = asyncio.create_task(shard_consumer.run())
    await until(lambda: store.started == ["2"])
    stop.set()
    await asyncio.sleep(0.05)
    assert not run.done()  # the write of 1-2 is still running: the consumer waits for it
    store.gate("2").set()
    assert await run == ShardOutcome.STOPPED
    assert store.durable == ["2"]
    assert [last for last, _ in handler.seen] == [2]


async def test_a_lease_lost_during_the_write_ends_the_shard() -> None:
    store = GatedCheckpointer(lose_lease_at="2")
    shard_consumer, handler, _ = consumer([records(1, 2), records(3, 2), records(5, 2)], store)
    run = asyncio.create_task(shard_consumer.run())
    await until(lambda: store.started == ["2"])
    store.gate("2").set()
    with pytest.raises(LeaseLostError):
        await run
    assert [last for last, _ in handler.seen] == [2]  # nothing after the refused write
    assert store.durable == []


PAGE = 1000  # a full GetRecords page: the consumer reads the next one ahead


@dataclass
class BacklogSource:
    """A closed shard of full pages; page ``n`` holds sequence numbers ``n*PAGE+1`` on.
    ``reads`` lists the page each GetRecords call asked for; ``fail`` maps a page to the
    error its first read raises."""

    pages: int
    fail: dict[int, Exception] = field(default_factory=dict)
    reads: list[int] = field(default_factory=list)
    stream_arn: str = ARN
    read_limits: ReadLimits = READ_LIMITS

    async def describe(self) -> ShardListing:
        raise NotImplementedError

    async def get_iterator(self, shard_id: ShardId, position: Position) -> str:
        return str(int(position.after) // PAGE if position.after else 0)

    async def get_records(self, shard_id: ShardId, iterator: str, limit: int) -> RecordPage:
        n = int(iterator)
        self.reads.append(n)
        await asyncio.sleep(0.01)
        if n in self.fail:
            raise self.fail.pop(n)
        last = n + 1 == self.pages
        return RecordPage(records(n * PAGE + 1, PAGE), next_iterator=None if last else str(n + 1))


@dataclass
class BacklogHandler(_Lifecycle):
    """Notes, for each batch, its last sequence number and the pages read by then."""

    source: BacklogSource
    name: str = "p"
    function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:p"
    seen: list[tuple[int, list[int]]] = field(default_factory=list)

    async def invoke(self, batch: Batch) -> Any:
        await asyncio.sleep(0.05)  # the read-ahead, if any, has started by now
        self.seen.append((int(batch.last_sequence_number), list(self.source.reads)))


@dataclass
class MemoryCheckpointer(_NoWindows):
    saved: list[str] = field(default_factory=list)

    async def save(self, shard_id: ShardId, sequence_number: SequenceNumber) -> None:
        self.saved.append(sequence_number)

    async def finish(self, shard_id: ShardId, sequence_number: SequenceNumber | None) -> None:
        self.saved.append(f"finished after {sequence_number}")


def backlog_consumer(source: BacklogSource) -> tuple[ShardConsumer, BacklogHandler, list[str]]:
    handler = BacklogHandler(source)
    store = MemoryCheckpointer()
    shard_consumer = ShardConsumer(
        source=source,
        shard_id=SHARD,
        start=Position(),
        processor=handler,
        checkpointer=store,
        settings=ConsumerSettings(batch_size=PAGE, window_s=0.0),
        stop=asyncio.Event(),
        progress=ProcessorProgress("p"),
    )
    return shard_consumer, handler, store.saved


class TestReadAhead:
    """With a backlog, page N+1 is read while page N is delivered; its errors are the read's."""

    async def test_the_next_page_is_read_during_delivery(self) -> None:
        source = BacklogSource(pages=3)
        shard_consumer, handler, saved = backlog_consumer(source)
        assert await shard_consumer.run() == ShardOutcome.FINISHED
        # Page 0 is delivered while page 1 is read, page 1 while page 2 is.
        assert handler.seen == [(1000, [0, 1]), (2000, [0, 1, 2]), (3000, [0, 1, 2])]
        assert saved == ["1000", "2000", "3000", "finished after 3000"]

    async def test_a_read_ahead_error_is_handled_as_the_reads_own(self) -> None:
        source = BacklogSource(pages=3, fail={1: ExpiredIteratorError("expired")})
        shard_consumer, handler, saved = backlog_consumer(source)
        assert await shard_consumer.run() == ShardOutcome.FINISHED
        assert source.reads == [0, 1, 1, 2]  # reopened after the last record read
        assert [last for last, _ in handler.seen] == [1000, 2000, 3000]
        assert saved == ["1000", "2000", "3000", "finished after 3000"]

    async def test_an_unexpected_read_ahead_error_leaves_as_itself(self) -> None:
        source = BacklogSource(pages=3, fail={1: RuntimeError("bug")})
        shard_consumer, handler, saved = backlog_consumer(source)
        with pytest.raises(RuntimeError, match="bug"):
            await shard_consumer.run()
        assert [last for last, _ in handler.seen] == [1000]
        assert saved == ["1000"]
