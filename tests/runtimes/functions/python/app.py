"""Test handlers run by awslambdaric (`python -m awslambdaric app.handler`, cwd = this folder).

`handler` behaves as its Node twin, node/behaviours.js, by the keys (dynamodb.Keys.pk.S) of the
records it receives. Every invocation first appends one JSON line {"request_id", "pid", "keys",
"event_ids"} to the file named by RECORD_LOG (when set; pid is this process's, so a restarted
runtime shows), then, record by record in batch order:
  slow*    sleeps SLOW_MS milliseconds (default 5000)
  crash*   ends the process with code 3, mid-batch, without answering the Runtime API
  poison*  raises RuntimeError("poison record <key>") (the whole invocation fails)
  partial* is reported in batchItemFailures (the first such record only, by SequenceNumber)
and otherwise returns {"batchItemFailures": []}. With INIT_FAIL set, importing this module raises.

`plain` is the simplest handler: it prints how many records it got and returns a string.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

if os.environ.get("INIT_FAIL"):
    raise RuntimeError("init failed on purpose")


def _key(record: dict[str, Any]) -> str | None:
    key = record.get("dynamodb", {}).get("Keys", {}).get("pk", {}).get("S")
    return key if isinstance(key, str) else None


def handler(event: dict[str, Any], context: Any) -> dict[str, list[dict[str, str]]]:
    records: list[dict[str, Any]] = event.get("Records", [])
    keys = [_key(record) for record in records]
    log_path = os.environ.get("RECORD_LOG")
    if log_path:
        line = {
            "request_id": context.aws_request_id,
            "pid": os.getpid(),
            "keys": keys,
            "event_ids": [record.get("eventID") for record in records],
        }
        with open(log_path, "a", encoding="utf-8") as log:
            log.write(json.dumps(line) + "\n")
    failures: list[dict[str, str]] = []
    for record, maybe_key in zip(records, keys, strict=True):
        key = maybe_key or ""
        if key.startswith("slow"):
            time.sleep(int(os.environ.get("SLOW_MS", "5000")) / 1000)
        if key.startswith("crash"):
            os._exit(3)
        if key.startswith("poison"):
            raise RuntimeError(f"poison record {key}")
        if key.startswith("partial") and not failures:
            failures.append({"itemIdentifier": record["dynamodb"]["SequenceNumber"]})
    return {"batchItemFailures": failures}


def plain(event: dict[str, Any], context: Any) -> str:
    count = len(event.get("Records", []))
    print(f"plain handler got {count} records")
    return f"Successfully processed {count} records."
