"""The exception tree. Every error shardwise raises on purpose derives from ``ShardwiseError``.

``retriable`` tells the caller whether trying the same call again later can succeed::

    ShardwiseError
    ├── ConfigError                      bad YAML or settings (names the YAML path)
    ├── HandlerImportError               the handler setting names nothing importable
    ├── HandlerError                     the handler raised or returned something invalid
    │   ├── HandlerTimeoutError          the handler ran past timeout_seconds
    │   └── FunctionError                a runtime process or invoke URL reported an error
    ├── StoreError            retriable  the checkpoint store could not be reached / written
    │   ├── CommitUnknownError retriable a COMMIT broke off: applied or not, ask ``landed``
    │   └── StoreSchemaError             the schema is missing or newer than this release
    ├── LeaseLostError                   this worker no longer holds the shard's lease
    └── SourceError           retriable  a stream API call failed (generic)
        ├── ThrottledError    retriable  LimitExceededException, throttling, HTTP 5xx
        ├── ExpiredIteratorError         the shard iterator is older than 15 minutes
        ├── TrimmedDataError             asked for records past the 24 h retention
        ├── ShardNotFoundError           the shard no longer exists in the stream
        └── StreamNotFoundError          the stream or table does not exist, or has no stream

Dependencies' exceptions (botocore, SQLAlchemy) are translated at the boundary in the module
that calls them; nothing above that module sees a botocore ``ClientError``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import ClassVar

__all__ = [
    "CommitUnknownError",
    "ConfigError",
    "ExpiredIteratorError",
    "FunctionError",
    "HandlerError",
    "HandlerImportError",
    "HandlerTimeoutError",
    "LeaseLostError",
    "ShardNotFoundError",
    "ShardwiseError",
    "SourceError",
    "StoreError",
    "StoreSchemaError",
    "StreamNotFoundError",
    "ThrottledError",
    "TrimmedDataError",
    "first_error",
]


class ShardwiseError(Exception):
    """Base of every error shardwise raises on purpose."""

    retriable: ClassVar[bool] = False


class ConfigError(ShardwiseError):
    """The configuration is invalid; ``problems`` lists one ``path: message`` per error."""

    def __init__(self, problems: list[str], source: str | None = None) -> None:
        self.problems = problems
        self.source = source
        where = f"{source}: " if source else ""
        super().__init__(where + "; ".join(problems))


class HandlerImportError(ShardwiseError):
    """A handler setting (``file.function`` or ``module:callable``) cannot be imported."""


class HandlerError(ShardwiseError):
    """The handler failed a batch: it raised, or returned a value that is not valid."""


class HandlerTimeoutError(HandlerError):
    """The handler did not finish within the processor's ``timeout_seconds``."""


class FunctionError(HandlerError):
    """A function outside this process failed an invocation, as Lambda reports it.

    ``error_type`` is Lambda's: the function's own (``Error``, ``ValueError``) or the
    runtime's (``Runtime.ExitError``, ``Runtime.ImportModuleError``,
    ``Function.ResponseSizeTooLarge``); ``stack_trace`` is what the runtime sent, if anything.
    """

    def __init__(self, error_type: str, message: str, stack_trace: tuple[str, ...] = ()) -> None:
        self.error_type = error_type
        self.error_message = message
        self.stack_trace = stack_trace
        super().__init__(f"{error_type}: {message}" if message else error_type)


class StoreError(ShardwiseError):
    """The checkpoint store could not be reached or written."""

    retriable = True


class CommitUnknownError(StoreError):
    """A transaction's COMMIT failed on its way (the connection broke): it may or may not
    have been applied. ``landed`` asks the store, once it answers again, whether it was."""

    def __init__(self, message: str, *, landed: Callable[[], Awaitable[bool]]) -> None:
        super().__init__(message)
        self.landed = landed


class StoreSchemaError(StoreError):
    """The database schema is missing or newer than this release understands."""

    retriable = False


class SourceError(ShardwiseError):
    """A stream API call failed."""

    retriable = True

    def __init__(self, message: str, *, code: str | None = None) -> None:
        self.code = code
        super().__init__(message)


class ThrottledError(SourceError):
    """Throttled (LimitExceededException, ProvisionedThroughputExceeded) or a server error."""


class ExpiredIteratorError(SourceError):
    """The shard iterator expired (15 minutes); open a new one from the last position."""

    retriable = False


class TrimmedDataError(SourceError):
    """The position asked for is older than the stream's retention."""

    retriable = False


class ShardNotFoundError(SourceError):
    """The shard is no longer part of the stream."""

    retriable = False


class StreamNotFoundError(SourceError):
    """The stream does not exist, is disabled, or the table has no stream."""

    retriable = False


class LeaseLostError(ShardwiseError):
    """This worker no longer holds the shard's lease: stop processing, write nothing more.

    Raised by fenced checkpoint writes when the lease was taken over, released, or not renewed
    in time. Not retriable: another worker owns the shard now (or will soon).
    """

    def __init__(self, message: str, *, shard_id: str) -> None:
        self.shard_id = shard_id
        super().__init__(message)


def first_error(exc: BaseException) -> BaseException:
    """The first error inside (nested) exception groups, as raised by TaskGroups."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc
