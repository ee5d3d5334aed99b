"""worker.gc: the collector is tuned once start-up is over, its pauses are exported, and the
process gets its collector back when the supervisor stops."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path

import pytest

from shardwise.config import GcConfig
from shardwise.gc_policy import GcPolicy, pause_clock
from shardwise.observe.metrics import build_registry, render
from shardwise.testing import StreamsServer
from tests.e2e import recording_handler, running, settings_for, wait_until
from tests.observe.test_metrics import parse as parse_metrics
from tests.observe.test_metrics import value
from tests.test_config import config_text, parse, problems


@pytest.fixture(autouse=True)
def untouched_collector() -> Iterator[None]:
    """Every test leaves the interpreter's collector as it found it."""
    thresholds = gc.get_threshold()
    yield
    gc.set_threshold(*thresholds)
    gc.unfreeze()


class TestPolicy:
    def test_default_freezes_start_up_and_raises_thresholds(self) -> None:
        keep = [{"made": "at start-up"} for _ in range(1000)]
        policy = GcPolicy(GcConfig())
        policy.apply()
        assert gc.get_threshold() == (100_000, 50, 100)
        assert gc.get_freeze_count() >= len(keep)
        policy.restore()
        assert gc.get_threshold() != (100_000, 50, 100)
        assert gc.get_freeze_count() == 0

    def test_python_defaults_and_no_freeze(self) -> None:
        before = gc.get_threshold()
        policy = GcPolicy(GcConfig(freeze_after_start=False, thresholds="python"))
        policy.apply()
        assert gc.get_threshold() == before
        assert gc.get_freeze_count() == 0

    def test_thresholds_from_yaml(self) -> None:
        settings = parse(config_text(worker={"gc": {"thresholds": [5000, 20, 30]}}))
        assert settings.worker.gc.thresholds == (5000, 20, 30)
        assert settings.worker.gc.freeze_after_start is True

    @pytest.mark.parametrize(
        ("gc_settings", "named"),
        [
            ({"thresholds": [0, 10, 10]}, "worker.gc.thresholds"),
            ({"thresholds": [1, 2]}, "worker.gc.thresholds"),
            ({"thresholds": "fast"}, "worker.gc.thresholds"),
            ({"freeze": True}, "worker.gc: unknown key 'freeze'"),
        ],
    )
    def test_bad_settings_name_the_key(self, gc_settings: dict[str, object], named: str) -> None:
        found = problems(config_text(worker={"gc": gc_settings}))
        assert any(problem.startswith(named) for problem in found), found


class TestPauses:
    def test_every_collection_is_timed_and_exported(self) -> None:
        clock = pause_clock()
        clock.install()
        before = clock.pauses[2].count
        gc.collect()
        gc.collect()
        assert clock.pauses[2].count == before + 2
        assert clock.pauses[2].sum > 0
        samples = parse_metrics(render(build_registry({}))[0].decode())
        count = value(samples, "shardwise_gc_pause_seconds_count", generation="2")
        assert count is not None and count >= before + 2
        assert value(samples, "shardwise_gc_frozen_objects") == gc.get_freeze_count()
        assert value(samples, "python_gc_collections_total", generation="2") is not None


async def test_supervisor_tunes_while_running_and_restores_after(
    tmp_path: Path, sqlite_url: str
) -> None:
    before = gc.get_threshold()
    handler, out = recording_handler(tmp_path)
    with StreamsServer() as server:
        stream = server.create_stream("Orders")
        stream.put(stream.shard_ids[0], "INSERT", keys={"Id": {"S": "a"}})
        settings = settings_for(
            tmp_path,
            endpoint_url=server.endpoint_url,
            store_url=sqlite_url,
            extra="  gc: {thresholds: [20000, 30, 40]}",
            processors=f"""
            - name: p
              source: {{dynamodb: {{stream_arn: "{stream.arn}"}}}}
              handler: {handler}
              starting_position: TRIM_HORIZON
            """,
        )
        async with running(settings):
            await wait_until(lambda: out.exists() and out.read_text().count("\n") == 1)
            assert gc.get_threshold() == (20000, 30, 40)
            assert gc.get_freeze_count() > 0
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0
