"""Idempotency for side effects outside SQL: run a per-record function once per record.

Delivery is at least once: after a crash, a retry or a lease moving to another worker, a
batch runs again. A side effect in the store's own database can commit with the checkpoint;
one elsewhere (an email, an HTTP call, a message) cannot, so a function that makes one
records, in the store, that it ran for a record, and a repeat returns the recorded result::

    from shardwise.idempotency import Idempotency, idempotent

    receipts = Idempotency("postgresql+asyncpg://shardwise@db/shardwise")

    @idempotent(using=receipts)
    def send_receipt(record: dict) -> dict:
        return mailer.send(...)          # once per record, whatever the redeliveries

* ``decorator``: ``@idempotent``, ``Idempotency``, ``configure_idempotency``, the errors
  and the default key (``record_key``);
* ``powertools``: ``SqlPersistenceLayer``, for handlers that already use Powertools'
  idempotency utility (imported on its own: it needs aws-lambda-powertools);
* ``store_thread``: the store on a loop of its own, reachable from sync and async code.

The rows live in ``shardwise_idempotency`` (store/idempotency.py).
"""

from __future__ import annotations

from shardwise.idempotency.decorator import (
    Idempotency,
    IdempotencyInProgressError,
    IdempotencyKeyError,
    IdempotencyResultError,
    configure_idempotency,
    idempotent,
    record_key,
)

__all__ = [
    "Idempotency",
    "IdempotencyInProgressError",
    "IdempotencyKeyError",
    "IdempotencyResultError",
    "configure_idempotency",
    "idempotent",
    "record_key",
]
