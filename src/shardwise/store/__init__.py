"""The checkpoint store: where every processor is in every shard, kept in SQL.

``CheckpointStore`` reads and writes checkpoints; ``upgrade`` and ``current_revision`` run
and inspect the schema migrations (``shardwise db upgrade``); ``redact_url`` is the form of
a database URL that may appear in messages and logs.
"""

from __future__ import annotations

from shardwise.store.checkpoints import CheckpointStore, ShardCheckpoint, ShardRegistration
from shardwise.store.engine import redact_url
from shardwise.store.migrate import current_revision, head_revision, upgrade

__all__ = [
    "CheckpointStore",
    "ShardCheckpoint",
    "ShardRegistration",
    "current_revision",
    "head_revision",
    "redact_url",
    "upgrade",
]
