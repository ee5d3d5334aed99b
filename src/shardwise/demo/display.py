"""What the demo shows on the terminal: a progress line a second, and the summary at the end."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import time
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from shardwise.clock import sleep_or_stop
from shardwise.demo.settings import CHECKPOINTS_DB, PROCESSOR, VIEW_DB
from shardwise.observe.progress import ProcessorProgress

if TYPE_CHECKING:
    from shardwise.demo.writer import OrderWriter
    from shardwise.supervisor import Supervisor

__all__ = ["ProgressReporter", "last_checkpoint", "summary", "view_row_count"]

REPORT_INTERVAL_S = 1.0


class ProgressReporter:
    """One progress line a second: rewritten in place on a terminal, appended otherwise."""

    def __init__(
        self, supervisor: Supervisor, writer: OrderWriter, view_db: Path, out: TextIO
    ) -> None:
        self._supervisor = supervisor
        self._writer = writer
        self._view_db = view_db
        self._out = out
        self._tty = out.isatty()
        self._last = (time.monotonic(), 0)

    async def run(self, stop: asyncio.Event) -> None:
        start = time.monotonic()
        ticks = 0
        while True:
            ticks += 1
            if await sleep_or_stop(stop, start + ticks * REPORT_INTERVAL_S - time.monotonic()):
                break
            rows = await asyncio.to_thread(view_row_count, self._view_db)
            self._show(self._render(time.monotonic() - start, rows))
        if self._tty and ticks > 1:
            self._out.write("\n")
            self._out.flush()

    def _render(self, elapsed_s: float, view_rows: int | None) -> str:
        progress = self._supervisor.progress.get(PROCESSOR) or ProcessorProgress(PROCESSOR)
        now = time.monotonic()
        then, processed_then = self._last
        rate = (progress.records_processed - processed_then) / max(now - then, 1e-6)
        self._last = (now, progress.records_processed)
        lag = progress.iterator_age_s()
        return (
            f"{elapsed_s:4.0f}s | written {self._writer.total}"
            f" | processed {progress.records_processed} ({rate:.1f}/s)"
            f" | lag {'-' if lag is None else f'{max(lag, 0.0):.1f}s'}"
            f" | checkpoint {_short(last_checkpoint(progress))}"
            f" | view {'-' if view_rows is None else view_rows} rows"
            f" | failures {progress.handler_failures}"
        )

    def _show(self, text: str) -> None:
        if self._tty:  # a line wider than the terminal would wrap, and \r rewrites one row
            width = shutil.get_terminal_size().columns - 1
            self._out.write(f"\r{text[:width]}\x1b[K")
        else:
            self._out.write(f"{text}\n")
        self._out.flush()


def last_checkpoint(progress: ProcessorProgress) -> str | None:
    """The sequence number most recently checkpointed on any shard."""
    saved = [s for s in progress.shards.values() if s.checkpointed_at_monotonic is not None]
    if not saved:
        return None
    return max(saved, key=lambda s: s.checkpointed_at_monotonic or 0.0).checkpoint


def _short(sequence_number: str | None, keep: int = 8) -> str:
    if sequence_number is None:
        return "-"
    return sequence_number if len(sequence_number) <= keep else f"..{sequence_number[-keep:]}"


# --- reading the view -------------------------------------------------------------------------


def _query(view_db: Path, sql: str) -> list[tuple[Any, ...]] | None:
    """Rows of a read-only query on the view; None while the handler has not created it."""
    if not view_db.exists():
        return None
    try:
        with closing(sqlite3.connect(f"{view_db.as_uri()}?mode=ro", uri=True, timeout=5)) as db:
            return db.execute(sql).fetchall()
    except sqlite3.OperationalError:  # created but not yet holding its tables
        return None


def view_row_count(view_db: Path) -> int | None:
    rows = _query(view_db, "SELECT COUNT(*) FROM orders")
    return int(rows[0][0]) if rows else None


def summary(
    writer: OrderWriter, progress: ProcessorProgress, view_db: Path, workdir: Path, elapsed_s: float
) -> str:
    """What happened, for the terminal: written vs processed, the checkpoint, the view."""
    kinds = ", ".join(f"{writer.written[k]} {k}s" for k in ("insert", "update", "delete"))
    behind = writer.total - progress.records_processed
    lines = [
        f"shardwise demo: stopped after {elapsed_s:.1f} s",
        f"  written     {writer.total} item writes ({kinds})",
        f"  processed   {progress.records_processed} records in {progress.batches_processed}"
        f" batches, {progress.handler_failures} handler failures"
        + (f" ({behind} written but not processed before the stop)" if behind > 0 else ""),
        f"  checkpoint  {last_checkpoint(progress) or '-'}",
    ]
    counts = _query(view_db, "SELECT status, orders FROM order_status_counts ORDER BY status")
    recent = _query(
        view_db,
        "SELECT order_id, customer, status, amount, item_count FROM orders"
        " ORDER BY updated_at DESC, order_id DESC LIMIT 5",
    )
    by_status = ", ".join(f"{status} {n}" for status, n in counts or [])
    lines.append(f"  view        {view_row_count(view_db) or 0} orders ({by_status or 'empty'})")
    for order_id, customer, status, amount, item_count in recent or []:
        lines.append(f"    {order_id}  {customer:<9} {status:<8} {amount:>8}  {item_count} item(s)")
    lines += [
        f"  files       {workdir} ({VIEW_DB}, {CHECKPOINTS_DB})",
        f'  look        sqlite3 {view_db} "SELECT * FROM orders LIMIT 5"',
    ]
    return "\n".join(lines)
