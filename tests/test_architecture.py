"""Imports point down the pipeline: no two packages of lungseg_monai import each other (directly or
through others), and each module says its one job in its first docstring line."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

from conftest import REPO_ROOT

PACKAGE = REPO_ROOT / "lungseg_monai"


def _unit(path: Path) -> str:
    """The top-level package or module of lungseg_monai a file belongs to."""
    parts = path.relative_to(PACKAGE).parts
    return parts[0] if len(parts) > 1 else parts[0].removesuffix(".py")


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = defaultdict(set)
    for path in PACKAGE.rglob("*.py"):
        source = _unit(path)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lungseg_monai."):
                target = node.module.split(".")[1]
            elif isinstance(node, ast.ImportFrom) and node.module == "lungseg_monai":
                target = node.names[0].name
            else:
                continue
            is_unit = (PACKAGE / target).is_dir() or (PACKAGE / f"{target}.py").is_file()
            if is_unit and target != source:
                graph[source].add(target)
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = 2
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_cycle_between_packages() -> None:
    graph = _graph()
    assert graph["inference"] and "dicomweb" in graph["inference"]  # the check sees real edges
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


def test_the_cycle_check_finds_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_every_module_says_its_job_first() -> None:
    missing = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if "label/app" in path.as_posix():
            continue
        doc = ast.get_docstring(ast.parse(path.read_text()))
        if not doc or len(doc.splitlines()[0]) < 10:
            missing.append(str(path.relative_to(REPO_ROOT)))
    assert missing == []
