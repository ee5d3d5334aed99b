"""Powertools for AWS Lambda's idempotency utility, with shardwise's store for a table.

A handler already written with Powertools keeps its decorators (``@idempotent``,
``@idempotent_function``) and its ``IdempotencyConfig``; only the persistence layer changes,
from ``DynamoDBPersistenceLayer(table_name=...)`` to ``SqlPersistenceLayer(store_url)``::

    persistence = SqlPersistenceLayer("postgresql+asyncpg://shardwise@db/shardwise")
    config = IdempotencyConfig(event_key_jmespath="eventID")

    @idempotent_function(data_keyword_argument="record", config=config,
                         persistence_store=persistence)
    def process(record: dict[str, Any]) -> dict[str, Any]: ...

    def handler(event, context):
        config.register_lambda_context(context)   # in-progress markers lapse at the timeout
        return [process(record=record) for record in event["Records"]]

The layer keeps the DynamoDB layer's contract, row for row (store/idempotency.py):
``_put_record`` writes the in-progress record only if there is none, or the one there
expired, or it is in progress past its in-progress expiry, and raises
``IdempotencyItemAlreadyExistsError`` carrying the existing record otherwise (after payload
validation, as the DynamoDB layer does with ReturnValuesOnConditionCheckFailure, so
Powertools needs no second read); ``_update_record`` stores the result (Powertools updates a
record only to COMPLETED, and so does the store);
``_delete_record`` removes the in-progress record of a call that raised; ``_get_record``
raises ``IdempotencyItemNotFoundError`` when there is none. Powertools' keys are
``<function>#<hash>``; the layer keeps them in one ``namespace`` (default "powertools").

Beyond DynamoDB's: a call updates and deletes only the record it put (a token per key,
kept per thread - Powertools runs one call's put, update and delete in one thread), so a
call whose in-progress record lapsed and was taken over cannot complete or delete the new
holder's.

Powertools' decorators are sync, and so is this layer: each method waits in the caller's
thread for the store's own loop (``StoreThread``). Under shardwise a sync handler runs in
its thread pool, so shardwise's loop is never blocked. aws-lambda-powertools is not a
dependency of shardwise: install it with the handler, as in Lambda.
"""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime, timedelta
from typing import Final

from aws_lambda_powertools.utilities.idempotency.exceptions import (
    IdempotencyItemAlreadyExistsError,
    IdempotencyItemNotFoundError,
)
from aws_lambda_powertools.utilities.idempotency.persistence.base import BasePersistenceLayer
from aws_lambda_powertools.utilities.idempotency.persistence.datarecord import (
    STATUS_CONSTANTS,
    DataRecord,
)

from shardwise.idempotency.decorator import Idempotency
from shardwise.idempotency.store_thread import StoreThread
from shardwise.store.idempotency import IdempotencyRecord, IdempotencyStatus

__all__ = ["SqlPersistenceLayer"]

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MILLISECOND: Final = timedelta(milliseconds=1)

# Powertools' status names and the store's.
_TO_STORE: Final = {
    STATUS_CONSTANTS["INPROGRESS"]: IdempotencyStatus.IN_PROGRESS,
    STATUS_CONSTANTS["COMPLETED"]: IdempotencyStatus.COMPLETED,
}
_TO_POWERTOOLS: Final = {status: name for name, status in _TO_STORE.items()}


def _from_seconds(timestamp: int) -> datetime:
    return _EPOCH + timedelta(seconds=timestamp)


def _from_millis(timestamp: int) -> datetime:
    return _EPOCH + timestamp * _MILLISECOND


def _seconds(moment: datetime) -> int:
    return (moment - _EPOCH) // timedelta(seconds=1)


def _millis(moment: datetime) -> int:
    # Integer arithmetic: float timestamps would round 1700000000123 ms to ...122 now and then.
    return (moment - _EPOCH) // _MILLISECOND


class SqlPersistenceLayer(BasePersistenceLayer):
    """Powertools' persistence layer on shardwise's store (see the module docstring).

    ``store`` is a store URL (the schema is migrated at the first call unless ``migrate``
    is False), or an ``Idempotency`` whose store, connections and thread it shares.
    """

    def __init__(
        self,
        store: str | Idempotency,
        *,
        namespace: str = "powertools",
        migrate: bool = True,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # Powertools' is unannotated
        if isinstance(store, Idempotency):
            self._store, self._owns_store = store.store_thread, False
        else:
            self._store, self._owns_store = StoreThread(store, migrate=migrate), True
        self.namespace = namespace
        self._held = threading.local()  # key -> token of the record this thread put

    def close(self) -> None:
        """Close the store's connections and thread, unless shared with an ``Idempotency``."""
        if self._owns_store:
            self._store.close()

    def __repr__(self) -> str:
        return f"<SqlPersistenceLayer {self._store.url} namespace={self.namespace!r}>"

    def _tokens(self) -> dict[str, str]:
        tokens: dict[str, str] | None = getattr(self._held, "tokens", None)
        if tokens is None:
            tokens = self._held.tokens = {}
        return tokens

    def _data_record(self, record: IdempotencyRecord) -> DataRecord:
        return DataRecord(
            idempotency_key=record.key,
            status=_TO_POWERTOOLS[record.status],
            expiry_timestamp=_seconds(record.expires_at),
            in_progress_expiry_timestamp=(
                None
                if record.in_progress_expires_at is None
                else _millis(record.in_progress_expires_at)
            ),
            response_data=record.result or "",
            payload_hash=record.payload_hash or "",
        )

    def _get_record(self, idempotency_key: str) -> DataRecord:
        found = self._store.call(lambda store: store.get(self.namespace, idempotency_key))
        if found is None:
            raise IdempotencyItemNotFoundError
        return self._data_record(found)

    def _put_record(self, data_record: DataRecord) -> None:
        key = data_record.idempotency_key
        if data_record.expiry_timestamp is None:
            raise ValueError(f"idempotency record {key!r} has no expiry timestamp")
        expires_at = _from_seconds(data_record.expiry_timestamp)
        in_progress = data_record.in_progress_expiry_timestamp
        token = uuid.uuid4().hex
        payload_hash = (
            data_record.payload_hash
            if self.payload_validation_enabled and data_record.payload_hash
            else None
        )
        existing = self._store.call(
            lambda store: store.try_begin(
                self.namespace,
                key,
                token=token,
                expires_at=expires_at,
                in_progress_expires_at=None if in_progress is None else _from_millis(in_progress),
                payload_hash=payload_hash,
            )
        )
        if existing is None:
            self._tokens()[key] = token
            return
        old = self._data_record(existing)
        self._validate_payload(data_payload=data_record, stored_data_record=old)
        self._save_to_cache(data_record=old)
        raise IdempotencyItemAlreadyExistsError(old_data_record=old)

    def _update_record(self, data_record: DataRecord) -> None:
        key = data_record.idempotency_key
        if data_record.expiry_timestamp is None:
            raise ValueError(f"idempotency record {key!r} has no expiry timestamp")
        expires_at = _from_seconds(data_record.expiry_timestamp)
        token = self._tokens().pop(key, None)
        payload_hash = data_record.payload_hash if self.payload_validation_enabled else None
        self._store.call(
            lambda store: store.complete(
                self.namespace,
                key,
                token=token,
                result=data_record.response_data,
                expires_at=expires_at,
                payload_hash=payload_hash or None,
            )
        )

    def _delete_record(self, data_record: DataRecord) -> None:
        key = data_record.idempotency_key
        token = self._tokens().pop(key, None)
        self._store.call(lambda store: store.release(self.namespace, key, token=token))
