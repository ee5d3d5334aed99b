"""Pydantic's validation errors as problems a user can act on: YAML path, plain message.

A misspelt key gets "did you mean" with the closest key the model at that path accepts.

A problem is ``(loc, message)``, ``loc`` the keys and list indexes from the top of the file;
``yaml_path`` prints it as ``processors[0].batch_size``, the form ``ConfigError`` lists.
"""

from __future__ import annotations

import difflib
import re
from typing import get_args

from pydantic import BaseModel
from pydantic_core import ErrorDetails

from shardwise.config.settings import Settings

__all__ = ["Loc", "problem_of", "worth_reporting", "yaml_path"]

Loc = tuple[str | int, ...]

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


def worth_reporting(error: ErrorDetails, unset: set[Loc]) -> bool:
    """False for errors said better elsewhere: unset variables, duplicates, bad entries."""
    if error["type"] == "too_short":  # a list too short only because its entries were invalid
        minimum: int = error.get("ctx", {}).get("min_length", 0)
        return len(error["input"]) < minimum
    return error["type"] != "duplicate_name" and tuple(error["loc"]) not in unset


def problem_of(error: ErrorDetails) -> tuple[Loc, str]:
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


def _keys_at(loc: Loc) -> list[str]:
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


def yaml_path(loc: Loc) -> str:
    """("processors", 0, "batch_size") -> "processors[0].batch_size"."""
    text = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc)
    return text.lstrip(".") or "(top level)"
