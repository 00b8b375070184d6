"""Imports flow one way: infaas <- variants <- profiler <- scheduler <- enclave_workers <- api.

Every module of every package is parsed, imports inside functions and
`importlib.import_module("...")` strings included, and any edge to a package
further right fails, unless the importer is a declared composition root.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LAYERS = ("infaas", "variants", "profiler", "scheduler", "enclave_workers", "api")
# Composition roots wire every component together and may import any package.
COMPOSITION_ROOTS = frozenset({"infaas/cli.py", "api/serve.py"})


def _imported(tree: ast.AST) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            names.add(node.args[0].value)
    return names


def reverse_edges() -> list[str]:
    rank = {name: i for i, name in enumerate(LAYERS)}
    found = []
    for package in LAYERS:
        for path in sorted((REPO / package).rglob("*.py")):
            rel = path.relative_to(REPO).as_posix()
            if rel in COMPOSITION_ROOTS:
                continue
            for name in sorted(_imported(ast.parse(path.read_text(), filename=rel))):
                top = name.split(".")[0]
                if top in rank and rank[top] > rank[package]:
                    found.append(f"{rel} imports {name}")
    return found


def test_imports_flow_one_way() -> None:
    assert reverse_edges() == []


def test_the_check_sees_hidden_imports() -> None:
    tree = ast.parse(
        "def f():\n"
        "    import api.app\n"
        "    from scheduler import policy\n"
        "    importlib.import_module('enclave_workers.deployment')\n"
    )
    assert _imported(tree) == {"api.app", "scheduler", "enclave_workers.deployment"}
