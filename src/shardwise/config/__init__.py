"""Settings: one YAML file in, one frozen, validated ``Settings`` object out.

Processor keys mirror Lambda's event source mapping parameters in snake_case
(``BatchSize`` -> ``batch_size``); ``config/shardwise.yaml`` documents every key. The
environment is read here and nowhere else: ``${VAR}`` and ``${VAR:-default}`` are expanded
inside string values *after* YAML parsing, so a variable can never inject YAML structure, and
``$${`` stays a literal ``${``. Every problem found is reported at once, each naming its YAML
path (``processors[0].batch_size: must be <= 10000``), in one ``ConfigError``.

Adding a setting is one line plus its docstring: a typed field with its default and bounds,
in the module of its section. One module per concern; this package is the door:

- ``values``: the value types and checks the models share (``Int``, ``Seconds``, names, URLs)
- ``sections``: the worker-wide sections (aws, store, http, log, worker, health)
- ``processor``: one ``processors:`` entry, Lambda's event source mapping parameters
- ``settings``: ``Settings``, the root that holds them all
- ``loading``: the YAML file or text -> ``Settings``, or one ``ConfigError``
- ``env``: ``${VAR}`` expansion
- ``problems``: pydantic's errors -> ``path: message``, with "did you mean"
"""

from __future__ import annotations

from shardwise.config.loading import (
    DEFAULT_CONFIG_FILE,
    add_config_argument,
    load_config,
    parse_config,
)
from shardwise.config.processor import (
    DestinationConfig,
    DynamoDBSourceConfig,
    FilterConfig,
    FilterCriteriaConfig,
    OnFailureConfig,
    ProcessorConfig,
    SourceConfig,
)
from shardwise.config.sections import (
    AwsConfig,
    EndpointsConfig,
    GcConfig,
    HealthConfig,
    HttpConfig,
    LogConfig,
    StoreConfig,
    WorkerConfig,
)
from shardwise.config.settings import Settings
from shardwise.config.values import split_bind

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
