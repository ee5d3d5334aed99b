"""The pure lease rules: balancing plans, lineage eligibility, collection and expiry."""

from __future__ import annotations

import random
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from shardwise.leases.balance import (
    Claim,
    CounterWatch,
    LeaseRow,
    Plan,
    claims,
    collectable,
    collected_ancestors,
    eligible,
    plan,
    target,
)
from shardwise.records import Shard, ShardId

WORKERS = [f"w{i}" for i in range(5)]


def sid(n: int) -> ShardId:
    return ShardId(f"shard-{n:03d}")


def owned(counts: dict[str | None, int]) -> list[Claim]:
    """Claims with ``counts[owner]`` shards per owner (None: free)."""
    result: list[Claim] = []
    for owner, count in counts.items():
        result.extend(Claim(sid(len(result)), owner) for _ in range(count))
    return result


def loads(all_claims: list[Claim]) -> Counter[str]:
    return Counter(claim.owner for claim in all_claims if claim.owner is not None)


def apply(me: str, all_claims: list[Claim], decided: Plan) -> list[Claim]:
    """The table after ``me`` carried out ``decided`` and every hand-off completed."""
    mine = set(decided.take) | {shard_id for shard_id, _ in decided.steal}
    return [Claim(c.shard_id, me) if c.shard_id in mine else c for c in all_claims]


@st.composite
def tables(draw: st.DrawFn) -> tuple[str, list[Claim], list[str], int | None]:
    workers = draw(st.lists(st.sampled_from(WORKERS), min_size=1, max_size=5, unique=True))
    owners = st.sampled_from([None, *workers])
    shards = draw(st.lists(st.tuples(owners, st.booleans()), max_size=40))
    drawn = [
        Claim(sid(n), owner, moving=moving and owner is not None)
        for n, (owner, moving) in enumerate(shards)
    ]
    max_leases = draw(st.none() | st.integers(min_value=1, max_value=15))
    return draw(st.sampled_from(workers)), drawn, workers, max_leases


class TestTarget:
    """target is ceil(active / workers)."""

    def test_values(self) -> None:
        assert [target(30, 3), target(30, 4), target(0, 3), target(1, 5), target(7, 0)] == [
            10,
            8,
            0,
            1,
            7,
        ]


class TestPlan:
    """One worker's round: take free leases first, then ask the most loaded for more."""

    def test_takes_its_share_of_free_leases(self) -> None:
        decided = plan("a", owned({None: 30}), ["a", "b", "c"])
        assert len(decided.take) == 10
        assert decided.steal == ()

    def test_new_worker_asks_for_leases_from_the_most_loaded(self) -> None:
        table = owned({"a": 12, "b": 10, "c": 8})
        decided = plan("d", table, ["a", "b", "c", "d"])
        assert decided.take == ()
        after = loads(apply("d", table, decided))
        assert sorted(after.values()) == [7, 7, 8, 8]
        assert Counter(owner for _, owner in decided.steal) == {"a": 4, "b": 2, "c": 1}

    def test_no_steal_within_one(self) -> None:
        table = owned({"a": 8, "b": 8, "c": 7, "d": 7})
        for me in "abcd":
            assert plan(me, table, ["a", "b", "c", "d"]) == Plan()

    def test_leases_moving_are_not_asked_for_again(self) -> None:
        table = [Claim(sid(n), "b", moving=True) for n in range(4)]
        assert plan("d", table, ["b", "d"]) == Plan()

    def test_max_leases_caps_takes_and_steals(self) -> None:
        assert len(plan("a", owned({None: 30}), ["a"], max_leases=4).take) == 4
        decided = plan("d", owned({"a": 30}), ["a", "d"], max_leases=3)
        assert len(decided.steal) == 3

    def test_owners_count_as_live_workers(self) -> None:
        decided = plan("a", owned({"b": 10, None: 10}), [])
        assert len(decided.take) == 10

    def test_rng_spreads_choices(self) -> None:
        table = owned({None: 40})
        first = plan("a", table, ["a", "b"], rng=random.Random(1)).take
        second = plan("a", table, ["a", "b"], rng=random.Random(2)).take
        assert len(first) == len(second) == 20
        assert first != second

    @given(tables())
    def test_properties(self, drawn: tuple[str, list[Claim], list[str], int | None]) -> None:
        me, table, workers, max_leases = drawn
        decided = plan(me, table, workers, max_leases=max_leases)
        before = loads(table)
        live = {me, *workers, *before}
        cap = target(len(table), len(live))
        if max_leases is not None:
            cap = min(cap, max_leases)
        by_id = {claim.shard_id: claim for claim in table}
        free = [claim.shard_id for claim in table if claim.owner is None]
        stolen = [shard_id for shard_id, _ in decided.steal]
        # Takes are free leases, steals are other workers' leases not already moving.
        assert set(decided.take) <= set(free)
        assert len(set(decided.take)) == len(decided.take)
        assert len(set(stolen)) == len(stolen)
        for shard_id, owner in decided.steal:
            claim = by_id[shard_id]
            assert claim.owner == owner != me
            assert not claim.moving
        # Never more than the target (or max_leases).
        gained = len(decided.take) + len(stolen)
        assert gained == 0 or before[me] + gained <= cap
        # Free leases first.
        if stolen:
            assert len(decided.take) == len(free)
        # Every steal closes an imbalance of more than one.
        mine = before[me] + len(decided.take)
        counts = Counter(before)
        for _, owner in decided.steal:
            assert counts[owner] - mine > 1
            counts[owner] -= 1
            mine += 1
        # Progress: below the target, a worker takes what is free or evens out.
        if before[me] < cap and free:
            assert decided.take
        stealable = Counter(c.owner for c in table if c.owner not in (None, me) and not c.moving)
        if before[me] < cap and not free and stealable:
            heaviest = max(counts_ for owner, counts_ in before.items() if owner in stealable)
            if heaviest - before[me] > 1:
                assert stolen

    @settings(max_examples=60)
    @given(
        st.integers(min_value=1, max_value=5),
        st.integers(min_value=0, max_value=60),
        st.randoms(use_true_random=False),
    )
    def test_workers_converge_within_one(
        self, workers: int, shards: int, rng: random.Random
    ) -> None:
        names = WORKERS[:workers]
        table = [Claim(sid(n), rng.choice([None, *names[:1]])) for n in range(shards)]
        for _ in range(3):
            for me in rng.sample(names, len(names)):
                table = apply(me, table, plan(me, table, names, rng=rng))
        counts = [loads(table)[name] for name in names]
        assert sum(counts) == shards
        assert max(counts) - min(counts) <= 1


class TestLineage:
    """Parents before children; finished parents are collected once their children started."""

    def test_eligible_needs_finished_or_missing_parents(self) -> None:
        rows = [
            LeaseRow(sid(1), finished=True),
            LeaseRow(sid(2), parent_shard_id=sid(1)),
            LeaseRow(sid(3)),
            LeaseRow(sid(4), parent_shard_id=sid(3)),
            LeaseRow(sid(5), parent_shard_id=sid(99)),
        ]
        assert eligible(rows) == {sid(2), sid(3), sid(5)}

    def test_collectable_once_every_child_started(self) -> None:
        rows = [
            LeaseRow(sid(1), finished=True),
            LeaseRow(sid(2), parent_shard_id=sid(1), started=True),
            LeaseRow(sid(3), parent_shard_id=sid(1)),
            LeaseRow(sid(4), finished=True, started=True),
            LeaseRow(sid(5), parent_shard_id=sid(4), started=True),
            LeaseRow(sid(6), finished=True),
        ]
        assert collectable(rows) == {sid(4)}

    def test_collected_ancestors_are_not_registered_again(self) -> None:
        listed = [
            Shard(sid(1)),
            Shard(sid(2), parent_shard_id=sid(1)),
            Shard(sid(3), parent_shard_id=sid(2)),
            Shard(sid(4)),
            Shard(sid(5), parent_shard_id=sid(4)),
        ]
        assert collected_ancestors(listed, {sid(3), sid(4)}) == {sid(1), sid(2)}
        assert collected_ancestors(listed, set()) == set()

    def test_a_merged_shard_waits_for_both_parents(self) -> None:
        """Kinesis MergeShards: the child starts once both parents are read to their end."""
        merged = LeaseRow(sid(3), parent_shard_id=sid(1), adjacent_parent_shard_id=sid(2))
        one_done = [LeaseRow(sid(1), finished=True), LeaseRow(sid(2)), merged]
        assert eligible(one_done) == {sid(2)}
        adjacent_done = [LeaseRow(sid(1)), LeaseRow(sid(2), finished=True), merged]
        assert eligible(adjacent_done) == {sid(1)}
        both_done = [LeaseRow(sid(1), finished=True), LeaseRow(sid(2), finished=True), merged]
        assert eligible(both_done) == {sid(3)}
        adjacent_gone = [LeaseRow(sid(1), finished=True), merged]
        assert eligible(adjacent_gone) == {sid(3)}

    def test_merge_parents_collected_once_the_child_started(self) -> None:
        parents = [LeaseRow(sid(1), finished=True), LeaseRow(sid(2), finished=True)]
        child = LeaseRow(sid(3), parent_shard_id=sid(1), adjacent_parent_shard_id=sid(2))
        assert collectable([*parents, child]) == set()
        started = LeaseRow(
            sid(3), parent_shard_id=sid(1), adjacent_parent_shard_id=sid(2), started=True
        )
        assert collectable([*parents, started]) == {sid(1), sid(2)}

    def test_collected_ancestors_through_a_merge(self) -> None:
        listed = [
            Shard(sid(1)),
            Shard(sid(2)),
            Shard(sid(3), parent_shard_id=sid(1), adjacent_parent_shard_id=sid(2)),
            Shard(sid(4), parent_shard_id=sid(3)),
        ]
        assert collected_ancestors(listed, {sid(4)}) == {sid(1), sid(2), sid(3)}
        assert collected_ancestors(listed, {sid(2), sid(3)}) == {sid(1)}
        assert listed[2].parents == (sid(1), sid(2))


class TestClaims:
    """The planner's view of the table."""

    def test_free_expired_and_own_leftovers(self) -> None:
        rows = [
            LeaseRow(sid(1)),
            LeaseRow(sid(2), owner="b"),
            LeaseRow(sid(3), owner="b"),
            LeaseRow(sid(4), owner="a"),
            LeaseRow(sid(5), owner="a"),
            LeaseRow(sid(6), owner="b", handoff_to="a"),
            LeaseRow(sid(7), finished=True),
            LeaseRow(sid(8)),
        ]
        ready = {sid(n) for n in range(1, 8)}
        found = claims(rows, me="a", held={sid(5)}, expired={sid(3)}, ready=ready)
        assert found == [
            Claim(sid(1)),
            Claim(sid(2), "b"),
            Claim(sid(3)),
            Claim(sid(4)),
            Claim(sid(5), "a"),
            Claim(sid(6), "a", moving=True),
        ]

    def test_released_leases_are_reserved_for_who_asked(self) -> None:
        rows = [
            LeaseRow(sid(1), handoff_to="a"),
            LeaseRow(sid(2), handoff_to="b"),
            LeaseRow(sid(3), handoff_to="b"),
        ]
        ready = {sid(1), sid(2), sid(3)}
        found = claims(rows, me="a", held=set(), expired={sid(3)}, ready=ready)
        assert found == [Claim(sid(1)), Claim(sid(2), "b", moving=True), Claim(sid(3))]
        found = claims(rows, me="b", held=set(), expired=set(), ready=ready)
        assert found == [Claim(sid(1), "a", moving=True), Claim(sid(2)), Claim(sid(3))]


class TestCounterWatch:
    """Expiry is a counter that stood still for the duration on the observer's clock."""

    def test_first_sight_starts_the_wait(self) -> None:
        watch = CounterWatch[str](10.0)
        assert watch.observe({"x": 5}, now=100.0) == set()
        assert watch.observe({"x": 5}, now=109.9) == set()
        assert watch.observe({"x": 5}, now=110.0) == {"x"}

    def test_a_change_restarts_the_wait(self) -> None:
        watch = CounterWatch[str](10.0)
        watch.observe({"x": 5}, now=100.0)
        assert watch.observe({"x": 6}, now=108.0) == set()
        assert watch.observe({"x": 6}, now=117.0) == set()
        assert watch.observe({"x": 6}, now=118.0) == {"x"}

    def test_keys_that_vanish_are_forgotten(self) -> None:
        watch = CounterWatch[str](10.0)
        watch.observe({"x": 5}, now=100.0)
        watch.observe({}, now=105.0)
        assert watch.observe({"x": 5}, now=111.0) == set()
