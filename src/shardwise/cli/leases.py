"""``shardwise leases release|reset``: free stuck leases, move a shard's checkpoint by hand.

``release`` frees leases (``--shard ID ...``, ``--worker W`` or ``--all`` of a processor):
owner and hand-off cleared, counter incremented, so a live owner stops at its next renewal
and writes no checkpoint again, and any worker may take the shards at once. For a worker
that is gone but whose leases have not expired, or to force a rebalance.

``reset`` moves one shard's checkpoint (``--sequence SEQ``, ``--trim-horizon``,
``--latest``) and frees its lease in the same statement: to skip a poison record by hand or
to read a shard again. It replaces only the checkpoint it showed; if that moved meanwhile,
nothing changes.

Both print what they will change and ask ``[y/N]`` on stdin; ``--yes`` skips the question.
Nobody to ask (stdin not a terminal, or closed) and no ``--yes``: refused, exit 2. Exit 1
when nothing matched, the answer was no, or the rows changed meanwhile; 0 once changed.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import re
import sys
from collections.abc import Awaitable, Callable, Collection, Sequence
from datetime import UTC, datetime
from typing import TypeAlias, TypeVar

from shardwise.cli.exit_codes import EXIT_FAILURE, EXIT_INVALID, EXIT_OK
from shardwise.cli.table import format_age, format_table
from shardwise.config import Settings, add_config_argument, load_config
from shardwise.leases.admin import LeaseAdmin, Released, ShardLease
from shardwise.records import Position, SequenceNumber, StartingPosition
from shardwise.store import CheckpointStore

__all__ = ["Confirm", "NoTerminalError", "add_leases_commands", "ask"]

# Shards named in the one-line summary of a release; the preview table lists them all.
SUMMARY_SHARDS = 10

# Asks the operator a yes/no question; raises NoTerminalError when nobody can answer.
Confirm: TypeAlias = Callable[[str], bool]

T = TypeVar("T")

_SEQUENCE = re.compile(r"[0-9]{1,128}")


class NoTerminalError(Exception):
    """Nobody can answer a question: stdin is not a terminal, or it is closed."""


def ask(question: str, *, tty: bool | None = None) -> bool:
    """Ask ``question`` on stdin; True for ``y`` or ``yes``. ``tty`` stands in for
    ``sys.stdin.isatty()`` (tests); EOF counts as a closed stdin."""
    stdin = sys.stdin
    if stdin is None or stdin.closed or not (stdin.isatty() if tty is None else tty):
        raise NoTerminalError
    try:
        answer = input(question)
    except EOFError:
        print()  # end the question's line
        raise NoTerminalError from None
    return answer.strip().lower() in {"y", "yes"}


def add_leases_commands(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser], *, confirm: Confirm = ask
) -> None:
    """Register ``leases release|reset``; each sets ``func(args) -> exit code``."""
    leases = subparsers.add_parser("leases", help="free stuck leases, move a checkpoint by hand")
    commands = leases.add_subparsers(dest="leases_command", required=True, metavar="LEASES_COMMAND")
    release = commands.add_parser("release", help="free leases: their owners stop, anyone takes")
    _common(release)
    which = release.add_mutually_exclusive_group(required=True)
    which.add_argument("--shard", nargs="+", metavar="ID", help="these shards' leases")
    which.add_argument("--worker", metavar="W", help="every lease worker W holds")
    which.add_argument("--all", action="store_true", help="every lease of the processor")
    release.set_defaults(func=functools.partial(_cmd_release, confirm=confirm))
    reset = commands.add_parser("reset", help="move a shard's checkpoint and free its lease")
    _common(reset)
    reset.add_argument("--shard", required=True, metavar="ID", help="the shard to reset")
    to = reset.add_mutually_exclusive_group(required=True)
    to.add_argument("--trim-horizon", action="store_true", help="read again from the oldest")
    to.add_argument("--latest", action="store_true", help="skip to the newest records")
    to.add_argument("--sequence", type=_sequence_number, metavar="SEQ", help="resume after SEQ")
    reset.set_defaults(func=functools.partial(_cmd_reset, confirm=confirm))


def _common(parser: argparse.ArgumentParser) -> None:
    add_config_argument(parser)
    parser.add_argument("--processor", required=True, help="the processor whose leases to change")
    parser.add_argument("--yes", action="store_true", help="do not ask for confirmation")


def _sequence_number(text: str) -> SequenceNumber:
    if not _SEQUENCE.fullmatch(text):
        raise argparse.ArgumentTypeError(f"not a sequence number (decimal digits): {text!r}")
    return SequenceNumber(text)


# -- release ---------------------------------------------------------------------------------


def _cmd_release(args: argparse.Namespace, *, confirm: Confirm) -> int:
    settings, name = load_config(args.config), args.processor
    if isinstance(rows := _rows(settings, name), int):
        return rows
    taken = [row for row in rows if row.taken]
    if args.shard:
        selected = [row for row in taken if row.checkpoint.shard_id in set(args.shard)]
        what = f"--shard {' '.join(args.shard)}"
    elif args.worker:
        selected = [row for row in taken if row.owner == args.worker]
        what = f"--worker {args.worker}"
    else:
        selected, what = taken, "--all"
    if not selected:
        print(f"nothing to release: no lease of processor {name!r} is taken ({what})")
        return EXIT_FAILURE
    print(_release_preview(name, selected, args.shard or ()))
    action = f"release {len(selected)} lease(s) of processor {name!r}"
    if (refused := _confirmed(args.yes, confirm, action)) is not None:
        return refused
    shown = {row.checkpoint.shard_id for row in selected}
    released = asyncio.run(
        _with_admin(settings, lambda admin: admin.release(name, shards=shown, worker=args.worker))
    )
    print(_release_summary(name, released, shown))
    return EXIT_OK if released else EXIT_FAILURE


def _release_preview(processor: str, rows: Sequence[ShardLease], asked: Collection[str]) -> str:
    now = datetime.now(UTC)
    cells = [
        (
            row.checkpoint.shard_id,
            row.owner or f"- (reserved for {row.handoff_to})",
            str(row.counter),
            "-" if row.owner_since is None else format_age(now - row.owner_since),
        )
        for row in rows
    ]
    table = format_table(("SHARD", "OWNER", "COUNTER", "HELD FOR"), cells)
    lines = [f"processor {processor!r}: {len(rows)} lease(s) to release"]
    lines += ["  " + line for line in table.splitlines()]
    if left := sorted(set(asked) - {row.checkpoint.shard_id for row in rows}):
        lines.append(f"left alone (free, finished or not found): {', '.join(left)}")
    lines.append(
        "Each owner stops at its next renewal and writes no checkpoint for these shards "
        "again; any worker may take them at once. A batch in flight may be delivered again."
    )
    return "\n".join(lines)


def _release_summary(processor: str, released: Sequence[Released], shown: Collection[str]) -> str:
    names = ", ".join(lease.shard_id for lease in released[:SUMMARY_SHARDS]) or "none"
    if len(released) > SUMMARY_SHARDS:
        names += f" and {len(released) - SUMMARY_SHARDS} more"
    text = f"released {len(released)} lease(s) of processor {processor!r}: {names}"
    if changed := sorted(set(shown) - {lease.shard_id for lease in released}):
        text += f"; changed meanwhile, left alone: {', '.join(changed)}"
    return text


# -- reset -----------------------------------------------------------------------------------


def _cmd_reset(args: argparse.Namespace, *, confirm: Confirm) -> int:
    settings, name, shard = load_config(args.config), args.processor, args.shard
    if isinstance(rows := _rows(settings, name), int):
        return rows
    rows = [row for row in rows if row.checkpoint.shard_id == shard]
    if len(rows) != 1:
        where = "no" if not rows else f"{len(rows)} streams with a"
        print(f"nothing to reset: processor {name!r} has {where} shard {shard!r}")
        return EXIT_FAILURE
    seen, to = rows[0], _target(args, rows[0])
    print(_reset_preview(seen, to))
    action = f"reset the checkpoint of shard {shard} of processor {name!r}"
    if (refused := _confirmed(args.yes, confirm, action)) is not None:
        return refused
    released = asyncio.run(_with_admin(settings, lambda admin: admin.reset(seen, to)))
    if released is None:
        print(
            f"error: the checkpoint of shard {shard} changed since it was read; nothing was "
            "reset. Run the command again to see where it stands now.",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    print(
        f"reset shard {shard} of processor {name!r}: checkpoint {_where(seen.checkpoint.position)}"
        f" -> {_where(to)}; lease freed at counter {released.counter}"
    )
    return EXIT_OK


def _target(args: argparse.Namespace, seen: ShardLease) -> Position:
    if args.sequence is not None:
        return Position(after=args.sequence, start=seen.checkpoint.start_position)
    start = StartingPosition.LATEST if args.latest else StartingPosition.TRIM_HORIZON
    return Position(after=None, start=start)


def _where(position: Position) -> str:
    return position.after or f"({position.start.value})"


def _reset_preview(seen: ShardLease, to: Position) -> str:
    old = seen.checkpoint
    shard = old.shard_id
    lease = "free" if seen.owner is None else f"held by {seen.owner}"
    lines = [
        f"reset shard {shard} of processor {old.processor!r} (stream {old.stream_arn}):",
        f"  checkpoint  {_where(old.position)} -> {_where(to)}",
        f"  finished    {'yes' if old.finished else 'no'} -> no",
        f"  lease       {lease} (counter {seen.counter}) -> free (counter incremented)",
        f"How many records of shard {shard} this skips or delivers again is unknown: "
        + _consequence(to),
    ]
    if old.finished:
        lines.append(
            f"Shard {shard} is finished: the reset reopens it, so its records are read again "
            "after its children's, out of order."
        )
    if seen.owner is not None:
        lines.append(
            f"Worker {seen.owner} stops at its next renewal and writes no checkpoint for "
            f"shard {shard} again; a batch it has in flight may still reach the handler."
        )
    return "\n".join(lines)


def _consequence(to: Position) -> str:
    if to.after is not None:
        return (
            f"processing resumes after sequence number {to.after}; records between the "
            "current checkpoint and it are skipped if it is later (they go to no on-failure "
            "destination), delivered again if it is earlier."
        )
    if to.start is StartingPosition.LATEST:
        return (
            "processing resumes at the newest records once a worker takes the lease; every "
            "record after the current checkpoint written until then is skipped (and goes to "
            "no on-failure destination)."
        )
    return (
        "processing restarts at the oldest record the stream still keeps (24 hours): "
        "records processed already are delivered again."
    )


# -- shared ----------------------------------------------------------------------------------


def _confirmed(yes: bool, confirm: Confirm, action: str) -> int | None:
    """None to go ahead; else the exit code after saying why not."""
    if yes:
        return None
    try:
        agreed = confirm(f"{action}? [y/N] ")
    except NoTerminalError:
        print(
            f"error: refusing to {action} unconfirmed: stdin is not a terminal (or it is "
            "closed); run the command in a terminal to answer, or pass --yes",
            file=sys.stderr,
        )
        return EXIT_INVALID
    if agreed:
        return None
    print("nothing was changed")
    return EXIT_FAILURE


def _rows(settings: Settings, processor: str) -> list[ShardLease] | int:
    """The processor's shard rows, or exit 1 after saying there are none."""
    view = asyncio.run(_with_admin(settings, lambda admin: admin.read(processor)))
    if view.shards:
        return view.shards
    names = [p.name for p in settings.processors]
    known = "" if processor in names else f" (configured: {', '.join(names) or 'none'})"
    print(f"nothing to do: processor {processor!r} has no shards in the store{known}")
    return EXIT_FAILURE


async def _with_admin(settings: Settings, work: Callable[[LeaseAdmin], Awaitable[T]]) -> T:
    async with await CheckpointStore.connect(settings.store.url, migrate=False) as store:
        return await work(LeaseAdmin(store.engine))
