"""Case 7, decoded pages alive: what one page costs to decode and free, by how many stay alive.

Why the throughput case's raw default sits further below the ceiling at 4 and 64 shards
than at 1: the ceiling (b) decodes a page, counts its records and drops it before the next
one, so one decoded page (~1 MB of small objects) is alive at a time and the allocator hands
the same warm memory back. A shard consumer holds the batch being delivered and
checkpointed *and* the page read ahead; 4 shards hold about 8 pages, and then every page is
decoded into memory the caches no longer hold.

One real GetRecords page (1000 records, the throughput case's shape) is fetched from the
streams server once; ``orjson.loads`` then decodes it over and over while the last ``k``
results stay alive (a ring of ``k``), the collector off as in the ceiling. The figure is
the time per page (decode plus freeing the page that leaves the ring), compared with
``k = 1``, the ceiling's way of reading. Timings of this process alone, best of 3.
"""

from __future__ import annotations

import collections
import gc
import http.client
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

import orjson

from bench.harness import streams_process
from bench.report import Baseline, CaseResult, Figure

if TYPE_CHECKING:
    from bench.plans import PagesPlan

__all__ = ["run"]

_HEADERS: Final = {"Content-Type": "application/x-amz-json-1.0"}
_TARGET: Final = "DynamoDBStreams_20120810."


def _page(endpoint_url: str, stream_arn: str) -> bytes:
    """The body of the first GetRecords page of the stream's first shard."""
    address = urlsplit(endpoint_url)
    connection = http.client.HTTPConnection(address.hostname or "127.0.0.1", address.port)

    def call(operation: str, request: dict[str, Any]) -> bytes:
        headers = {**_HEADERS, "X-Amz-Target": _TARGET + operation}
        connection.request("POST", "/", orjson.dumps(request), headers)
        response = connection.getresponse()
        body = response.read()
        if response.status != 200:
            raise RuntimeError(f"{operation}: HTTP {response.status}: {body[:200]!r}")
        return body

    try:
        stream = orjson.loads(call("DescribeStream", {"StreamArn": stream_arn}))
        shard_id = stream["StreamDescription"]["Shards"][0]["ShardId"]
        request = {
            "StreamArn": stream_arn,
            "ShardId": shard_id,
            "ShardIteratorType": "TRIM_HORIZON",
        }
        iterator = orjson.loads(call("GetShardIterator", request))["ShardIterator"]
        return call("GetRecords", {"ShardIterator": iterator, "Limit": 1000})
    finally:
        connection.close()


def _ms_per_page(body: bytes, alive: int, pages: int) -> float:
    ring: collections.deque[Any] = collections.deque(maxlen=alive)
    for _ in range(alive):  # fill the ring first: every timed page also frees one
        ring.append(orjson.loads(body))
    started = time.perf_counter()
    for _ in range(pages):
        ring.append(orjson.loads(body))
    elapsed = time.perf_counter() - started
    ring.clear()
    return elapsed / pages * 1000


async def run(plan: PagesPlan, workdir: Path) -> CaseResult:
    result = CaseResult("pages", "decode and free one 1000-record page, by pages kept alive")
    args = ["--shards", "1", "--records", "1000", "--payload-bytes", str(plan.payload_bytes)]
    with streams_process(*args) as server:
        body = _page(server.endpoint_url, server.stream_arn)
    records = len(orjson.loads(body)["Records"])
    gc.collect()
    gc.disable()
    try:
        timings = {
            alive: min(_ms_per_page(body, alive, plan.pages) for _ in range(3))
            for alive in plan.alive
        }
    finally:
        gc.enable()
    first = plan.alive[0]
    for alive, ms in timings.items():
        baseline = (
            None if alive == first else Baseline(f"{first} alive (the ceiling)", timings[first])
        )
        what = "page" if alive == 1 else "pages"
        result.add(Figure(f"{alive} decoded {what} alive", ms, "ms/page", baseline))
    result.notes.append(
        f"one page of {records} records, {len(body):,} bytes, decoded {plan.pages} times per"
        " figure (best of 3), the collector off; 4 shards of the raw default hold about 8"
    )
    return result
