"""``${VAR}`` and ``${VAR:-default}`` expanded in the string values of parsed YAML.

The environment is read here and nowhere else. Expansion runs *after* YAML parsing, so a
variable can never inject YAML structure; ``$${`` stays a literal ``${``. ``${VAR:-default}``
takes the default when VAR is unset or empty; an unset ``${VAR}`` is a problem at its path.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from shardwise.config.problems import Loc

__all__ = ["expand_variables"]

_REFERENCE = re.compile(
    r"\$\$\{|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\}|\$\{"
)


def expand_variables(
    value: Any, loc: Loc, env: Mapping[str, str], problems: list[tuple[Loc, str]]
) -> Any:
    """Expand ``${VAR}`` / ``${VAR:-default}`` in every string value, recording failures."""
    if isinstance(value, dict):
        return {k: expand_variables(v, (*loc, k), env, problems) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_variables(v, (*loc, i), env, problems) for i, v in enumerate(value)]
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
