"""The wheel as a user gets it: built, installed into a fresh virtualenv, ``shardwise demo`` run.

Nothing here may lean on the source checkout: the virtualenv lives outside it, the commands run
from a directory outside it, without PYTHONPATH. Dependencies come from the package index at
the versions make test itself runs with (requirements/constraints-dev.txt), so the test does
not change with the next release of a dependency.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e import command_running

ROOT = Path(__file__).resolve().parents[1]
DEV_CONSTRAINTS = ROOT / "requirements" / "constraints-dev.txt"
PROGRESS = re.compile(r"^\s*\d+s \| written \d+ \| processed (\d+) ", re.MULTILINE)
PIP_WARNINGS = ("does not provide the extra", "looking at multiple versions", "backtracking")


@dataclass(frozen=True)
class Installed:
    """A wheel of this checkout installed with its ``demo`` extra into a fresh virtualenv."""

    wheel: Path
    venv: Path
    elsewhere: Path  # a working directory outside the checkout
    pip_output: str

    def command(self, name: str) -> str:
        return str(self.venv / "bin" / name)

    @property
    def env(self) -> dict[str, str]:
        """This environment without AWS settings or paths that could reach the checkout."""
        dropped = {"PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME"}
        env = {k: v for k, v in os.environ.items() if k not in dropped and not k.startswith("AWS_")}
        return env | {"PYTHONUNBUFFERED": "1"}


def _run(*args: str | Path, cwd: Path, timeout_s: float) -> str:
    result = subprocess.run(
        [str(a) for a in args],
        cwd=cwd,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=timeout_s,
        check=False,
    )
    assert result.returncode == 0, f"{args}\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """pip wheel (no dependencies), then pip install 'shardwise-*.whl[demo]' into a new venv."""
    base = tmp_path_factory.mktemp("wheel")
    assert ROOT not in base.parents
    dist, venv, elsewhere = base / "dist", base / "venv", base / "elsewhere"
    elsewhere.mkdir()
    pip = (sys.executable, "-m", "pip", "--disable-pip-version-check")
    _run(*pip, "wheel", "--no-deps", "--wheel-dir", dist, ROOT, cwd=elsewhere, timeout_s=60)
    [wheel] = dist.glob("shardwise-*.whl")
    _run(sys.executable, "-m", "venv", venv, cwd=elsewhere, timeout_s=60)
    output = _run(
        venv / "bin" / "python",
        *pip[1:],
        "install",
        "--no-compile",  # byte-compiling every dependency is most of an install's time
        "--constraint",
        DEV_CONSTRAINTS,
        f"{wheel}[demo]",
        cwd=elsewhere,
        timeout_s=90,
    )
    return Installed(wheel, venv, elsewhere, output)


class TestWheel:
    """What the wheel holds and how it installs."""

    def test_ships_the_demo_handler_and_the_migrations(self, installed: Installed) -> None:
        names = set(zipfile.ZipFile(installed.wheel).namelist())
        assert {
            "shardwise/examples/orders_view.py",
            "shardwise/store/migrations/env.py",
            "shardwise/py.typed",
        } <= names
        assert not any(name.startswith(("examples/", "tests/")) for name in names)

    def test_installs_without_warnings_or_backtracking(self, installed: Installed) -> None:
        for warning in PIP_WARNINGS:
            assert warning not in installed.pip_output

    def test_imports_from_the_virtualenv(self, installed: Installed) -> None:
        where = _run(
            installed.command("python"),
            "-c",
            "import shardwise.examples.orders_view as m; print(m.__file__)",
            cwd=installed.elsewhere,
            timeout_s=30,
        )
        assert Path(where.strip()).is_relative_to(installed.venv)


@pytest.fixture
def demo(installed: Installed, tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    """``shardwise demo`` of the installed wheel, started outside the checkout."""
    command = [installed.command("shardwise"), "demo", "--workdir", str(tmp_path / "work")]
    with command_running(command, cwd=installed.elsewhere, env=installed.env) as process:
        yield process


class TestDemoFromTheWheel:
    """`pip install 'shardwise[demo]'` then `shardwise demo`: records consumed, a clean stop."""

    def test_consumes_records_and_stops_on_sigint(self, demo: subprocess.Popen[str]) -> None:
        assert demo.stdout is not None
        seen: list[str] = []
        deadline = time.monotonic() + 30
        while True:  # until a progress line shows processed records
            line = demo.stdout.readline()
            assert line, f"exited before processing anything: {''.join(seen)}"
            seen.append(line)
            found = PROGRESS.search(line)
            if found and int(found[1]) > 0:
                break
            assert time.monotonic() < deadline, "".join(seen)
        demo.send_signal(signal.SIGINT)
        out, err = demo.communicate(timeout=30)
        assert demo.returncode == 0, err
        assert "shardwise demo: stopped after" in out
        processed = re.search(r"processed\s+(\d+) records", out)
        assert processed and int(processed[1]) > 0, out
        assert "Traceback" not in err
