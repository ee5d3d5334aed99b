"""The streams server in a process of its own, with a writer the benchmark steers over stdin.

``python -m bench.load_server --shards N [--records M]`` serves one stream like
``python -m shardwise.testing.streams_server`` and prints the same ``endpoint_url=`` and
``stream_arn=`` lines. Lines on stdin then write records, each new image carrying its
write time ``t`` (epoch seconds) so a handler can measure write-to-handler latency:

* ``rate R``: R records per second in all, round-robin over every shard (0 stops);
* ``hot I R``: R records per second to shard number I (0 stops);
* ``put I``: one record to shard number I, now;
* ``keep N``: hold about N records per shard at most, trimming the oldest as if they aged
  past the 24 h retention (0, the default, keeps every record: a long run at a high rate
  would otherwise grow this process by gigabytes).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from collections.abc import Sequence
from types import FrameType
from typing import Final

from shardwise.testing import ScriptedStream, StreamsServer

__all__ = ["main"]

_TICK_S: Final = 0.01


class _Writer:
    """Writes at the rates the commands set, from a thread of its own."""

    def __init__(self, stream: ScriptedStream, held: int) -> None:
        self._stream = stream
        self._shards = stream.shard_ids
        self._held = [held] * len(self._shards)  # records each shard holds
        self._keep = 0
        self._lock = threading.Lock()
        self._rates: dict[int | None, float] = {}  # shard number (None: all) -> records/s
        self._owed: dict[int | None, float] = {}
        self._next_key = 1_000_000_000
        self._round_robin = 0

    def command(self, line: str) -> None:
        words = line.split()
        with self._lock:
            if words[0] == "rate":
                self._rates[None] = float(words[1])
            elif words[0] == "hot":
                self._rates[int(words[1])] = float(words[2])
            elif words[0] == "put":
                self._put(int(words[1]))
            elif words[0] == "keep":
                self._keep = int(words[1])
            else:
                raise ValueError(f"unknown command {line!r}")

    def _put(self, shard: int) -> None:
        self._next_key += 1
        keys = {"Id": {"N": str(self._next_key)}}
        image = dict(keys, t={"N": repr(time.time())})
        self._stream.put(self._shards[shard], "INSERT", keys=keys, new_image=image)
        self._held[shard] += 1

    def _trim(self) -> None:
        """Down to ``keep`` records a shard, a tenth at a time (each trim moves the rest)."""
        for shard, held in enumerate(self._held):
            if self._keep and held > self._keep + self._keep // 10:
                self._stream.trim(self._shards[shard], held - self._keep)
                self._held[shard] = self._keep

    def run(self) -> None:
        last = time.monotonic()
        while True:
            time.sleep(_TICK_S)
            now = time.monotonic()
            elapsed, last = now - last, now
            with self._lock:
                for target, rate in self._rates.items():
                    owed = self._owed.get(target, 0.0) + rate * elapsed
                    while owed >= 1.0:
                        owed -= 1.0
                        if target is None:
                            self._round_robin = (self._round_robin + 1) % len(self._shards)
                            self._put(self._round_robin)
                        else:
                            self._put(target)
                    self._owed[target] = owed if rate else 0.0
                self._trim()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.load_server")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--shards", type=int, default=1)
    parser.add_argument("--records", type=int, default=0, help="INSERT records per shard")
    parser.add_argument("--payload-bytes", type=int, default=0)
    return parser


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    server = StreamsServer(port=args.port)
    stream = server.create_stream("Bench", shards=args.shards)
    for shard_id in stream.shard_ids:
        stream.put_many(shard_id, args.records, payload_bytes=args.payload_bytes)
    writer = _Writer(stream, args.records)
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        with server:
            print(f"endpoint_url={server.endpoint_url}", flush=True)
            print(f"stream_arn={stream.arn}", flush=True)
            threading.Thread(target=writer.run, name="bench-writer", daemon=True).start()
            for line in sys.stdin:
                if line.strip():
                    writer.command(line)
            threading.Event().wait()  # stdin closed: keep serving until terminated
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
