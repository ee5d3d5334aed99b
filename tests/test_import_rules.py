"""The rules of the house, executable: which part of shardwise may import which.

Data flows one way: sources yield batches, dispatch decides, the store commits, and the
supervisor (with the runner under it) wires them together; the operator commands sit on
top. Each test below reads every module under ``src/shardwise`` (imports inside functions
included) and names the import that breaks a rule.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "shardwise"

# The shared vocabulary: anything may import these, and they import only each other.
VOCABULARY = frozenset({"records", "errors", "clock", "tasks", "__version__"})

# What each part may import besides the vocabulary and itself. A new top-level module or
# package has to be placed here, which is the point: its place in the flow is a decision.
ALLOWED: dict[str, frozenset[str]] = {
    "records": VOCABULARY,
    "errors": VOCABULARY,
    "clock": VOCABULARY,
    "tasks": VOCABULARY,
    "processors": VOCABULARY,
    "runtimes": VOCABULARY | {"processors"},
    "store": VOCABULARY,
    # The handler's side: a helper user code imports, on the store alone (no runtime parts).
    "idempotency": VOCABULARY | {"store"},
    "config": VOCABULARY | {"dispatch", "processors", "runtimes", "store"},  # their rules
    "functions": VOCABULARY | {"config", "processors", "runtimes"},
    "aws": VOCABULARY | {"config"},
    "sources": VOCABULARY | {"aws", "config"},
    "leases": VOCABULARY | {"store"},
    "destinations": VOCABULARY | {"aws", "config", "store"},
    "dispatch": VOCABULARY | {"destinations", "observe", "processors"},
    "gc_policy": VOCABULARY | {"config", "observe"},
    "observe": VOCABULARY | {"config", "gc_policy"},
    "workers": VOCABULARY | {"config", "observe", "store"},
    "runner": VOCABULARY
    | {"config", "destinations", "dispatch", "leases", "observe", "processors", "store"},
    "supervisor": VOCABULARY
    | {
        "aws",
        "config",
        "destinations",
        "dispatch",
        "functions",
        "gc_policy",
        "leases",
        "observe",
        "processors",
        "runner",
        "sources",
        "store",
    },
    "demo": VOCABULARY | {"config", "examples", "observe", "supervisor"},
    "examples": VOCABULARY,
    # The test doubles (StreamsServer) need only the vocabulary; the kit's harness runs a
    # handler through the real dispatch path, so it wires what the runner wires - the
    # config's consumer settings, the processor the runtime opens, a ShardConsumer - with
    # memory for the source, the checkpoint and the destination. Still below the supervisor.
    "testing": VOCABULARY
    | {"config", "destinations", "dispatch", "functions", "observe", "processors", "runner"},
    "cli": VOCABULARY
    | {
        "aws",
        "config",
        "demo",
        "destinations",
        "dispatch",
        "functions",
        "leases",
        "observe",
        "processors",
        "runtimes",
        "store",
        "supervisor",
        "workers",
    },
    "__main__": frozenset({"cli"}),
    "__init__": VOCABULARY,
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts).removesuffix(".__init__")


def _part(module: str) -> str:
    """The top-level part a dotted name belongs to: ``shardwise.dispatch.consumer`` ->
    ``dispatch``; the package's own ``__init__`` is ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports() -> Iterator[tuple[str, str, int]]:
    """(importing module, imported shardwise module, line) for every import in the package."""
    for path in sorted(PACKAGE.rglob("*.py")):
        importer = _module_name(path)
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                if node.module == "shardwise":  # from shardwise import x: x is the part
                    for alias in node.names:
                        yield importer, f"shardwise.{alias.name}", node.lineno
                elif node.module.startswith("shardwise."):
                    yield importer, node.module, node.lineno
            elif isinstance(node, ast.ImportFrom) and node.level > 0:
                raise AssertionError(f"{importer}:{node.lineno}: relative import")
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("shardwise."):
                        yield importer, alias.name, node.lineno


IMPORTS = list(_imports())


def _breaking(rule: str, broken: list[str]) -> None:
    assert not broken, f"{rule}:\n  " + "\n  ".join(broken)


def test_the_walk_sees_the_package() -> None:
    """A walk that found nothing would pass every rule below."""
    importers = {importer for importer, _, _ in IMPORTS}
    assert {"shardwise.supervisor", "shardwise.dispatch.consumer", "shardwise.cli.main"} <= (
        importers
    )
    assert len(IMPORTS) > 200


def test_every_part_has_a_place() -> None:
    parts = {_part(importer) for importer, _, _ in IMPORTS}
    _breaking("parts the rules do not place", sorted(parts - ALLOWED.keys()))


@pytest.mark.parametrize("part", sorted(ALLOWED))
def test_imports_follow_the_flow(part: str) -> None:
    allowed = ALLOWED[part] | {part}
    broken = [
        f"{importer}:{line} imports {imported}"
        for importer, imported, line in IMPORTS
        if _part(importer) == part and _part(imported) not in allowed
    ]
    _breaking(f"{part} may import only {sorted(allowed)}", broken)


def test_nothing_below_the_supervisor_imports_it() -> None:
    broken = [
        f"{importer}:{line}"
        for importer, imported, line in IMPORTS
        if _part(imported) == "supervisor" and _part(importer) not in {"supervisor", "cli", "demo"}
    ]
    _breaking("only the commands and the demo start a supervisor", broken)


def test_dispatch_imports_neither_sources_nor_leases() -> None:
    broken = [
        f"{importer}:{line} imports {imported}"
        for importer, imported, line in IMPORTS
        if _part(importer) == "dispatch" and _part(imported) in {"sources", "leases", "store"}
    ]
    _breaking("dispatch reads through its own protocols, wired by the runner", broken)


def test_only_the_entry_point_imports_the_commands() -> None:
    broken = [
        f"{importer}:{line}"
        for importer, imported, line in IMPORTS
        if _part(imported) == "cli" and _part(importer) not in {"cli", "__main__"}
    ]
    _breaking("cli/ is the top of the house", broken)
