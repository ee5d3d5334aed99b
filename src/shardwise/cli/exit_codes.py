"""How every ``shardwise`` command exits: 0 success, 1 runtime failure, 2 invalid input."""

from __future__ import annotations

from typing import Final

__all__ = ["EXIT_FAILURE", "EXIT_INVALID", "EXIT_OK"]

EXIT_OK: Final = 0
# A runtime failure: nothing matched, the answer was no, a replayed handler failed again.
EXIT_FAILURE: Final = 1
# An invalid configuration, handler, argument or input file; or a refused question.
EXIT_INVALID: Final = 2
