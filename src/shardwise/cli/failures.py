"""``shardwise failures list|show|replay``: what the on-failure destination kept, and again.

Failed batches are read back (``destinations/archive.py``) from the processor's destination
when it keeps the records: ``sql`` (ids are row ids; replays are recorded in ``replayed_at``),
``file:///`` (ids are line numbers) and S3 (ids are object keys). SQS and SNS hold Lambda's
metadata-only record, so there is nothing to list or replay: the commands say so and exit 2.

``replay`` imports the processor's handler as ``shardwise run`` does and invokes it once per
stored batch, oldest first, with exactly the records that failed. It stops at the first
batch the handler fails again (exit 1) and leaves that one unmarked; batches replayed before
it stay replayed. ``--print`` prints each batch's event instead (JSON lines).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime

from shardwise.aws import aws_session, credential_environment
from shardwise.cli.exit_codes import EXIT_FAILURE, EXIT_INVALID, EXIT_OK
from shardwise.cli.table import format_table
from shardwise.config import ProcessorConfig, Settings, add_config_argument, load_config
from shardwise.destinations.archive import Archive, FailureSummary, StoredFailure, open_archive
from shardwise.destinations.factory import target_kind
from shardwise.dispatch.response import interpret_response
from shardwise.errors import ConfigError
from shardwise.functions import Function, open_processor, prepare
from shardwise.processors import Processor
from shardwise.records import Batch, ShardId

__all__ = ["add_failures_commands"]

_METADATA_ONLY = (
    "processor {name!r} sends failed batches to {target}. Like Lambda, an {kind} destination "
    "receives the invocation record only (shard, sequence range, reason), not the records, "
    "so there is nothing here to list or replay: read the records from the stream by their "
    "sequence range while they are within its 24-hour retention. To keep the records, use "
    "an S3 bucket, sql or file:///path.jsonl destination."
)


def _setup(args: argparse.Namespace) -> tuple[Settings, ProcessorConfig, str] | int:
    """The settings, the processor and its destination, or an exit code after saying why."""
    settings = load_config(args.config)
    by_name = {p.name: p for p in settings.processors}
    config = by_name.get(args.processor)
    if config is None:
        names = ", ".join(by_name)
        problem = f"--processor: no processor named {args.processor!r} (configured: {names})"
        raise ConfigError([problem], source=str(args.config))
    if config.destination_config is None:
        print(f"error: processor {config.name!r} has no on-failure destination", file=sys.stderr)
        return EXIT_INVALID
    target = config.destination_config.on_failure.destination
    kind = target_kind(target)
    if kind in {"sqs", "sns"}:
        message = _METADATA_ONLY.format(name=config.name, target=target, kind=kind.upper())
        print(message, file=sys.stderr)
        return EXIT_INVALID
    return settings, config, target


def _utc(moment: datetime, timespec: str) -> str:
    return moment.astimezone(UTC).isoformat(timespec=timespec).replace("+00:00", "Z")


def _row(failure: FailureSummary, tracks_replays: bool) -> list[str]:
    replayed = "no" if tracks_replays else "-"
    if failure.replayed_at is not None:
        replayed = _utc(failure.replayed_at, "seconds")
    sequences = "-"
    if failure.start_sequence_number is not None or failure.end_sequence_number is not None:
        sequences = f"{failure.start_sequence_number}..{failure.end_sequence_number}"
    return [
        failure.id,
        _utc(failure.failed_at, failure.failed_at_timespec),
        failure.condition or "-",
        failure.shard_id or "-",
        sequences,
        failure.batch_size or "-",
        replayed,
    ]


async def _list(settings: Settings, target: str, processor: str) -> list[list[str]]:
    async with open_archive(settings, target, processor) as archive:
        return [_row(f, archive.tracks_replays) for f in await archive.summaries()]


async def _show(settings: Settings, target: str, processor: str, id: str) -> str | None:
    async with open_archive(settings, target, processor) as archive:
        found = await archive.load([id])
    return json.dumps(found[0].record, indent=2) if found else None


def _cmd_list(args: argparse.Namespace) -> int:
    setup = _setup(args)
    if isinstance(setup, int):
        return setup
    settings, config, target = setup
    rows = asyncio.run(_list(settings, target, config.name))
    if not rows:
        print(f"no failed batches of processor {config.name!r} in {target}")
        return EXIT_OK
    header = ["ID", "FAILED AT", "CONDITION", "SHARD", "SEQUENCES", "SIZE", "REPLAYED"]
    print(format_table(header, rows))
    return EXIT_OK


def _cmd_show(args: argparse.Namespace) -> int:
    setup = _setup(args)
    if isinstance(setup, int):
        return setup
    settings, config, target = setup
    shown = asyncio.run(_show(settings, target, config.name, args.id))
    if shown is None:
        print(f"error: processor {config.name!r} has no failed batch {args.id}", file=sys.stderr)
        return EXIT_FAILURE
    print(shown)
    return EXIT_OK


def _cmd_replay(args: argparse.Namespace) -> int:
    if bool(args.ids) == args.all:
        print("error: give the ids of the batches to replay, or --all", file=sys.stderr)
        return EXIT_INVALID
    setup = _setup(args)
    if isinstance(setup, int):
        return setup
    settings, config, target = setup
    function = None
    if not args.print:  # fail fast, before reading the destination
        function = prepare(config, settings.config_dir)
    ids = None if args.all else list(dict.fromkeys(args.ids))
    return asyncio.run(_replay(settings, config, target, ids, function))


async def _replay(
    settings: Settings,
    config: ProcessorConfig,
    target: str,
    ids: Sequence[str] | None,
    function: Function | None,
) -> int:
    async with open_archive(settings, target, config.name) as archive:
        failures = await archive.load(ids)
        if missing := [i for i in ids or () if i not in {f.id for f in failures}]:
            where = f"processor {config.name!r} has no failed batch"
            print(f"error: {where} {', '.join(missing)}", file=sys.stderr)
            return EXIT_FAILURE
        if ids is None:  # --all: batches replayed already are not delivered again
            failures = [f for f in failures if f.replayed_at is None]
        if empty := [f.id for f in failures if not f.records]:
            print(f"error: {', '.join(empty)}: stored without records", file=sys.stderr)
            return EXIT_FAILURE
        if function is None:
            for failure in failures:
                print(json.dumps({"Records": failure.records}))
            return EXIT_OK
        return await _invoke_each(settings, config, function, archive, failures)


async def _invoke_each(
    settings: Settings,
    config: ProcessorConfig,
    function: Function,
    archive: Archive,
    failures: list[StoredFailure],
) -> int:
    """Invoke the handler once per batch, in order; stop at the first it fails."""
    if not failures:
        print(f"nothing to replay for processor {config.name!r}")
        return EXIT_OK
    stream_arn = str(failures[0].info.get("streamArn", ""))
    processor = open_processor(
        config,
        function,
        stream_arn=stream_arn,
        region=settings.aws.region,
        credentials=functools.partial(credential_environment, aws_session(settings.aws)),
    )
    try:
        await processor.start()
        for failure in failures:
            info = failure.info
            batch = Batch(
                str(info.get("streamArn")), ShardId(str(info.get("shardId"))), failure.records
            )
            problem = await _invoke(config, processor, batch)
            if problem is not None:
                print(f"error: replaying {failure.id} failed: {problem}", file=sys.stderr)
                return EXIT_FAILURE
            await archive.mark_replayed(failure)
            note = "marked replayed" if archive.tracks_replays else "replays are not recorded"
            print(f"{failure.id}: replayed {len(batch)} record(s) of {batch.shard_id} ({note})")
    finally:
        await processor.stop()
    return EXIT_OK


async def _invoke(config: ProcessorConfig, processor: Processor, batch: Batch) -> str | None:
    """None when the handler succeeded on ``batch``, else why not."""
    try:
        value = await processor.invoke(batch)
    except Exception as exc:  # noqa: BLE001 - a handler may raise anything; it is reported
        return f"{type(exc).__name__}: {exc}"
    if not config.reports_batch_item_failures:
        return None  # as in Lambda, the return value is ignored
    verdict = interpret_response(value, batch.records)
    if verdict.ok:
        return None
    return verdict.problem or "the handler reported batchItemFailures"


def _common(parser: argparse.ArgumentParser) -> None:
    add_config_argument(parser)
    parser.add_argument("--processor", required=True, help="the processor whose failures to use")


def add_failures_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``failures list|show|replay``; each sets ``func(args) -> exit code``."""
    failures = subparsers.add_parser(
        "failures", help="list, show and replay batches kept by the on-failure destination"
    )
    commands = failures.add_subparsers(
        dest="failures_command", required=True, metavar="FAILURES_COMMAND"
    )
    listing = commands.add_parser("list", help="the stored failed batches, oldest first")
    _common(listing)
    listing.set_defaults(func=_cmd_list)
    show = commands.add_parser("show", help="one stored invocation record, as JSON")
    _common(show)
    show.add_argument("id", help="row id (sql), line number (file) or object key (s3)")
    show.set_defaults(func=_cmd_show)
    replay = commands.add_parser("replay", help="deliver stored batches to the handler again")
    _common(replay)
    replay.add_argument("ids", nargs="*", metavar="ID", help="the batches to replay")
    replay.add_argument(
        "--all", action="store_true", help="every stored batch not replayed yet (sql tracks it)"
    )
    replay.add_argument(
        "--print", action="store_true", help="print each batch's event instead of invoking"
    )
    replay.set_defaults(func=_cmd_replay)
