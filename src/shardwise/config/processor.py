"""One ``processors:`` entry: a stream, the handler it feeds, and Lambda's ESM settings.

``ProcessorConfig`` mirrors one Lambda event source mapping, its keys the ESM parameters in
snake_case (``BatchSize`` -> ``batch_size``); the classes above it are its nested parts
(``source``, ``destination_config``, ``filter_criteria``).
"""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BeforeValidator,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from shardwise.config.values import ConfigModel, Int, Name, Seconds, matching
from shardwise.dispatch.filters import MAX_FILTERS, validate_pattern
from shardwise.processors import split_handler
from shardwise.records import StartingPosition
from shardwise.runtimes import RESERVED_ENVIRONMENT

__all__ = [
    "DestinationConfig",
    "DynamoDBSourceConfig",
    "FilterConfig",
    "FilterCriteriaConfig",
    "InvokeConfig",
    "KinesisSourceConfig",
    "OnFailureConfig",
    "ProcessorConfig",
    "RuntimeConfig",
    "SourceConfig",
]

_TABLE = r"[A-Za-z0-9_.-]{3,255}"
_TABLE_ARN = rf"arn:aws[a-z-]*:dynamodb:[a-z0-9-]+:\d{{12}}:table/{_TABLE}"
_STREAM_ARN = rf"{_TABLE_ARN}/stream/[^\s/]+"
_TABLE_NAME = matching(
    rf"{_TABLE}|{_TABLE_ARN}", "must be a table name (3-255 of A-Z a-z 0-9 _ . -) or a table ARN"
)


def _handler(value: str) -> str:
    split_handler(value)  # Lambda's file.function or module:attribute; ValueError says why
    return value


def _stream_arn(value: str) -> str:
    if re.fullmatch(_STREAM_ARN, value):
        return value
    if re.fullmatch(_TABLE_ARN, value):
        raise ValueError("is a table ARN, not a stream ARN; set table: instead")
    raise ValueError(
        "must be a DynamoDB stream ARN like "
        "arn:aws:dynamodb:us-east-1:123456789012:table/Orders/stream/2026-01-01T00:00:00.000"
    )


class DynamoDBSourceConfig(ConfigModel):
    """A DynamoDB stream, named by its table or by its stream ARN (exactly one)."""

    table: Annotated[str, _TABLE_NAME] | None = None
    """Table name (or table ARN); resolved to its LatestStreamArn with DescribeTable."""
    stream_arn: Annotated[str, AfterValidator(_stream_arn)] | None = None
    """A specific stream (ESM EventSourceArn)."""

    @model_validator(mode="after")
    def _exactly_one(self) -> DynamoDBSourceConfig:
        if (self.table is None) == (self.stream_arn is None):
            state = "neither is set" if self.table is None else "both are set"
            raise ValueError(f"set exactly one of table or stream_arn ({state})")
        return self


_KINESIS_STREAM = r"[A-Za-z0-9_.-]{1,128}"
_KINESIS_STREAM_ARN = rf"arn:aws[a-z-]*:kinesis:[a-z0-9-]+:\d{{12}}:stream/{_KINESIS_STREAM}"


def _kinesis_stream_arn(value: str) -> str:
    if re.fullmatch(_KINESIS_STREAM_ARN, value):
        return value
    raise ValueError(
        "must be a Kinesis stream ARN like arn:aws:kinesis:us-east-1:123456789012:stream/orders"
    )


class KinesisSourceConfig(ConfigModel):
    """A Kinesis data stream, named by its name or by its ARN (exactly one)."""

    stream_name: (
        Annotated[
            str, matching(_KINESIS_STREAM, "must be a stream name (1-128 of A-Z a-z 0-9 _ . -)")
        ]
        | None
    ) = None
    """The stream's name, in ``aws.region``; its ARN is read with DescribeStreamSummary."""
    stream_arn: Annotated[str, AfterValidator(_kinesis_stream_arn)] | None = None
    """The stream's ARN (ESM EventSourceArn)."""
    deaggregate: bool = False
    """Split KPL-aggregated records into their user records (the KCL's behaviour); false
    hands them to the function as they are, as Lambda does."""
    invoke_identity_arn: str = ""
    """The ``invokeIdentityArn`` of every record (Lambda puts the function's execution role
    there); empty unless set."""

    @model_validator(mode="after")
    def _exactly_one(self) -> KinesisSourceConfig:
        if (self.stream_name is None) == (self.stream_arn is None):
            state = "neither is set" if self.stream_name is None else "both are set"
            raise ValueError(f"set exactly one of stream_name or stream_arn ({state})")
        return self


class SourceConfig(ConfigModel):
    """Where a processor's records come from: a DynamoDB stream or a Kinesis data stream."""

    dynamodb: DynamoDBSourceConfig | None = None
    kinesis: KinesisSourceConfig | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> SourceConfig:
        if (self.dynamodb is None) == (self.kinesis is None):
            state = "neither is set" if self.dynamodb is None else "both are set"
            raise ValueError(f"set exactly one of dynamodb or kinesis ({state})")
        return self

    @property
    def kind(self) -> Literal["dynamodb", "kinesis"]:
        return "kinesis" if self.kinesis is not None else "dynamodb"


_DESTINATION = matching(
    r"arn:aws[a-z-]*:(sqs|sns):[a-z0-9-]+:\d{12}:[A-Za-z0-9_.-]+"
    r"|arn:aws[a-z-]*:s3:::[a-z0-9.-]{3,63}"
    r"|s3://[a-z0-9.-]{3,63}(/\S*)?"
    r"|sql"
    r"|file:///\S+",
    "must be an SQS or SNS ARN, an S3 bucket (arn:aws:s3:::bucket or s3://bucket/prefix), "
    "sql, or file:///path.jsonl",
)


class OnFailureConfig(ConfigModel):
    """Where records go once retries are exhausted or they are too old."""

    destination: Annotated[str, _DESTINATION]
    """DestinationConfig.OnFailure.Destination: SQS/SNS ARN (metadata), S3, sql or file."""


class DestinationConfig(ConfigModel):
    """DestinationConfig."""

    on_failure: OnFailureConfig


def _record_age(value: int) -> int:
    if value != -1 and not 60 <= value <= 604_800:
        raise PydanticCustomError("record_age", "must be -1 or 60..604800")
    return value


class FilterConfig(ConfigModel):
    """One filter: an event pattern in Lambda's filter syntax, as a JSON string."""

    pattern: Annotated[str, AfterValidator(validate_pattern)]
    """FilterCriteria.Filters[].Pattern."""


class FilterCriteriaConfig(ConfigModel):
    """FilterCriteria: a record is processed when it matches any filter."""

    filters: tuple[FilterConfig, ...] = Field(default=(), max_length=MAX_FILTERS)


def _environment_value(value: object) -> object:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return value


def _environment(value: dict[str, str]) -> dict[str, str]:
    reserved = sorted(RESERVED_ENVIRONMENT & value.keys())
    if reserved:
        raise ValueError(
            f"sets {', '.join(reserved)}, which the runtime sets itself (Lambda reserves them)"
        )
    for key in value:
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", key):
            raise ValueError(f"{key!r} is not a valid variable name (letters, digits, _)")
    return value


class RuntimeConfig(ConfigModel):
    """A function in its own process, served the Lambda Runtime API (any language)."""

    command: tuple[str, ...] = Field(min_length=1)
    """What starts the runtime, e.g. ["python", "-m", "awslambdaric", "app.handler"],
    ["node", "node_modules/aws-lambda-ric/index.mjs", "index.handler"] or ["./bootstrap"]."""
    working_directory: Path = Path(".")
    """The function's code (LAMBDA_TASK_ROOT), relative to the config file's directory."""
    handler: str | None = None
    """The _HANDLER the runtime reads; by default the command's last word when it has more
    than one (index.handler in the examples above)."""
    environment: dict[str, Annotated[str, BeforeValidator(_environment_value)]] = Field(
        default_factory=dict
    )
    """The function's environment variables, set on top of Lambda's own."""
    memory_mb: Int = Field(default=128, ge=128, le=10_240)
    """MemorySize, reported to the function (AWS_LAMBDA_FUNCTION_MEMORY_SIZE); not enforced."""
    init_timeout_seconds: Seconds = Field(default=10.0, gt=0, le=900)
    """How long a new process may take to ask for its first event (Lambda's init phase: 10 s)."""
    shutdown_grace_seconds: Seconds = Field(default=2.0, ge=0, le=60)
    """After SIGTERM at shutdown, how long before the process is killed."""

    @field_validator("environment")
    @classmethod
    def _no_reserved_names(cls, value: dict[str, str]) -> dict[str, str]:
        return _environment(value)

    @property
    def lambda_handler(self) -> str:
        if self.handler is not None:
            return self.handler
        return self.command[-1] if len(self.command) > 1 else ""


class InvokeConfig(ConfigModel):
    """A function that already runs behind an invoke URL (a Lambda image's emulator)."""

    url: Annotated[
        str,
        matching(r"https?://[^\s/]+(/\S*)?", "must be an http:// or https:// URL"),
    ]
    """e.g. http://orders-fn:8080/2015-03-31/functions/function/invocations"""


_FUNCTION_KINDS = ("handler", "runtime", "invoke")
_WHICH_FUNCTION = (
    "handler: a Python function run in process (app.orders.handler); "
    "runtime: a command that speaks the Lambda Runtime API (any language); "
    "invoke: the URL of a function that already runs (a Lambda image's emulator)"
)


class ProcessorConfig(ConfigModel):
    """One stream -> one handler, like one Lambda event source mapping."""

    name: Name
    """Unique; also the checkpoint namespace, so renaming starts over."""
    source: SourceConfig
    handler: Annotated[str, AfterValidator(_handler)] | None = None
    """Lambda's file.function (app.orders.handler) or module:attribute, imported with the
    config file's directory on sys.path. Exactly one of handler, runtime and invoke."""
    runtime: RuntimeConfig | None = None
    """A function in its own process, through the Lambda Runtime API (any language)."""
    invoke: InvokeConfig | None = None
    """A function that already runs behind an invoke URL (a sidecar from a Lambda image)."""
    starting_position: StartingPosition
    """StartingPosition: where to begin on a stream never read before (AT_TIMESTAMP:
    Kinesis only, with starting_position_timestamp)."""
    starting_position_timestamp: AwareDatetime | None = Field(default=None, validate_default=True)
    """StartingPositionTimestamp: with AT_TIMESTAMP, the first records read are those that
    arrived at or after this time (ISO 8601 with a zone, or epoch seconds)."""
    batch_size: Int = Field(default=100, ge=1, le=10_000)
    """BatchSize: most records per invocation."""
    maximum_batching_window_in_seconds: Seconds = Field(default=0.0, ge=0, le=300)
    """MaximumBatchingWindowInSeconds: wait up to this long to fill a batch."""
    enabled: bool = True
    """Enabled: false pauses the processor, keeping its position."""
    timeout_seconds: Seconds = Field(default=900.0, ge=1, le=900)
    """The Lambda function's Timeout: a longer invocation fails the batch."""
    on_trimmed_data: Literal["trim_horizon", "stop"] = "trim_horizon"
    """On TrimmedDataAccessException: log and count the gap, resume at TRIM_HORIZON; or stop."""
    maximum_retry_attempts: Int = Field(default=-1, ge=-1, le=10_000)
    """MaximumRetryAttempts: retries of a failed batch; -1 retries until the record expires."""
    bisect_batch_on_function_error: bool = False
    """BisectBatchOnFunctionError: split a failed batch in two and retry each half."""
    function_response_types: tuple[Literal["ReportBatchItemFailures"], ...] = ()
    """FunctionResponseTypes: [ReportBatchItemFailures] lets the handler name failed records."""
    maximum_record_age_in_seconds: Annotated[Int, AfterValidator(_record_age)] = -1
    """MaximumRecordAgeInSeconds: older records skip the handler and go to the destination;
    -1 (the default) is infinite: age never discards a record."""
    destination_config: DestinationConfig | None = None
    """DestinationConfig.OnFailure: where exhausted or too-old records are sent."""
    tumbling_window_in_seconds: Int = Field(default=0, ge=0, le=900)
    """TumblingWindowInSeconds: stateful windows of this length; 0 turns them off."""
    parallelization_factor: Int = Field(default=1, ge=1, le=10)
    """ParallelizationFactor: batches of one shard in flight at once (one item stays in order)."""
    payload_limit_bytes: Int = Field(default=6 * 1024 * 1024, ge=1024, le=256 * 1024 * 1024)
    """Largest event JSON per invocation (Lambda: 6 MB); a bigger record goes to the destination."""
    filter_criteria: FilterCriteriaConfig | None = None
    """FilterCriteria: records matching no filter are consumed without invoking the handler."""
    transactional: bool = False
    """The handler (``async def``) writes through ``context.transaction``, an open
    connection to the store's database; its writes commit together with the checkpoint of
    the records the invocation resolved, or not at all (effectively once)."""
    max_poll_interval_seconds: Seconds = Field(default=3.0, ge=0.25, le=300)
    """Longest pause between GetRecords calls on an idle shard (while busy, as Lambda: 4
    polls/s for DynamoDB Streams, 1 for Kinesis)."""

    @property
    def function_kind(self) -> str:
        """Which of handler, runtime or invoke names the function (exactly one does)."""
        return next(kind for kind in _FUNCTION_KINDS if getattr(self, kind) is not None)

    @model_validator(mode="after")
    def _one_function(self) -> ProcessorConfig:
        given = [kind for kind in _FUNCTION_KINDS if getattr(self, kind) is not None]
        if len(given) != 1:
            state = "none is set" if not given else f"{' and '.join(given)} are set"
            raise ValueError(
                f"set exactly one of handler, runtime or invoke ({state}) - " + _WHICH_FUNCTION
            )
        return self

    @model_validator(mode="after")
    def _transactional_in_process(self) -> ProcessorConfig:
        if not self.transactional:
            return self
        if self.handler is None:
            raise ValueError(
                "transactional: true needs a Python handler run in process (handler:): a "
                "runtime or invoke URL cannot write through the store's connection"
            )
        return self

    @model_validator(mode="after")
    def _windows_need_one_lane(self) -> ProcessorConfig:
        if self.tumbling_window_in_seconds and self.parallelization_factor > 1:
            raise ValueError(
                "tumbling_window_in_seconds needs parallelization_factor 1 "
                "(a window's state follows the shard's order)"
            )
        return self

    @property
    def reports_batch_item_failures(self) -> bool:
        return "ReportBatchItemFailures" in self.function_response_types

    @field_validator("starting_position")
    @classmethod
    def _at_timestamp_is_kinesis_only(
        cls, value: StartingPosition, info: ValidationInfo
    ) -> StartingPosition:
        source = info.data.get("source")
        if value is StartingPosition.AT_TIMESTAMP and getattr(source, "kinesis", 0) is None:
            raise ValueError("AT_TIMESTAMP is Kinesis-only; use TRIM_HORIZON or LATEST")
        return value

    @field_validator("starting_position_timestamp")
    @classmethod
    def _timestamp_with_at_timestamp(
        cls, value: datetime | None, info: ValidationInfo
    ) -> datetime | None:
        at_timestamp = info.data.get("starting_position") is StartingPosition.AT_TIMESTAMP
        if at_timestamp and value is None:
            raise ValueError("is required with starting_position: AT_TIMESTAMP")
        if value is not None and "starting_position" in info.data and not at_timestamp:
            raise ValueError("is only read with starting_position: AT_TIMESTAMP")
        return value
