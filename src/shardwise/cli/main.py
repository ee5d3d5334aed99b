"""The ``shardwise`` parser and entry point; the commands ``run``, ``validate`` and ``demo``.

The other commands register themselves from their own modules: ``status``, ``iam-policy``,
``checkpoints``, ``db``, ``failures``, ``import-esm``, ``leases``. Exit codes
(``exit_codes.py``): 0 success, 1 runtime failure, 2 invalid configuration or handler.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from shardwise import __version__
from shardwise.cli.esm_import import add_import_esm_command
from shardwise.cli.exit_codes import EXIT_FAILURE, EXIT_INVALID, EXIT_OK
from shardwise.cli.failures import add_failures_commands
from shardwise.cli.iam import add_iam_policy_command
from shardwise.cli.leases import add_leases_commands
from shardwise.cli.status import add_status_command
from shardwise.cli.store import add_checkpoints_command, add_db_commands
from shardwise.config import Settings, add_config_argument, load_config
from shardwise.errors import ConfigError, HandlerImportError, ShardwiseError, first_error
from shardwise.observe.logging import configure_logging

if TYPE_CHECKING:
    from shardwise.runtimes import RuntimeSpec
    from shardwise.workers import WorkerProcess

__all__ = ["main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shardwise",
        description="Run stock Lambda handlers on DynamoDB Streams and Kinesis Data Streams, "
        "with Lambda's semantics.",
    )
    parser.add_argument("--version", action="version", version=f"shardwise {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run the processors of a config until stopped")
    add_config_argument(run)
    # Internal: how `run` starts its worker processes (worker.processes > 1; workers/).
    run.add_argument("--as-worker-process", metavar="WORKER_ID", help=argparse.SUPPRESS)
    run.add_argument("--parent-fd", type=int, help=argparse.SUPPRESS)
    run.set_defaults(func=_cmd_run)

    validate = commands.add_parser("validate", help="check a config and import its handlers")
    add_config_argument(validate)
    validate.set_defaults(func=_cmd_validate)

    add_status_command(commands)
    add_iam_policy_command(commands)
    add_checkpoints_command(commands)
    add_db_commands(commands)

    demo = commands.add_parser(
        "demo", help="an embedded DynamoDB (moto) with items written continuously, consumed live"
    )
    demo.add_argument("--seconds", type=float, default=None, help="stop after this long")
    demo.add_argument(
        "--writes-per-second", type=float, default=20.0, help="item writes per second"
    )
    demo.add_argument("--workdir", type=Path, default=None, help="where the demo keeps its files")
    demo.add_argument(
        "--node",
        type=Path,
        default=None,
        metavar="DIR",
        help="feed the records to the Node.js function in DIR (index.handler, aws-lambda-ric "
        "installed there) through the Lambda Runtime API; make demo-node sets it up",
    )
    demo.set_defaults(func=_cmd_demo)

    add_failures_commands(commands)
    add_import_esm_command(commands)
    add_leases_commands(commands)
    return parser


def _cmd_run(args: argparse.Namespace) -> int:
    from shardwise.workers import WorkerPool, WorkerProcess, resolve_processes

    settings = load_config(args.config)
    configure_logging(settings.log.level, settings.log.format)
    if args.as_worker_process is not None:
        child = WorkerProcess(args.as_worker_process, args.parent_fd)
        structlog.contextvars.bind_contextvars(worker=child.worker_id)
        asyncio.run(serve(child.settings(settings), config_path=args.config, child=child))
        return EXIT_OK
    processes = resolve_processes(settings.worker.processes)
    if processes > 1:
        pool = WorkerPool(settings, config_path=args.config, processes=processes)
        return asyncio.run(pool.run())
    asyncio.run(serve(settings, config_path=args.config))
    return EXIT_OK


async def serve(
    settings: Settings, *, config_path: Path | None = None, child: WorkerProcess | None = None
) -> None:
    """The daemon: the supervisor, with /metrics, /healthz and /readyz on ``http.bind``.

    ``child``: this is one of the worker processes ``run`` starts for ``worker.processes``;
    it reports its endpoint to the parent and drains if the parent goes away.
    """
    from shardwise.observe.health import ObserveServer
    from shardwise.supervisor import Supervisor

    supervisor = Supervisor(
        settings, config_path=config_path, adjust=child.settings if child else None
    )
    async with (
        ObserveServer(
            settings,
            supervisor.progress,
            store=lambda: supervisor.store,
            started=supervisor.started,
            stopping=supervisor.stop_event,
            max_checkpoint_stall_s=settings.health.max_checkpoint_stall_seconds,
            failed=supervisor.failed,
        ) as server,
        contextlib.AsyncExitStack() as stack,
    ):
        if child is not None:

            def drain() -> None:  # once: a second request would cancel in-flight work
                if not supervisor.stop_event.is_set():
                    supervisor.request_stop()

            link = child.link(server.bound_port, started=supervisor.started, on_parent_gone=drain)
            await stack.enter_async_context(link)
        await supervisor.run()


def _cmd_validate(args: argparse.Namespace) -> int:
    from shardwise.functions import prepare

    settings = load_config(args.config)
    problems: list[str] = []
    for index, processor in enumerate(settings.processors):
        try:
            function = prepare(processor, settings.config_dir)
            if function.runtime is not None:
                asyncio.run(_check_runtime_init(function.runtime, settings.aws.region))
        except HandlerImportError as exc:
            problems.append(f"processors[{index}].{processor.function_kind}: {exc}")
    if problems:
        raise ConfigError(problems, source=str(args.config))
    names = ", ".join(p.name for p in settings.processors)
    print(f"{args.config}: OK ({len(settings.processors)} processor(s): {names})")
    return EXIT_OK


async def _check_runtime_init(spec: RuntimeSpec, region: str | None) -> None:
    """Start the runtime once, as Lambda's init phase would, then stop it.

    The process gets no AWS credentials here: validate reads no credential chain.
    """
    from shardwise.runtimes import RuntimeProcess

    process = RuntimeProcess(dataclasses.replace(spec, region=region or ""), credentials={})
    await process.start()
    await process.stop()


def _cmd_demo(args: argparse.Namespace) -> int:
    from shardwise.demo import run_demo

    return run_demo(
        seconds=args.seconds,
        writes_per_second=args.writes_per_second,
        workdir=args.workdir,
        node_dir=args.node,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except KeyboardInterrupt:
        return EXIT_OK
    except BaseException as raised:
        exc = first_error(raised)
        if isinstance(exc, KeyboardInterrupt | SystemExit):
            raise
        if isinstance(exc, ConfigError):
            print(f"error: invalid configuration {exc.source or ''}".rstrip(), file=sys.stderr)
            for problem in exc.problems:
                print(f"  {problem}", file=sys.stderr)
            return EXIT_INVALID
        if isinstance(exc, HandlerImportError):
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_INVALID
        if isinstance(exc, ShardwiseError):
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_FAILURE
        raise
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
