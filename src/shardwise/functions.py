"""What a processor runs: a Python handler in process, a runtime process, or an invoke URL.

``prepare`` checks a processor's function before anything starts (the handler imports; the
runtime's working directory and command exist) and returns what ``open_processor`` turns
into a ``processors.Processor`` once the stream is known. Both raise
``HandlerImportError`` naming the processor, so ``validate``, ``run`` and ``failures
replay`` fail the same way.
"""

from __future__ import annotations

import inspect
import os
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from shardwise.config import ProcessorConfig
from shardwise.errors import HandlerImportError
from shardwise.processors import (
    Processor,
    build_processor,
    function_arn_for,
    import_handler,
    search_paths,
    stream_region,
)
from shardwise.runtimes import CredentialSource, InvokeUrlProcessor, RuntimeProcessor, RuntimeSpec

__all__ = ["Function", "open_processor", "prepare"]


@dataclass(frozen=True, slots=True)
class Function:
    """A prepared function: the imported Python handler, a runtime to start, or a URL."""

    handler: Any = None
    runtime: RuntimeSpec | None = None
    url: str | None = None


def prepare(config: ProcessorConfig, config_dir: Path) -> Function:
    """Check ``config``'s function and get it ready; ``HandlerImportError`` says what is wrong."""
    if config.handler is not None:
        handler = import_handler(config.handler, search_paths(config_dir))
        if config.transactional:
            _require_async(config, handler)
        return Function(handler=handler)
    if config.invoke is not None:
        return Function(url=config.invoke.url)
    runtime = config.runtime
    assert runtime is not None
    where = f"processor {config.name}: runtime"
    directory = (config_dir / runtime.working_directory).resolve()
    if not directory.is_dir():
        raise HandlerImportError(f"{where}.working_directory {directory} is not a directory")
    program = runtime.command[0]
    if os.sep in program:
        path = Path(program) if Path(program).is_absolute() else directory / program
        if not path.is_file():
            raise HandlerImportError(f"{where}.command: {path} does not exist")
        if not os.access(path, os.X_OK):
            raise HandlerImportError(f"{where}.command: {path} is not executable (chmod +x)")
    elif shutil.which(program) is None:
        raise HandlerImportError(f"{where}.command: {program!r} is not on PATH")
    spec = RuntimeSpec(
        function_name=config.name,
        command=runtime.command,
        working_directory=directory,
        handler=runtime.lambda_handler,
        environment=dict(runtime.environment),
        memory_mb=runtime.memory_mb,
        init_timeout_s=runtime.init_timeout_seconds,
        shutdown_grace_s=runtime.shutdown_grace_seconds,
    )
    return Function(runtime=spec)


def _require_async(config: ProcessorConfig, handler: Any) -> None:
    """A transactional handler writes through an ``AsyncConnection``: it must be async."""
    function = getattr(handler, "process", None) if inspect.isclass(handler) else handler
    if not inspect.iscoroutinefunction(function):
        raise HandlerImportError(
            f"processor {config.name}: transactional: true needs an async handler "
            f"({config.handler} must be 'async def'): it writes through context.transaction, "
            "an SQLAlchemy AsyncConnection"
        )


def open_processor(
    config: ProcessorConfig,
    function: Function,
    *,
    stream_arn: str,
    region: str | None = None,
    credentials: CredentialSource | None = None,
) -> Processor:
    """The processor that runs ``function`` for ``config`` on the stream ``stream_arn``.

    A runtime's ``AWS_REGION`` is ``region``, else the stream's; ``credentials`` are read
    for its processes (see ``runtimes.pool``).
    """
    timeout_s = config.timeout_seconds
    arn = function_arn_for(config.name, stream_arn)
    if function.runtime is not None:
        spec = replace(function.runtime, region=region or stream_region(stream_arn))
        return RuntimeProcessor(
            spec, function_arn=arn, timeout_s=timeout_s, credentials=credentials
        )
    if function.url is not None:
        return InvokeUrlProcessor(config.name, function.url, function_arn=arn, timeout_s=timeout_s)
    return build_processor(
        config.name, function.handler, stream_arn=stream_arn, timeout_s=timeout_s
    )
