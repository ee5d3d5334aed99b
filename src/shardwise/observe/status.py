"""``shardwise status``: where every processor stands, read from the checkpoint store.

Per processor a summary line (shards reading and finished, the most recent checkpoint
write), then one row per shard: its checkpoint (or where it will start), whether it is
finished, and how long ago its row last changed. Processors found in the store but no longer
in the config are listed too, marked as such; configured ones with no rows say so.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from shardwise.config import Settings
from shardwise.observe.table import format_table
from shardwise.store import CheckpointStore, ShardCheckpoint, redact_url

__all__ = ["format_age", "format_status", "status_report"]

_HEADER = ("SHARD", "CHECKPOINT", "FINISHED", "UPDATED", "PARENT")


async def status_report(settings: Settings, *, now: datetime | None = None) -> str:
    """The status text for ``settings``; the store's schema must be at head already."""
    async with await CheckpointStore.connect(settings.store.url, migrate=False) as store:
        checkpoints = await store.list()
    return format_status(settings, checkpoints, now=now)


def format_status(
    settings: Settings, checkpoints: Sequence[ShardCheckpoint], *, now: datetime | None = None
) -> str:
    """Render ``checkpoints`` per processor: configured ones first, in config order."""
    now = now or datetime.now(UTC)
    by_processor: dict[str, list[ShardCheckpoint]] = {}
    for checkpoint in checkpoints:
        by_processor.setdefault(checkpoint.processor, []).append(checkpoint)
    configured = {p.name: p for p in settings.processors}
    lines = [f"store: {redact_url(settings.store.url)}"]
    for name in [*configured, *sorted(by_processor.keys() - configured.keys())]:
        rows = by_processor.get(name, [])
        config = configured.get(name)
        note = "" if config is None or config.enabled else " (disabled)"
        if config is None:
            note = " (not in the config: its checkpoints are kept)"
        lines += ["", f"processor {name}{note}: {_summary(rows, now)}"]
        for stream_arn in sorted({row.stream_arn for row in rows}):
            lines.append(f"  stream {stream_arn}")
            shards = [row for row in rows if row.stream_arn == stream_arn]
            lines += ["    " + line for line in _table(shards, now)]
    return "\n".join(lines)


def _summary(rows: Sequence[ShardCheckpoint], now: datetime) -> str:
    if not rows:
        return "no checkpoints yet"
    finished = sum(row.finished for row in rows)
    latest = max(row.updated_at for row in rows)
    return (
        f"{len(rows)} shard(s), {len(rows) - finished} reading, {finished} finished; "
        f"last checkpoint write {format_age(now - latest)} ago"
    )


def _table(rows: Sequence[ShardCheckpoint], now: datetime) -> list[str]:
    cells = [
        (
            row.shard_id,
            row.sequence_number or f"({row.start_position.value})",
            "yes" if row.finished else "no",
            f"{format_age(now - row.updated_at)} ago",
            row.parent_shard_id or "-",
        )
        for row in rows
    ]
    return format_table(_HEADER, cells).splitlines()


def format_age(age: timedelta) -> str:
    """A short human duration: ``42s``, ``5m07s``, ``3h12m``, ``2d04h``."""
    seconds = max(0, int(age.total_seconds()))
    minutes, seconds = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{seconds:02d}s"
    return f"{seconds}s"
