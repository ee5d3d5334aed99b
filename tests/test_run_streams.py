"""The daemon against shardwise.testing's streams server: lineage, pagination, every fault path."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import pytest
from structlog.testing import capture_logs

from shardwise.config import Settings
from shardwise.errors import StoreError, StreamNotFoundError, TrimmedDataError
from shardwise.records import ShardId
from shardwise.store import CheckpointStore, ShardCheckpoint
from shardwise.supervisor import Supervisor
from shardwise.testing import ScriptedStream, StreamsServer
from tests.e2e import (
    one_shard_stream,
    read_jsonl,
    recording_handler,
    running,
    settings_for,
    wait_until,
    write_module,
)


@pytest.fixture
def server() -> Iterator[StreamsServer]:
    with StreamsServer() as streams:
        yield streams


def seqs(path: Path) -> list[int]:
    return [int(r["dynamodb"]["SequenceNumber"]) for r in read_jsonl(path)]


def shard_seqs(stream: ScriptedStream, shard_id: str) -> list[int]:
    return [int(r["dynamodb"]["SequenceNumber"]) for r in stream.records(shard_id)]


class Configure(Protocol):
    """The ``configure`` fixture: a test's settings from its processor's few lines."""

    def __call__(
        self, handler: str, arn: str, *, extra: str = "", transport: str = "raw"
    ) -> Settings: ...


@pytest.fixture
def configure(tmp_path: Path, server: StreamsServer, sqlite_url: str) -> Configure:
    """Settings for one processor, ``p``: ``handler`` reading ``arn`` (``processor_yaml``;
    ``extra``, its more settings), through ``transport``, against ``server`` and the test's
    SQLite store."""

    def settings(handler: str, arn: str, *, extra: str = "", transport: str = "raw") -> Settings:
        return settings_for(
            tmp_path,
            endpoint_url=server.endpoint_url,
            store_url=sqlite_url,
            processors=processor_yaml(handler, arn, extra=extra),
            transport=transport,
        )

    return settings


def processor_yaml(
    handler: str, arn: str, *, name: str = "p", extra: str = "", start: str = "TRIM_HORIZON"
) -> str:
    return f"""
    - name: {name}
      source: {{dynamodb: {{stream_arn: "{arn}"}}}}
      handler: {handler}
      starting_position: {start}
      {extra}
    """


class TestLineage:
    """A split's children start only after the parent is read to its end."""

    async def test_children_after_parent(
        self, tmp_path: Path, server: StreamsServer, sqlite_url: str, configure: Configure
    ) -> None:
        stream = server.create_stream("Orders")
        [parent] = stream.shard_ids
        stream.put_many(parent, 2500)
        children = stream.split(parent, into=2)
        for child in children:
            stream.put_many(child, 20)
        handler, out = recording_handler(tmp_path)
        settings = configure(handler, stream.arn, extra="batch_size: 100")
        async with running(settings):
            await wait_until(lambda: len(read_jsonl(out)) >= 2540, what="all records")
        delivered = seqs(out)
        parent_seqs = shard_seqs(stream, parent)
        assert delivered[:2500] == parent_seqs
        for child in children:
            child_seqs = shard_seqs(stream, child)
            assert [s for s in delivered if s in set(child_seqs)] == child_seqs
        assert len(delivered) == len(set(delivered)) == 2540
        async with await CheckpointStore.connect(sqlite_url) as store:
            rows: dict[str, ShardCheckpoint] = {c.shard_id: c for c in await store.list("p")}
        assert rows[parent].finished
        assert rows[parent].sequence_number == str(parent_seqs[-1])
        assert {rows[c].parent_shard_id for c in children} == {parent}

    async def test_new_shards_are_discovered_while_running(
        self, tmp_path: Path, server: StreamsServer, configure: Configure
    ) -> None:
        stream = server.create_stream("Orders")
        [first] = stream.shard_ids
        stream.put_many(first, 5)
        handler, out = recording_handler(tmp_path)
        settings = configure(handler, stream.arn)
        async with running(settings):
            await wait_until(lambda: len(read_jsonl(out)) >= 5, what="first shard")
            [child] = stream.split(first, into=1)
            stream.put_many(child, 7)
            await wait_until(lambda: len(read_jsonl(out)) >= 12, what="rolled-over shard")
        assert seqs(out) == shard_seqs(stream, first) + shard_seqs(stream, child)

    async def test_registration_rides_out_a_store_outage(
        self,
        tmp_path: Path,
        server: StreamsServer,
        configure: Configure,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """The sync leader cannot read the lease table (a database restart): it retries
        instead of failing the processor, and the shards are read once the store is back."""
        stream, shard = one_shard_stream(server, 5)
        outage = {"left": 2}
        load = CheckpointStore.load

        async def flaky_load(
            self: CheckpointStore, processor: str, stream_arn: str
        ) -> dict[ShardId, ShardCheckpoint]:
            if outage["left"]:
                outage["left"] -= 1
                raise StoreError("load failed: connection refused")
            return await load(self, processor, stream_arn)

        monkeypatch.setattr(CheckpointStore, "load", flaky_load)
        handler, out = recording_handler(tmp_path)
        settings = configure(handler, stream.arn)
        with capture_logs() as logs:
            async with running(settings):
                await wait_until(lambda: len(read_jsonl(out)) >= 5, what="records after outage")
        assert seqs(out) == shard_seqs(stream, shard)
        retries = [e for e in logs if e["event"] == "registering shards failed; retrying"]
        assert len(retries) == 2

    async def test_stopped_before_the_stream_answered(
        self, tmp_path: Path, server: StreamsServer, configure: Configure
    ) -> None:
        """A worker asked to stop while it still cannot list its stream (the endpoint is
        failing) stops cleanly: nothing was started, nothing is left to fail."""
        stream = server.create_stream("Orders")
        server.fail("DescribeStream", "InternalServerError", times=None)
        handler, _ = recording_handler(tmp_path)
        settings = configure(handler, stream.arn)
        with capture_logs() as logs:
            async with running(settings):
                await wait_until(
                    lambda: any(e["event"] == "listing shards failed; backing off" for e in logs),
                    what="a failed listing",
                )
        assert not [e for e in logs if e["log_level"] in {"error", "critical"}]


class TestPagination:
    """DescribeStream is paginated: a stream with 250 shards is read whole."""

    async def test_250_shards(
        self, tmp_path: Path, server: StreamsServer, sqlite_url: str, configure: Configure
    ) -> None:
        stream = server.create_stream("Wide", shards=250)
        for shard_id in stream.shard_ids:
            stream.put_many(shard_id, 2)
        handler, out = recording_handler(tmp_path)
        settings = configure(handler, stream.arn)
        async with running(settings):
            await wait_until(lambda: len(read_jsonl(out)) >= 500, timeout_s=60, what="500")
        assert len(set(seqs(out))) == 500
        assert server.calls["DescribeStream"] >= 3
        async with await CheckpointStore.connect(sqlite_url) as store:
            assert len(await store.list("p")) == 250


class TestFaults:
    """Expired iterators, throttling and 5xx lose and duplicate nothing."""

    @pytest.mark.parametrize(
        ("operation", "code", "times"),
        [
            ("GetRecords", "ExpiredIteratorException", 3),
            ("GetRecords", "LimitExceededException", 3),
            ("GetRecords", "InternalServerError", 3),
            ("GetShardIterator", "LimitExceededException", 2),
            ("DescribeStream", "InternalServerError", 2),
            # Expired credentials: a clear error, retried with backoff, never a stall.
            ("GetRecords", "ExpiredTokenException", 2),
        ],
    )
    @pytest.mark.parametrize("transport", ["raw", "aiobotocore"])
    async def test_recovers_exactly_once(
        self,
        tmp_path: Path,
        server: StreamsServer,
        configure: Configure,
        operation: str,
        code: str,
        times: int,
        transport: str,
    ) -> None:
        stream, shard = one_shard_stream(server, 30)
        handler, out = recording_handler(tmp_path)
        settings = configure(handler, stream.arn, extra="batch_size: 10", transport=transport)
        server.fail(operation, code, times=times)
        async with running(settings):
            await wait_until(lambda: len(read_jsonl(out)) >= 10, what="first batch")
            # The same fault again, mid-stream, for calls that happen mid-stream.
            server.fail(operation, code, times=times)
            stream.put_many(shard, 30)
            await wait_until(lambda: len(read_jsonl(out)) >= 60, what="all 60")
        assert server.calls[operation] > times
        assert seqs(out) == shard_seqs(stream, shard)

    async def test_expired_iterator_keeps_buffered_records(
        self, tmp_path: Path, server: StreamsServer, configure: Configure
    ) -> None:
        """With a batching window, records read but not yet delivered are not read twice."""
        stream, shard = one_shard_stream(server, 3)
        handler, out = recording_handler(tmp_path)
        settings = configure(
            handler,
            stream.arn,
            extra="batch_size: 100\n      maximum_batching_window_in_seconds: 2",
        )
        async with running(settings):
            await wait_until(lambda: server.calls["GetRecords"] >= 2, what="records buffered")
            server.fail("GetRecords", "ExpiredIteratorException", times=1)
            stream.put_many(shard, 3)
            await wait_until(lambda: len(read_jsonl(out)) >= 6, what="6 records")
        assert seqs(out) == shard_seqs(stream, shard)


class TestTrimmedData:
    """Data trimmed before it was read is never skipped silently."""

    async def _checkpoint_some(
        self, tmp_path: Path, server: StreamsServer, configure: Configure, extra: str = ""
    ) -> tuple[ScriptedStream, str, str, Path]:
        stream, shard = one_shard_stream(server, 5)
        handler, out = recording_handler(tmp_path)
        settings = configure(handler, stream.arn, extra=extra)
        async with running(settings):
            await wait_until(lambda: len(read_jsonl(out)) >= 5, what="first records")
        stream.put_many(shard, 10)
        stream.trim(shard, 8)  # 3 unread records aged out
        return stream, shard, handler, out

    async def test_resumes_at_trim_horizon_and_says_so(
        self, tmp_path: Path, server: StreamsServer, configure: Configure
    ) -> None:
        stream, shard, handler, out = await self._checkpoint_some(tmp_path, server, configure)
        settings = configure(handler, stream.arn)
        with capture_logs() as logs:
            async with running(settings) as supervisor:
                await wait_until(lambda: len(read_jsonl(out)) >= 12, what="records after the gap")
                assert supervisor.progress["p"].trimmed_gaps == 1
        assert seqs(out)[5:] == shard_seqs(stream, shard)
        lost = [e for e in logs if e["log_level"] == "error" and "lost" in e["event"]]
        assert [e["event"] for e in lost] == [
            "records lost to stream retention: resuming at TRIM_HORIZON",
            "records lost to stream retention: resumed after the gap",
        ]
        checkpoint = str(seqs(out)[4])
        assert shard in lost[0]["error"]
        assert lost[0]["gap_after_sequence"] == checkpoint
        assert lost[1]["resumed_at_sequence"] == str(shard_seqs(stream, shard)[0])

    async def test_stop_policy_fails_loudly(
        self, tmp_path: Path, server: StreamsServer, configure: Configure
    ) -> None:
        stream, _, handler, _ = await self._checkpoint_some(tmp_path, server, configure)
        settings = configure(handler, stream.arn, extra="on_trimmed_data: stop")
        with pytest.raises(TrimmedDataError, match="trimmed from the stream before they were read"):
            await Supervisor(settings).run(install_signal_handlers=False)


class TestStreamErrors:
    """Missing or disabled streams give clear errors."""

    async def test_unknown_stream(
        self, tmp_path: Path, server: StreamsServer, configure: Configure
    ) -> None:
        handler, _ = recording_handler(tmp_path)
        arn = "arn:aws:dynamodb:us-east-1:123456789012:table/Nope/stream/2026-01-01T00:00:00.000"
        settings = configure(handler, arn)
        with pytest.raises(StreamNotFoundError, match="Nope"):
            await Supervisor(settings).run(install_signal_handlers=False)

    async def test_disabled_stream(
        self, tmp_path: Path, server: StreamsServer, configure: Configure
    ) -> None:
        stream = server.create_stream("Off")
        stream.disable()
        handler, _ = recording_handler(tmp_path)
        settings = configure(handler, stream.arn)
        with pytest.raises(StreamNotFoundError, match="DISABLED"):
            await Supervisor(settings).run(install_signal_handlers=False)


class TestHandlerFailures:
    """A failing batch is retried whole until it succeeds; later records wait."""

    async def test_retried_until_success_in_order(
        self, tmp_path: Path, server: StreamsServer, configure: Configure
    ) -> None:
        stream, shard = one_shard_stream(server, 12)
        write_module(
            tmp_path,
            "flaky",
            """
            import json, os
            HERE = os.path.dirname(__file__)
            calls = {"n": 0}

            def handler(event, context):
                calls["n"] += 1
                if calls["n"] in (2, 3):
                    raise RuntimeError("database unavailable")
                with open(os.path.join(HERE, "flaky.jsonl"), "a") as f:
                    for r in event["Records"]:
                        f.write(json.dumps(r) + "\\n")
            """,
        )
        out = tmp_path / "flaky.jsonl"
        settings = configure("flaky:handler", stream.arn, extra="batch_size: 4")
        async with running(settings) as supervisor:
            await wait_until(lambda: len(read_jsonl(out)) >= 12, what="all records")
            assert supervisor.progress["p"].handler_failures == 2
        assert seqs(out) == shard_seqs(stream, shard)

    async def test_timeout_fails_the_batch(
        self, tmp_path: Path, server: StreamsServer, configure: Configure
    ) -> None:
        stream, shard = one_shard_stream(server, 2)
        write_module(
            tmp_path,
            "slow_once",
            """
            import json, os, time
            HERE = os.path.dirname(__file__)
            calls = {"n": 0}

            def handler(event, context):
                calls["n"] += 1
                if calls["n"] == 1:
                    time.sleep(2.5)   # past timeout_seconds: abandoned, batch retried
                    return
                with open(os.path.join(HERE, "slow.jsonl"), "a") as f:
                    for r in event["Records"]:
                        f.write(json.dumps(r) + "\\n")
            """,
        )
        out = tmp_path / "slow.jsonl"
        settings = configure("slow_once:handler", stream.arn, extra="timeout_seconds: 1")
        async with running(settings) as supervisor:
            await wait_until(lambda: len(read_jsonl(out)) >= 2, what="retried batch")
            assert supervisor.progress["p"].handler_failures == 1
        assert seqs(out) == shard_seqs(stream, shard)


class TestFilterCriteria:
    """Records matching no filter are consumed: counted, checkpointed, never invoked."""

    async def test_only_matching_records_reach_the_handler(
        self, tmp_path: Path, server: StreamsServer, sqlite_url: str, configure: Configure
    ) -> None:
        stream = server.create_stream("Orders")
        [shard] = stream.shard_ids
        for i, event in enumerate(["INSERT", "MODIFY", "INSERT", "REMOVE", "MODIFY"]):
            image = {"Id": {"S": f"k{i}"}, "status": {"S": "SHIPPED" if i == 4 else "NEW"}}
            stream.put(
                shard,
                event,
                keys={"Id": {"S": f"k{i}"}},
                new_image=None if event == "REMOVE" else image,
                old_image=image if event != "INSERT" else None,
            )
        handler, out = recording_handler(tmp_path)
        shipped = '{"dynamodb": {"NewImage": {"status": {"S": ["SHIPPED"]}}}}'
        filters = (
            "filter_criteria:\n        filters:\n"
            """          - pattern: '{"eventName": ["INSERT"]}'\n"""
            f"          - pattern: '{shipped}'\n"
        )
        settings = configure(handler, stream.arn, extra=filters)
        stream.put(shard, "REMOVE", keys={"Id": {"S": "tail"}}, old_image={"Id": {"S": "tail"}})
        async with running(settings) as supervisor:
            await wait_until(
                lambda: supervisor.progress["p"].records_filtered == 3, what="3 filtered"
            )
            await wait_until(
                lambda: supervisor.progress["p"].shards[ShardId(shard)].pending == 0,
                what="consumed",
            )
        keys = [r["dynamodb"]["Keys"]["Id"]["S"] for r in read_jsonl(out)]
        assert keys == ["k0", "k2", "k4"]
        async with await CheckpointStore.connect(sqlite_url) as store:
            [checkpoint] = await store.list("p")
        # The trailing filtered-out REMOVE is consumed too: the checkpoint is past it.
        assert checkpoint.sequence_number == str(shard_seqs(stream, shard)[-1])


class TestParallelization:
    """parallelization_factor: several lanes per shard, order kept per item key."""

    async def test_order_per_key_and_everything_once(
        self, tmp_path: Path, server: StreamsServer, sqlite_url: str, configure: Configure
    ) -> None:
        stream = server.create_stream("Orders")
        [shard] = stream.shard_ids
        for round_ in range(10):
            for item in range(12):
                stream.put(
                    shard,
                    "INSERT" if round_ == 0 else "MODIFY",
                    keys={"Id": {"S": f"item-{item}"}},
                    new_image={"Id": {"S": f"item-{item}"}, "v": {"N": str(round_)}},
                )
        handler, out = recording_handler(tmp_path)
        settings = configure(
            handler, stream.arn, extra="parallelization_factor: 4\n      batch_size: 5"
        )
        async with running(settings):
            await wait_until(lambda: len(read_jsonl(out)) >= 120, what="120 records")
        records = read_jsonl(out)
        assert sorted(seqs(out)) == shard_seqs(stream, shard)
        versions: dict[str, list[int]] = {}
        for record in records:
            item = record["dynamodb"]["Keys"]["Id"]["S"]
            versions.setdefault(item, []).append(int(record["dynamodb"]["NewImage"]["v"]["N"]))
        assert all(v == list(range(10)) for v in versions.values())
        async with await CheckpointStore.connect(sqlite_url) as store:
            [checkpoint] = await store.list("p")
        assert checkpoint.sequence_number == str(shard_seqs(stream, shard)[-1])

    async def test_a_failing_lane_holds_the_checkpoint(
        self, tmp_path: Path, server: StreamsServer, sqlite_url: str, configure: Configure
    ) -> None:
        stream = server.create_stream("Orders")
        [shard] = stream.shard_ids
        poison_seq = None
        for i in range(30):
            key = "poison" if i == 5 else f"item-{i}"
            seq = stream.put(shard, "INSERT", keys={"Id": {"S": key}}, new_image={"Id": {"S": key}})
            if key == "poison":
                poison_seq = int(seq)
        write_module(
            tmp_path,
            "lane_poison",
            """
            import json, os
            HERE = os.path.dirname(__file__)

            def handler(event, context):
                keys = [r["dynamodb"]["Keys"]["Id"]["S"] for r in event["Records"]]
                if "poison" in keys:
                    raise RuntimeError("poison")
                with open(os.path.join(HERE, "lanes.jsonl"), "a") as f:
                    for r in event["Records"]:
                        f.write(json.dumps(r) + "\\n")
            """,
        )
        out = tmp_path / "lanes.jsonl"
        settings = configure(
            "lane_poison:handler",
            stream.arn,
            extra="parallelization_factor: 3\n      batch_size: 1",
        )
        async with running(settings):
            # Every item outside the poison record's lane gets through ...
            await wait_until(lambda: len(read_jsonl(out)) >= 15, what="the other lanes")
        assert poison_seq is not None
        async with await CheckpointStore.connect(sqlite_url) as store:
            [checkpoint] = await store.list("p")
        # ... but the checkpoint never passes the record still being retried.
        assert checkpoint.sequence_number is not None
        assert int(checkpoint.sequence_number) < poison_seq


class TestReadAhead:
    """With a backlog the next page is fetched during delivery; faults there lose nothing."""

    @pytest.mark.parametrize(
        "code", ["ExpiredIteratorException", "LimitExceededException", "InternalServerError"]
    )
    async def test_backlog_with_faults_exactly_once(
        self, tmp_path: Path, server: StreamsServer, configure: Configure, code: str
    ) -> None:
        stream, shard = one_shard_stream(server, 4500)
        handler, out = recording_handler(tmp_path)
        settings = configure(handler, stream.arn, extra="batch_size: 700")
        server.fail("GetRecords", code, times=None)
        async with running(settings):
            await wait_until(lambda: server.calls["GetRecords"] >= 3, what="faults hit")
            server.clear_faults()
            server.fail("GetRecords", code, times=2)  # some more, mid-backlog
            await wait_until(lambda: len(read_jsonl(out)) >= 4500, what="the backlog")
        assert seqs(out) == shard_seqs(stream, shard)
