"""A scriptable DynamoDB Streams and Kinesis server, and the command that runs one on its own.

In tests, use ``StreamsServer`` (also exported by ``shardwise.testing``). Benchmarks run it
as a separate process::

    python -m shardwise.testing.streams_server --port 0 --shards 4 --records 100000
    python -m shardwise.testing.streams_server --kinesis --shards 4 --records 100000

which print ``endpoint_url=...`` and ``stream_arn=...`` lines (with ``--kinesis`` also
``stream_name=...``), then serve until Ctrl-C or SIGTERM. The implementation lives in
private modules so that running this one with ``-m`` does not import it twice:
``_shard_log`` (one shard's records and positions, and the shard look-ups of both kinds
of stream), ``_faults`` (the injected faults both protocols queue), ``_streams_state``
(streams and the scripting handle), ``_streams_protocol`` (the JSON protocol), their
Kinesis counterparts ``_kinesis_shard``, ``_kinesis_gate`` (counts, faults, rate limits),
``_kinesis_state``, ``_kinesis_requests`` and ``_kinesis_protocol``, and ``_streams_http``
(HTTP and ``StreamsServer``, which routes between the two protocols).
"""

from __future__ import annotations

import argparse
import signal
import threading
from collections.abc import Sequence
from types import FrameType

from shardwise.testing._kinesis_state import ScriptedKinesisStream
from shardwise.testing._streams_http import StreamsServer
from shardwise.testing._streams_state import VIEW_TYPES, ScriptedStream

__all__ = ["ScriptedKinesisStream", "ScriptedStream", "StreamsServer", "main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m shardwise.testing.streams_server",
        description=(
            "Serve one scripted DynamoDB Streams stream (or, with --kinesis, one Kinesis "
            "data stream) over HTTP until interrupted."
        ),
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--kinesis", action="store_true", help="serve a Kinesis data stream")
    parser.add_argument("--table", default="Bench")
    parser.add_argument("--stream-name", default="Bench", help="the Kinesis stream's name")
    parser.add_argument(
        "--no-limits",
        action="store_true",
        help="lift Kinesis' rate limits (GetRecords 5/s per shard, ListShards 100/s)",
    )
    parser.add_argument("--region", default="us-east-1")
    parser.add_argument("--view-type", choices=VIEW_TYPES, default="NEW_AND_OLD_IMAGES")
    parser.add_argument("--shards", type=int, default=1, help="open shards in the stream")
    parser.add_argument("--records", type=int, default=0, help="INSERT records per shard")
    parser.add_argument("--payload-bytes", type=int, default=0, help="padding per record")
    parser.add_argument(
        "--iterator-ttl-seconds",
        type=float,
        default=None,
        help="default: 900 (DynamoDB Streams) or 300 (Kinesis), as on AWS",
    )
    return parser


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _kinesis_stream(server: StreamsServer, args: argparse.Namespace) -> ScriptedKinesisStream:
    stream = server.create_kinesis_stream(
        args.stream_name,
        shards=args.shards,
        region=args.region,
        limits=not args.no_limits,
        iterator_ttl_seconds=300.0
        if args.iterator_ttl_seconds is None
        else args.iterator_ttl_seconds,
    )
    for shard_id in stream.shard_ids:
        stream.put_many(shard_id, args.records, payload_bytes=args.payload_bytes)
    return stream


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    server = StreamsServer(
        host=args.host,
        port=args.port,
        iterator_ttl_seconds=900.0
        if args.iterator_ttl_seconds is None
        else args.iterator_ttl_seconds,
    )
    lines: list[str] = []
    if args.kinesis:
        kinesis = _kinesis_stream(server, args)
        lines += [f"stream_arn={kinesis.arn}", f"stream_name={kinesis.name}"]
    else:
        stream = server.create_stream(
            args.table, view_type=args.view_type, region=args.region, shards=args.shards
        )
        for shard_id in stream.shard_ids:
            stream.put_many(shard_id, args.records, payload_bytes=args.payload_bytes)
        lines.append(f"stream_arn={stream.arn}")
    # Both signals stop it, even where the parent started it with SIGINT ignored.
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        with server:
            print(f"endpoint_url={server.endpoint_url}", flush=True)
            for line in lines:
                print(line, flush=True)
            threading.Event().wait()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
