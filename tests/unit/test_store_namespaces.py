"""The store owns its namespaces: no other module reaches records by namespace name."""

from __future__ import annotations

import ast
from pathlib import Path

import infaas.store.contract as store_module
from infaas.store import SealedTable

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("infaas", "variants", "profiler", "scheduler", "enclave_workers", "api", "bench")
STORE = ROOT / "infaas" / "store" / "contract.py"
RAW_API = {
    "put_record",
    "put_record_if_absent",
    "get_record",
    "list_records",
    "delete_record",
    "_put",
    "_put_if_absent",
    "_put_expiring",
    "_put_expiring_many",
    "_get",
    "_items",
    "_delete",
    "_prune_expired",
    "_count",
}


def namespaces() -> set[str]:
    names = {
        v
        for k, v in vars(store_module).items()
        if k.startswith("_") and k[1:].isupper() and isinstance(v, str)
    }
    return names | {t.value for t in SealedTable}


def modules() -> list[Path]:
    files = [p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")]
    return [p for p in files + list((ROOT / "tests").rglob("*.py")) if p != STORE]


def test_the_store_names_its_namespaces() -> None:
    assert {"jobs", "replay", "api_tokens", "autoscaler_load", "ks_model_key"} <= namespaces()


def test_no_module_outside_the_store_uses_the_raw_record_api() -> None:
    found = []
    for path in modules():
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in RAW_API:
                value = node.value
                name = getattr(value, "id", "") or getattr(value, "attr", "")
                if "store" in name.lower() or node.attr.endswith("_record"):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno} .{node.attr}")
    assert found == []


def test_no_module_outside_the_store_spells_a_namespace() -> None:
    # names that are also plain words of the project (pages, loggers, tags) are left out:
    # without the raw record API above, a bare string cannot reach a record anyway
    words = {"models", "variants", "profiles", "tasks", "tenants", "autoscaler", "dashboard"}
    names = namespaces() - words
    found = []
    for path in modules():
        if path == Path(__file__).resolve():
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and node.value in names:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.value!r}")
    assert found == []
