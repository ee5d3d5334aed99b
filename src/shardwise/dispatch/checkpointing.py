"""One shard's checkpoint writes: after a batch, a lane, a window or a filtered tail, and its end.

Every write runs to completion even when the consumer is cancelled meanwhile
(``to_completion``) and is retried through store outages until it succeeds or the worker
stops; a write the store refuses for good (``StoreError`` not retriable, ``LeaseLostError``)
is raised.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from typing import Any

import structlog

from shardwise.clock import API_BACKOFF, retries
from shardwise.dispatch.protocols import Checkpointer
from shardwise.errors import StoreError
from shardwise.observe.progress import ProcessorProgress
from shardwise.records import Batch, SequenceNumber, ShardId
from shardwise.tasks import to_completion

__all__ = ["ShardCheckpoints"]

log = structlog.get_logger("shardwise.dispatch")

Write = Callable[[], Coroutine[Any, Any, None]]


def _created(batch: Batch) -> float | None:
    """When ``batch``'s last record reached the stream, when it says."""
    return batch.shape.arrival_time(batch.records[-1])


class ShardCheckpoints:
    """Writes the checkpoints of one shard and counts them; each method returns False when
    the worker stopped before the write succeeded. ``checkpointed`` is the last durable one."""

    def __init__(
        self,
        checkpointer: Checkpointer,
        shard_id: ShardId,
        *,
        checkpointed: SequenceNumber | None,
        stop: asyncio.Event,
        progress: ProcessorProgress,
    ) -> None:
        self._checkpointer = checkpointer
        self._shard_id = shard_id
        self._stop = stop
        self._progress = progress
        self.checkpointed = checkpointed

    async def window_state(self) -> str | None:
        """The open tumbling window stored with the checkpoint."""
        return await self._checkpointer.window_state()

    async def batch(self, batch: Batch) -> bool:
        """``batch`` is resolved (processed, or stored in the on-failure destination)."""
        return await self.lanes(batch.last_sequence_number, batch)

    async def window(
        self, sequence: SequenceNumber | None, window_state: str | None, run: Batch | None
    ) -> bool:
        """Tumbling windows: the checkpoint and the window state in one write."""
        started = time.monotonic()
        save = self._checkpointer.save_window
        if not await self._write(
            "checkpoint", lambda: save(self._shard_id, sequence, window_state)
        ):
            return False
        if sequence is not None:
            self.checkpointed = sequence
        if run is not None:
            self._progress.checkpointed(
                self._shard_id,
                run.last_sequence_number,
                len(run),
                _created(run),
                time.monotonic() - started,
            )
        return True

    async def lanes(self, mark: SequenceNumber | None, part: Batch | None) -> bool:
        """The lanes' watermark moved (``mark``) and/or a lane resolved ``part``; with one
        lane, the mark is the part's last record (``batch``)."""
        started = time.monotonic()
        if mark is not None and not await self._save(mark):
            return False
        if part is not None:
            self._progress.checkpointed(
                self._shard_id,
                self.checkpointed or part.last_sequence_number,
                len(part),
                _created(part),
                time.monotonic() - started,
            )
        return True

    def transacted(self, part: Batch, started: float) -> None:
        """``part`` was checkpointed by the transaction of the invocation that resolved it
        (a transactional processor): count it as ``batch`` would."""
        self.checkpointed = part.last_sequence_number
        self._progress.checkpointed(
            self._shard_id,
            part.last_sequence_number,
            len(part),
            _created(part),
            time.monotonic() - started,
        )

    async def filtered_tail(self, last_read: SequenceNumber | None) -> bool:
        """Records were read past the checkpoint and none waits to be delivered: they were
        all filtered out. Move the checkpoint over them (they are consumed)."""
        if last_read is None or last_read == self.checkpointed:
            return True
        return await self._save(last_read)

    async def finish(self, last_read: SequenceNumber | None) -> bool:
        """The shard is closed and read to its end: mark it finished so its children start."""
        if not await self._write(
            "finish", lambda: self._checkpointer.finish(self._shard_id, last_read)
        ):
            return False
        self._progress.finished(self._shard_id)
        log.info("shard finished", last_sequence=last_read)
        return True

    async def _save(self, sequence: SequenceNumber) -> bool:
        """Checkpoint at ``sequence``; False when stopping first."""
        if not await self._write(
            "checkpoint", lambda: self._checkpointer.save(self._shard_id, sequence)
        ):
            return False
        self.checkpointed = sequence
        return True

    async def _write(self, what: str, write: Write) -> bool:
        """Run a store write to completion, retrying outages; False when stopping."""
        async for _ in retries(self._stop, API_BACKOFF):
            try:
                await to_completion(write())
            except StoreError as exc:
                if not exc.retriable:
                    raise
                log.warning("checkpoint store write failed; retrying", write=what, error=str(exc))
            else:
                return True
        return False
