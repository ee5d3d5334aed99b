"""``shardwise checkpoints`` and ``shardwise db upgrade|current|purge-idempotency``: the store."""

from __future__ import annotations

import argparse
import asyncio

from shardwise.cli.exit_codes import EXIT_OK
from shardwise.cli.table import format_table
from shardwise.config import add_config_argument, load_config
from shardwise.store import CheckpointStore, current_revision, redact_url, upgrade
from shardwise.store.idempotency import IdempotencyStore

__all__ = ["add_checkpoints_command", "add_db_commands"]


def add_checkpoints_command(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    """Register ``shardwise checkpoints -c CONFIG [--processor NAME]``."""
    checkpoints = subparsers.add_parser("checkpoints", help="print the stored shard checkpoints")
    add_config_argument(checkpoints)
    checkpoints.add_argument("--processor", help="only this processor")
    checkpoints.set_defaults(func=_cmd_checkpoints)


def add_db_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``shardwise db upgrade|current|purge-idempotency``."""
    db = subparsers.add_parser("db", help="manage the checkpoint store's schema")
    db_commands = db.add_subparsers(dest="db_command", required=True, metavar="DB_COMMAND")
    migrate = db_commands.add_parser("upgrade", help="apply schema migrations (Alembic)")
    add_config_argument(migrate)
    migrate.add_argument("--revision", default="head", help="target revision (default: head)")
    migrate.set_defaults(func=_cmd_db_upgrade)
    current = db_commands.add_parser("current", help="print the schema revision")
    add_config_argument(current)
    current.set_defaults(func=_cmd_db_current)
    purge = db_commands.add_parser(
        "purge-idempotency", help="delete expired shardwise.idempotency rows now"
    )
    add_config_argument(purge)
    purge.set_defaults(func=_cmd_db_purge_idempotency)


def _cmd_checkpoints(args: argparse.Namespace) -> int:
    settings = load_config(args.config)

    async def rows() -> list[list[str]]:
        async with await CheckpointStore.connect(settings.store.url, migrate=False) as store:
            found = await store.list(args.processor)
        return [
            [
                c.processor,
                c.shard_id,
                c.sequence_number or f"({c.start_position.value})",
                "yes" if c.finished else "no",
                c.updated_at.isoformat(timespec="seconds"),
                c.stream_arn,
            ]
            for c in found
        ]

    table = asyncio.run(rows())
    if not table:
        print("no checkpoints yet")
        return EXIT_OK
    header = ["PROCESSOR", "SHARD", "SEQUENCE", "FINISHED", "UPDATED", "STREAM"]
    print(format_table(header, table))
    return EXIT_OK


def _cmd_db_upgrade(args: argparse.Namespace) -> int:
    settings = load_config(args.config)
    asyncio.run(upgrade(settings.store.url, args.revision))
    revision = asyncio.run(current_revision(settings.store.url))
    print(f"{redact_url(settings.store.url)}: schema at revision {revision}")
    return EXIT_OK


def _cmd_db_current(args: argparse.Namespace) -> int:
    settings = load_config(args.config)
    revision = asyncio.run(current_revision(settings.store.url))
    print(f"{redact_url(settings.store.url)}: {revision or 'no schema (run shardwise db upgrade)'}")
    return EXIT_OK


def _cmd_db_purge_idempotency(args: argparse.Namespace) -> int:
    settings = load_config(args.config)

    async def purge() -> int:
        rows = await IdempotencyStore.connect(settings.store.url, migrate=False)
        try:
            return await rows.purge_expired()
        finally:
            await rows.close()

    purged = asyncio.run(purge())
    print(f"{redact_url(settings.store.url)}: {purged} expired idempotency rows deleted")
    return EXIT_OK
