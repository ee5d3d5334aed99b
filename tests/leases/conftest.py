"""Lease test fixtures: a migrated store, and workers' lease tables and coordinators on it."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Protocol, TypeAlias

import pytest

from shardwise.leases import LeaseCoordinator
from shardwise.leases.table import LeaseTable
from shardwise.store import CheckpointStore

__all__ = [
    "ARN",
    "DURATION",
    "PROCESSOR",
    "Tables",
    "Workers",
    "tables",
    "worker_clock",
    "workers",
]

ARN = "arn:aws:dynamodb:us-east-1:123456789012:table/orders/stream/2024-01-01T00:00:00.000"
PROCESSOR = "orders"
DURATION = 10.0  # the coordinators' lease duration unless a test gives its own

# A worker's lease table by its worker id.
Tables: TypeAlias = Callable[[str], Awaitable[LeaseTable]]


class Workers(Protocol):
    async def __call__(
        self,
        worker_id: str,
        *,
        lease_duration_s: float = DURATION,
        max_leases: int | None = None,
        clock: Callable[[], float] | None = None,
    ) -> LeaseCoordinator: ...


@pytest.fixture
async def tables(store_url: str, store: CheckpointStore) -> AsyncIterator[Tables]:
    """A worker's view of the lease table, each on a store (and pool) of its own."""
    opened: list[CheckpointStore] = []

    async def make(worker_id: str) -> LeaseTable:
        own = await CheckpointStore.connect(store_url, migrate=False)
        opened.append(own)
        return LeaseTable(own, processor=PROCESSOR, stream_arn=ARN, worker_id=worker_id)

    yield make
    for own in opened:
        await own.close()


@pytest.fixture
def worker_clock() -> Callable[[], float]:
    """The clock a coordinator gets from ``workers`` unless the test passes its own."""
    return time.monotonic


@pytest.fixture
async def workers(
    store_url: str, store: CheckpointStore, worker_clock: Callable[[], float]
) -> AsyncIterator[Workers]:
    """Coordinators acting as separate workers, each with a store (and pool) of its own;
    every one releases its leases at the end of the test."""
    opened: list[tuple[CheckpointStore, LeaseCoordinator]] = []

    async def make(
        worker_id: str,
        *,
        lease_duration_s: float = DURATION,
        max_leases: int | None = None,
        clock: Callable[[], float] | None = None,
    ) -> LeaseCoordinator:
        own = await CheckpointStore.connect(store_url, migrate=False)
        coordinator = LeaseCoordinator(
            own,
            processor=PROCESSOR,
            stream_arn=ARN,
            worker_id=worker_id,
            lease_duration_s=lease_duration_s,
            max_leases=max_leases,
            clock=worker_clock if clock is None else clock,
        )
        opened.append((own, coordinator))
        return coordinator

    yield make
    for own, coordinator in opened:
        await coordinator.release_all()
        await own.close()
