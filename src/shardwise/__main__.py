"""``python -m shardwise`` is the ``shardwise`` command."""

from __future__ import annotations

import sys

from shardwise.cli import main

sys.exit(main())
