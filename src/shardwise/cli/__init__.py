"""The ``shardwise`` command: every operator command, one module per command group."""

from __future__ import annotations

from shardwise.cli.main import main

__all__ = ["main"]
