"""``@idempotent``: a per-record function whose side effect runs once per record.

A call goes through three steps, each one short SQL transaction (store/idempotency.py):

1. **begin**: hold the record's key with an in-progress marker, unless a live row is in the
   way. A ``completed`` row: the stored result is returned and the function is not called.
   A live ``in_progress`` row: another call runs it now, and ``IdempotencyInProgressError``
   fails this call (and its batch, which shardwise retries later, as Lambda would).
2. **run** the function.
3. **complete** with its result (JSON text), kept ``expires_after_seconds``; or, when the
   function raised, **release** the marker so that the retry runs it again.

A call that crashed (the process died, the machine went away) leaves its marker behind: once
``in_progress_expires_after_seconds`` have passed, the next call for the key takes the marker
over and runs. Set it to at least the processor's ``timeout_seconds``, with headroom (past
the timeout shardwise fails the invocation, but abandons a sync handler's thread rather than
stopping it, see processors.py), so a slow call is never run twice at once; and no longer
than needed: until then, the record's batch is retried and fails with
``IdempotencyInProgressError`` (with ``maximum_retry_attempts`` set, it may use them up).
An async call cancelled by the timeout releases its marker at once.

Where the store is: an ``Idempotency(store_url)`` object, passed as ``using=`` or made the
process-wide default with ``configure_idempotency(store_url)``; the decorator finds it at
call time, so the order of decoration and configuration does not matter. The URL is a
store URL like ``store.url`` in shardwise.yaml, usually the same database. shardwise does
not inject its own connections into the handler: the helper is the handler's, so it works
wherever the handler runs - under shardwise (sync handlers in its thread pool, async ones
on its loop), in the user's unit tests, in Lambda itself with a reachable database. The
store runs on a loop of its own (``StoreThread``): a sync function reaches it from its
thread with ``run_coroutine_threadsafe`` and never blocks shardwise's loop.

The default key is the record's ``eventID`` (DynamoDB Streams: unique per record; Kinesis:
``<shard id>:<sequence number>``), plus ``:<subSequenceNumber>`` for a KPL user record, which
shares its aggregate's eventID. Keys of one namespace must be unique among the records it
sees: a function reading several Kinesis streams should include the stream in its key (or
use a namespace per stream). The namespace defaults to the function's module and qualified
name: renaming the function starts a new namespace, whose keys have never run.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar, Final, TypeVar, cast, overload

import structlog

from shardwise.errors import ShardwiseError, StoreError
from shardwise.idempotency.store_thread import StoreThread
from shardwise.records import StreamRecord, shape_of
from shardwise.store.idempotency import (
    MAX_KEY,
    MAX_NAMESPACE,
    IdempotencyRecord,
    IdempotencyStatus,
    IdempotencyStore,
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

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_EXPIRES_AFTER_S: Final = 3600.0  # Powertools' default
DEFAULT_IN_PROGRESS_EXPIRES_AFTER_S: Final = 900.0  # shardwise's (and Lambda's) longest timeout

log = structlog.get_logger("shardwise.idempotency")


class IdempotencyInProgressError(ShardwiseError):
    """Another call holds the key right now: fail, and let the batch be retried later."""

    retriable: ClassVar[bool] = True

    def __init__(self, namespace: str, key: str, lapses_at: datetime) -> None:
        self.namespace = namespace
        self.key = key
        self.lapses_at = lapses_at
        super().__init__(
            f"idempotency key {key!r} in {namespace!r} is held by a call in progress; "
            f"retry later (if that call crashed, its marker lapses at {lapses_at.isoformat()})"
        )


class IdempotencyKeyError(ShardwiseError, ValueError):
    """No usable key for a record: no eventID, or the key function returned no string."""


class IdempotencyResultError(ShardwiseError, TypeError):
    """The function returned something JSON cannot hold, so no repeat could return it."""


def _as_mapping(record: Any) -> Mapping[str, Any]:
    """The record as Lambda delivers it: a dict, or a Powertools data class's raw event."""
    raw = record if isinstance(record, Mapping) else getattr(record, "raw_event", None)
    if not isinstance(raw, Mapping):
        raise IdempotencyKeyError(
            f"not a stream record: {type(record).__name__}; the record must be the "
            "function's first argument, or pass key= a function of that argument"
        )
    return raw


def record_key(record: Any) -> str:
    """The default key: the record's eventID, plus ``:<subSequenceNumber>`` for a KPL user
    record (its aggregate's eventID is shared by all of the aggregate's user records)."""
    raw = _as_mapping(record)
    event_id = raw.get("eventID")
    if not isinstance(event_id, str) or not event_id:
        raise IdempotencyKeyError(
            f"the record has no eventID (keys {sorted(raw)[:10]}); pass key= to @idempotent"
        )
    stream_record = cast(StreamRecord, raw)
    try:
        shape = shape_of(stream_record)
    except ValueError:
        return event_id  # not a stream record shardwise knows: its eventID is all there is
    identifiers = shape.identifiers(stream_record)
    if len(identifiers) == 1:
        return event_id
    position, aggregate = identifiers  # "<sequence>:<sub>" and "<sequence>"
    return event_id + position.removeprefix(aggregate)


class Idempotency:
    """Where idempotency records are kept, and for how long.

    ``store_url`` is a store URL (``sqlite+aiosqlite:///shardwise.db``,
    ``postgresql+asyncpg://user@host/db``); the schema is migrated at the first call unless
    ``migrate`` is False. A completed result is kept ``expires_after_seconds``; an
    in-progress marker lapses after ``in_progress_expires_after_seconds`` (see the module
    docstring). Build it at import time: nothing connects before the first call.
    """

    def __init__(
        self,
        store_url: str,
        *,
        expires_after_seconds: float = DEFAULT_EXPIRES_AFTER_S,
        in_progress_expires_after_seconds: float = DEFAULT_IN_PROGRESS_EXPIRES_AFTER_S,
        migrate: bool = True,
    ) -> None:
        for name, value in (
            ("expires_after_seconds", expires_after_seconds),
            ("in_progress_expires_after_seconds", in_progress_expires_after_seconds),
        ):
            if not value > 0:
                raise ValueError(f"{name} must be positive, not {value!r}")
        self.expires_after = timedelta(seconds=expires_after_seconds)
        self.in_progress_expires_after = timedelta(seconds=in_progress_expires_after_seconds)
        self.store_thread = StoreThread(store_url, migrate=migrate)

    def __repr__(self) -> str:
        return f"<Idempotency {self.store_thread.url}>"

    async def purge_expired(self, *, namespace: str | None = None) -> int:
        """Delete the expired rows (of one namespace, or all); return how many. Expired rows
        already count as absent: purging only keeps the table small."""
        return await self.store_thread.acall(lambda store: store.purge_expired(namespace=namespace))

    async def forget(self, key: str, *, namespace: str) -> bool:
        """Delete ``key``'s row whatever its state: the next call for it runs again."""
        return await self.store_thread.acall(lambda store: store.delete(namespace, key))

    def close(self) -> None:
        """Close the connections and stop the store's thread; a later call opens them again."""
        self.store_thread.close()

    async def aclose(self) -> None:
        """``close()``, awaited without blocking the caller's loop."""
        await self.store_thread.aclose()


_default: Idempotency | None = None


def configure_idempotency(
    store_url: str,
    *,
    expires_after_seconds: float = DEFAULT_EXPIRES_AFTER_S,
    in_progress_expires_after_seconds: float = DEFAULT_IN_PROGRESS_EXPIRES_AFTER_S,
    migrate: bool = True,
) -> Idempotency:
    """Make ``Idempotency(store_url, ...)`` the store of every ``@idempotent`` function given
    no ``using=``, and return it. A default configured before is closed."""
    global _default  # the process-wide default is the point
    previous, _default = (
        _default,
        Idempotency(
            store_url,
            expires_after_seconds=expires_after_seconds,
            in_progress_expires_after_seconds=in_progress_expires_after_seconds,
            migrate=migrate,
        ),
    )
    if previous is not None:
        previous.close()
    return _default


@dataclass(frozen=True, slots=True)
class _Call:
    """One call of an idempotent function: its key, and the token it holds the key with."""

    idempotency: Idempotency
    namespace: str
    key: str
    token: str

    def begin(self, store: IdempotencyStore) -> Coroutine[Any, Any, IdempotencyRecord | None]:
        now = datetime.now(UTC)
        return store.try_begin(
            self.namespace,
            self.key,
            token=self.token,
            expires_at=now + self.idempotency.expires_after,
            in_progress_expires_at=now + self.idempotency.in_progress_expires_after,
            now=now,
        )

    def complete_with(self, text: str) -> Callable[[IdempotencyStore], Coroutine[Any, Any, bool]]:
        def complete(store: IdempotencyStore) -> Coroutine[Any, Any, bool]:
            now = datetime.now(UTC)
            return store.complete(
                self.namespace,
                self.key,
                token=self.token,
                result=text,
                expires_at=now + self.idempotency.expires_after,
                now=now,
            )

        return complete

    def release(self, store: IdempotencyStore) -> Coroutine[Any, Any, bool]:
        return store.release(self.namespace, self.key, token=self.token)

    def repeat(self, existing: IdempotencyRecord) -> Any:
        """What a call that found a live row returns (or raises)."""
        if existing.status is IdempotencyStatus.COMPLETED:
            return None if existing.result is None else json.loads(existing.result)
        raise IdempotencyInProgressError(
            self.namespace, self.key, existing.in_progress_expires_at or existing.expires_at
        )

    def encode(self, result: Any) -> str:
        try:
            return json.dumps(result)
        except (TypeError, ValueError) as exc:
            raise IdempotencyResultError(
                f"idempotency key {self.key!r} in {self.namespace!r}: the result is not "
                f"JSON-serialisable ({exc}); return JSON values (dict, list, str, int, float, "
                "bool, None) - a repeat returns the stored JSON"
            ) from exc

    def unreleased(self, error: BaseException, cause: StoreError) -> None:
        """Note on ``error`` that its marker could not be released."""
        error.add_note(
            f"idempotency key {self.key!r} in {self.namespace!r} could not be released "
            f"({cause}); the next call runs once its in-progress marker lapses"
        )

    def completion_failed(self, exc: StoreError) -> None:
        # The side effect happened: failing the batch now would only run it a second time.
        log.warning(
            "idempotency result not stored; a redelivery runs the call again once its "
            "in-progress marker lapses",
            namespace=self.namespace,
            key=self.key,
            error=str(exc),
        )


def _start(
    using: Idempotency | None, namespace: str, key_of: Callable[[Any], str], record: Any
) -> _Call:
    idempotency = using or _default
    if idempotency is None:
        raise RuntimeError(
            "no idempotency store: call shardwise.idempotency.configure_idempotency(store_url) "
            "at import, or pass @idempotent(using=Idempotency(store_url))"
        )
    key = key_of(record)
    if not isinstance(key, str) or not key:
        raise IdempotencyKeyError(
            f"the key function of {namespace!r} returned {key!r}; it must return a non-empty str"
        )
    if len(key) > MAX_KEY:
        raise IdempotencyKeyError(
            f"key {key[:60]!r}... of {namespace!r} is {len(key)} characters; at most {MAX_KEY} fit"
        )
    return _Call(idempotency, namespace, key, uuid.uuid4().hex)


async def _run_async(
    call: _Call,
    function: Callable[..., Awaitable[Any]],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Any:
    store = call.idempotency.store_thread
    begun = store.submit(call.begin)
    try:
        existing = await asyncio.shield(asyncio.wrap_future(begun))
    except asyncio.CancelledError:
        # The begin goes on without us: once it is done, release what it may have taken
        # (a no-op unless this call's token holds the key).
        begun.add_done_callback(lambda _: store.submit(call.release))
        raise
    if existing is not None:
        return call.repeat(existing)
    try:
        result = await function(*args, **kwargs)
        text = call.encode(result)
    except Exception as exc:
        try:
            await store.acall(call.release)
        except StoreError as cause:
            call.unreleased(exc, cause)
        raise
    except BaseException:  # cancelled (the handler's timeout): release, without waiting
        store.submit(call.release)
        raise
    try:
        await store.acall(call.complete_with(text))
    except StoreError as exc:
        call.completion_failed(exc)
    return result


def _run_sync(
    call: _Call, function: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    store = call.idempotency.store_thread
    existing = store.call(call.begin)
    if existing is not None:
        return call.repeat(existing)
    try:
        result = function(*args, **kwargs)
        text = call.encode(result)
    except BaseException as exc:
        try:
            store.call(call.release)
        except StoreError as cause:
            call.unreleased(exc, cause)
        raise
    try:
        store.call(call.complete_with(text))
    except StoreError as exc:
        call.completion_failed(exc)
    return result


@overload
def idempotent(function: F, /) -> F: ...


@overload
def idempotent(
    *,
    key: Callable[[Any], str] | None = None,
    using: Idempotency | None = None,
    namespace: str | None = None,
) -> Callable[[F], F]: ...


def idempotent(
    function: F | None = None,
    /,
    *,
    key: Callable[[Any], str] | None = None,
    using: Idempotency | None = None,
    namespace: str | None = None,
) -> F | Callable[[F], F]:
    """Run a per-record function (sync or ``async def``) at most once per record.

    The record is the function's first argument: a record in Lambda's shape (DynamoDB
    Streams or Kinesis) or a Powertools record data class. ``key(record)`` names it (default
    ``record_key``: its eventID); ``namespace`` separates functions (default: the function's
    module and qualified name); ``using`` is the store (default: ``configure_idempotency``'s).

    A repeat returns the first call's result as stored, i.e. its JSON round trip (a tuple
    comes back as a list); a result JSON cannot hold raises ``IdempotencyResultError``.
    Use as ``@idempotent`` or ``@idempotent(key=..., using=..., namespace=...)``.
    """

    def decorate(function: F) -> F:
        name = namespace or f"{function.__module__}.{function.__qualname__}"
        if len(name) > MAX_NAMESPACE:
            raise ValueError(
                f"idempotency namespace {name[:60]!r}... is {len(name)} characters; "
                f"at most {MAX_NAMESPACE} fit: pass namespace="
            )
        key_of = key or record_key

        if inspect.iscoroutinefunction(function):

            @functools.wraps(function)
            async def run_async(record: Any, /, *args: Any, **kwargs: Any) -> Any:
                call = _start(using, name, key_of, record)
                return await _run_async(call, function, (record, *args), kwargs)

            return cast(F, run_async)

        @functools.wraps(function)
        def run_sync(record: Any, /, *args: Any, **kwargs: Any) -> Any:
            call = _start(using, name, key_of, record)
            return _run_sync(call, function, (record, *args), kwargs)

        return cast(F, run_sync)

    return decorate if function is None else decorate(function)
