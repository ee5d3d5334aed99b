"""The Orders view handler, ``handler(event, context)``: a stock Lambda handler.

Its code is ``src/shardwise/examples/orders_view.py``: it ships inside the package, so that
``shardwise demo`` runs it from an installed wheel too. Read it there; it imports nothing from
shardwise, so you can copy it into a Lambda function as it is. This module only names it here,
next to ``examples/shardwise.yaml``, whose ``orders_view.handler`` finds it in this directory
(so do the deploy samples, with this directory on ``PYTHONPATH``).
"""

from shardwise.examples.orders_view import (
    DB_PATH_ENV,
    DEFAULT_DB_PATH,
    SCHEMA,
    apply,
    handler,
    python_values,
)

__all__ = ["DB_PATH_ENV", "DEFAULT_DB_PATH", "SCHEMA", "apply", "handler", "python_values"]
