"""Tests for shardwise.config: YAML in, one validated Settings out, every problem named."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

import pytest
import yaml
from pydantic import BaseModel, ValidationError

from shardwise.config import (
    DynamoDBSourceConfig,
    ProcessorConfig,
    Settings,
    SourceConfig,
    load_config,
    parse_config,
    split_bind,
)
from shardwise.errors import ConfigError
from shardwise.records import StartingPosition
from shardwise.store import redact_url

EXAMPLE = Path(__file__).parents[1] / "config" / "shardwise.yaml"
STREAM_ARN = "arn:aws:dynamodb:us-east-1:123456789012:table/Orders/stream/2026-01-01T00:00:00.000"
DROP = object()  # a processor key to leave out


def processor(**overrides: object) -> dict[str, object]:
    """A valid processor entry, with keys replaced (or dropped with DROP)."""
    entry: dict[str, object] = {
        "name": "orders-view",
        "source": {"dynamodb": {"table": "Orders"}},
        "handler": "app.orders:handler",
        "starting_position": "TRIM_HORIZON",
        **overrides,
    }
    return {key: value for key, value in entry.items() if value is not DROP}


def config_text(*processors: dict[str, object], **sections: object) -> str:
    document = {**sections, "processors": list(processors) or [processor()]}
    return yaml.safe_dump(document, sort_keys=False)


def parse(text: str, env: Mapping[str, str] | None = None) -> Settings:
    return parse_config(text, env={} if env is None else env)


def problems(text: str, env: Mapping[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse(text, env)
    return caught.value.problems


def field_names(model: type[BaseModel]) -> set[str]:
    """Every key a model accepts, nested models included."""
    names = set(model.model_fields) - {"config_dir"}
    for field in model.model_fields.values():
        for candidate in (field.annotation, *getattr(field.annotation, "__args__", ())):
            if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                names |= field_names(candidate)
    return names


class TestKinesisSource:
    """source.kinesis, and AT_TIMESTAMP with its timestamp (Kinesis only)."""

    def kinesis(self, **overrides: object) -> dict[str, object]:
        return processor(**{"source": {"kinesis": {"stream_name": "clicks"}}, **overrides})

    def test_at_timestamp_takes_an_aware_time_or_epoch_seconds(self) -> None:
        for value in ("2026-12-01T00:00:00+00:00", 1796083200):
            settings = parse_config(
                config_text(
                    self.kinesis(
                        starting_position="AT_TIMESTAMP", starting_position_timestamp=value
                    )
                ),
                source="t.yaml",
            )
            [p] = settings.processors
            assert p.starting_position_timestamp == datetime(2026, 12, 1, tzinfo=UTC)
            assert p.source.kind == "kinesis"

    @pytest.mark.parametrize(
        ("overrides", "path", "message"),
        [
            (
                {"starting_position": "AT_TIMESTAMP"},
                "processors[0].starting_position_timestamp",
                "is required with starting_position: AT_TIMESTAMP",
            ),
            (
                {
                    "starting_position": "AT_TIMESTAMP",
                    "starting_position_timestamp": "2026-12-01T00:00:00",
                },
                "processors[0].starting_position_timestamp",
                "timezone",
            ),
            (
                {"source": {"kinesis": {"stream_name": "a b"}}},
                "processors[0].source.kinesis.stream_name",
                "must be a stream name",
            ),
            (
                {"source": {"kinesis": {"stream_name": "a", "stream_arn": "arn:x"}}},
                "processors[0].source.kinesis.stream_arn",
                "must be a Kinesis stream ARN",
            ),
            (
                {"source": {"kinesis": {"stream_name": "a"}, "dynamodb": {"table": "Orders"}}},
                "processors[0].source",
                "set exactly one of dynamodb or kinesis (both are set)",
            ),
        ],
    )
    def test_problems_name_the_field(
        self, overrides: dict[str, object], path: str, message: str
    ) -> None:
        with pytest.raises(ConfigError) as caught:
            parse_config(config_text(self.kinesis(**overrides)), source="t.yaml")
        assert any(p.startswith(path) and message in p for p in caught.value.problems), (
            caught.value.problems
        )


class TestExampleFile:
    """config/shardwise.yaml loads and documents every key."""

    def test_loads(self) -> None:
        settings = load_config(EXAMPLE, env={})
        assert settings.config_dir == EXAMPLE.parent.absolute()
        assert [p.name for p in settings.processors] == ["orders-view", "orders-audit", "clicks"]
        orders, audit, clicks = settings.processors
        assert orders.source.dynamodb is not None and orders.source.dynamodb.table == "Orders"
        assert audit.source.dynamodb is not None and audit.source.dynamodb.stream_arn == STREAM_ARN
        assert audit.enabled is False
        assert clicks.source.kinesis is not None and clicks.source.kinesis.stream_name == "clicks"
        assert clicks.starting_position_timestamp == datetime(2026, 12, 1, tzinfo=UTC)
        assert settings.aws.region is None
        assert settings.aws.endpoint_url is None
        assert settings.store.url == "sqlite+aiosqlite:///shardwise.db"

    def test_environment_overrides_its_defaults(self) -> None:
        env = {"SHARDWISE_STORE_URL": "postgresql+asyncpg://app:pw@db/shardwise"}
        env |= {"SHARDWISE_ENDPOINT_URL": "http://127.0.0.1:5000", "AWS_REGION": "eu-west-1"}
        settings = load_config(str(EXAMPLE), env=env)
        assert settings.store.url == env["SHARDWISE_STORE_URL"]
        assert settings.aws.endpoint_url == "http://127.0.0.1:5000"
        assert settings.aws.region == "eu-west-1"

    def test_documents_every_key(self) -> None:
        text = EXAMPLE.read_text(encoding="utf-8")
        assert {name for name in field_names(Settings) if f"{name}:" not in text} == set()


class TestDefaults:
    """Everything but processors has a default."""

    def test_minimal_config(self) -> None:
        settings = parse(config_text())
        assert settings.aws.region is None
        assert settings.aws.endpoint_url is None
        assert settings.aws.profile is None
        assert settings.store.url == "sqlite+aiosqlite:///shardwise.db"
        assert (settings.http.host, settings.http.port) == ("127.0.0.1", 9400)
        assert (settings.log.level, settings.log.format) == ("INFO", "auto")
        assert settings.worker.shutdown_timeout_seconds == 25
        assert settings.worker.shard_sync_interval_seconds == 30
        assert settings.config_dir == Path.cwd()

    def test_processor_defaults(self) -> None:
        (proc,) = parse(config_text()).processors
        assert proc.name == "orders-view"
        assert proc.handler == "app.orders:handler"
        assert proc.starting_position is StartingPosition.TRIM_HORIZON
        assert proc.source.dynamodb is not None and proc.source.dynamodb.stream_arn is None
        assert proc.batch_size == 100
        assert proc.maximum_batching_window_in_seconds == 0
        assert isinstance(proc.maximum_batching_window_in_seconds, float)
        assert proc.enabled is True
        assert proc.timeout_seconds == 900
        assert proc.on_trimmed_data == "trim_horizon"

    def test_sections_left_empty_take_defaults(self) -> None:
        text = "aws:\nstore:\nhttp:\nlog:\nworker:\n" + config_text()
        assert parse(text).worker.shutdown_timeout_seconds == 25

    def test_config_dir_can_be_given(self, tmp_path: Path) -> None:
        assert parse_config(config_text(), env={}, config_dir=tmp_path).config_dir == tmp_path

    def test_models_can_be_built_in_code(self) -> None:
        source = SourceConfig(dynamodb=DynamoDBSourceConfig(table="Orders"))
        proc = ProcessorConfig(
            name="p", source=source, handler="m:f", starting_position=StartingPosition.LATEST
        )
        assert Settings(processors=(proc,)).processors[0].batch_size == 100

    def test_frozen(self) -> None:
        settings = parse(config_text())
        with pytest.raises(ValidationError):
            settings.processors[0].batch_size = 5


class TestRanges:
    """Each bound accepts the value just inside and rejects the value just outside."""

    @pytest.mark.parametrize(
        ("key", "value", "message"),
        [
            ("batch_size", 1, None),
            ("batch_size", 0, "must be >= 1"),
            ("batch_size", 10_000, None),
            ("batch_size", 10_001, "must be <= 10000"),
            ("maximum_batching_window_in_seconds", 0, None),
            ("maximum_batching_window_in_seconds", -0.001, "must be >= 0"),
            ("maximum_batching_window_in_seconds", 0.25, None),
            ("maximum_batching_window_in_seconds", 300, None),
            ("maximum_batching_window_in_seconds", 300.001, "must be <= 300"),
            ("timeout_seconds", 1, None),
            ("timeout_seconds", 0.999, "must be >= 1"),
            ("timeout_seconds", 900, None),
            ("timeout_seconds", 900.001, "must be <= 900"),
        ],
    )
    def test_processor_bounds(self, key: str, value: float, message: str | None) -> None:
        text = config_text(processor(**{key: value}))
        if message is None:
            assert getattr(parse(text).processors[0], key) == value
        else:
            assert problems(text) == [f"processors[0].{key}: {message}"]

    @pytest.mark.parametrize(
        ("key", "value", "message"),
        [
            ("shutdown_timeout_seconds", 0.001, None),
            ("shutdown_timeout_seconds", 0, "must be > 0"),
            ("shutdown_timeout_seconds", 3600, None),
            ("shutdown_timeout_seconds", 3600.5, "must be <= 3600"),
            ("shard_sync_interval_seconds", 1, None),
            ("shard_sync_interval_seconds", 0.999, "must be >= 1"),
            ("shard_sync_interval_seconds", 3600, None),
            ("shard_sync_interval_seconds", 3601, "must be <= 3600"),
        ],
    )
    def test_worker_bounds(self, key: str, value: float, message: str | None) -> None:
        text = config_text(worker={key: value})
        if message is None:
            assert getattr(parse(text).worker, key) == value
        else:
            assert problems(text) == [f"worker.{key}: {message}"]


class TestValues:
    """Wrong types and shapes get a plain message naming the path."""

    @pytest.mark.parametrize(
        ("key", "value", "message"),
        [
            ("batch_size", "ten", "must be an integer"),
            ("batch_size", 1.5, "must be an integer"),
            ("batch_size", True, "must be an integer"),
            ("timeout_seconds", "soon", "must be a number"),
            ("timeout_seconds", False, "must be a number"),
            ("timeout_seconds", float("nan"), "must be a finite number"),
            ("batch_size", float("inf"), "must be a finite number"),
            ("enabled", "maybe", "must be true or false"),
            ("starting_position", "trim_horizon", "must be one of TRIM_HORIZON, LATEST"),
            ("starting_position", "AT_TIMESTAMP", "AT_TIMESTAMP is Kinesis-only; use "),
            ("starting_position_timestamp", "2026-01-01T00:00:00Z", "only read with "),
            ("on_trimmed_data", "skip", "must be one of trim_horizon, stop"),
            ("handler", "app/orders.py", "names a file, not a function: add the function, e.g. "),
            ("handler", "handler", "must be Lambda's 'file.function' (app.orders.handler) or "),
            ("handler", "app.orders:", "or 'module:attribute' (app.orders:handler)"),
            ("handler", "app..orders.handler", "must be Lambda's 'file.function'"),
            ("handler", "app.orders.", "must be Lambda's 'file.function'"),
            ("handler", "app-orders.handler", "must be Lambda's 'file.function'"),
            ("handler", 42, "must be a string"),
            ("name", "-orders", "must be 1-128 characters"),
            ("name", "x" * 129, "must be 1-128 characters"),
            ("name", DROP, "required"),
            ("starting_position", DROP, "required"),
            ("source", DROP, "required"),
            ("source", "Orders", "must be a mapping"),
        ],
    )
    def test_processor_value(self, key: str, value: object, message: str) -> None:
        (problem,) = problems(config_text(processor(**{key: value})))
        assert problem.startswith(f"processors[0].{key}: ")
        assert message in problem

    @pytest.mark.parametrize(
        "handler",
        [
            "app.orders:handler",  # module:attribute
            "views:Orders.process",  # a dotted attribute
            "app.orders.handler",  # Lambda's file.function, moved unchanged
            "lambda_function.lambda_handler",  # the console's default
            "app/orders.handler",  # Lambda reads slashes as package separators
            "src.app.orders.handler",  # nested packages
        ],
    )
    def test_good_handlers(self, handler: str) -> None:
        assert parse(config_text(processor(handler=handler))).processors[0].handler == handler

    @pytest.mark.parametrize("name", ["a", "A" * 128, "orders.view_2-b"])
    def test_good_names(self, name: str) -> None:
        assert parse(config_text(processor(name=name))).processors[0].name == name

    def test_starting_position_is_the_enum(self) -> None:
        proc = parse(config_text(processor(starting_position="LATEST"))).processors[0]
        assert proc.starting_position is StartingPosition.LATEST

    def test_log_level_any_case(self) -> None:
        assert parse(config_text(log={"level": "debug"})).log.level == "DEBUG"

    @pytest.mark.parametrize(
        ("section", "values", "problem"),
        [
            ("log", {"level": "TRACE"}, "log.level: must be one of DEBUG, INFO, WARNING, ERROR"),
            ("log", {"format": "xml"}, "log.format: must be one of auto, json, console"),
            ("store", {"url": "postgresql://db/x"}, "store.url: must start with sqlite+aiosqlite"),
            ("aws", {"endpoint_url": "localhost:5000"}, "aws.endpoint_url: must be an http://"),
            ("aws", "us-east-1", "aws: must be a mapping"),
        ],
    )
    def test_section_value(self, section: str, values: object, problem: str) -> None:
        (found,) = problems(config_text(**{section: values}))
        assert found.startswith(problem)

    def test_no_processors(self) -> None:
        assert problems("processors: []\n") == ["processors: must have at least 1 entry"]
        assert problems("log: {}\n") == ["processors: required"]


class TestUnknownKeys:
    """Unknown keys are rejected at any depth, with a close match suggested."""

    @pytest.mark.parametrize(
        ("text", "problem"),
        [
            (
                config_text(processor(batchsize=10)),
                "processors[0]: unknown key 'batchsize' (did you mean 'batch_size'?)",
            ),
            (
                config_text(processor(source={"dynamodb": {"tabel": "Orders"}})),
                "processors[0].source.dynamodb: unknown key 'tabel' (did you mean 'table'?)",
            ),
            (
                config_text(aws={"regoin": "us-east-1"}),
                "aws: unknown key 'regoin' (did you mean 'region'?)",
            ),
            (
                config_text(workers={"shutdown_timeout_seconds": 5}),
                "(top level): unknown key 'workers' (did you mean 'worker'?)",
            ),
            (config_text(processor(zzz=1)), "processors[0]: unknown key 'zzz'"),
            (config_text(config_dir="/tmp"), "(top level): unknown key 'config_dir'"),
        ],
    )
    def test_unknown(self, text: str, problem: str) -> None:
        assert problem in problems(text)

    def test_key_must_be_a_string(self) -> None:
        assert problems(config_text(processor(**{"1": 2})).replace("'1'", "1")) == [
            "processors[0]: key 1 must be a string"
        ]


class TestSource:
    """A DynamoDB source names exactly one of table or stream_arn, each well formed."""

    def dynamodb(self, **source: object) -> str:
        return config_text(processor(source={"dynamodb": source}))

    def test_stream_arn(self) -> None:
        found = parse(self.dynamodb(stream_arn=STREAM_ARN)).processors[0].source.dynamodb
        assert found is not None and (found.table, found.stream_arn) == (None, STREAM_ARN)

    def test_table_arn_as_table(self) -> None:
        arn = "arn:aws:dynamodb:us-east-1:123456789012:table/Orders"
        found = parse(self.dynamodb(table=arn)).processors[0].source.dynamodb
        assert found is not None and found.table == arn

    @pytest.mark.parametrize(
        ("source", "message"),
        [
            (
                {"table": "Orders", "stream_arn": STREAM_ARN},
                "set exactly one of table or stream_arn (both are set)",
            ),
            ({}, "set exactly one of table or stream_arn (neither is set)"),
            (
                {"stream_arn": "arn:aws:kinesis:us-east-1:123456789012:stream/Orders"},
                "stream_arn: must be a DynamoDB stream ARN like arn:aws:dynamodb:",
            ),
            (
                {"stream_arn": "arn:aws:dynamodb:us-east-1:12345:table/Orders/stream/x"},
                "stream_arn: must be a DynamoDB stream ARN",
            ),
            (
                {"stream_arn": "arn:aws:dynamodb:us-east-1:123456789012:table/Orders"},
                "stream_arn: is a table ARN, not a stream ARN; set table: instead",
            ),
            ({"table": "ab"}, "table: must be a table name (3-255 of A-Z a-z 0-9 _ . -)"),
            ({"table": "Orders!"}, "table: must be a table name"),
        ],
    )
    def test_bad(self, source: dict[str, str], message: str) -> None:
        (problem,) = problems(self.dynamodb(**source))
        assert problem.startswith("processors[0].source.dynamodb")
        assert message in problem


class TestEnvironment:
    """${VAR} and ${VAR:-default} expand inside string values, from env= only."""

    def test_set(self) -> None:
        text = config_text(processor(handler="${APP_HANDLER}"))
        assert parse(text, {"APP_HANDLER": "app.x:run"}).processors[0].handler == "app.x:run"

    def test_inside_a_longer_string(self) -> None:
        text = config_text(store={"url": "sqlite+aiosqlite:///${DIR}/sw.db"})
        assert parse(text, {"DIR": "/var/lib"}).store.url == "sqlite+aiosqlite:////var/lib/sw.db"

    @pytest.mark.parametrize("env", [{}, {"PROFILE": ""}])
    def test_default_when_unset_or_empty(self, env: dict[str, str]) -> None:
        text = config_text(aws={"profile": "${PROFILE:-dev}"})
        assert parse(text, env).aws.profile == "dev"

    def test_set_but_empty_without_default(self) -> None:
        text = config_text(aws={"region": "${AWS_REGION}"})
        assert parse(text, {"AWS_REGION": ""}).aws.region is None

    def test_missing(self) -> None:
        text = config_text(processor(handler="${APP_HANDLER}"))
        assert problems(text) == [
            "processors[0].handler: environment variable APP_HANDLER is not set"
        ]

    def test_reads_only_the_env_given(self) -> None:
        assert "PATH" in os.environ
        text = config_text(aws={"profile": "${PATH}"})
        assert problems(text) == ["aws.profile: environment variable PATH is not set"]
        assert parse_config(text).aws.profile == os.environ["PATH"]

    def test_escaped(self) -> None:
        text = config_text(aws={"profile": "$${NOT_A_VAR} and $$ and $HOME"})
        assert parse(text).aws.profile == "${NOT_A_VAR} and $$ and $HOME"

    def test_malformed_reference(self) -> None:
        (problem,) = problems(config_text(aws={"profile": "${NOT CLOSED"}))
        assert problem.startswith("aws.profile: '${' must open ${NAME} or ${NAME:-default}")

    def test_numbers_coerce(self) -> None:
        text = config_text(
            processor(batch_size="${BATCH}", maximum_batching_window_in_seconds="${WINDOW}")
        )
        (proc,) = parse(text, {"BATCH": "100", "WINDOW": "0.5"}).processors
        assert (proc.batch_size, proc.maximum_batching_window_in_seconds) == (100, 0.5)

    def test_not_a_number(self) -> None:
        text = config_text(processor(batch_size="${BATCH}"))
        assert problems(text, {"BATCH": "0.5"}) == ["processors[0].batch_size: must be an integer"]

    def test_booleans_coerce(self) -> None:
        text = config_text(processor(enabled="${ON:-false}"))
        assert parse(text).processors[0].enabled is False

    def test_expanded_value_is_still_validated(self) -> None:
        text = config_text(processor(batch_size="${BATCH}"))
        assert problems(text, {"BATCH": "20000"}) == ["processors[0].batch_size: must be <= 10000"]

    def test_cannot_inject_structure(self) -> None:
        text = config_text(aws={"profile": "${P}"})
        assert parse(text, {"P": "x\nbatch_size: 5"}).aws.profile == "x\nbatch_size: 5"

    def test_keys_are_not_expanded(self) -> None:
        text = config_text(aws={"${KEY}": "x"})
        assert problems(text, {"KEY": "region"}) == ["aws: unknown key '${KEY}'"]


class TestYamlErrors:
    """Broken YAML, repeated keys and empty files are reported with their line."""

    def test_syntax_error(self) -> None:
        (problem,) = problems("processors:\n  - name: a\n   handler: x\n")
        assert problem.startswith("line 3, column 4: ")

    def test_duplicate_key(self) -> None:
        text = "processors:\n  - name: a\n    batch_size: 1\n    batch_size: 2\n"
        assert problems(text) == ["line 4, column 5: duplicate key 'batch_size' (first on line 3)"]

    def test_duplicate_key_in_a_flow_mapping(self) -> None:
        text = "log: {level: INFO, format: json, level: DEBUG}\n" + config_text()
        assert problems(text) == ["line 1, column 34: duplicate key 'level' (first on line 1)"]

    def test_duplicate_section(self) -> None:
        text = "log: {level: INFO}\n" + config_text() + "log: {level: DEBUG}\n"
        assert problems(text)[0].endswith("duplicate key 'log' (first on line 1)")

    def test_merge_keys_may_be_overridden(self) -> None:
        text = (
            "processors:\n"
            "  - &base {name: a, source: {dynamodb: {table: Orders}},"
            " handler: 'm:f', starting_position: LATEST}\n"
            "  - <<: *base\n"
            "    name: b\n"
            "    batch_size: 5\n"
        )
        found = [(p.name, p.batch_size) for p in parse(text).processors]
        assert found == [("a", 100), ("b", 5)]

    @pytest.mark.parametrize("text", ["", "\n", "# only a comment\n"])
    def test_empty(self, text: str) -> None:
        assert problems(text) == ["the file is empty; it needs at least a processors: list"]

    @pytest.mark.parametrize(("text", "kind"), [("- a\n", "list"), ("42\n", "int")])
    def test_not_a_mapping(self, text: str, kind: str) -> None:
        assert problems(text) == [f"the top level must be a mapping of sections, not a {kind}"]


class TestDuplicateNames:
    """Processor names are unique; the error names both positions."""

    def test_duplicate(self) -> None:
        text = config_text(processor(), processor(name="other"), processor())
        assert problems(text) == ["processors[2].name: 'orders-view' is also processors[0].name"]

    def test_reported_with_other_problems(self) -> None:
        text = config_text(processor(), processor(batch_size=0))
        assert problems(text) == [
            "processors[1].name: 'orders-view' is also processors[0].name",
            "processors[1].batch_size: must be >= 1",
        ]

    def test_checked_when_built_in_code(self) -> None:
        proc = parse(config_text()).processors[0]
        with pytest.raises(ValidationError, match=r"processors\[1\] repeats processors\[0\]"):
            Settings(processors=(proc, proc))


class TestFunctionKinds:
    """A processor runs exactly one function: a Python handler, a runtime, or an invoke URL."""

    RUNTIME: ClassVar[dict[str, Any]] = {
        "command": ["node", "node_modules/aws-lambda-ric/index.mjs", "index.handler"]
    }

    def test_runtime(self) -> None:
        runtime = {**self.RUNTIME, "environment": {"TABLE": "orders", "RETRIES": 3, "DEBUG": True}}
        entry = processor(handler=DROP, runtime=runtime)
        config = parse(config_text(entry)).processors[0]
        assert config.handler is None and config.runtime is not None
        assert config.runtime.lambda_handler == "index.handler"
        assert config.runtime.environment == {"TABLE": "orders", "RETRIES": "3", "DEBUG": "true"}
        assert (config.runtime.memory_mb, config.runtime.init_timeout_seconds) == (128, 10.0)
        assert str(config.runtime.working_directory) == "."

    def test_runtime_handler_setting(self) -> None:
        bootstrap = {"command": ["./bootstrap"]}
        config = parse(config_text(processor(handler=DROP, runtime=bootstrap))).processors[0]
        assert config.runtime is not None and config.runtime.lambda_handler == ""
        named = {"command": ["./bootstrap"], "handler": "function.handler"}
        config = parse(config_text(processor(handler=DROP, runtime=named))).processors[0]
        assert config.runtime is not None and config.runtime.lambda_handler == "function.handler"

    def test_invoke(self) -> None:
        url = "http://orders-fn:8080/2015-03-31/functions/function/invocations"
        config = parse(config_text(processor(handler=DROP, invoke={"url": url}))).processors[0]
        assert config.invoke is not None and config.invoke.url == url

    @pytest.mark.parametrize(
        ("overrides", "state"),
        [
            ({"handler": DROP}, "none is set"),
            ({"runtime": RUNTIME}, "handler and runtime are set"),
            ({"invoke": {"url": "http://fn:8080/"}}, "handler and invoke are set"),
        ],
    )
    def test_exactly_one(self, overrides: dict[str, object], state: str) -> None:
        (problem,) = problems(config_text(processor(**overrides)))
        assert problem.startswith(
            f"processors[0]: set exactly one of handler, runtime or invoke ({state})"
        )
        assert "runtime: a command that speaks the Lambda Runtime API" in problem

    @pytest.mark.parametrize(
        ("runtime", "where", "message"),
        [
            ({"command": []}, "runtime.command", "at least 1"),
            ({}, "runtime.command", "required"),
            (
                {**RUNTIME, "environment": {"AWS_REGION": "x", "_HANDLER": "y"}},
                "runtime.environment",
                "sets AWS_REGION, _HANDLER, which the runtime sets itself (Lambda reserves them)",
            ),
            ({**RUNTIME, "environment": {"1X": "y"}}, "runtime.environment", "not a valid"),
            ({**RUNTIME, "memory_mb": 64}, "runtime.memory_mb", "128"),
            ({**RUNTIME, "memory_mb": 20_000}, "runtime.memory_mb", "10240"),
            ({**RUNTIME, "init_timeout_seconds": 0}, "runtime.init_timeout_seconds", "0"),
            ({**RUNTIME, "shutdown_grace_seconds": 61}, "runtime.shutdown_grace_seconds", "60"),
            ({**RUNTIME, "image": "x"}, "runtime", "unknown key 'image'"),
        ],
    )
    def test_runtime_problems(self, runtime: dict[str, object], where: str, message: str) -> None:
        (problem,) = problems(config_text(processor(handler=DROP, runtime=runtime)))
        assert problem.startswith(f"processors[0].{where}: "), problem
        assert message in problem

    def test_invoke_url_problem(self) -> None:
        (problem,) = problems(
            config_text(processor(handler=DROP, invoke={"url": "orders-fn:8080"}))
        )
        assert problem == "processors[0].invoke.url: must be an http:// or https:// URL"


class TestManyProblems:
    """Every problem is collected into one ConfigError."""

    def test_all_reported(self, tmp_path: Path) -> None:
        path = tmp_path / "shardwise.yaml"
        path.write_text(
            config_text(
                processor(batch_size=0, handler="${H}", starting_position="AT_TIMESTAMP"),
                processor(name="second", source={"dynamodb": {}}, timeout_seconds=901),
                http={"bind": "nowhere"},
                log={"level": "LOUD"},
            ),
            encoding="utf-8",
        )
        with pytest.raises(ConfigError) as caught:
            load_config(path, env={})
        assert caught.value.source == str(path)
        assert str(caught.value).startswith(f"{path}: ")
        assert [p.split(":")[0] for p in caught.value.problems] == [
            "processors[0].handler",
            "http.bind",
            "log.level",
            "processors[0].starting_position",
            "processors[0].batch_size",
            "processors[1].source.dynamodb",
            "processors[1].timeout_seconds",
        ]

    def test_unreadable_file(self, tmp_path: Path) -> None:
        with pytest.raises(ConfigError, match="cannot read the file"):
            load_config(tmp_path / "missing.yaml")


class TestBind:
    """http.bind is host:port, IPv6 in brackets; host and port are parsed out."""

    @pytest.mark.parametrize(
        ("bind", "host", "port"),
        [
            ("127.0.0.1:9400", "127.0.0.1", 9400),
            ("0.0.0.0:0", "0.0.0.0", 0),
            ("localhost:65535", "localhost", 65535),
            ("metrics.internal:80", "metrics.internal", 80),
            ("[::1]:9400", "::1", 9400),
            ("[::]:9400", "::", 9400),
        ],
    )
    def test_good(self, bind: str, host: str, port: int) -> None:
        http = parse(config_text(http={"bind": bind})).http
        assert (http.host, http.port) == (host, port)
        assert split_bind(bind) == (host, port)

    @pytest.mark.parametrize(
        ("bind", "message"),
        [
            ("9400", "must be host:port, like 127.0.0.1:9400 or [::1]:9400"),
            (":9400", "must be host:port, like 127.0.0.1:9400 or [::1]:9400"),
            ("::1:9400", "an IPv6 address must be in brackets, like [::1]:9400"),
            ("[localhost]:9400", "'localhost' is not an IPv6 address"),
            ("bad_host!:9400", "'bad_host!' is not a valid host name or address"),
            ("localhost:", "port '' must be a number 0..65535"),
            ("localhost:http", "port 'http' must be a number 0..65535"),
            ("localhost:65536", "port '65536' must be a number 0..65535"),
            ("localhost:-1", "port '-1' must be a number 0..65535"),
        ],
    )
    def test_bad(self, bind: str, message: str) -> None:
        assert problems(config_text(http={"bind": bind})) == [f"http.bind: {message}"]

    def test_not_a_string(self) -> None:
        assert problems(config_text(http={"bind": 9400})) == ["http.bind: must be a string"]


class TestRedaction:
    """Settings can be logged without leaking the store password."""

    URL = "postgresql+asyncpg://app:s3cret@db.internal:5432/shardwise"

    def test_redacted_hides_password(self) -> None:
        settings = parse(config_text(store={"url": self.URL}))
        safe: dict[str, Any] = settings.redacted()
        assert safe["store"]["url"] == "postgresql+asyncpg://app:***@db.internal:5432/shardwise"
        assert "s3cret" not in json.dumps(safe)
        assert settings.store.url == self.URL  # the real value is still there to connect with

    def test_repr_hides_password(self) -> None:
        settings = parse(config_text(store={"url": self.URL}))
        assert "s3cret" not in repr(settings)
        assert "s3cret" not in str(settings)

    @pytest.mark.parametrize(
        ("url", "safe"),
        [
            ("postgresql+asyncpg://app:p@ss/w@db/x", "postgresql+asyncpg://app:***@db/x"),
            (
                "postgresql+asyncpg://app@db/x?password=pw&ssl=on",
                "postgresql+asyncpg://app@db/x?password=***&ssl=on",
            ),
            ("postgresql+asyncpg://db/x", "postgresql+asyncpg://db/x"),
            ("sqlite+aiosqlite:///shardwise.db", "sqlite+aiosqlite:///shardwise.db"),
        ],
    )
    def test_redact_url(self, url: str, safe: str) -> None:
        assert redact_url(url) == safe

    def test_redacted_is_json(self) -> None:
        safe = load_config(EXAMPLE, env={}).redacted()
        assert json.loads(json.dumps(safe))["processors"][0]["starting_position"] == "TRIM_HORIZON"


class TestProcesses:
    """worker.processes: a whole number 1..256 or "auto"; anything else names the key."""

    @pytest.mark.parametrize(
        ("value", "expected"), [(1, 1), (4, 4), (256, 256), ("auto", "auto"), ("${N}", 3)]
    )
    def test_accepted(self, value: object, expected: object) -> None:
        settings = parse(config_text(worker={"processes": value}), env={"N": "3"})
        assert settings.worker.processes == expected

    def test_default_is_one(self) -> None:
        assert parse(config_text()).worker.processes == 1

    @pytest.mark.parametrize("value", [0, -1, 257, "many", "", 2.5, True, None, [2]])
    def test_rejected(self, value: object) -> None:
        assert problems(config_text(worker={"processes": value})) == [
            'worker.processes: must be "auto" or a whole number 1..256'
        ]
