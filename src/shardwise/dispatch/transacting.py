"""One invocation of a transactional processor in a store transaction, whatever the store does.

The invocation (``body``) runs inside the transaction and says whether to commit: its
records resolved, or not (a handler failure: everything rolls back). The store failing on
its own - BEGIN, the connection breaking under a statement of the handler, shardwise's
statements, COMMIT - is not the handler's failure and must not
use up its retry attempts or send records to the on-failure destination: the transaction is
rolled back and the invocation runs again after a backoff, until the store answers or the
worker stops. A COMMIT that broke off (``CommitUnknownError``) may have been applied: the
store is asked (``landed``) before anything runs again, so a batch is never applied twice.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import structlog

from shardwise.clock import API_BACKOFF, Backoff, retries
from shardwise.dispatch.protocols import Transaction, Transactions
from shardwise.errors import CommitUnknownError, StoreError
from shardwise.processors import CURRENT_TRANSACTION
from shardwise.records import ShardId

__all__ = ["transact"]

log = structlog.get_logger("shardwise.dispatch")

T = TypeVar("T")

# Runs the invocation in the open transaction: (its outcome, whether to commit).
Body = Callable[[Transaction], Awaitable[tuple[T, bool]]]


class _RollBack(Exception):
    """The body resolved nothing: leaving the block rolls the transaction back."""


class _Stopping(Exception):
    """The worker stopped before the store said whether a commit landed."""


async def transact(
    open_transaction: Transactions,
    shard_id: ShardId,
    stop: asyncio.Event,
    body: Body[T],
    *,
    backoff: Backoff = API_BACKOFF,
) -> tuple[T, bool] | None:
    """Run ``body`` in a transaction on ``shard_id`` with ``context.transaction`` set, and
    commit it when the body says so: (the body's outcome, committed). None when the worker
    stopped before the store ran it (nothing committed that the checkpoint does not show)."""
    async for _ in retries(stop, backoff):
        try:
            return await _once(open_transaction, shard_id, stop, body, backoff)
        except _Stopping:
            return None
        except StoreError as exc:
            if not exc.retriable:
                raise
            log.warning(
                "the processor's transaction failed in the store; it runs again",
                error=str(exc),
            )
    return None


async def _once(
    open_transaction: Transactions,
    shard_id: ShardId,
    stop: asyncio.Event,
    body: Body[T],
    backoff: Backoff,
) -> tuple[T, bool]:
    outcome: tuple[T, bool] | None = None
    try:
        async with open_transaction(shard_id) as transaction:
            token = CURRENT_TRANSACTION.set(transaction.connection)
            try:
                outcome = await body(transaction)
            finally:
                CURRENT_TRANSACTION.reset(token)
            if transaction.broken:  # whatever the handler made of it: nothing can commit
                raise StoreError(f"shard {shard_id}: the connection to the store broke")
            if not outcome[1]:
                raise _RollBack  # noqa: TRY301 - leaving the block rolls it back
    except _RollBack:
        assert outcome is not None
        return outcome
    except CommitUnknownError as exc:
        assert outcome is not None
        landed = await _landed(exc, stop, backoff)
        if not landed:
            raise StoreError(f"the commit did not land: {exc}") from exc
        log.info("a commit that broke off had landed", error=str(exc))
    assert outcome is not None
    return outcome


async def _landed(exc: CommitUnknownError, stop: asyncio.Event, backoff: Backoff) -> bool:
    """Ask the store whether the commit landed, until it answers; ``_Stopping`` if the
    worker stops first."""
    async for _ in retries(stop, backoff):
        try:
            return await exc.landed()
        except StoreError as lookup:
            log.warning("cannot tell yet whether a commit landed", error=str(lookup))
    raise _Stopping
