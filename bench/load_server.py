"""The streams server in a process of its own, with a writer the benchmark steers over stdin.

``python -m bench.load_server --shards N [--records M]`` serves one stream like
``python -m shardwise.testing.streams_server`` and prints the same ``endpoint_url=`` and
``stream_arn=`` lines; with ``--kinesis`` the stream is a Kinesis data stream, with the
service's rate limits (GetRecords 5 calls/s per shard) unless ``--no-limits``. Lines on
stdin then write records, each carrying its write time ``t`` (epoch seconds; in the new
image, or in a Kinesis record's JSON data) so a handler can measure write-to-handler
latency:

* ``rate R``: R records per second in all, round-robin over every shard (0 stops);
* ``hot I R``: R records per second to shard number I (0 stops);
* ``put I``: one record to shard number I, now;
* ``keep N``: hold about N records per shard at most, trimming the oldest as if they aged
  past the 24 h retention (0, the default, keeps every record: a long run at a high rate
  would otherwise grow this process by gigabytes; DynamoDB streams only);
* ``calls``: print one line ``calls={"operations": {...}, "get_records": {...}}``, the
  requests the server answered per operation and (Kinesis) its GetRecords calls per
  shard, throttled ones included, counted since it started.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from collections.abc import Sequence
from types import FrameType
from typing import Final

from shardwise.testing import ScriptedKinesisStream, ScriptedStream, StreamsServer

__all__ = ["main"]

_TICK_S: Final = 0.01


class _Writer:
    """Writes at the rates the commands set, from a thread of its own."""

    def __init__(
        self,
        server: StreamsServer,
        stream: ScriptedStream | ScriptedKinesisStream,
        held: int,
    ) -> None:
        self._server = server
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
                if not isinstance(self._stream, ScriptedStream):
                    raise ValueError("keep: DynamoDB streams only")
                self._keep = int(words[1])
            elif words[0] == "calls":
                print(f"calls={json.dumps(self._calls())}", flush=True)
            else:
                raise ValueError(f"unknown command {line!r}")

    def _calls(self) -> dict[str, dict[str, int]]:
        """The counts, copied while the server's threads keep counting: a copy that met a
        key added meanwhile is taken again."""
        while True:
            try:
                if isinstance(self._stream, ScriptedKinesisStream):
                    operations, per_shard = self._stream.calls, self._stream.get_records_calls
                    return {"operations": dict(operations), "get_records": dict(per_shard)}
                return {"operations": dict(self._server.calls), "get_records": {}}
            except RuntimeError:  # dictionary changed size during iteration
                continue

    def _put(self, shard: int) -> None:
        self._next_key += 1
        if isinstance(self._stream, ScriptedKinesisStream):
            data = json.dumps({"Id": self._next_key, "t": time.time()}).encode()
            self._stream.put(data, shard_id=self._shards[shard], partition_key=str(self._next_key))
        else:
            keys = {"Id": {"N": str(self._next_key)}}
            image = dict(keys, t={"N": repr(time.time())})
            self._stream.put(self._shards[shard], "INSERT", keys=keys, new_image=image)
        self._held[shard] += 1

    def _trim(self) -> None:
        """Down to ``keep`` records a shard, a tenth at a time (each trim moves the rest)."""
        if not isinstance(self._stream, ScriptedStream):
            return
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
    parser.add_argument("--kinesis", action="store_true", help="a Kinesis data stream")
    parser.add_argument(
        "--no-limits", action="store_true", help="Kinesis without the service's rate limits"
    )
    return parser


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    server = StreamsServer(port=args.port)
    stream: ScriptedStream | ScriptedKinesisStream
    if args.kinesis:
        stream = server.create_kinesis_stream(
            "Bench", shards=args.shards, limits=not args.no_limits
        )
    else:
        stream = server.create_stream("Bench", shards=args.shards)
    for shard_id in stream.shard_ids:
        stream.put_many(shard_id, args.records, payload_bytes=args.payload_bytes)
    writer = _Writer(server, stream, args.records)
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
