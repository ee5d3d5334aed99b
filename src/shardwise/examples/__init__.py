"""Stock Lambda handlers that ship with shardwise: the one ``shardwise demo`` runs.

Each module is a plain Lambda handler with no shardwise imports, kept inside the package so
that the demo works from an installed wheel. ``examples/`` in the source tree re-exports
them next to a config that runs them (``examples/shardwise.yaml``).
"""

__all__: list[str] = []
