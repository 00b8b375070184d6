"""Imports flow one way: infaas <- variants <- profiler <- scheduler <- enclave_workers <- api.

Every module of every package is parsed, imports inside functions and
`importlib.import_module("...")` strings included, and any edge to a package
further right fails, unless the importer is a declared composition root.
"""

from __future__ import annotations

import ast
from pathlib import Path

from infaas.measurement import imported_modules

REPO = Path(__file__).resolve().parents[2]
LAYERS = ("infaas", "variants", "profiler", "scheduler", "enclave_workers", "api")
# Composition roots wire every component together and may import any package.
COMPOSITION_ROOTS = frozenset({"infaas/cli.py", "api/serve.py"})


def _imported(tree: ast.Module, name: str = "", is_package: bool = False) -> set[str]:
    # the same reading of imports as the code measurements (TYPE_CHECKING blocks excepted)
    return imported_modules(tree.body, name, is_package)


def reverse_edges() -> list[str]:
    rank = {name: i for i, name in enumerate(LAYERS)}
    found = []
    for package in LAYERS:
        for path in sorted((REPO / package).rglob("*.py")):
            rel = path.relative_to(REPO).as_posix()
            if rel in COMPOSITION_ROOTS:
                continue
            module = ".".join(path.relative_to(REPO).with_suffix("").parts)
            tree = ast.parse(path.read_text(), filename=rel)
            for name in sorted(_imported(tree, module, path.name == "__init__.py")):
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
    assert {"api.app", "scheduler", "enclave_workers.deployment"} <= _imported(tree)
