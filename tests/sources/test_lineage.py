"""Parents before children: a child is ready only when its parent is done or gone."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from shardwise.records import SequenceNumber, Shard, ShardId
from shardwise.sources.lineage import parent_first, ready_shards


def shard(shard_id: str, parent: str | None = None, closed: bool = False) -> Shard:
    return Shard(
        shard_id=ShardId(shard_id),
        parent_shard_id=ShardId(parent) if parent else None,
        ending_sequence_number=SequenceNumber("9") if closed else None,
    )


class TestReadyShards:
    """Readiness follows the lineage."""

    def test_child_waits_for_listed_parent(self) -> None:
        shards = [shard("child", "parent"), shard("parent", closed=True)]
        assert [s.shard_id for s in ready_shards(shards, finished=set())] == ["parent"]

    def test_child_starts_once_parent_finished(self) -> None:
        shards = [shard("parent", closed=True), shard("a", "parent"), shard("b", "parent")]
        ready = ready_shards(shards, finished={ShardId("parent")})
        assert [s.shard_id for s in ready] == ["a", "b"]

    def test_parent_absent_from_stream_counts_as_done(self) -> None:
        shards = [shard("child", "aged-out")]
        assert [s.shard_id for s in ready_shards(shards, finished=set())] == ["child"]

    def test_grandchild_waits_for_the_whole_chain(self) -> None:
        shards = [
            shard("g", "c"),
            shard("c", "p", closed=True),
            shard("p", closed=True),
        ]
        assert [s.shard_id for s in ready_shards(shards, set())] == ["p"]
        assert [s.shard_id for s in ready_shards(shards, {ShardId("p")})] == ["c"]
        assert [s.shard_id for s in ready_shards(shards, {ShardId("p"), ShardId("c")})] == ["g"]


@st.composite
def forests(draw: st.DrawFn) -> list[Shard]:
    count = draw(st.integers(1, 40))
    shards: list[Shard] = []
    for i in range(count):
        parent = draw(st.none() | st.integers(0, max(0, i - 1))) if i else None
        shards.append(shard(f"s{i:03d}", f"s{parent:03d}" if parent is not None else None))
    return draw(st.permutations(shards))


class TestParentFirst:
    """Any listing order comes out with parents first, nothing lost or repeated."""

    @given(forests())
    def test_parents_precede_children(self, shards: list[Shard]) -> None:
        ordered = parent_first(shards)
        assert sorted(s.shard_id for s in ordered) == sorted(s.shard_id for s in shards)
        position = {s.shard_id: i for i, s in enumerate(ordered)}
        for s in ordered:
            if s.parent_shard_id in position:
                assert position[s.parent_shard_id] < position[s.shard_id]
