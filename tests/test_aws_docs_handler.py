"""A Lambda handler from AWS's DynamoDB Streams docs runs unchanged under `shardwise run`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from tests.e2e import create_table

REPO = Path(__file__).resolve().parents[1]


class TestAwsDocsHandler:
    """The tutorial's handler prints what it received, as it would in CloudWatch Logs."""

    def test_runs_unchanged(self, tmp_path: Path, moto_endpoint: str) -> None:
        table, name = create_table(moto_endpoint)
        table.put_item(Item={"id": "docs-1", "Message": "New item!"})
        table.delete_item(Key={"id": "docs-1"})
        config = tmp_path / "shardwise.yaml"
        config.write_text(
            textwrap.dedent(
                f"""
                aws: {{region: us-east-1, endpoint_url: "{moto_endpoint}"}}
                store: {{url: "sqlite+aiosqlite:///{tmp_path / "cp.db"}"}}
                log: {{level: WARNING}}
                http: {{bind: "127.0.0.1:0"}}
                processors:
                  - name: docs
                    source: {{dynamodb: {{table: {name}}}}}
                    handler: examples.aws_docs_handler:lambda_handler
                    starting_position: TRIM_HORIZON
                """
            )
        )
        out = tmp_path / "stdout.log"
        with out.open("wb") as sink:
            daemon = subprocess.Popen(
                [sys.executable, "-m", "shardwise", "run", "-c", str(config)],
                cwd=REPO,
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        try:
            deadline = time.monotonic() + 30
            while "REMOVE" not in out.read_text() and time.monotonic() < deadline:
                assert daemon.poll() is None, out.read_text()
                time.sleep(0.1)
        finally:
            daemon.send_signal(signal.SIGTERM)
            assert daemon.wait(timeout=30) == 0
        printed = out.read_text()
        assert "INSERT" in printed
        assert "REMOVE" in printed
        assert 'DynamoDB Record: {"ApproximateCreationDateTime"' in printed
        start = printed.index("{")
        event, _ = json.JSONDecoder().raw_decode(printed[start:])
        assert event["Records"][0]["eventSource"] == "aws:dynamodb"
        assert event["Records"][0]["dynamodb"]["NewImage"]["Message"] == {"S": "New item!"}
