"""Batching by size and window, in order, with no record lost or duplicated."""

from __future__ import annotations

import random

import orjson
from hypothesis import given
from hypothesis import strategies as st

from shardwise.dispatch.batcher import Batcher
from shardwise.dispatch.cadence import (
    IDLE_POLL_GRID_S,
    IDLE_POLLS_AT_FULL_SPEED,
    idle_poll_interval,
    on_poll_grid,
)
from shardwise.records import ShardId, StreamRecord

ARN = "arn:aws:dynamodb:us-east-1:123456789012:table/T/stream/2026-01-01T00:00:00.000"


def records(start: int, count: int) -> list[StreamRecord]:
    return [{"dynamodb": {"SequenceNumber": str(100 + i)}} for i in range(start, start + count)]


def sequences(batcher_output: list[list[StreamRecord]]) -> list[int]:
    return [int(r["dynamodb"]["SequenceNumber"]) for batch in batcher_output for r in batch]


class TestBatchSize:
    """Full batches are cut at batch_size."""

    def test_full_batches_and_remainder_without_window(self) -> None:
        batcher = Batcher(ARN, ShardId("s"), batch_size=3, window_s=0)
        batcher.add(records(0, 7), now=0.0)
        batches = batcher.take(now=0.0)
        assert [len(b) for b in batches] == [3, 3, 1]
        assert len(batcher) == 0

    def test_window_holds_a_partial_batch_until_due(self) -> None:
        batcher = Batcher(ARN, ShardId("s"), batch_size=10, window_s=5)
        batcher.add(records(0, 4), now=100.0)
        assert batcher.take(now=104.9) == []
        assert batcher.seconds_until_due(104.0) == 1.0
        batcher.add(records(4, 2), now=104.9)
        [batch] = batcher.take(now=105.0)
        assert len(batch) == 6
        assert batcher.seconds_until_due(105.0) is None

    def test_window_releases_a_full_batch_at_once(self) -> None:
        batcher = Batcher(ARN, ShardId("s"), batch_size=5, window_s=300)
        batcher.add(records(0, 7), now=0.0)
        [batch] = batcher.take(now=0.0)
        assert len(batch) == 5
        assert len(batcher) == 2
        assert batcher.seconds_until_due(0.0) == 300

    def test_flush_releases_everything(self) -> None:
        batcher = Batcher(ARN, ShardId("s"), batch_size=10, window_s=300)
        batcher.add(records(0, 3), now=0.0)
        [batch] = batcher.take(now=1.0, flush=True)
        assert len(batch) == 3
        assert batch.first_sequence_number == "100"
        assert batch.last_sequence_number == "102"


class TestOrder:
    """Whatever the page sizes and timing, records come out once each, in order."""

    @given(
        batch_size=st.integers(1, 50),
        window=st.sampled_from([0.0, 1.0, 10.0]),
        pages=st.lists(st.tuples(st.integers(0, 120), st.floats(0, 3)), max_size=30),
    )
    def test_no_loss_no_duplicates_in_order(
        self, batch_size: int, window: float, pages: list[tuple[int, float]]
    ) -> None:
        batcher = Batcher(ARN, ShardId("s"), batch_size=batch_size, window_s=window)
        out: list[list[StreamRecord]] = []
        now, written = 0.0, 0
        for count, step in pages:
            now += step
            batcher.add(records(written, count), now=now)
            written += count
            for batch in batcher.take(now=now):
                assert 1 <= len(batch) <= batch_size
                out.append(list(batch.records))
        out.extend(list(b.records) for b in batcher.take(now=now, flush=True))
        assert sequences(out) == [100 + i for i in range(written)]


class TestIdlePolling:
    """Idle shards back off to max_poll_interval; a record brings full speed back."""

    def test_full_speed_then_backoff_to_the_cap(self) -> None:
        for empty in range(IDLE_POLLS_AT_FULL_SPEED + 1):
            assert idle_poll_interval(empty, 0.25, 3.0) == 0.25
        intervals = [idle_poll_interval(n, 0.25, 3.0) for n in range(5, 40)]
        assert 0.45 <= intervals[0] <= 0.55
        assert all(2.7 <= i <= 3.3 for i in intervals[5:])
        # After a minute idle: at most ~0.37 GetRecords calls per second.
        elapsed, calls, n = 0.0, 0, 0
        while elapsed < 120:
            interval = idle_poll_interval(n, 0.25, 3.0)
            if elapsed > 60:
                calls += 1
            elapsed += interval
            n += 1
        assert calls / 60 <= 0.4

    @given(
        delay=st.floats(min_value=0.0, max_value=30.0),
        now=st.floats(min_value=0.0, max_value=1e7),
    )
    def test_wake_ups_end_on_the_shared_grid(self, delay: float, now: float) -> None:
        stretched = on_poll_grid(delay, now)
        assert delay - 1e-6 <= stretched < delay + IDLE_POLL_GRID_S + 1e-6
        lines = (now + stretched) / IDLE_POLL_GRID_S
        assert abs(lines - round(lines)) < 1e-3

    def test_idle_shards_wake_together(self) -> None:
        """1000 backed-off shards polled at random moments wake on few distinct instants:
        one turn of the event loop serves many of them."""
        rng = random.Random(7)
        wakes = set()
        for _ in range(1000):
            now = 1000.0 + rng.uniform(0, 3)
            delay = idle_poll_interval(40, 0.25, 3.0)
            wakes.add(round(now + on_poll_grid(delay, now), 6))
        assert len(wakes) <= 66  # 6.6 s of possible wake-ups / 0.1 s


class TestPayloadLimit:
    """A batch is cut before its event JSON passes the payload limit."""

    def test_cut_by_size_and_oversized_record_alone(self) -> None:
        def big(i: int, size: int) -> StreamRecord:
            return {"dynamodb": {"SequenceNumber": str(100 + i)}, "pad": "x" * size}

        limit = 10_000
        pending = [big(0, 3000), big(1, 3000), big(2, 3000), big(3, 20_000), big(4, 10)]
        batcher = Batcher(ARN, ShardId("s"), batch_size=100, window_s=0, payload_limit_bytes=limit)
        batcher.add(pending, now=0.0)
        batches = batcher.take(now=0.0)
        assert [len(b) for b in batches] == [3, 1, 1]
        assert batches[0].payload_bytes <= limit
        assert batches[1].payload_bytes > limit  # the oversized record, alone
        assert batches[2].payload_bytes <= limit
        for batch in batches:
            assert batch.payload_bytes == len(orjson.dumps({"Records": list(batch.records)}))
