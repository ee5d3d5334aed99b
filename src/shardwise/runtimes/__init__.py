"""Functions outside this process: the Lambda Runtime API and invoke URLs.

* ``api`` - the Runtime API one runtime process talks to (Lambda's paths and status codes);
* ``process`` - one runtime process: Lambda's environment, init, invocations, its output
  as log lines, timeouts and stops;
* ``pool`` - ``RuntimeProcessor``, a ``processors.Processor`` running as many processes as
  it has callers at once, restarted with backoff;
* ``invoke_url`` - ``InvokeUrlProcessor``, a function behind a Lambda image's emulator.
"""

from shardwise.runtimes.api import MAX_RESPONSE_BYTES, PREFIX, Invocation, RuntimeApi
from shardwise.runtimes.invoke_url import InvokeUrlProcessor
from shardwise.runtimes.pool import CredentialSource, RuntimeProcessor
from shardwise.runtimes.process import (
    RESERVED_ENVIRONMENT,
    RuntimeInitError,
    RuntimeProcess,
    RuntimeSpec,
)

__all__ = [
    "MAX_RESPONSE_BYTES",
    "PREFIX",
    "RESERVED_ENVIRONMENT",
    "CredentialSource",
    "Invocation",
    "InvokeUrlProcessor",
    "RuntimeApi",
    "RuntimeInitError",
    "RuntimeProcess",
    "RuntimeProcessor",
    "RuntimeSpec",
]
