"""ParallelizationFactor: lanes by key, and a watermark that never passes an unfinished record."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from shardwise.dispatch.lanes import Watermark, lane_of


class TestWatermark:
    """The checkpoint is the highest sequence number below which everything is resolved."""

    @given(st.data(), st.integers(1, 60))
    def test_never_passes_an_unresolved_record(self, data: st.DataObject, count: int) -> None:
        seqs = [str(1000 + i) for i in range(count)]
        watermark = Watermark()
        watermark.read(seqs)
        order = data.draw(st.permutations(seqs))
        resolved: set[str] = set()
        for seq in order:
            resolved.add(seq)
            watermark.resolve([seq])
            prefix = 0
            while prefix < count and seqs[prefix] in resolved:
                prefix += 1
            expected = seqs[prefix - 1] if prefix else None
            assert watermark.mark == expected
        assert watermark.mark == seqs[-1]
        assert watermark.outstanding == 0


class TestLaneOf:
    """One item always maps to one lane; items spread over the lanes."""

    @given(st.text(min_size=1, max_size=20), st.integers(1, 10))
    def test_stable_per_key(self, key: str, lanes: int) -> None:
        record = {"dynamodb": {"Keys": {"pk": {"S": key}, "sk": {"N": "1"}}}}
        same = {"dynamodb": {"Keys": {"sk": {"N": "1"}, "pk": {"S": key}}}}
        assert lane_of(record, lanes) == lane_of(same, lanes)
        assert 0 <= lane_of(record, lanes) < lanes

    def test_spread(self) -> None:
        counts = [0] * 4
        for i in range(400):
            counts[lane_of({"dynamodb": {"Keys": {"id": {"S": f"item-{i}"}}}}, 4)] += 1
        assert min(counts) > 50
