"""The sections that configure the worker as a whole: aws, store, http, log, worker, health.

One class per YAML section (``worker.gc`` and ``aws.endpoints`` nest inside theirs); each
field's docstring is what the key means, its default and bounds are in its declaration.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Iterator
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator, Field
from pydantic_core import PydanticCustomError

from shardwise.config.values import (
    ConfigModel,
    Int,
    Name,
    OptionalEndpoint,
    OptionalText,
    Seconds,
    matching,
    split_bind,
)
from shardwise.store.engine import redact_url

__all__ = [
    "MAX_PROCESSES",
    "AwsConfig",
    "EndpointsConfig",
    "GcConfig",
    "HealthConfig",
    "HttpConfig",
    "LogConfig",
    "StoreConfig",
    "WorkerConfig",
]

_STORE_URL = matching(
    r"(sqlite\+aiosqlite|postgresql\+asyncpg)://.*",
    "must start with sqlite+aiosqlite:// or postgresql+asyncpg://",
)
LogLevel = Annotated[
    Literal["DEBUG", "INFO", "WARNING", "ERROR"],
    BeforeValidator(lambda v: v.upper() if isinstance(v, str) else v),
]


class EndpointsConfig(ConfigModel):
    """One service's endpoint (a VPC interface endpoint, a proxy): None falls back to
    ``aws.endpoint_url``, then to botocore's own resolution."""

    dynamodbstreams: OptionalEndpoint = None
    """DynamoDB Streams (GetRecords, DescribeStream, GetShardIterator)."""
    dynamodb: OptionalEndpoint = None
    """DynamoDB (DescribeTable, for ``source.dynamodb.table``)."""
    kinesis: OptionalEndpoint = None
    """Kinesis Data Streams (ListShards, GetShardIterator, GetRecords)."""
    sqs: OptionalEndpoint = None
    """SQS on-failure destinations."""
    sns: OptionalEndpoint = None
    """SNS on-failure destinations."""
    s3: OptionalEndpoint = None
    """S3 on-failure destinations."""


class AwsConfig(ConfigModel):
    """How to reach AWS; None means "as botocore resolves it"."""

    region: OptionalText = None
    """Region; None: AWS_REGION / AWS_DEFAULT_REGION / the profile's, as botocore decides."""
    endpoint_url: OptionalEndpoint = None
    """One endpoint for every service (moto, LocalStack); None: as botocore resolves each
    (partition, FIPS, dual-stack, AWS_ENDPOINT_URL[_<SERVICE>], the profile's services)."""
    endpoints: EndpointsConfig = EndpointsConfig()
    """Per-service endpoints, taking precedence over endpoint_url."""
    profile: OptionalText = None
    """Named profile from ~/.aws/config; None: the default credential chain."""
    transport: Literal["raw", "aiobotocore"] = "raw"
    """GetRecords path: raw (SigV4-signed HTTP + orjson, fast) or aiobotocore (fallback)."""


class StoreConfig(ConfigModel):
    """Where checkpoints and leases live."""

    url: Annotated[str, _STORE_URL] = "sqlite+aiosqlite:///shardwise.db"
    """SQLAlchemy async URL; postgresql+asyncpg:// for more than one worker."""
    idempotency_purge_interval_seconds: Seconds = Field(default=3600.0, ge=0, le=86400 * 7)
    """How often a worker deletes expired rows of ``shardwise.idempotency`` from the store
    (at start, then at this interval); 0: never (``shardwise db purge-idempotency``)."""

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        yield "url", redact_url(self.url)


class HttpConfig(ConfigModel):
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


class LogConfig(ConfigModel):
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


class GcConfig(ConfigModel):
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


class WorkerConfig(ConfigModel):
    """This process as a whole."""

    shutdown_timeout_seconds: Seconds = Field(default=25.0, gt=0, le=3600)
    """Grace for in-flight batches on SIGTERM/SIGINT before they are cancelled."""
    shard_sync_interval_seconds: Seconds = Field(default=30.0, ge=1, le=3600)
    """How often shards are listed again to find new ones."""
    id: Name = Field(default_factory=_default_worker_id)
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


class HealthConfig(ConfigModel):
    """What /healthz calls unhealthy."""

    max_checkpoint_stall_seconds: Seconds = Field(default=300.0, ge=1, le=86_400)
    """A shard with records waiting whose checkpoint has not moved for this long."""
