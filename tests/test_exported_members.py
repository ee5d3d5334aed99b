"""The public API, pinned: a change here is a change users see."""

from __future__ import annotations

import importlib

import pytest

PUBLIC = {
    "shardwise": ["__version__"],
    # The streams server, and the kit for users' processor tests (events, harness).
    "shardwise.testing": [
        "Invocation",
        "RunResult",
        "ScriptedKinesisStream",
        "ScriptedStream",
        "Sequencer",
        "StreamsServer",
        "event",
        "insert",
        "item_size",
        "kinesis_record",
        "modify",
        "remove",
        "run_handler",
        "run_handler_sync",
        "run_processor",
        "run_processor_sync",
        "ttl_delete",
    ],
    "shardwise.testing.events": [
        "ACCOUNT_ID",
        "DYNAMODB_FIRST_SEQUENCE",
        "KINESIS_FIRST_SEQUENCE",
        "Sequencer",
        "ViewType",
        "dynamodb_stream_arn",
        "event",
        "insert",
        "item_size",
        "kinesis_record",
        "kinesis_stream_arn",
        "modify",
        "remove",
        "ttl_delete",
    ],
    "shardwise.testing.harness": [
        "DEFAULT_SHARD_ID",
        "Invocation",
        "Outcome",
        "RunResult",
        "run_handler",
        "run_handler_sync",
        "run_processor",
        "run_processor_sync",
    ],
    "shardwise.testing.pytest_plugin": ["dynamodb_stream", "kinesis_stream", "streams_server"],
    "shardwise.records": [
        "DYNAMODB_SHAPE",
        "KINESIS_SHAPE",
        "Batch",
        "Position",
        "ReadLimits",
        "RecordPage",
        "RecordShape",
        "SequenceNumber",
        "Shard",
        "ShardId",
        "ShardListing",
        "StartingPosition",
        "StreamRecord",
        "shape_of",
        "sortable_position",
    ],
    "shardwise.processors": [
        "CURRENT_TRANSACTION",
        "ClassProcessor",
        "FunctionProcessor",
        "LambdaContext",
        "Processor",
        "build_processor",
        "import_handler",
        "search_paths",
        "split_handler",
    ],
    "shardwise.store": [
        "CheckpointStore",
        "ShardCheckpoint",
        "ShardRegistration",
        "current_revision",
        "head_revision",
        "redact_url",
        "upgrade",
    ],
    "shardwise.idempotency": [
        "Idempotency",
        "IdempotencyInProgressError",
        "IdempotencyKeyError",
        "IdempotencyResultError",
        "configure_idempotency",
        "idempotent",
        "record_key",
    ],
    "shardwise.idempotency.powertools": ["SqlPersistenceLayer"],
    "shardwise.leases": [
        "FencedCheckpointer",
        "Lease",
        "LeaseCoordinator",
        "LossReason",
        "collected_ancestors",
    ],
    "shardwise.destinations": [
        "Destination",
        "DestinationError",
        "FailedBatch",
        "FailureCondition",
        "FileDestination",
        "S3Destination",
        "SnsDestination",
        "SqlDestination",
        "SqsDestination",
        "esm_uuid",
        "open_destination",
        "target_kind",
    ],
}


class TestExportedMembers:
    """Each public module exports exactly its sorted __all__, and every name exists."""

    @pytest.mark.parametrize("module_name", sorted(PUBLIC))
    def test_all_is_pinned(self, module_name: str) -> None:
        module = importlib.import_module(module_name)
        assert list(module.__all__) == PUBLIC[module_name]
        for name in module.__all__:
            assert hasattr(module, name), f"{module_name}.{name}"

    def test_every_error_derives_from_shardwise_error(self) -> None:
        errors = importlib.import_module("shardwise.errors")
        for name in errors.__all__:
            value = getattr(errors, name)
            if isinstance(value, type):
                assert issubclass(value, errors.ShardwiseError), name
