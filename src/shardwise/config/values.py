"""The value types and checks the config models share, and ``ConfigModel``, their base.

Each check raises the message the user sees. ``Int`` and ``Seconds`` reject YAML booleans
and ``.nan``/``.inf``; ``OptionalText`` and ``OptionalEndpoint`` read an empty string (as
``${VAR:-}`` gives) as "not set"; ``matching`` builds a regular-expression check with its own
message; ``split_bind`` reads a ``host:port`` like ``http.bind``.
"""

from __future__ import annotations

import ipaddress
import math
import re
from typing import Annotated

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict
from pydantic_core import PydanticCustomError

__all__ = [
    "ConfigModel",
    "Int",
    "Name",
    "OptionalEndpoint",
    "OptionalText",
    "Seconds",
    "matching",
    "split_bind",
]

_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"{_LABEL}(\.{_LABEL})*")


class ConfigModel(BaseModel):
    """The base of every section: an unknown key is an error, and a built model never changes."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def matching(pattern: str, message: str) -> AfterValidator:
    """A check that the whole string matches ``pattern``; ValueError(``message``) if not."""
    compiled = re.compile(pattern)

    def check(value: str) -> str:
        if not compiled.fullmatch(value):
            raise ValueError(message)
        return value

    return AfterValidator(check)


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
_ENDPOINT_URL = matching(r"https?://[^/\s]+(/\S*)?", "must be an http:// or https:// URL")
OptionalEndpoint = Annotated[Annotated[str, _ENDPOINT_URL] | None, _BLANK_IS_NONE]
Name = Annotated[
    str,
    matching(
        r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}",
        "must be 1-128 characters of A-Z a-z 0-9 . _ -, starting with a letter or digit",
    ),
]
