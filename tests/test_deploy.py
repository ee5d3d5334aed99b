"""Deployment artifacts: the Dockerfile, Kubernetes, Helm, ECS, IAM, Grafana and alert rules.

They are checked against the code they describe: the image's entrypoint runs the real CLI,
the sample config validates, the IAM policy is what ``iam_policy`` computes, and every
metric a dashboard or alert names is one a real exporter serves.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

from shardwise.cli.iam import iam_policy
from shardwise.config import Settings, parse_config
from shardwise.observe.health import ObserveServer
from shardwise.records import ShardId
from tests.observe.test_metrics import busy_progress, scrape

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
KUBE = DEPLOY / "kubernetes"
CHART = DEPLOY / "helm" / "shardwise"
CONFIG_PATH = "/etc/shardwise/shardwise.yaml"
RUN_ARGS = ["run", "-c", CONFIG_PATH]
ENV = {"SHARDWISE_STORE_URL": "postgresql+asyncpg://shardwise:pw@db:5432/shardwise"}
METRIC = re.compile(r"\b(?:shardwise|process|python)_[a-z0-9_]+\b")
CONSTRAINTS = "requirements/constraints.txt"  # the image's pins (make lock)
DEV_CONSTRAINTS = "requirements/constraints-dev.txt"  # make test's: plus the dev and demo extras


def dockerfile(path: Path = ROOT / "Dockerfile") -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, arguments = (pending + line).partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
        pending = ""
    return instructions


def stages(path: Path = ROOT / "Dockerfile") -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for keyword, arguments in dockerfile(path):
        if keyword == "FROM":
            result.append([])
        result[-1].append((keyword, arguments))
    return result


def one(stage: list[tuple[str, str]], keyword: str) -> str:
    [arguments] = [a for k, a in stage if k == keyword]
    return arguments


def kube(name: str) -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((KUBE / name).read_text())
    return document


def sample_config_text() -> str:
    text: str = kube("configmap.yaml")["data"]["shardwise.yaml"]
    return text


def sample_settings() -> Settings:
    return parse_config(sample_config_text(), env=ENV)


def helm_values() -> dict[str, Any]:
    values: dict[str, Any] = yaml.safe_load((CHART / "values.yaml").read_text())
    return values


def shardwise(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The console script the image's ENTRYPOINT runs."""
    script = Path(sys.executable).with_name("shardwise")
    return subprocess.run(
        [str(script), *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        stdin=subprocess.DEVNULL,
        timeout=60,
        check=False,
    )


class TestDockerfile:
    """Multi-stage, non-root, and its entrypoint is the shardwise command."""

    def test_stages(self) -> None:
        """A builder makes the wheel; the final stage installs it from the builder."""
        builder, final = stages()
        assert re.fullmatch(r"python:3\.11-slim\s+AS\s+builder", one(builder, "FROM"), re.I)
        assert any("pip wheel" in a for k, a in builder if k == "RUN")
        assert one(final, "FROM") == "python:3.11-slim"
        assert any(a.startswith("--from=builder ") for k, a in final if k == "COPY")
        installs = " ".join(a for stage in (builder, final) for k, a in stage if k == "RUN")
        assert "[demo" not in installs and "moto" not in installs

    def test_runtime_settings(self) -> None:
        """Non-root user, shardwise entrypoint, run command, SIGTERM, port, healthcheck."""
        final = stages()[-1]
        user = [a for k, a in final if k == "USER"][-1]
        assert user.split(":")[0] not in {"root", "0"}
        assert json.loads(one(final, "ENTRYPOINT")) == ["shardwise"]
        assert json.loads(one(final, "CMD")) == RUN_ARGS
        assert one(final, "STOPSIGNAL") == "SIGTERM"
        assert one(final, "EXPOSE") == "9400"
        assert "/healthz" in one(final, "HEALTHCHECK")

    def test_dockerignore_allows_only_the_build_inputs(self) -> None:
        """The context is pyproject, README, src and the pins: no venv, tests or databases."""
        lines = (ROOT / ".dockerignore").read_text().splitlines()
        rules = [line for line in lines if line and not line.startswith("#")]
        assert rules[0] == "*"
        assert {"!pyproject.toml", "!README.md", "!src/", f"!{CONSTRAINTS}"} <= set(rules)

    def test_dependencies_are_installed_at_the_pinned_versions(self) -> None:
        """The builder copies the constraints file and installs the wheel with it."""
        builder = stages()[0]
        copies = [a.split() for k, a in builder if k == "COPY"]
        assert [CONSTRAINTS, "./requirements/"] in copies
        installs = [a for k, a in builder if k == "RUN" and "pip install" in a]
        assert installs
        for run in installs:
            command = run.split("pip install", 1)[1].split("&&", 1)[0].split()
            assert "shardwise-*.whl" in command[-1]
            assert command[0] in {"-c", "--constraint"}
            assert command[1] == CONSTRAINTS

    async def test_healthcheck_command_probes_healthz(self) -> None:
        """The HEALTHCHECK's Python one-liner exits 0 on 200 and fails on 503."""
        command = json.loads(one(stages()[-1], "HEALTHCHECK").split("CMD", 1)[1])
        assert command[:2] == ["python", "-c"]
        started = asyncio.Event()
        progress = {"orders": busy_progress()}
        settings = parse_config(
            "http: {bind: '127.0.0.1:0'}\nprocessors:\n"
            "  - {name: orders, source: {dynamodb: {table: Orders}}, handler: m:h,"
            " starting_position: LATEST}"
        )
        for stall_s, expected in ((1e9, 0), (0.0, 1)):
            server = ObserveServer(
                settings, progress, store=None, started=started, max_checkpoint_stall_s=stall_s
            )
            async with server:
                code = command[2].replace(":9400/", f":{server.bound_port}/")
                process = await asyncio.create_subprocess_exec(
                    sys.executable, "-c", code, stderr=asyncio.subprocess.DEVNULL
                )
                assert await process.wait() == expected


def pinned(path: str) -> dict[str, list[tuple[str, str]]]:
    """``name -> [(version, marker)]`` of a lock file; every requirement line must be ``==``."""
    pins: dict[str, list[tuple[str, str]]] = {}
    for raw in (ROOT / path).read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        requirement, _, marker = (part.strip() for part in line.partition(";"))
        found = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([0-9][A-Za-z0-9.+!-]*)", requirement)
        assert found, f"{path}: {raw!r} is not pinned with =="
        pins.setdefault(canonicalize_name(found[1]), []).append((found[2], marker))
    return pins


def project() -> dict[str, Any]:
    table: dict[str, Any] = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return table


def runtime_requirements() -> list[Requirement]:
    return [Requirement(text) for text in project()["dependencies"]]


def bounds(specifier: SpecifierSet) -> tuple[Version, Version]:
    """The ``>=`` and ``<`` versions of a range like ``>=1.43.115,<1.43.118``."""
    [lower] = [Version(s.version) for s in specifier if s.operator == ">="]
    [upper] = [Version(s.version) for s in specifier if s.operator == "<"]
    return lower, upper


class TestLockedDependencies:
    """requirements/*.txt pin everything pyproject.toml asks for; make and the image use them."""

    @pytest.mark.parametrize(
        ("path", "extras"), [(CONSTRAINTS, ()), (DEV_CONSTRAINTS, ("dev", "demo"))]
    )
    def test_every_dependency_is_pinned(self, path: str, extras: tuple[str, ...]) -> None:
        """Each dependency (and each extra's) has an == pin inside pyproject's range."""
        pins = pinned(path)
        wanted = runtime_requirements()
        for extra in extras:
            wanted += [Requirement(text) for text in project()["optional-dependencies"][extra]]
        for requirement in wanted:
            versions = pins.get(canonicalize_name(requirement.name))
            assert versions, f"{requirement.name} is not pinned in {path}: run make lock"
            for version, _ in versions:
                assert version in requirement.specifier, f"{path}: {requirement} vs {version}"

    def test_the_image_pins_are_the_ones_ci_tests(self) -> None:
        """Every runtime pin has the same version in the dev lock that make test installs."""
        runtime, dev = pinned(CONSTRAINTS), pinned(DEV_CONSTRAINTS)
        for name, versions in runtime.items():
            assert {v for v, _ in versions} <= {v for v, _ in dev.get(name, [])}, name

    def test_make_installs_with_the_dev_pins(self) -> None:
        """Every pip install of the project in the Makefile passes the dev constraints."""
        makefile = (ROOT / "Makefile").read_text()
        assert f"DEV_CONSTRAINTS := {DEV_CONSTRAINTS}" in makefile
        installs = [
            line for line in makefile.splitlines() if "pip install" in line and " -e " in line
        ]
        assert len(installs) >= 2
        assert all("-c $(DEV_CONSTRAINTS) -e '.[" in line for line in installs)

    def test_only_make_lock_needs_uv(self) -> None:
        """uv appears in the lock recipe and nowhere that make test or make demo runs."""
        text = (ROOT / "Makefile").read_text().replace("\\\n", " ")
        lines = [line for line in text.splitlines() if not line.startswith("#")]
        start = lines.index("lock: | $(BIN)/python")
        recipe = lines[start + 1 : lines.index("", start)]
        assert "\t$(UV_COMPILE) --output-file $(CONSTRAINTS)" in recipe
        assert "\t$(UV_COMPILE) --extra dev --extra demo --output-file $(DEV_CONSTRAINTS)" in recipe
        uses = [line for line in lines if re.search(r"\buv\b|UV_COMPILE", line)]
        [definition] = [line for line in uses if line.startswith("UV_COMPILE =")]
        assert "uv pip compile pyproject.toml" in definition
        assert set(uses) - set(recipe) == {definition}


class TestDependencyRanges:
    """aiobotocore and boto3 resolve at once: no extra that does not exist, no backtracking."""

    def test_no_requirement_asks_for_a_missing_extra(self) -> None:
        """aiobotocore[boto3] warned on every install: aiobotocore has no such extra any more."""
        for requirement in runtime_requirements():
            provided = metadata.metadata(requirement.name).get_all("Provides-Extra") or []
            assert requirement.extras <= set(provided), requirement

    def test_boto3_wants_a_botocore_inside_aiobotocores_range(self) -> None:
        """Every boto3 release allowed wants botocore >= its own version (< the next minor):
        all of them must lie in the botocore range aiobotocore pins, so pip never backtracks."""
        ranges = {r.name: r.specifier for r in runtime_requirements()}
        [botocore] = [
            Requirement(text).specifier
            for text in metadata.requires("aiobotocore") or []
            if Requirement(text).name == "botocore" and not Requirement(text).marker
        ]
        assert Version(metadata.version("aiobotocore")) in ranges["aiobotocore"]
        boto3_lower, boto3_upper = bounds(ranges["boto3"])
        botocore_lower, botocore_upper = bounds(botocore)
        assert botocore_lower <= boto3_lower and boto3_upper <= botocore_upper
        # The installed (locked) boto3 agrees with the installed aiobotocore on botocore.
        [wanted_by_boto3] = [
            Requirement(text).specifier
            for text in metadata.requires("boto3") or []
            if Requirement(text).name == "botocore" and not Requirement(text).marker
        ]
        assert metadata.version("botocore") in wanted_by_boto3 & botocore


class TestEntrypoint:
    """What the image runs works: the CLI, and the sample config with its handler."""

    def test_run_help(self) -> None:
        """`shardwise run --help` (the ENTRYPOINT with the CMD's subcommand) succeeds."""
        result = shardwise("run", "--help")
        assert result.returncode == 0, result.stderr
        assert "--config" in result.stdout

    def test_sample_config_validates(self, tmp_path: Path) -> None:
        """The ConfigMap's shardwise.yaml validates; its handler is examples/orders_view.py,
        found through PYTHONPATH as the image finds it in /app."""
        path = tmp_path / "shardwise.yaml"
        path.write_text(sample_config_text())
        result = shardwise(
            "validate", "-c", str(path), env={**ENV, "PYTHONPATH": str(ROOT / "examples")}
        )
        assert result.returncode == 0, result.stderr
        assert "OK (1 processor(s): orders-view)" in result.stdout

    def test_helm_config_validates(self, tmp_path: Path) -> None:
        """The chart's config is the same sample and validates too."""
        path = tmp_path / "shardwise.yaml"
        path.write_text(yaml.safe_dump(helm_values()["config"]))
        result = shardwise(
            "validate", "-c", str(path), env={**ENV, "PYTHONPATH": str(ROOT / "examples")}
        )
        assert result.returncode == 0, result.stderr
        assert helm_values()["config"] == yaml.safe_load(sample_config_text())


class TestFunctionDeploys:
    """deploy/functions: a Node.js function in the image, and a Lambda image as a sidecar."""

    def test_node_image(self) -> None:
        """Built FROM the shardwise image; node and the function (with its node_modules,
        built where the compilers are) copied in where the runtime command finds them."""
        builder, final = stages(DEPLOY / "functions" / "node.Dockerfile")
        assert one(builder, "FROM").startswith("node:22-bookworm AS ")
        assert any(a.startswith("npm ci --omit=dev") for k, a in builder if k == "RUN")
        assert one(final, "FROM").startswith("shardwise:")
        copies = [a for k, a in final if k == "COPY"]
        assert "--from=node:22-bookworm-slim /usr/local/bin/node /usr/local/bin/node" in copies
        [function] = [c for c in copies if c.startswith("--from=function ")]
        destination = function.split()[-1]
        text = (DEPLOY / "functions" / "node.Dockerfile").read_text()
        assert f"working_directory: {destination}" in text
        assert '"node_modules/aws-lambda-ric/index.mjs"' in text

    def test_sidecar_config_and_pod_agree(self, tmp_path: Path) -> None:
        """The config validates; its invoke URL is the sidecar's port on the pod's loopback,
        and the emulator's timeout is the processor's."""
        documents = list(
            yaml.safe_load_all((DEPLOY / "functions" / "sidecar-deployment.yaml").read_text())
        )
        [config_map] = [d for d in documents if d["kind"] == "ConfigMap"]
        [deployment] = [d for d in documents if d["kind"] == "Deployment"]
        settings = parse_config(config_map["data"]["shardwise.yaml"], env=ENV)
        [processor] = settings.processors
        assert processor.invoke is not None and processor.handler is None
        containers = {c["name"]: c for c in deployment["spec"]["template"]["spec"]["containers"]}
        [port] = containers["function"]["ports"]
        assert processor.invoke.url.startswith(f"http://127.0.0.1:{port['containerPort']}/")
        assert processor.invoke.url.endswith("/2015-03-31/functions/function/invocations")
        env = {e["name"]: e.get("value") for e in containers["function"]["env"]}
        assert float(env["AWS_LAMBDA_FUNCTION_TIMEOUT"]) == processor.timeout_seconds
        assert containers["shardwise"]["args"] == RUN_ARGS
        path = tmp_path / "shardwise.yaml"
        path.write_text(config_map["data"]["shardwise.yaml"])
        result = shardwise("validate", "-c", str(path), env=ENV)
        assert result.returncode == 0, result.stderr


class TestManifestsParse:
    """Every YAML and JSON file under deploy/ parses (Helm templates are checked apart)."""

    def test_all_files_parse(self) -> None:
        """yaml.safe_load_all / json.load on each file."""
        checked = 0
        for path in sorted(DEPLOY.rglob("*")):
            if "templates" in path.parts or not path.is_file():
                continue
            if path.suffix in {".yaml", ".yml"}:
                assert all(d is not None for d in yaml.safe_load_all(path.read_text())), path
                checked += 1
            elif path.suffix == ".json":
                json.loads(path.read_text())
                checked += 1
        assert checked >= 14


class TestKubernetes:
    """The manifests agree with each other and with the config they run."""

    def test_deployment(self) -> None:
        """Replicas with rolling updates, drain-aware grace period, probes, hardening, resources."""
        deployment = kube("deployment.yaml")
        settings = sample_settings()
        spec, pod = deployment["spec"], deployment["spec"]["template"]["spec"]
        assert (spec["replicas"], spec["strategy"]["type"]) == (2, "RollingUpdate")
        assert spec["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
        assert pod["terminationGracePeriodSeconds"] >= settings.worker.shutdown_timeout_seconds + 10
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0
        [container] = pod["containers"]
        assert container["args"] == RUN_ARGS
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert {"requests", "limits"} <= container["resources"].keys()
        [port] = container["ports"]
        assert (port["name"], port["containerPort"]) == ("metrics", settings.http.port)
        assert settings.http.host == "0.0.0.0"
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
        slowest = max(
            p.timeout_seconds + p.maximum_batching_window_in_seconds for p in settings.processors
        )
        assert settings.health.max_checkpoint_stall_seconds > slowest
        [store_env] = [e for e in container["env"] if e["name"] == "SHARDWISE_STORE_URL"]
        assert "secretKeyRef" in store_env["valueFrom"]
        assert "${SHARDWISE_STORE_URL}" in sample_config_text()
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        assert mounts[str(Path(CONFIG_PATH).parent)] == "config"
        [config_volume] = [v for v in pod["volumes"] if v["name"] == "config"]
        assert config_volume["configMap"]["name"] == kube("configmap.yaml")["metadata"]["name"]
        assert pod["serviceAccountName"] == kube("serviceaccount.yaml")["metadata"]["name"]

    def test_selectors_match_the_pods(self) -> None:
        """Service, PDB and ServiceMonitor select the Deployment's pods."""
        pod_labels = kube("deployment.yaml")["spec"]["template"]["metadata"]["labels"]
        service = kube("service.yaml")
        assert service["spec"]["selector"].items() <= pod_labels.items()
        assert kube("poddisruptionbudget.yaml")["spec"]["selector"]["matchLabels"] == pod_labels
        assert kube("poddisruptionbudget.yaml")["spec"]["maxUnavailable"] == 1
        monitor = kube("servicemonitor.yaml")
        assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
        assert (
            monitor["spec"]["selector"]["matchLabels"].items()
            <= service["metadata"]["labels"].items()
        )
        assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]
        assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"

    def test_service_account_and_kustomization(self) -> None:
        """IRSA annotation present; kustomization lists every manifest."""
        annotations = kube("serviceaccount.yaml")["metadata"]["annotations"]
        assert annotations["eks.amazonaws.com/role-arn"].startswith("arn:aws:iam::")
        listed = set(kube("kustomization.yaml")["resources"])
        assert listed == {p.name for p in KUBE.glob("*.yaml")} - {"kustomization.yaml"}


def value_paths(template: str) -> set[tuple[str, ...]]:
    return {tuple(m.split(".")[2:]) for m in re.findall(r"\.Values(?:\.[A-Za-z_]\w*)+", template)}


class TestHelmChart:
    """Without helm installed, the chart is linted structurally (with it, by helm too)."""

    def test_chart_metadata(self) -> None:
        """Chart.yaml has the fields helm requires; appVersion is the package version."""
        chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
        assert chart["apiVersion"] == "v2"
        assert chart["name"] == "shardwise" == CHART.name
        assert re.fullmatch(r"\d+\.\d+\.\d+", chart["version"])
        project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
        assert chart["appVersion"] == project["version"]
        assert chart["type"] == "application"

    def test_every_values_reference_exists(self) -> None:
        """Each {{ .Values.x.y }} in the templates names a key of values.yaml."""
        values = helm_values()
        references = set()
        for template in (CHART / "templates").iterdir():
            references |= value_paths(template.read_text())
        assert len(references) > 20
        for path in references:
            node: Any = values
            for key in path:
                assert isinstance(node, dict) and key in node, ".Values." + ".".join(path)
                node = node[key]

    def test_includes_are_defined_and_braces_balance(self) -> None:
        """Every included template is defined in _helpers.tpl; {{ and }} pair up."""
        helpers = (CHART / "templates" / "_helpers.tpl").read_text()
        defined = set(re.findall(r'define "([^"]+)"', helpers))
        for template in (CHART / "templates").iterdir():
            text = template.read_text()
            assert text.count("{{") == text.count("}}"), template.name
            assert set(re.findall(r'include "([^"]+)"', text)) <= defined, template.name

    def test_values_match_the_plain_manifests(self) -> None:
        """Grace period, replicas, strategy, hardening and the IRSA role agree with kubernetes/."""
        values = helm_values()
        pod = kube("deployment.yaml")["spec"]["template"]["spec"]
        assert values["terminationGracePeriodSeconds"] == pod["terminationGracePeriodSeconds"]
        assert values["replicaCount"] == 2
        assert values["strategy"] == {
            "type": "RollingUpdate",
            "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
        }
        assert values["podSecurityContext"] == pod["securityContext"]
        assert values["securityContext"] == pod["containers"][0]["securityContext"]
        role = kube("serviceaccount.yaml")["metadata"]["annotations"]["eks.amazonaws.com/role-arn"]
        assert values["serviceAccount"]["roleArn"] == role
        assert values["serviceMonitor"]["enabled"] is False
        assert values["config"]["store"]["url"] == "${SHARDWISE_STORE_URL}"

    @pytest.mark.skipif(shutil.which("helm") is None, reason="helm is not installed")
    def test_helm_lint_and_template(self) -> None:
        """helm lint and helm template succeed (only where helm is installed)."""
        helm = str(shutil.which("helm"))
        lint = subprocess.run(
            [helm, "lint", str(CHART)], capture_output=True, text=True, check=False
        )
        assert lint.returncode == 0, lint.stdout + lint.stderr
        rendered = subprocess.run(
            [helm, "template", "demo", str(CHART), "--set", "serviceMonitor.enabled=true"],
            capture_output=True,
            text=True,
            check=False,
        )
        assert rendered.returncode == 0, rendered.stderr
        kinds = {d["kind"] for d in yaml.safe_load_all(rendered.stdout) if d}
        assert kinds >= {"Deployment", "ConfigMap", "Service", "ServiceMonitor", "ServiceAccount"}


class TestEcs:
    """The task definition drains, probes, logs and runs as the task role."""

    def test_task_definition(self) -> None:
        """stopTimeout above the drain time, /healthz health check, awslogs, secrets."""
        task = json.loads((DEPLOY / "ecs" / "task-definition.json").read_text())
        assert task["taskRoleArn"].startswith("arn:aws:iam::")
        [container] = task["containerDefinitions"]
        assert container["stopTimeout"] == 40
        assert container["stopTimeout"] > sample_settings().worker.shutdown_timeout_seconds
        assert container["command"] == RUN_ARGS
        assert "/healthz" in " ".join(container["healthCheck"]["command"])
        logs = container["logConfiguration"]
        assert logs["logDriver"] == "awslogs"
        assert {"awslogs-group", "awslogs-region", "awslogs-stream-prefix"} <= logs[
            "options"
        ].keys()
        assert container["portMappings"][0]["containerPort"] == 9400
        assert [s["name"] for s in container["secrets"]] == ["SHARDWISE_STORE_URL"]

    def test_service_never_runs_two_workers(self) -> None:
        """Without leases a deployment must stop the old task before starting the new one."""
        service = json.loads((DEPLOY / "ecs" / "service.json").read_text())
        assert service["desiredCount"] == 2
        assert service["deploymentConfiguration"]["maximumPercent"] == 200


class TestIamPolicyFile:
    """deploy/iam-policy.json is exactly what iam_policy computes for the sample config."""

    def test_matches_iam_policy(self) -> None:
        """Regenerate with: shardwise.cli.iam.iam_policy(sample settings)."""
        stored = json.loads((DEPLOY / "iam-policy.json").read_text())
        assert stored == iam_policy(sample_settings())


@pytest.fixture
async def exposed_names() -> set[str]:
    """Every sample name a real exporter serves, scraped over HTTP with data in every series
    (a Kinesis shard's MillisBehindLatest too: only a Kinesis page reports it)."""
    progress = busy_progress()
    progress.shards[ShardId("shard-b")].millis_behind_latest = 1500
    settings = parse_config(
        "http: {bind: '127.0.0.1:0'}\nprocessors:\n"
        "  - {name: orders, source: {dynamodb: {table: Orders}}, handler: m:h,"
        " starting_position: LATEST}"
    )
    server = ObserveServer(
        settings,
        {"orders": progress},
        store=None,
        started=asyncio.Event(),
        max_checkpoint_stall_s=300,
    )
    async with server:
        samples = await scrape(server.bound_port)
    return {name for name, _ in samples}


def dashboard_exprs() -> list[str]:
    dashboard = json.loads((DEPLOY / "grafana" / "shardwise-dashboard.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    exprs += [v["definition"] for v in dashboard["templating"]["list"] if "definition" in v]
    return exprs


def alert_rules() -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = yaml.safe_load(
        (DEPLOY / "prometheus" / "alerts.yaml").read_text()
    )["groups"][0]["rules"]
    return rules


class TestDashboardAndAlerts:
    """They name only metrics the exporter really exposes, and cover what matters."""

    def test_dashboard_metrics_exist(self, exposed_names: set[str]) -> None:
        """Every metric in a panel or variable query is served by the exporter."""
        used = {name for expr in dashboard_exprs() for name in METRIC.findall(expr)}
        assert used - exposed_names == set()
        assert {
            "shardwise_iterator_age_seconds",
            "shardwise_records_processed_total",
            "shardwise_failed_invocations_total",
            "shardwise_shards_owned",
            "shardwise_shard_millis_behind_latest",
        } <= used

    def test_alert_metrics_exist(self, exposed_names: set[str]) -> None:
        """Every metric in an alert expression is served by the exporter."""
        used = {name for rule in alert_rules() for name in METRIC.findall(rule["expr"])}
        assert used - exposed_names == set()

    def test_alerts_cover_the_failure_modes(self) -> None:
        """Iterator age, trim-horizon risk, stalls, drops and destination failures alert."""
        rules = alert_rules()
        names = [rule["alert"] for rule in rules]
        assert len(names) == len(set(names))
        assert {
            "ShardwiseIteratorAgeHigh",
            "ShardwiseTrimHorizonRisk",
            "ShardwiseNoCheckpointProgress",
            "ShardwiseRecordsDropped",
            "ShardwiseDestinationFailures",
        } <= set(names)
        for rule in rules:
            assert rule["labels"]["severity"] in {"warning", "critical"}
            assert rule["annotations"]["summary"]
        [trim] = [r for r in rules if r["alert"] == "ShardwiseTrimHorizonRisk"]
        threshold = eval(trim["expr"].split(">")[1], {})
        assert 12 * 3600 <= threshold < 24 * 3600
