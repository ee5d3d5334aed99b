"""A DynamoDB Streams handler using Powertools' idempotency utility, with shardwise's store
as its persistence layer instead of a DynamoDB table.

For every new order it sends a notification - here, a line appended to the file named by
``NOTIFICATIONS_OUT``, standing in for an email or an HTTP call: a side effect outside SQL,
which a redelivered record must not repeat. Powertools' ``@idempotent_function`` keys each
call by the record's eventID; ``SqlPersistenceLayer`` keeps the keys in the
``shardwise_idempotency`` table of the store at ``IDEMPOTENCY_STORE_URL`` (default: the
``shardwise.db`` next to the config). The handler is what it would be on Lambda, bar that
one line (tests/test_idempotency.py runs it under shardwise).
"""

import json
import os
from typing import Any

from aws_lambda_powertools.utilities.idempotency import IdempotencyConfig, idempotent_function

from shardwise.idempotency.powertools import SqlPersistenceLayer

persistence = SqlPersistenceLayer(
    os.environ.get("IDEMPOTENCY_STORE_URL", "sqlite+aiosqlite:///shardwise.db")
)
config = IdempotencyConfig(event_key_jmespath="eventID", expires_after_seconds=24 * 3600)


@idempotent_function(  # type: ignore[untyped-decorator]  # Powertools' decorator returns Any
    data_keyword_argument="record", config=config, persistence_store=persistence
)
def notify(record: dict[str, Any]) -> dict[str, Any]:
    order = record["dynamodb"]["Keys"]["id"]["S"]
    with open(os.environ["NOTIFICATIONS_OUT"], "a", encoding="utf-8") as out:
        out.write(json.dumps({"order": order, "event": record["eventID"]}) + "\n")
    return {"notified": order}


def lambda_handler(event: dict[str, Any], context: Any) -> None:
    # In-progress markers of a call that dies lapse when the invocation would have timed out.
    config.register_lambda_context(context)
    for record in event["Records"]:
        if record["eventName"] == "INSERT":
            notify(record=record)
