"""Reading a config: a YAML file or text in, one validated ``Settings`` or one ``ConfigError``.

``parse_config`` is the pipeline: strict YAML (a repeated key is an error), ``${VAR}``
expansion, checks pydantic cannot make (a repeated processor name, at its path), then
validation, with every problem from every step reported together.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from shardwise.config.env import expand_variables
from shardwise.config.problems import Loc, problem_of, worth_reporting, yaml_path
from shardwise.config.settings import Settings, duplicates
from shardwise.errors import ConfigError

__all__ = ["DEFAULT_CONFIG_FILE", "add_config_argument", "load_config", "parse_config"]

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
    problems: list[tuple[Loc, str]] = []
    data = expand_variables(
        _read_yaml(text, source), (), os.environ if env is None else env, problems
    )
    unset = {loc for loc, _ in problems}  # their values are placeholders: say nothing more
    if "config_dir" in data:
        problems.append(((), "unknown key 'config_dir'"))
    if isinstance(entries := data.get("processors"), list):
        names = [entry.get("name") if isinstance(entry, dict) else None for entry in entries]
        for i, j, name in duplicates(names):
            problems.append((("processors", j, "name"), f"{name!r} is also processors[{i}].name"))
    data["config_dir"] = Path(config_dir).absolute() if config_dir else Path.cwd()
    settings = None
    try:
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        for error in exc.errors(include_url=False):
            if worth_reporting(error, unset):
                problems.append(problem_of(error))
    if problems or settings is None:
        found = [f"{yaml_path(loc)}: {message}" for loc, message in problems]
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
