"""What the demo runs and where: its processor's settings, its work directory, its environment."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from shardwise.config import Settings, parse_config
from shardwise.demo.dynamodb import REGION, TABLE

__all__ = [
    "CHECKPOINTS_DB",
    "DRAIN_S",
    "HANDLER",
    "NODE_COMMAND",
    "PROCESSOR",
    "VIEW_DB",
    "VIEW_DB_ENV",
    "demo_environment",
    "demo_settings",
    "prepare_workdir",
]

PROCESSOR = "orders-view"
HANDLER_MODULE = "shardwise.examples.orders_view"
HANDLER = f"{HANDLER_MODULE}.handler"  # Lambda's file.function notation
VIEW_DB = "orders_view.db"
VIEW_DB_ENV = "ORDERS_VIEW_DB"
CHECKPOINTS_DB = "demo-checkpoints.db"
DRAIN_S = 10.0


def prepare_workdir(workdir: Path | None) -> Path:
    """A new temporary directory, or ``workdir`` without the files of an earlier run."""
    if workdir is None:
        return Path(tempfile.mkdtemp(prefix="shardwise-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    for name in (VIEW_DB, CHECKPOINTS_DB):
        for suffix in ("", "-journal", "-wal", "-shm"):
            (workdir / (name + suffix)).unlink(missing_ok=True)
    return workdir.resolve()


@contextmanager
def demo_environment(view_db: Path) -> Iterator[None]:
    """The handler's view path and, when none are set, moto's dummy credentials; undone after."""
    updates = {VIEW_DB_ENV: str(view_db)}
    if not (os.environ.get("AWS_ACCESS_KEY_ID") or os.environ.get("AWS_SECRET_ACCESS_KEY")):
        updates |= {"AWS_ACCESS_KEY_ID": "demo", "AWS_SECRET_ACCESS_KEY": "demo"}
    saved = {name: os.environ.get(name) for name in updates}
    os.environ.update(updates)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


# The Node.js function of `shardwise demo --node DIR`: AWS's Runtime Interface Client
# installed in DIR (npm install aws-lambda-ric) serving DIR/index.js's handler.
NODE_COMMAND = ("node", "node_modules/aws-lambda-ric/index.mjs", "index.handler")


def demo_settings(endpoint_url: str, workdir: Path, node_dir: Path | None = None) -> Settings:
    """One processor on the demo table, checkpoints in SQLite: ``HANDLER`` in process, or
    with ``node_dir`` the Node.js function there through the Lambda Runtime API."""
    store_url = f"sqlite+aiosqlite:///{workdir / CHECKPOINTS_DB}"
    function = f"handler: {HANDLER}"
    if node_dir is not None:
        command = json.dumps(NODE_COMMAND)
        function = (
            f"runtime: {{command: {command}, working_directory: {_yaml_text(str(node_dir))}}}"
        )
    text = f"""
aws:
  region: {REGION}
  endpoint_url: {endpoint_url}
store:
  url: {_yaml_text(store_url)}
log:
  level: WARNING
worker:
  shutdown_timeout_seconds: {DRAIN_S}
processors:
  - name: {PROCESSOR}
    source: {{dynamodb: {{table: {TABLE}}}}}
    {function}
    starting_position: TRIM_HORIZON
    batch_size: 100
"""
    return parse_config(text, source="<shardwise demo>", config_dir=workdir)


def _yaml_text(value: str) -> str:
    """A double-quoted YAML scalar that ``${...}`` expansion leaves alone."""
    return json.dumps(value.replace("${", "$${"))
