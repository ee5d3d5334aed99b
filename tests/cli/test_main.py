"""The ``shardwise`` command as a user runs it: real processes, real exit codes and messages."""

from __future__ import annotations

import asyncio
import signal
import textwrap
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from shardwise import __version__
from shardwise.cli import main
from shardwise.store.idempotency import IdempotencyStore
from shardwise.testing import StreamsServer
from tests.conftest import free_port
from tests.e2e import (
    daemon,
    one_shard_stream,
    read_jsonl,
    recording_handler,
    shardwise_cli,
    wait_for,
    write_module,
)


@pytest.fixture
def server() -> Iterator[StreamsServer]:
    with StreamsServer() as streams:
        yield streams


def write_config(directory: Path, body: str) -> Path:
    path = directory / "shardwise.yaml"
    path.write_text(textwrap.dedent(body))
    return path


def config_text(endpoint: str, store_url: str, handler: str, arn: str, extra: str = "") -> str:
    return f"""
    aws:
      region: us-east-1
      endpoint_url: {endpoint}
    store:
      url: {store_url}
    http:
      bind: 127.0.0.1:0
    worker:
      shutdown_timeout_seconds: 20
      shard_sync_interval_seconds: 1
    processors:
      - name: orders
        source:
          dynamodb:
            stream_arn: "{arn}"
        handler: {handler}
        starting_position: TRIM_HORIZON
        {extra}
    """


ARN = "arn:aws:dynamodb:us-east-1:123456789012:table/Orders/stream/2026-01-01T00:00:00.000"


class TestHelpAndVersion:
    """--version and --help work everywhere."""

    def test_version(self) -> None:
        result = shardwise_cli("--version")
        assert result.returncode == 0
        assert result.stdout.strip() == f"shardwise {__version__}"

    @pytest.mark.parametrize(
        "command",
        [
            [],
            ["run"],
            ["validate"],
            ["checkpoints"],
            ["db"],
            ["db", "upgrade"],
            ["demo"],
            ["failures"],
            ["failures", "replay"],
            ["status"],
            ["iam-policy"],
            ["leases"],
            ["leases", "reset"],
        ],
    )
    def test_help(self, command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
        with pytest.raises(SystemExit) as exited:
            main([*command, "--help"])
        assert exited.value.code == 0
        assert "usage: shardwise" in capsys.readouterr().out


class TestValidate:
    """validate reports every problem with its YAML path, and checks handler imports."""

    def test_valid_config(self, tmp_path: Path) -> None:
        handler, _ = recording_handler(tmp_path)
        config = write_config(
            tmp_path, config_text("http://127.0.0.1:1", "sqlite+aiosqlite:///x.db", handler, ARN)
        )
        result = shardwise_cli("validate", "-c", str(config))
        assert result.returncode == 0, result.stderr
        assert "OK (1 processor(s): orders)" in result.stdout

    def test_out_of_range_and_unknown_keys(self, tmp_path: Path) -> None:
        handler, _ = recording_handler(tmp_path)
        config = write_config(
            tmp_path,
            config_text(
                "http://127.0.0.1:1",
                "sqlite+aiosqlite:///x.db",
                handler,
                ARN,
                extra="batch_size: 20000\n        batchsize: 5",
            ),
        )
        result = shardwise_cli("validate", "-c", str(config))
        assert result.returncode == 2
        assert "processors[0].batch_size: must be <= 10000" in result.stderr
        assert "unknown key 'batchsize' (did you mean 'batch_size'?)" in result.stderr
        assert str(config) in result.stderr

    def test_yaml_syntax_error(self, tmp_path: Path) -> None:
        config = write_config(tmp_path, "processors:\n  - name: [unclosed\n")
        result = shardwise_cli("validate", "-c", str(config))
        assert result.returncode == 2
        assert "line" in result.stderr

    def test_missing_file(self, tmp_path: Path) -> None:
        result = shardwise_cli("validate", "-c", str(tmp_path / "nope.yaml"))
        assert result.returncode == 2
        assert "nope.yaml" in result.stderr

    @pytest.mark.parametrize(
        ("module_source", "handler", "expected"),
        [
            (None, "missing_mod:handler", "cannot import module 'missing_mod'"),
            ("def other(e, c): pass\n", "mod_noattr:handler", "has no attribute 'handler'"),
            ("def handler(e, c):\n  return (\n", "mod_syntax:handler", "SyntaxError"),
            ("raise RuntimeError('boom at import')\n", "mod_raises:handler", "boom at import"),
            ("handler = 42\n", "mod_value:handler", "is not callable"),
        ],
    )
    def test_handler_import_errors(
        self, tmp_path: Path, module_source: str | None, handler: str, expected: str
    ) -> None:
        if module_source is not None:
            write_module(tmp_path, handler.split(":", maxsplit=1)[0], module_source)
        config = write_config(
            tmp_path, config_text("http://127.0.0.1:1", "sqlite+aiosqlite:///x.db", handler, ARN)
        )
        result = shardwise_cli("validate", "-c", str(config))
        assert result.returncode == 2
        assert "processors[0].handler" in result.stderr
        assert expected in result.stderr

    @pytest.mark.parametrize(
        ("handler", "code", "expected"),
        [
            ("app.orders.view.handler", 0, "OK (1 processor(s): orders)"),
            ("app/orders/view.handler", 0, "OK (1 processor(s): orders)"),
            ("app.orders.view:handler", 0, "OK (1 processor(s): orders)"),
            (
                "app.orders.view.lambda_handler",
                2,
                "processors[0].handler: handler 'app.orders.view.lambda_handler': "
                "module 'app.orders.view' has no attribute 'lambda_handler'",
            ),
            ("app.orders.nope.handler", 2, "cannot import module 'app.orders.nope'"),
            ("app/orders/view.py", 2, "processors[0].handler: names a file, not a function"),
            ("view", 2, "processors[0].handler: must be Lambda's 'file.function'"),
        ],
    )
    def test_lambda_handler_notation(
        self, tmp_path: Path, handler: str, code: int, expected: str
    ) -> None:
        """Lambda's Handler setting (app.orders.view.handler) validates as it is, packages too."""
        package = tmp_path / "app" / "orders"
        package.mkdir(parents=True)
        for init in (tmp_path / "app" / "__init__.py", package / "__init__.py"):
            init.touch()
        (package / "view.py").write_text("def handler(event, context):\n    return None\n")
        text = config_text("http://127.0.0.1:1", "sqlite+aiosqlite:///x.db", handler, ARN)
        result = shardwise_cli("validate", "-c", str(write_config(tmp_path, text)))
        assert result.returncode == code, result.stderr
        assert expected in (result.stdout if code == 0 else result.stderr)

    @pytest.mark.parametrize(
        ("processes", "code"), [("auto", 0), ("2", 0), ("0", 2), ("-1", 2), ("many", 2)]
    )
    def test_worker_processes(self, tmp_path: Path, processes: str, code: int) -> None:
        handler, _ = recording_handler(tmp_path)
        text = config_text("http://127.0.0.1:1", "sqlite+aiosqlite:///x.db", handler, ARN)
        text = text.replace("shard_sync_interval_seconds: 1", f"processes: {processes}")
        result = shardwise_cli("validate", "-c", str(write_config(tmp_path, text)))
        assert result.returncode == code, result.stderr
        if code:
            message = 'worker.processes: must be "auto" or a whole number 1..256'
            assert message in result.stderr

    def test_run_refuses_a_bad_handler_before_connecting(self, tmp_path: Path) -> None:
        config = write_config(
            tmp_path,
            config_text("http://127.0.0.1:1", "sqlite+aiosqlite:///x.db", "nope:handler", ARN),
        )
        result = shardwise_cli("run", "-c", str(config))
        assert result.returncode == 2
        assert "cannot import module 'nope'" in result.stderr
        assert not (tmp_path / "x.db").exists()


class TestRunAndSigterm:
    """SIGTERM mid-stream: the in-flight batch finishes and is checkpointed, exit 0."""

    def test_sigterm_mid_stream_loses_and_repeats_nothing(
        self, tmp_path: Path, server: StreamsServer
    ) -> None:
        stream, shard = one_shard_stream(server, 300)
        write_module(
            tmp_path,
            "slow",
            """
            import json, os, time
            OUT = os.path.join(os.path.dirname(__file__), "slow.jsonl")

            def handler(event, context):
                time.sleep(0.2)
                with open(OUT, "a") as f:
                    for r in event["Records"]:
                        f.write(json.dumps(r) + "\\n")
            """,
        )
        out = tmp_path / "slow.jsonl"
        store = f"sqlite+aiosqlite:///{tmp_path / 'cp.db'}"
        config = write_config(
            tmp_path,
            config_text(server.endpoint_url, store, "slow:handler", stream.arn, "batch_size: 10"),
        )
        log = tmp_path / "daemon.log"
        with daemon(config, log) as first:
            wait_for(lambda: len(read_jsonl(out)) >= 30, first, log, "30 records")
            first.send_signal(signal.SIGTERM)
            assert first.wait(timeout=30) == 0
        delivered_first = len(read_jsonl(out))
        assert delivered_first < 300, "the test must stop the daemon mid-stream"
        assert delivered_first % 10 == 0, "a batch was cut short"

        with daemon(config, log) as second:
            wait_for(lambda: len(read_jsonl(out)) >= 300, second, log, "300 records", timeout_s=60)
            second.send_signal(signal.SIGINT)
            assert second.wait(timeout=30) == 0
        sequences = [r["dynamodb"]["SequenceNumber"] for r in read_jsonl(out)]
        assert sequences == [r["dynamodb"]["SequenceNumber"] for r in stream.records(shard)]

        listed = shardwise_cli("checkpoints", "-c", str(config), cwd=tmp_path)
        assert listed.returncode == 0, listed.stderr
        assert shard in listed.stdout
        assert sequences[-1] in listed.stdout


class TestDatabaseCommands:
    """db upgrade applies the migrations; checkpoints reads them."""

    def test_upgrade_then_current(self, tmp_path: Path) -> None:
        handler, _ = recording_handler(tmp_path)
        store = f"sqlite+aiosqlite:///{tmp_path / 'cp.db'}"
        config = write_config(tmp_path, config_text("http://127.0.0.1:1", store, handler, ARN))
        before = shardwise_cli("db", "current", "-c", str(config))
        assert before.returncode == 0, before.stderr
        assert "no schema" in before.stdout
        upgraded = shardwise_cli("db", "upgrade", "-c", str(config))
        assert upgraded.returncode == 0, upgraded.stderr
        assert "schema at revision" in upgraded.stdout
        empty = shardwise_cli("checkpoints", "-c", str(config))
        assert empty.returncode == 0, empty.stderr
        assert "no checkpoints yet" in empty.stdout

    def test_purge_idempotency_deletes_expired_rows(self, tmp_path: Path) -> None:
        handler, _ = recording_handler(tmp_path)
        store = f"sqlite+aiosqlite:///{tmp_path / 'cp.db'}"
        config = write_config(tmp_path, config_text("http://127.0.0.1:1", store, handler, ARN))

        async def seed() -> None:
            now = datetime.now(UTC)
            async with await IdempotencyStore.connect(store) as rows:
                for key, expires in (
                    ("old", now - timedelta(hours=1)),
                    ("live", now + timedelta(hours=1)),
                ):
                    await rows.try_begin(
                        "ns", key, token="t", expires_at=expires, in_progress_expires_at=None
                    )

        asyncio.run(seed())
        result = shardwise_cli("db", "purge-idempotency", "-c", str(config))
        assert result.returncode == 0, result.stderr
        assert "1 expired idempotency rows deleted" in result.stdout
        again = shardwise_cli("db", "purge-idempotency", "-c", str(config))
        assert "0 expired idempotency rows deleted" in again.stdout

    def test_checkpoints_without_schema_says_what_to_do(self, tmp_path: Path) -> None:
        handler, _ = recording_handler(tmp_path)
        store = f"sqlite+aiosqlite:///{tmp_path / 'cp.db'}"
        config = write_config(tmp_path, config_text("http://127.0.0.1:1", store, handler, ARN))
        result = shardwise_cli("checkpoints", "-c", str(config))
        assert result.returncode == 1
        assert "shardwise db upgrade" in result.stderr


class TestRunServesHealthAndMetrics:
    """`shardwise run` serves /healthz, /readyz and /metrics on http.bind."""

    def test_endpoints(self, tmp_path: Path, server: StreamsServer) -> None:
        stream, _ = one_shard_stream(server, 5)
        handler, out = recording_handler(tmp_path)
        port = free_port()
        store = f"sqlite+aiosqlite:///{tmp_path / 'cp.db'}"
        text = config_text(server.endpoint_url, store, handler, stream.arn).replace(
            "bind: 127.0.0.1:0", f"bind: 127.0.0.1:{port}"
        )
        config = write_config(tmp_path, text)
        log = tmp_path / "daemon.log"
        with daemon(config, log) as process:
            wait_for(lambda: len(read_jsonl(out)) >= 5, process, log, "5 records")
            base = f"http://127.0.0.1:{port}"
            wait_for(lambda: _get(f"{base}/readyz")[0] == 200, process, log, "ready")
            assert _get(f"{base}/healthz")[0] == 200
            status, metrics = _get(f"{base}/metrics")
            assert status == 200
            assert 'shardwise_records_processed_total{processor="orders"} 5.0' in metrics
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=30) == 0


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""


class TestFilterAndImportCommands:
    """Invalid filter patterns fail validate with their position; import-esm prints YAML."""

    def test_invalid_filter_pattern(self, tmp_path: Path) -> None:
        handler, _ = recording_handler(tmp_path)
        extra = 'filter_criteria: {filters: [{pattern: \'{"eventName": "INSERT"}\'}]}'
        config = write_config(
            tmp_path,
            config_text("http://127.0.0.1:1", "sqlite+aiosqlite:///x.db", handler, ARN, extra),
        )
        result = shardwise_cli("validate", "-c", str(config))
        assert result.returncode == 2
        assert "processors[0].filter_criteria.filters[0].pattern: at eventName" in result.stderr

    def test_import_esm(self, tmp_path: Path) -> None:
        esm = tmp_path / "esm.json"
        esm.write_text(
            '{"UUID": "u", "EventSourceArn": "' + ARN + '", "FunctionArn": '
            '"arn:aws:lambda:us-east-1:123456789012:function:orders", "BatchSize": 50, '
            '"StartingPosition": "LATEST", "MaximumRetryAttempts": 2, "State": "Enabled"}'
        )
        result = shardwise_cli("import-esm", str(esm), "--handler", "app.orders:handler")
        assert result.returncode == 0, result.stderr
        assert "batch_size: 50" in result.stdout
        assert "maximum_retry_attempts: 2" in result.stdout
        assert "handler: app.orders:handler" in result.stdout


class TestSighup:
    """SIGHUP to `shardwise run` applies the config file's processors again."""

    def test_sighup_adds_a_processor(self, tmp_path: Path, server: StreamsServer) -> None:
        stream, _ = one_shard_stream(server, 5)
        handler, out = recording_handler(tmp_path, "first.jsonl")
        second, second_out = recording_handler(tmp_path, "second.jsonl")
        store = f"sqlite+aiosqlite:///{tmp_path / 'cp.db'}"
        text = config_text(server.endpoint_url, store, handler, stream.arn)
        config = write_config(tmp_path, text)
        log = tmp_path / "daemon.log"
        with daemon(config, log) as process:
            wait_for(lambda: len(read_jsonl(out)) >= 5, process, log, "5 records")
            added = textwrap.dedent(text) + (
                "  - name: second\n"
                f'    source: {{dynamodb: {{stream_arn: "{stream.arn}"}}}}\n'
                f"    handler: {second}\n"
                "    starting_position: TRIM_HORIZON\n"
            )
            config.write_text(added)
            process.send_signal(signal.SIGHUP)
            wait_for(lambda: len(read_jsonl(second_out)) >= 5, process, log, "the new processor")
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=30) == 0
        assert len(read_jsonl(out)) == 5
