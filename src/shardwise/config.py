"""Settings: one YAML file in, one frozen, validated ``Settings`` object out.

Processor keys mirror Lambda's event source mapping parameters in snake_case
(``BatchSize`` -> ``batch_size``); ``config/shardwise.yaml`` documents every key. The
environment is read here and nowhere else: ``${VAR}`` and ``${VAR:-default}`` are expanded
inside string values *after* YAML parsing, so a variable can never inject YAML structure, and
``$${`` stays a literal ``${``. Every problem found is reported at once, each naming its YAML
path (``processors[0].batch_size: must be <= 10000``), in one ``ConfigError``.

Adding a setting is one line plus its docstring: a typed field with its default and bounds.
"""

from __future__ import annotations

import argparse
import difflib
import ipaddress
import math
import os
import re
import socket
from collections.abc import Hashable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails, PydanticCustomError

from shardwise.dispatch.filters import MAX_FILTERS, validate_pattern
from shardwise.errors import ConfigError
from shardwise.processors import split_handler
from shardwise.records import StartingPosition
from shardwise.store.engine import redact_url

__all__ = [
    "DEFAULT_CONFIG_FILE",
    "AwsConfig",
    "DestinationConfig",
    "DynamoDBSourceConfig",
    "EndpointsConfig",
    "FilterConfig",
    "FilterCriteriaConfig",
    "GcConfig",
    "HealthConfig",
    "HttpConfig",
    "LogConfig",
    "OnFailureConfig",
    "ProcessorConfig",
    "Settings",
    "SourceConfig",
    "StoreConfig",
    "WorkerConfig",
    "add_config_argument",
    "load_config",
    "parse_config",
    "split_bind",
]

_Loc = tuple[str | int, ...]
_TABLE = r"[A-Za-z0-9_.-]{3,255}"
_TABLE_ARN = rf"arn:aws[a-z-]*:dynamodb:[a-z0-9-]+:\d{{12}}:table/{_TABLE}"
_STREAM_ARN = rf"{_TABLE_ARN}/stream/[^\s/]+"
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"{_LABEL}(\.{_LABEL})*")
_REFERENCE = re.compile(
    r"\$\$\{|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\}|\$\{"
)


# --- value checks: each raises ValueError with the message the user sees ---------------------


def _pattern(pattern: str, message: str) -> AfterValidator:
    compiled = re.compile(pattern)

    def check(value: str) -> str:
        if not compiled.fullmatch(value):
            raise ValueError(message)
        return value

    return AfterValidator(check)


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


def split_bind(bind: str) -> tuple[str, int]:
    """Split ``host:port`` (IPv6 as ``[::1]:9400``) into host and port; ValueError if bad."""
    host, sep, port = bind.rpartition(":")
    if not sep or not host:
        raise ValueError("must be host:port, like 127.0.0.1:9400 or [::1]:9400")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv6 address") from None
    elif ":" in host:
        raise ValueError("an IPv6 address must be in brackets, like [::1]:9400")
    elif not _HOSTNAME.fullmatch(host):
        raise ValueError(f"{host!r} is not a valid host name or address")
    if not (port.isascii() and port.isdigit() and int(port) <= 65535):
        raise ValueError(f"port {port!r} must be a number 0..65535")
    return host, int(port)


def _number(kind: str) -> BeforeValidator:
    """Reject YAML true/false (else taken as 1/0) and .nan/.inf where a number is expected."""

    def check(value: object) -> object:
        if isinstance(value, bool):
            raise PydanticCustomError(kind, "not a boolean")
        if isinstance(value, float) and not math.isfinite(value):
            raise PydanticCustomError("finite_number", "not finite")
        return value

    return BeforeValidator(check)


Int = Annotated[int, _number("int_type")]
Seconds = Annotated[float, _number("float_type")]
# An empty string means "not set", so `region: ${AWS_REGION:-}` works.
_BLANK_IS_NONE = BeforeValidator(lambda v: None if v == "" else v)
OptionalText = Annotated[str | None, _BLANK_IS_NONE]
_STORE_URL = _pattern(
    r"(sqlite\+aiosqlite|postgresql\+asyncpg)://.*",
    "must start with sqlite+aiosqlite:// or postgresql+asyncpg://",
)
_ENDPOINT_URL = _pattern(r"https?://[^/\s]+(/\S*)?", "must be an http:// or https:// URL")
_NAME = _pattern(
    r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}",
    "must be 1-128 characters of A-Z a-z 0-9 . _ -, starting with a letter or digit",
)
_TABLE_NAME = _pattern(
    rf"{_TABLE}|{_TABLE_ARN}", "must be a table name (3-255 of A-Z a-z 0-9 _ . -) or a table ARN"
)
LogLevel = Annotated[
    Literal["DEBUG", "INFO", "WARNING", "ERROR"],
    BeforeValidator(lambda v: v.upper() if isinstance(v, str) else v),
]


# --- the models ---------------------------------------------------------------------------------


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


_OptionalEndpoint = Annotated[Annotated[str, _ENDPOINT_URL] | None, _BLANK_IS_NONE]


class EndpointsConfig(_Model):
    """One service's endpoint (a VPC interface endpoint, a proxy): None falls back to
    ``aws.endpoint_url``, then to botocore's own resolution."""

    dynamodbstreams: _OptionalEndpoint = None
    """DynamoDB Streams (GetRecords, DescribeStream, GetShardIterator)."""
    dynamodb: _OptionalEndpoint = None
    """DynamoDB (DescribeTable, for ``source.dynamodb.table``)."""
    sqs: _OptionalEndpoint = None
    """SQS on-failure destinations."""
    sns: _OptionalEndpoint = None
    """SNS on-failure destinations."""
    s3: _OptionalEndpoint = None
    """S3 on-failure destinations."""


class AwsConfig(_Model):
    """How to reach AWS; None means "as botocore resolves it"."""

    region: OptionalText = None
    """Region; None: AWS_REGION / AWS_DEFAULT_REGION / the profile's, as botocore decides."""
    endpoint_url: _OptionalEndpoint = None
    """One endpoint for every service (moto, LocalStack); None: as botocore resolves each
    (partition, FIPS, dual-stack, AWS_ENDPOINT_URL[_<SERVICE>], the profile's services)."""
    endpoints: EndpointsConfig = EndpointsConfig()
    """Per-service endpoints, taking precedence over endpoint_url."""
    profile: OptionalText = None
    """Named profile from ~/.aws/config; None: the default credential chain."""
    transport: Literal["raw", "aiobotocore"] = "raw"
    """GetRecords path: raw (SigV4-signed HTTP + orjson, fast) or aiobotocore (fallback)."""


class StoreConfig(_Model):
    """Where checkpoints and leases live."""

    url: Annotated[str, _STORE_URL] = "sqlite+aiosqlite:///shardwise.db"
    """SQLAlchemy async URL; postgresql+asyncpg:// for more than one worker."""

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        yield "url", redact_url(self.url)


class HttpConfig(_Model):
    """The metrics and health endpoint."""

    bind: Annotated[str, AfterValidator(lambda v: split_bind(v) and v)] = "127.0.0.1:9400"
    """host:port to listen on; IPv6 as [::1]:9400; port 0 picks a free port."""

    @property
    def host(self) -> str:
        """The host to listen on; an IPv6 address without brackets."""
        return split_bind(self.bind)[0]

    @property
    def port(self) -> int:
        return split_bind(self.bind)[1]


class LogConfig(_Model):
    """Log output."""

    level: LogLevel = "INFO"
    """DEBUG, INFO, WARNING or ERROR, in any case."""
    format: Literal["auto", "json", "console"] = "auto"
    """auto: pretty on a terminal, JSON lines otherwise."""


def _default_worker_id() -> str:
    host = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname())[:100] or "worker"
    return f"{host}-{os.getpid()}"


def _gc_thresholds(value: object) -> tuple[int, int, int] | Literal["python"]:
    if value == "python":
        return "python"
    if (
        not isinstance(value, list | tuple)
        or len(value) != 3
        or not all(type(n) is int and 1 <= n <= 10_000_000 for n in value)
    ):
        raise PydanticCustomError(
            "gc_thresholds", 'must be "python" or three whole numbers in 1..10000000'
        )
    return (value[0], value[1], value[2])


class GcConfig(_Model):
    """Python's cyclic garbage collector, tuned for a daemon that decodes pages of records."""

    freeze_after_start: bool = True
    """gc.freeze() once handlers are imported and connections are open: objects made at
    start-up (modules, config, handler globals) are never scanned again."""
    thresholds: Annotated[
        tuple[int, int, int] | Literal["python"], BeforeValidator(_gc_thresholds)
    ] = (
        100_000,
        50,
        100,
    )
    """gc.set_threshold() for generations 0, 1 and 2; "python" keeps Python's own
    (700, 10, 10), which re-scans every decoded record alive in pages and batches often."""


MAX_PROCESSES = 256


def _processes(value: object) -> int | Literal["auto"]:
    """A whole number of worker processes, or "auto"; ``${VAR}`` gives text like "4"."""
    if value == "auto":
        return "auto"
    if isinstance(value, str) and value.isascii() and value.isdigit():
        value = int(value)
    if type(value) is int and 1 <= value <= MAX_PROCESSES:
        return value
    raise PydanticCustomError(
        "processes", 'must be "auto" or a whole number 1..{limit}', {"limit": MAX_PROCESSES}
    )


class WorkerConfig(_Model):
    """This process as a whole."""

    shutdown_timeout_seconds: Seconds = Field(default=25.0, gt=0, le=3600)
    """Grace for in-flight batches on SIGTERM/SIGINT before they are cancelled."""
    shard_sync_interval_seconds: Seconds = Field(default=30.0, ge=1, le=3600)
    """How often shards are listed again to find new ones."""
    id: Annotated[str, _NAME] = Field(default_factory=_default_worker_id)
    """This worker's name in the lease table; default <hostname>-<pid>."""
    lease_duration_seconds: Seconds = Field(default=10.0, ge=1, le=300)
    """A lease whose counter has not moved for this long is expired and may be taken."""
    max_leases_per_worker: Int | None = Field(default=None, ge=1)
    """Most shards this worker holds at once; default: no limit."""
    gc: GcConfig = GcConfig()
    """The garbage collector's settings for this process."""
    processes: Annotated[int | Literal["auto"], BeforeValidator(_processes)] = 1
    """Worker processes ``run`` starts, each its own worker in the lease table (id
    ``<id>-p<k>``); "auto": the CPUs this process may use (affinity, cgroup quota)."""


class HealthConfig(_Model):
    """What /healthz calls unhealthy."""

    max_checkpoint_stall_seconds: Seconds = Field(default=300.0, ge=1, le=86_400)
    """A shard with records waiting whose checkpoint has not moved for this long."""


class DynamoDBSourceConfig(_Model):
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


class SourceConfig(_Model):
    """Where a processor's records come from."""

    dynamodb: DynamoDBSourceConfig


_DESTINATION = _pattern(
    r"arn:aws[a-z-]*:(sqs|sns):[a-z0-9-]+:\d{12}:[A-Za-z0-9_.-]+"
    r"|arn:aws[a-z-]*:s3:::[a-z0-9.-]{3,63}"
    r"|s3://[a-z0-9.-]{3,63}(/\S*)?"
    r"|sql"
    r"|file:///\S+",
    "must be an SQS or SNS ARN, an S3 bucket (arn:aws:s3:::bucket or s3://bucket/prefix), "
    "sql, or file:///path.jsonl",
)


class OnFailureConfig(_Model):
    """Where records go once retries are exhausted or they are too old."""

    destination: Annotated[str, _DESTINATION]
    """DestinationConfig.OnFailure.Destination: SQS/SNS ARN (metadata), S3, sql or file."""


class DestinationConfig(_Model):
    """DestinationConfig."""

    on_failure: OnFailureConfig


def _record_age(value: int) -> int:
    if value != -1 and not 60 <= value <= 604_800:
        raise PydanticCustomError("record_age", "must be -1 or 60..604800")
    return value


class FilterConfig(_Model):
    """One filter: an event pattern in Lambda's filter syntax, as a JSON string."""

    pattern: Annotated[str, AfterValidator(validate_pattern)]
    """FilterCriteria.Filters[].Pattern."""


class FilterCriteriaConfig(_Model):
    """FilterCriteria: a record is processed when it matches any filter."""

    filters: tuple[FilterConfig, ...] = Field(default=(), max_length=MAX_FILTERS)


class ProcessorConfig(_Model):
    """One stream -> one handler, like one Lambda event source mapping."""

    name: Annotated[str, _NAME]
    """Unique; also the checkpoint namespace, so renaming starts over."""
    source: SourceConfig
    handler: Annotated[str, AfterValidator(_handler)]
    """Lambda's file.function (app.orders.handler) or module:attribute, imported with the
    config file's directory on sys.path."""
    starting_position: StartingPosition
    """StartingPosition: where to begin on a stream never read before."""
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
    max_poll_interval_seconds: Seconds = Field(default=3.0, ge=0.25, le=300)
    """Longest pause between GetRecords calls on an idle shard (4 polls/s while busy)."""

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

    @field_validator("starting_position", mode="before")
    @classmethod
    def _not_at_timestamp(cls, value: object) -> object:
        if value == "AT_TIMESTAMP":
            raise ValueError("AT_TIMESTAMP is Kinesis-only; use TRIM_HORIZON or LATEST")
        return value


class Settings(_Model):
    """Everything shardwise needs to run, built once and passed down."""

    aws: AwsConfig = AwsConfig()
    store: StoreConfig = StoreConfig()
    http: HttpConfig = HttpConfig()
    log: LogConfig = LogConfig()
    worker: WorkerConfig = WorkerConfig()
    health: HealthConfig = HealthConfig()
    processors: tuple[ProcessorConfig, ...] = Field(min_length=1)
    config_dir: Path = Field(default_factory=Path.cwd)
    """Directory of the config file (not a YAML key): handler imports start here."""

    @model_validator(mode="before")
    @classmethod
    def _empty_sections(cls, data: object) -> object:
        """A section written as ``aws:`` with nothing under it takes its defaults."""
        if isinstance(data, dict):
            sections = {"aws", "store", "http", "log", "worker", "health"}
            return {k: v for k, v in data.items() if not (k in sections and v is None)}
        return data

    @field_validator("processors")
    @classmethod
    def _unique_names(cls, value: tuple[ProcessorConfig, ...]) -> tuple[ProcessorConfig, ...]:
        if clashes := _duplicates([p.name for p in value]):
            text = "; ".join(f"processors[{j}] repeats processors[{i}]" for i, j, _ in clashes)
            raise PydanticCustomError("duplicate_name", "duplicate names: {text}", {"text": text})
        return value

    def redacted(self) -> dict[str, Any]:
        """A JSON-ready dict safe to log: passwords in URLs are ``***``."""
        data = self.model_dump(mode="json")
        data["store"]["url"] = redact_url(self.store.url)
        if self.aws.endpoint_url:
            data["aws"]["endpoint_url"] = redact_url(self.aws.endpoint_url)
        return data


def _duplicates(names: Sequence[object]) -> list[tuple[int, int, str]]:
    """(first index, repeat index, name) for every repeated name."""
    first: dict[str, int] = {}  # setdefault returns an earlier index for a repeat
    return [
        (first[name], index, name)
        for index, name in enumerate(names)
        if isinstance(name, str) and first.setdefault(name, index) != index
    ]


# --- reading: YAML, environment, and turning pydantic's errors into ours -----------------------


DEFAULT_CONFIG_FILE = "shardwise.yaml"


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    """The ``-c/--config FILE`` option every command that reads a config takes."""
    parser.add_argument(
        "-c",
        "--config",
        default=DEFAULT_CONFIG_FILE,
        type=Path,
        help=f"path to the YAML configuration (default: ./{DEFAULT_CONFIG_FILE})",
    )


def load_config(path: str | Path, *, env: Mapping[str, str] | None = None) -> Settings:
    """Read and validate the config file at ``path``; raise ``ConfigError`` listing problems."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"cannot read the file: {exc}"], source=str(path)) from exc
    return parse_config(text, source=str(path), env=env, config_dir=path.absolute().parent)


def parse_config(
    text: str,
    *,
    source: str = "<string>",
    env: Mapping[str, str] | None = None,
    config_dir: str | Path | None = None,
) -> Settings:
    """Validate config text; ``env`` defaults to ``os.environ``, ``config_dir`` to the cwd."""
    problems: list[tuple[_Loc, str]] = []
    data = _expand(_read_yaml(text, source), (), os.environ if env is None else env, problems)
    unset = {loc for loc, _ in problems}  # their values are placeholders: say nothing more
    if "config_dir" in data:
        problems.append(((), "unknown key 'config_dir'"))
    if isinstance(entries := data.get("processors"), list):
        names = [entry.get("name") if isinstance(entry, dict) else None for entry in entries]
        for i, j, name in _duplicates(names):
            problems.append((("processors", j, "name"), f"{name!r} is also processors[{i}].name"))
    data["config_dir"] = Path(config_dir).absolute() if config_dir else Path.cwd()
    settings = None
    try:
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        for error in exc.errors(include_url=False):
            if _worth_reporting(error, unset):
                problems.append(_problem(error))
    if problems or settings is None:
        found = [f"{_path(loc)}: {message}" for loc, message in problems]
        raise ConfigError(list(dict.fromkeys(found)), source=source)
    return settings


class _StrictLoader(yaml.SafeLoader):
    """A SafeLoader that rejects a key repeated in one mapping (PyYAML keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        seen: dict[object, yaml.Mark] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *defaults` may be overridden by the keys beside it
            key, mark = self.construct_object(key_node, deep=deep), key_node.start_mark
            if isinstance(key, Hashable) and seen.setdefault(key, mark) is not mark:
                problem = f"duplicate key {key!r} (first on line {seen[key].line + 1})"
                raise yaml.constructor.ConstructorError(None, None, problem, key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def _read_yaml(text: str, source: str) -> dict[Any, Any]:
    try:
        raw = yaml.load(text, Loader=_StrictLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError([f"{where}{exc.problem or exc.context}"], source=source) from None
    except yaml.YAMLError as exc:
        raise ConfigError([f"not valid YAML: {exc}"], source=source) from None
    if raw is None:
        raise ConfigError(["the file is empty; it needs at least a processors: list"], source)
    if not isinstance(raw, dict):
        kind = type(raw).__name__
        raise ConfigError([f"the top level must be a mapping of sections, not a {kind}"], source)
    return raw


def _expand(value: Any, loc: _Loc, env: Mapping[str, str], problems: list[tuple[_Loc, str]]) -> Any:
    """Expand ``${VAR}`` / ``${VAR:-default}`` in every string value, recording failures."""
    if isinstance(value, dict):
        return {k: _expand(v, (*loc, k), env, problems) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, (*loc, i), env, problems) for i, v in enumerate(value)]
    if not isinstance(value, str) or "${" not in value:
        return value

    def substitute(match: re.Match[str]) -> str:
        name, default = match["name"], match["default"]
        if match[0] == "$${":
            return "${"
        if name is None:
            problems.append((loc, "'${' must open ${NAME} or ${NAME:-default} ($${ for a literal)"))
        elif default is not None:
            return env.get(name) or default
        elif name in env:
            return env[name]
        else:
            problems.append((loc, f"environment variable {name} is not set"))
        return ""

    return _REFERENCE.sub(substitute, value)


_MESSAGES = {
    "missing": "required",
    "greater_than_equal": "must be >= {ge}",
    "less_than_equal": "must be <= {le}",
    "greater_than": "must be > {gt}",
    "less_than": "must be < {lt}",
    **dict.fromkeys(("int_type", "int_parsing", "int_from_float"), "must be an integer"),
    **dict.fromkeys(("float_type", "float_parsing"), "must be a number"),
    "finite_number": "must be a finite number",
    **dict.fromkeys(("bool_type", "bool_parsing"), "must be true or false"),
    "string_type": "must be a string",
    **dict.fromkeys(("model_type", "model_attributes_type"), "must be a mapping"),
    "tuple_type": "must be a list",
    "too_short": "must have at least {min_length} entry",
    **dict.fromkeys(("enum", "literal_error"), "must be one of {expected}"),
    "value_error": "{error}",
}


def _worth_reporting(error: ErrorDetails, unset: set[_Loc]) -> bool:
    """False for errors said better elsewhere: unset variables, duplicates, bad entries."""
    if error["type"] == "too_short":  # a list too short only because its entries were invalid
        minimum: int = error.get("ctx", {}).get("min_length", 0)
        return len(error["input"]) < minimum
    return error["type"] != "duplicate_name" and tuple(error["loc"]) not in unset


def _problem(error: ErrorDetails) -> tuple[_Loc, str]:
    """Pydantic's error as (YAML location, friendly message)."""
    loc, kind, ctx = tuple(error["loc"]), error["type"], error.get("ctx", {})
    ctx = {k: int(v) if isinstance(v, float) and v.is_integer() else v for k, v in ctx.items()}
    if kind == "extra_forbidden":
        key, loc = str(loc[-1]), loc[:-1]
        close = difflib.get_close_matches(key, _keys_at(loc), n=1)
        return loc, f"unknown key {key!r}" + (f" (did you mean {close[0]!r}?)" if close else "")
    if kind == "invalid_key":
        return loc[:-1], f"key {loc[-1]!r} must be a string"
    if "expected" in ctx:  # "'TRIM_HORIZON' or 'LATEST'" -> "TRIM_HORIZON, LATEST"
        ctx["expected"] = ", ".join(re.findall(r"'([^']*)'", str(ctx["expected"])))
    template = _MESSAGES.get(kind)
    return loc, template.format(**ctx) if template else error["msg"]


def _keys_at(loc: _Loc) -> list[str]:
    """The keys the model at ``loc`` accepts, for "did you mean" suggestions."""
    model: type[BaseModel] | None = Settings
    for part in loc:
        if isinstance(part, str) and model is not None:
            field = model.model_fields.get(part)
            model = _model_in(field.annotation) if field else None
    return [key for key in model.model_fields if key != "config_dir"] if model else []


def _model_in(annotation: object) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return next(filter(None, map(_model_in, get_args(annotation))), None)


def _path(loc: _Loc) -> str:
    """("processors", 0, "batch_size") -> "processors[0].batch_size"."""
    text = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc)
    return text.lstrip(".") or "(top level)"
