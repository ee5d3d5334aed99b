"""``shardwise status``: where every processor stands and who holds what, read from the store.

Per processor a summary line (shards reading, leased and finished, the most recent checkpoint
write), then per stream one row per shard: its checkpoint (or where it will start), whether
it is finished, its lease (owner, ``w1 -> w2`` while ``w2`` asks for it, ``-> w2`` when it
is reserved for ``w2``; the counter; how long the owner has held it) and how long ago its row
last changed; then one line per worker: leases held and the age of its heartbeat, marked
``stale?`` past ``STALE_LEASE_DURATIONS`` lease durations. Processors found in the store but
no longer in the config are listed too, marked as such; configured ones with no rows say so.

The ages compare this machine's clock with the clocks of the workers that wrote the times,
and the report says so: workers never compare clocks (a lease expires when its counter
stands still), so an age here is a hint, and ``stale?`` a question. ``format_status`` is
pure; ``status_report`` reads the store in two SELECTs.
"""

from __future__ import annotations

import argparse
import asyncio
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Final

from shardwise.cli.exit_codes import EXIT_OK
from shardwise.cli.table import format_age, format_table
from shardwise.config import Settings, add_config_argument, load_config
from shardwise.leases.admin import LeaseAdmin, LeaseView, ShardLease, WorkerBeat
from shardwise.store import CheckpointStore, redact_url

__all__ = ["STALE_LEASE_DURATIONS", "add_status_command", "format_status", "status_report"]

# A worker whose heartbeat row is older than this many lease durations is marked "stale?".
STALE_LEASE_DURATIONS: Final = 3

_HEADER = (
    "SHARD",
    "CHECKPOINT",
    "FINISHED",
    "OWNER",
    "COUNTER",
    "HELD FOR",
    "UPDATED",
    "PARENT",
)
_CLOCKS = (
    "ages: by this machine's clock (workers' clocks may differ; leases expire by counter, "
    "not by time)"
)


def add_status_command(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``shardwise status -c CONFIG``."""
    status = subparsers.add_parser("status", help="where every processor and shard stands")
    add_config_argument(status)
    status.set_defaults(func=_cmd_status)


def _cmd_status(args: argparse.Namespace) -> int:
    print(asyncio.run(status_report(load_config(args.config))))
    return EXIT_OK


async def status_report(settings: Settings, *, now: datetime | None = None) -> str:
    """The status text for ``settings``; the store's schema must be at head already."""
    async with await CheckpointStore.connect(settings.store.url, migrate=False) as store:
        view = await LeaseAdmin(store.engine).read()
    return format_status(settings, view, now=now)


def format_status(settings: Settings, view: LeaseView, *, now: datetime | None = None) -> str:
    """Render ``view`` per processor: configured ones first, in config order."""
    now = now or datetime.now(UTC)
    stale_after = timedelta(seconds=STALE_LEASE_DURATIONS * settings.worker.lease_duration_seconds)
    shards: dict[str, list[ShardLease]] = {}
    for lease in view.shards:
        shards.setdefault(lease.checkpoint.processor, []).append(lease)
    beats: dict[str, list[WorkerBeat]] = {}
    for beat in view.workers:
        beats.setdefault(beat.processor, []).append(beat)
    configured = {p.name: p for p in settings.processors}
    found = (shards.keys() | beats.keys()) - configured.keys()
    lines = [f"store: {redact_url(settings.store.url)}", _CLOCKS]
    for name in [*configured, *sorted(found)]:
        rows = shards.get(name, [])
        config = configured.get(name)
        note = "" if config is None or config.enabled else " (disabled)"
        if config is None:
            note = " (not in the config: its checkpoints are kept)"
        lines += ["", f"processor {name}{note}: {_summary(rows, now)}"]
        lines += _streams(rows, beats.get(name, []), now, stale_after)
    return "\n".join(lines)


def _streams(
    rows: Sequence[ShardLease], beats: Sequence[WorkerBeat], now: datetime, stale_after: timedelta
) -> list[str]:
    """Per stream of one processor: its shard table, then its workers."""
    lines = []
    arns = {row.checkpoint.stream_arn for row in rows} | {beat.stream_arn for beat in beats}
    for stream_arn in sorted(arns):
        shards = [row for row in rows if row.checkpoint.stream_arn == stream_arn]
        workers = [beat for beat in beats if beat.stream_arn == stream_arn]
        body = _table(shards, now) if shards else []
        body += _workers(shards, workers, now, stale_after)
        lines += [f"  stream {stream_arn}", *("    " + line for line in body)]
    return lines


def _summary(rows: Sequence[ShardLease], now: datetime) -> str:
    if not rows:
        return "no checkpoints yet"
    finished = sum(row.checkpoint.finished for row in rows)
    leased = sum(row.owner is not None for row in rows)
    latest = max(row.checkpoint.updated_at for row in rows)
    return (
        f"{len(rows)} shard(s), {len(rows) - finished} reading ({leased} leased), "
        f"{finished} finished; last checkpoint write {format_age(now - latest)} ago"
    )


def _table(rows: Sequence[ShardLease], now: datetime) -> list[str]:
    cells = [
        (
            row.checkpoint.shard_id,
            row.checkpoint.sequence_number or f"({row.checkpoint.start_position.value})",
            "yes" if row.checkpoint.finished else "no",
            _owner(row),
            str(row.counter),
            "-"
            if row.owner is None or row.owner_since is None
            else format_age(now - row.owner_since),
            f"{format_age(now - row.checkpoint.updated_at)} ago",
            row.checkpoint.parent_shard_id or "-",
        )
        for row in rows
    ]
    return format_table(_HEADER, cells).splitlines()


def _owner(row: ShardLease) -> str:
    if row.handoff_to is None:
        return row.owner or "-"
    return f"{row.owner} -> {row.handoff_to}" if row.owner else f"-> {row.handoff_to}"


def _workers(
    rows: Sequence[ShardLease],
    beats: Sequence[WorkerBeat],
    now: datetime,
    stale_after: timedelta,
) -> list[str]:
    """One line per worker with a heartbeat row or a lease: leases held, heartbeat age."""
    held = Counter(row.owner for row in rows if row.owner is not None)
    lines = []
    by_id = {beat.worker_id: beat for beat in beats}
    for worker_id in sorted(by_id.keys() | held.keys()):
        beat = by_id.get(worker_id)
        heartbeat = "no heartbeat row"
        if beat is not None:
            heartbeat = f"heartbeat {format_age(now - beat.updated_at)} ago"
        if beat is None or now - beat.updated_at > stale_after:
            heartbeat += f" (stale? more than {STALE_LEASE_DURATIONS} lease durations)"
        lines.append(f"worker {worker_id}: {held[worker_id]} lease(s), {heartbeat}")
    return lines
