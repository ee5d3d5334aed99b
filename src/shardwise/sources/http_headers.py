"""A request's header lines: the Host header as botocore signs it, control characters refused.

A header value holding a control character (CR, LF, NUL...) is refused before anything is
written, as ``http.client`` and ``aiohttp`` refuse it: a CR or LF would end the header and
start one of the sender's choosing. The error, ``InvalidHeaderError``, is a
``TransportError`` (the source maps it to a ``SourceError`` naming the call) and a
``ValueError`` (what the libraries raise).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Final
from urllib.parse import urlsplit

from shardwise.sources.http_connection import TransportError

__all__ = [
    "DEFAULT_PORTS",
    "InvalidHeaderError",
    "check_header_values",
    "header_block",
    "host_header",
]

DEFAULT_PORTS: Final = {"http": 80, "https": 443}
# The control characters no header name or value may hold (HTAB is allowed).
_CONTROLS: Final = bytes([*range(0x09), *range(0x0A, 0x20), 0x7F])
_CONTROL: Final = re.compile("[" + re.escape(_CONTROLS.decode("latin-1")) + "]")


class InvalidHeaderError(TransportError, ValueError):
    """A request header's name or value holds a control character (or, for the pool, a
    character outside Latin-1): the request is not sent. The message names the header,
    never its value (it can be a secret: a session token)."""

    def __init__(self, name: str) -> None:
        super().__init__(
            f"header {name!r}: a control character (CR, LF, NUL...) or a character outside"
            " Latin-1 in its name or value; the request is not sent"
        )


def host_header(url: str) -> str:
    """The Host header for ``url``, as botocore signs it: the host name, with the port
    unless it is the scheme's default; IPv6 literals keep their brackets. The request and
    its SigV4 signature (``sigv4.EndpointSigner``) both use this one."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    if parts.port is not None and parts.port != DEFAULT_PORTS.get(parts.scheme):
        host = f"{host}:{parts.port}"
    return host


def header_block(headers: Mapping[str, str]) -> bytes:
    """``Name: value\r\n`` lines for ``headers``; ``InvalidHeaderError`` naming the header
    if a name or a value holds a control character or is not Latin-1 text.

    One pass over the block: each line has exactly the two control characters written
    here, so any more came from a name or a value.
    """
    try:
        text = "".join([f"{name}: {value}\r\n" for name, value in headers.items()])
        block = text.encode("latin-1")
    except UnicodeEncodeError:
        block = b"\0"  # the header is found and named below
    if len(block) - len(block.translate(None, _CONTROLS)) != 2 * len(headers):
        name = next(name for name, value in headers.items() if not _sendable(name + value))
        raise InvalidHeaderError(name)
    return block


def check_header_values(headers: Mapping[str, str]) -> None:
    """``InvalidHeaderError`` naming the first header whose name or value holds a control
    character: the characters ``aiohttp`` refuses (with a bare ``ValueError``), refused
    here first so the error names the header and maps like any transport failure."""
    for name, value in headers.items():
        if _CONTROL.search(name) or _CONTROL.search(value):
            raise InvalidHeaderError(name)


def _sendable(text: str) -> bool:
    try:
        text.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return _CONTROL.search(text) is None
