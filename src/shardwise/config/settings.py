"""``Settings``, the root of the config: every section and the processors list, built once.

``duplicates`` finds repeated processor names; ``Settings`` rejects them, and the loader
uses it to name each repeat at its YAML path.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from shardwise.config.processor import ProcessorConfig
from shardwise.config.sections import (
    AwsConfig,
    HealthConfig,
    HttpConfig,
    LogConfig,
    StoreConfig,
    WorkerConfig,
)
from shardwise.config.values import ConfigModel
from shardwise.store.engine import redact_url

__all__ = ["Settings", "duplicates"]


class Settings(ConfigModel):
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
        if clashes := duplicates([p.name for p in value]):
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


def duplicates(names: Sequence[object]) -> list[tuple[int, int, str]]:
    """(first index, repeat index, name) for every repeated name."""
    first: dict[str, int] = {}  # setdefault returns an earlier index for a repeat
    return [
        (first[name], index, name)
        for index, name in enumerate(names)
        if isinstance(name, str) and first.setdefault(name, index) != index
    ]
