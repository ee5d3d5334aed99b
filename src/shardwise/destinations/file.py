"""The ``file:///`` target: one JSON line per failed batch, with its records, fsync'd.

Each batch is appended as one ``write`` to a file opened with ``O_APPEND``, then flushed to
disk with ``fsync`` (and the directory too when the file was just created) before ``send``
returns, so a stored batch survives a power cut. The file work runs in a thread; the event
loop never waits on the disk. A line torn by a crash is closed off before the next append,
so it costs only itself. ``read_failures`` reads the file back for ``shardwise failures``.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from shardwise.destinations.base import DestinationError, FailedBatch

__all__ = ["FileDestination", "append_line", "file_path", "read_failures"]


def file_path(target: str) -> Path:
    """The absolute path of a ``file:///path.jsonl`` target."""
    return Path(unquote(urlsplit(target).path))


def _ends_with_newline(fd: int) -> bool:
    size = os.fstat(fd).st_size
    return size == 0 or os.pread(fd, 1, size - 1) == b"\n"


def append_line(path: Path, line: bytes) -> None:
    """Append ``line`` (ending in a newline) durably, creating the file and its parents."""
    path.parent.mkdir(parents=True, exist_ok=True)
    created = not path.exists()
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        if not _ends_with_newline(fd):
            line = b"\n" + line  # a crash tore the last line: keep this one whole
        view = memoryview(line)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    if created:  # the new directory entry must reach the disk too
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


class FileDestination:
    """Appends to the JSON-lines file named by ``file:///abs/path.jsonl``."""

    def __init__(self, target: str) -> None:
        self._target = target
        self._path = file_path(target)
        # Held by the writing thread, so a cancelled send cannot interleave with the next.
        self._lock = threading.Lock()

    @property
    def target(self) -> str:
        return self._target

    async def send(self, failed: FailedBatch) -> None:
        record = failed.invocation_record(include_payload=True)
        line = (json.dumps(record) + "\n").encode()
        try:
            await asyncio.to_thread(self._append, line)
        except OSError as exc:
            reason = f"{type(exc).__name__}: {exc}"
            raise DestinationError(
                f"cannot store the failed batch of shard {failed.shard_id!r} in "
                f"{self._target}: {reason}"
            ) from exc

    async def close(self) -> None:
        return None

    def _append(self, line: bytes) -> None:
        with self._lock:
            append_line(self._path, line)


def read_failures(path: Path) -> tuple[list[tuple[int, dict[str, Any]]], list[int]]:
    """(line number, record) of every stored batch, and the numbers of unreadable lines."""
    records: list[tuple[int, dict[str, Any]]] = []
    unreadable: list[int] = []
    try:
        with path.open("rb") as lines:
            for number, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except ValueError:
                    unreadable.append(number)
                    continue
                if isinstance(record, dict):
                    records.append((number, record))
                else:
                    unreadable.append(number)
    except FileNotFoundError:
        return [], []
    except OSError as exc:
        raise DestinationError(f"reading {path} failed: {type(exc).__name__}: {exc}") from exc
    return records, unreadable
