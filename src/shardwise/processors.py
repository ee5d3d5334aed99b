"""The handler contract: Lambda-style functions and class processors.

A processor's ``handler`` is Lambda's Handler setting as it is (``app.orders.handler``:
module ``app/orders.py``, function ``handler``) or ``module:attribute``, imported the way
Lambda imports a handler from its task root (the config file's directory and the current
directory are on ``sys.path``). Two shapes are accepted:

* a function ``handler(event, context)`` (sync or ``async def``), unchanged from Lambda;
* a class with ``process(self, event, context)`` and optional ``setup(self)`` /
  ``teardown(self)`` (each sync or async), instantiated once per processor.

Sync code runs in a thread pool so it never blocks the event loop. Every invocation gets a
``LambdaContext`` whose ``get_remaining_time_in_millis()`` counts down ``timeout_seconds``;
past it an async handler is cancelled and a sync one is abandoned, and the batch fails.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import importlib
import inspect
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from shardwise.errors import HandlerImportError, HandlerTimeoutError
from shardwise.records import Batch

__all__ = [
    "CURRENT_TRANSACTION",
    "ClassProcessor",
    "FunctionProcessor",
    "LambdaContext",
    "Processor",
    "build_processor",
    "import_handler",
    "search_paths",
    "split_handler",
]

# The open transaction (an SQLAlchemy AsyncConnection) of a transactional processor's
# invocation, set by dispatch around the call (see dispatch/delivery.py).
CURRENT_TRANSACTION: contextvars.ContextVar[Any] = contextvars.ContextVar(
    "shardwise_transaction", default=None
)

# Threads shared by every sync handler of one processor; a handler abandoned after its
# timeout keeps its thread until it returns, so leave headroom.
SYNC_HANDLER_THREADS = 32


@dataclass(slots=True)
class LambdaContext:
    """The attributes of Lambda's Python context object that make sense outside Lambda."""

    function_name: str
    invoked_function_arn: str
    aws_request_id: str
    deadline_monotonic: float
    function_version: str = "$LATEST"
    memory_limit_in_mb: str = "0"
    log_group_name: str = ""
    log_stream_name: str = ""
    identity: Any = None
    client_context: Any = None
    tenant_id: str | None = None
    shard_id: str = field(default="")

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self.deadline_monotonic - time.monotonic()) * 1000))

    @property
    def transaction(self) -> Any:
        """A transactional processor's open ``sqlalchemy.ext.asyncio.AsyncConnection`` on the
        store's database: what the handler writes through it commits together with the
        checkpoint of the records this invocation resolves, or not at all."""
        connection = CURRENT_TRANSACTION.get()
        if connection is None:
            raise RuntimeError(
                "context.transaction: this processor is not transactional "
                "(set transactional: true in its configuration)"
            )
        return connection


@runtime_checkable
class Processor(Protocol):
    """What dispatch calls: start once, invoke per batch, stop once."""

    name: str
    function_arn: str

    async def start(self) -> None: ...

    async def invoke(self, batch: Batch) -> Any:
        """Run the handler on one batch; return what it returned, raise what it raised."""

    async def invoke_event(self, event: dict[str, Any], shard_id: str) -> Any:
        """Run the handler on a ready-made event (tumbling windows add their fields)."""

    async def stop(self) -> None: ...


HANDLER_FORMS = (
    "Lambda's 'file.function' (app.orders.handler) or 'module:attribute' (app.orders:handler)"
)


def split_handler(ref: str) -> tuple[str, str]:
    """``(module, attribute)`` named by a handler setting; ``ValueError`` says what is wrong.

    With a colon: ``module:attribute`` (the attribute may be dotted, ``views:Orders.run``).
    Without one it is Lambda's ``file.function``, read exactly as Lambda's Python runtime reads
    its Handler setting: the last dot separates the module path from the function name, and
    slashes in the path are package separators (``app.orders.handler`` and
    ``app/orders.handler`` both mean function ``handler`` of module ``app.orders``).
    """
    if ":" in ref:
        module, _, attribute = ref.partition(":")
    else:
        module, _, attribute = ref.rpartition(".")
        module = module.replace("/", ".")
    if attribute == "py" and module:
        raise ValueError(f"names a file, not a function: add the function, e.g. {module}.handler")
    if not (_dotted_identifier(module) and _dotted_identifier(attribute)):
        raise ValueError(f"must be {HANDLER_FORMS}")
    return module, attribute


def _dotted_identifier(text: str) -> bool:
    return bool(text) and all(part.isidentifier() for part in text.split("."))


def search_paths(config_dir: Path) -> list[Path]:
    """Like Lambda's task root: the config file's directory, then the current directory."""
    return list(dict.fromkeys([config_dir.resolve(), Path.cwd().resolve()]))


def import_handler(ref: str, paths: Sequence[Path] = ()) -> Any:
    """Import the handler ``ref`` names (see ``split_handler``) with ``paths`` first.

    Like Lambda's task root, the paths stay on ``sys.path`` for the life of the process, so
    modules the handler imports later are found too.
    """
    try:
        module_name, attr_path = split_handler(ref)
    except ValueError as exc:
        raise HandlerImportError(f"handler {ref!r}: {exc}") from exc
    for path in reversed(paths):
        if str(path) not in sys.path:
            sys.path.insert(0, str(path))
    where = ", ".join(str(p) for p in paths) or "sys.path"
    try:
        target: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise HandlerImportError(
            f"handler {ref!r}: cannot import module {module_name!r} (searched {where}): {exc}"
        ) from exc
    except Exception as exc:
        raise HandlerImportError(
            f"handler {ref!r}: importing module {module_name!r} raised {type(exc).__name__}: {exc}"
        ) from exc
    for part in attr_path.split("."):
        try:
            target = getattr(target, part)
        except AttributeError as exc:
            raise HandlerImportError(
                f"handler {ref!r}: module {module_name!r} has no attribute {attr_path!r}"
            ) from exc
    if not callable(target):
        raise HandlerImportError(f"handler {ref!r}: {attr_path!r} is not callable")
    return target


class _Runner:
    """Runs user callables: coroutines on the loop, sync functions in the thread pool."""

    def __init__(self, name: str) -> None:
        self._executor = ThreadPoolExecutor(
            max_workers=SYNC_HANDLER_THREADS, thread_name_prefix=f"shardwise-{name}"
        )

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        if inspect.iscoroutinefunction(fn):
            return await fn(*args)
        ctx = contextvars.copy_context()
        loop = asyncio.get_running_loop()
        result = await loop.run_in_executor(self._executor, functools.partial(ctx.run, fn, *args))
        if inspect.isawaitable(result):  # a sync wrapper that returned a coroutine
            return await result
        return result

    def close(self) -> None:
        # Do not wait: a handler abandoned after its timeout may still be running.
        self._executor.shutdown(wait=False, cancel_futures=True)


class _TimedProcessor:
    """Shared invoke path: build the context, enforce the timeout."""

    name: str
    function_arn: str

    def __init__(self, name: str, function_arn: str, timeout_s: float) -> None:
        self.name = name
        self.function_arn = function_arn
        self._timeout_s = timeout_s
        self._runner = _Runner(name)

    async def invoke(self, batch: Batch) -> Any:
        return await self.invoke_event(batch.event(), batch.shard_id)

    async def invoke_event(self, event: dict[str, Any], shard_id: str) -> Any:
        return await self._call_with_timeout(self._target(), event, self.context_for(shard_id))

    def _target(self) -> Callable[..., Any]:
        raise NotImplementedError

    def context_for(self, shard_id: str) -> LambdaContext:
        return LambdaContext(
            function_name=self.name,
            invoked_function_arn=self.function_arn,
            aws_request_id=str(uuid.uuid4()),
            deadline_monotonic=time.monotonic() + self._timeout_s,
            log_group_name=f"/shardwise/{self.name}",
            log_stream_name=shard_id,
            shard_id=shard_id,
        )

    async def _call_with_timeout(self, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            async with asyncio.timeout(self._timeout_s):
                return await self._runner.call(fn, *args)
        except TimeoutError as exc:
            raise HandlerTimeoutError(
                f"processor {self.name}: handler did not finish within {self._timeout_s:g} s"
            ) from exc


class FunctionProcessor(_TimedProcessor):
    """A Lambda-style ``handler(event, context)``."""

    def __init__(
        self, name: str, handler: Callable[..., Any], function_arn: str, timeout_s: float
    ) -> None:
        super().__init__(name, function_arn, timeout_s)
        self._handler = handler

    async def start(self) -> None:
        return None

    def _target(self) -> Callable[..., Any]:
        return self._handler

    async def stop(self) -> None:
        self._runner.close()


class ClassProcessor(_TimedProcessor):
    """A class with ``process(event, context)`` and optional ``setup()`` / ``teardown()``."""

    def __init__(self, name: str, cls: type[Any], function_arn: str, timeout_s: float) -> None:
        super().__init__(name, function_arn, timeout_s)
        if not callable(getattr(cls, "process", None)):
            raise HandlerImportError(
                f"processor {name}: class {cls.__qualname__} has no process(event, context) method"
            )
        self._instance: Any = cls()

    async def start(self) -> None:
        setup = getattr(self._instance, "setup", None)
        if callable(setup):
            await self._runner.call(setup)

    def _target(self) -> Callable[..., Any]:
        return self._instance.process  # type: ignore[no-any-return]

    async def stop(self) -> None:
        teardown = getattr(self._instance, "teardown", None)
        try:
            if callable(teardown):
                await self._runner.call(teardown)
        finally:
            self._runner.close()


def _region_and_account(stream_arn: str) -> tuple[str, str]:
    parts = stream_arn.split(":")
    return (parts[3], parts[4]) if len(parts) > 4 else ("", "")


def stream_region(stream_arn: str) -> str:
    """The region in a stream's ARN ("" when it is not an ARN)."""
    return _region_and_account(stream_arn)[0]


def function_arn_for(name: str, stream_arn: str) -> str:
    """A Lambda-style ARN in the stream's region and account, for handlers that parse it."""
    region, account = _region_and_account(stream_arn)
    return f"arn:aws:lambda:{region}:{account}:function:{name}"


def build_processor(name: str, target: Any, *, stream_arn: str, timeout_s: float) -> Processor:
    """Wrap an imported handler (see ``import_handler``) as a function or class processor."""
    arn = function_arn_for(name, stream_arn)
    if inspect.isclass(target):
        return ClassProcessor(name, target, arn, timeout_s)
    return FunctionProcessor(name, target, arn, timeout_s)
