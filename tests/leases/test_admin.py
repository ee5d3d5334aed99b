"""Operator changes to leases on SQLite and PostgreSQL: release, reset, and their commands.

Leases are held by real ``LeaseCoordinator``s driven by hand (``renew_once`` / ``take_once``)
on fake clocks that never advance, so every take seen here is a take "at once", never one
after expiry. The commands run as ``shardwise`` runs them, in a thread of their own (they
call ``asyncio.run``), with stdin replaced by ``io.StringIO``.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import io
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from shardwise.cli.leases import add_leases_commands, ask
from shardwise.errors import LeaseLostError
from shardwise.leases import Lease, LeaseCoordinator, LossReason
from shardwise.leases.admin import LeaseAdmin, Released, ShardLease
from shardwise.records import Position, SequenceNumber, ShardId, StartingPosition
from shardwise.store import CheckpointStore, ShardRegistration
from tests.leases.conftest import ARN, PROCESSOR, Tables, Workers

S0, S1, S2 = ShardId("shard-0"), ShardId("shard-1"), ShardId("shard-2")


@pytest.fixture(autouse=True)
async def shards(store: CheckpointStore) -> None:
    """Three shards, registered and free."""
    await store.register_shards(
        PROCESSOR,
        ARN,
        [ShardRegistration(s, None, StartingPosition.TRIM_HORIZON) for s in (S0, S1, S2)],
    )


@pytest.fixture
def worker_clock() -> Callable[[], float]:
    """Workers' clocks stand still here."""
    return lambda: 1_000.0


async def row(store: CheckpointStore, shard_id: ShardId) -> ShardLease:
    rows = (await LeaseAdmin(store.engine).read(PROCESSOR)).shards
    return next(lease for lease in rows if lease.checkpoint.shard_id == shard_id)


async def finished(tables: Tables, shard_id: ShardId, sequence_number: str) -> None:
    """Leave the shard as a worker does that read it to its end: finished, its lease free."""
    table = await tables("reader")
    taken = await table.take(shard_id, 0)
    assert taken is not None
    await table.finish(shard_id, taken.counter, SequenceNumber(sequence_number))


async def holding(workers: Workers, worker_id: str, count: int) -> LeaseCoordinator:
    """A worker that beat and took ``count`` leases (fewer shards than free ones are taken
    only when other workers beat first)."""
    coordinator = await workers(worker_id)
    await coordinator.renew_once()
    taken = await coordinator.take_once()
    assert len(taken) == count
    return coordinator


class TestRelease:
    """Release frees leases at once: owners lose them at their next renewal."""

    async def test_owner_loses_at_next_renewal_and_another_takes_at_once(
        self, workers: Workers, store: CheckpointStore
    ) -> None:
        a = await holding(workers, "a", 3)
        b = await workers("b")
        await b.renew_once()
        assert await b.take_once() == []  # a's leases are live: b would wait for expiry
        before = await row(store, S0)
        released = await LeaseAdmin(store.engine).release(PROCESSOR, shards=[S0])
        assert released == [Released(ARN, S0, before.counter + 1)]
        lease = a.held()[S0]
        await a.renew_once()
        assert lease.lost.is_set() and lease.reason is LossReason.TAKEN
        assert sorted(a.held()) == [S1, S2]  # the others are renewed as usual
        with pytest.raises(LeaseLostError):
            await a.checkpointer(lease).save(S0, SequenceNumber("10"))
        [taken] = await b.take_once()  # no expiry wait: b's clock never moved
        assert taken.shard_id == S0

    async def test_by_worker_and_all(self, workers: Workers, store: CheckpointStore) -> None:
        a = await holding(workers, "a", 3)
        b = await workers("b")
        await b.renew_once()
        await b.take_once()  # b asks a to hand a lease over: handoff_to is set
        admin = LeaseAdmin(store.engine)
        assert await admin.release(PROCESSOR, worker="nobody") == []
        assert await admin.release("other-processor") == []
        assert await admin.release(PROCESSOR, shards=[]) == []
        released = await admin.release(PROCESSOR, worker="a")
        assert [lease.shard_id for lease in released] == [S0, S1, S2]
        for shard_id in (S0, S1, S2):
            after = await row(store, shard_id)
            assert (after.owner, after.handoff_to, after.owner_since) == (None, None, None)
        assert await admin.release(PROCESSOR) == []  # nothing is taken any more
        await a.renew_once()
        assert a.held() == {}


class TestReset:
    """Reset moves the checkpoint and frees the lease in one statement, as it was shown."""

    async def test_moves_the_checkpoint_and_fences_the_stale_owner(
        self, workers: Workers, store: CheckpointStore
    ) -> None:
        a = await holding(workers, "a", 3)
        lease = a.held()[S0]
        await a.checkpointer(lease).save(S0, SequenceNumber("100"))
        seen = await row(store, S0)
        to = Position(SequenceNumber("150"), StartingPosition.TRIM_HORIZON)
        released = await LeaseAdmin(store.engine).reset(seen, to)
        assert released == Released(ARN, S0, seen.counter + 1)
        after = await row(store, S0)
        assert after.checkpoint.position == to
        assert (after.owner, after.counter) == (None, seen.counter + 1)
        with pytest.raises(LeaseLostError):  # the stale owner's fenced save
            await a.checkpointer(lease).save(S0, SequenceNumber("120"))
        b = await workers("b")
        await b.renew_once()
        [taken] = await b.take_once()
        assert (taken.shard_id, taken.position) == (S0, to)

    async def test_refused_when_the_checkpoint_moved(
        self, workers: Workers, store: CheckpointStore
    ) -> None:
        a = await holding(workers, "a", 3)
        seen = await row(store, S1)
        await a.checkpointer(a.held()[S1]).save(S1, SequenceNumber("7"))
        to = Position(None, StartingPosition.LATEST)
        assert await LeaseAdmin(store.engine).reset(seen, to) is None
        after = await row(store, S1)
        assert (after.checkpoint.sequence_number, after.owner) == ("7", "a")

    async def test_reopens_a_finished_shard(self, store: CheckpointStore, tables: Tables) -> None:
        await finished(tables, S2, "900")
        seen = await row(store, S2)
        to = Position(None, StartingPosition.LATEST)
        assert await LeaseAdmin(store.engine).reset(seen, to) is not None
        after = await row(store, S2)
        assert after.checkpoint.position == to
        assert not after.checkpoint.finished


class Cli:
    """``shardwise leases ARGS -c CONFIG`` as the command line runs it, in a thread of its
    own (it calls ``asyncio.run``), with ``stdin`` as its stdin - a terminal when ``tty`` -
    and what it printed (only it: the coordinators' logs before are dropped) in out and err."""

    def __init__(
        self, config: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        self.config, self.monkeypatch, self.capsys = config, monkeypatch, capsys
        self.out = self.err = ""

    async def __call__(self, *argv: str, stdin: str = "", tty: bool | None = None) -> int:
        self.monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
        parser = argparse.ArgumentParser(prog="shardwise")
        confirm = functools.partial(ask, tty=tty)
        add_leases_commands(parser.add_subparsers(dest="command", required=True), confirm=confirm)
        self.capsys.readouterr()
        try:
            args = parser.parse_args(["leases", *argv, "-c", str(self.config)])
            code: int = await asyncio.to_thread(args.func, args)
        finally:
            self.out, self.err = self.capsys.readouterr()
        return code


@pytest.fixture
def cli(
    tmp_path: Path,
    store_url: str,
    store: CheckpointStore,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> Cli:
    config = tmp_path / "shardwise.yaml"
    config.write_text(
        textwrap.dedent(
            f"""
            store: {{url: "{store_url}"}}
            processors:
              - name: {PROCESSOR}
                source: {{dynamodb: {{stream_arn: "{ARN}"}}}}
                handler: m:h
                starting_position: TRIM_HORIZON
            """
        )
    )
    return Cli(config, monkeypatch, capsys)


async def owners(store: CheckpointStore) -> list[str | None]:
    return [(await row(store, shard_id)).owner for shard_id in (S0, S1, S2)]


class TestReleaseCommand:
    """``shardwise leases release``: preview, confirmation, summary, exit codes."""

    async def test_yes(self, cli: Cli, workers: Workers, store: CheckpointStore) -> None:
        await holding(workers, "a", 3)
        assert await cli("release", "--processor", PROCESSOR, "--shard", S0, S1, "--yes") == 0
        out = cli.out.splitlines()
        assert out[0] == "processor 'orders': 2 lease(s) to release"
        assert out[1] == "  SHARD    OWNER  COUNTER  HELD FOR"
        assert out[2].split()[:3] == ["shard-0", "a", "1"]
        assert out[-1] == "released 2 lease(s) of processor 'orders': shard-0, shard-1"
        assert await owners(store) == [None, None, "a"]

    async def test_answered_yes_on_a_terminal(
        self, cli: Cli, workers: Workers, store: CheckpointStore
    ) -> None:
        await holding(workers, "a", 3)
        argv = ("release", "--processor", PROCESSOR, "--worker", "a")
        assert await cli(*argv, stdin="y\n", tty=True) == 0
        assert "release 3 lease(s) of processor 'orders'? [y/N] " in cli.out
        assert cli.out.endswith(
            "released 3 lease(s) of processor 'orders': shard-0, shard-1, shard-2\n"
        )
        assert await owners(store) == [None, None, None]

    @pytest.mark.parametrize("answer", ["n\n", "\n", "maybe\n"])
    async def test_anything_but_yes_changes_nothing(
        self, answer: str, cli: Cli, workers: Workers, store: CheckpointStore
    ) -> None:
        await holding(workers, "a", 3)
        assert await cli("release", "--processor", PROCESSOR, "--all", stdin=answer, tty=True) == 1
        assert cli.out.endswith("nothing was changed\n")
        assert await owners(store) == ["a", "a", "a"]

    @pytest.mark.parametrize(("stdin", "tty"), [("y\n", None), ("", True)], ids=["pipe", "eof"])
    async def test_refused_when_nobody_can_answer(
        self, stdin: str, tty: bool | None, cli: Cli, workers: Workers, store: CheckpointStore
    ) -> None:
        """Not a terminal (StringIO says so), or a terminal at EOF: exit 2, nothing changed."""
        await holding(workers, "a", 3)
        assert await cli("release", "--processor", PROCESSOR, "--all", stdin=stdin, tty=tty) == 2
        assert "refusing to release 3 lease(s) of processor 'orders' unconfirmed" in cli.err
        assert "--yes" in cli.err
        assert await owners(store) == ["a", "a", "a"]

    async def test_nothing_matched(self, cli: Cli, workers: Workers) -> None:
        await holding(workers, "a", 3)
        assert await cli("release", "--processor", PROCESSOR, "--worker", "b", "--yes") == 1
        assert (
            cli.out == "nothing to release: no lease of processor 'orders' is taken (--worker b)\n"
        )
        assert await cli("release", "--processor", "orderz", "--all", "--yes") == 1
        assert cli.out == (
            "nothing to do: processor 'orderz' has no shards in the store (configured: orders)\n"
        )

    async def test_selection_is_required_and_exclusive(self, cli: Cli) -> None:
        for argv in (["--all", "--worker", "a"], []):
            with pytest.raises(SystemExit) as exit_info:
                await cli("release", "--processor", PROCESSOR, *argv)
            assert exit_info.value.code == 2


class TestResetCommand:
    """``shardwise leases reset``: old -> new, the unknown count, the shard named."""

    async def test_confirmed_on_a_terminal(
        self, cli: Cli, workers: Workers, store: CheckpointStore
    ) -> None:
        a = await holding(workers, "a", 3)
        lease: Lease = a.held()[S0]
        await a.checkpointer(lease).save(S0, SequenceNumber("100"))
        argv = ("reset", "--processor", PROCESSOR, "--shard", S0, "--sequence", "150")
        assert await cli(*argv, stdin="yes\n", tty=True) == 0
        out = cli.out.splitlines()
        assert out[:5] == [
            f"reset shard shard-0 of processor 'orders' (stream {ARN}):",
            "  checkpoint  100 -> 150",
            "  finished    no -> no",
            "  lease       held by a (counter 1) -> free (counter incremented)",
            "How many records of shard shard-0 this skips or delivers again is unknown: "
            "processing resumes after sequence number 150; records between the current "
            "checkpoint and it are skipped if it is later (they go to no on-failure "
            "destination), delivered again if it is earlier.",
        ]
        assert out[5].startswith("Worker a stops at its next renewal")
        assert out[-1] == (
            "reset the checkpoint of shard shard-0 of processor 'orders'? [y/N] "
            "reset shard shard-0 of processor 'orders': checkpoint 100 -> 150; "
            "lease freed at counter 2"
        )
        assert (await row(store, S0)).checkpoint.sequence_number == "150"
        with pytest.raises(LeaseLostError):
            await a.checkpointer(lease).save(S0, SequenceNumber("101"))

    @pytest.mark.parametrize(
        ("flag", "start", "consequence"),
        [
            ("--trim-horizon", StartingPosition.TRIM_HORIZON, "delivered again"),
            ("--latest", StartingPosition.LATEST, "is skipped"),
        ],
    )
    async def test_start_positions_with_yes(
        self,
        flag: str,
        start: StartingPosition,
        consequence: str,
        cli: Cli,
        store: CheckpointStore,
        tables: Tables,
    ) -> None:
        await finished(tables, S2, "900")
        assert await cli("reset", "--processor", PROCESSOR, "--shard", S2, flag, "--yes") == 0
        assert f"  checkpoint  900 -> ({start.value})" in cli.out
        assert "  finished    yes -> no" in cli.out
        assert "is unknown" in cli.out and consequence in cli.out
        assert "Shard shard-2 is finished: the reset reopens it" in cli.out
        after = await row(store, S2)
        assert after.checkpoint.position == Position(None, start)
        assert not after.checkpoint.finished

    async def test_refused_without_a_terminal(self, cli: Cli, store: CheckpointStore) -> None:
        argv = ("reset", "--processor", PROCESSOR, "--shard", S1, "--latest")
        assert await cli(*argv, stdin="y\n") == 2
        assert "refusing to reset the checkpoint of shard shard-1" in cli.err
        assert (await row(store, S1)).checkpoint.start_position is StartingPosition.TRIM_HORIZON

    async def test_no_such_shard_and_bad_sequence(self, cli: Cli) -> None:
        assert await cli("reset", "--processor", PROCESSOR, "--shard", "shard-9", "--latest") == 1
        assert cli.out == "nothing to reset: processor 'orders' has no shard 'shard-9'\n"
        with pytest.raises(SystemExit) as exit_info:
            await cli("reset", "--processor", PROCESSOR, "--shard", S0, "--sequence", "12a")
        assert exit_info.value.code == 2
        assert "not a sequence number" in cli.err
