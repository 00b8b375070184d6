"""Code measurements cover exactly what the measured process runs.

The worker's and the key service's measurements hash the import closure of
their entry modules (`infaas.measurement`). Checked two ways: against the
project modules a real key service and a real worker have loaded after serving
a request (each in a fresh interpreter), and by editing a copy of the tree: the
client, the CLI and the zoo leave both identities alone, code they run does not.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from enclave_workers.measurement import WORKER_ENTRY, worker_measurement
from infaas.keyservice.measurement import KEYSERVICE_ENTRY, keyservice_measurement
from infaas.measurement import (
    PROJECT_PACKAGES,
    REPO,
    closure_files,
    import_closure,
    measure_files,
)
from infaas.settings import Settings
from infaas.zoo import Manifest, load_model_bytes, load_validation
from tests.zoo_fixtures import entry, small_manifest, small_zoo

__all__ = ["small_manifest", "small_zoo"]

NOT_RUN = ("infaas.client", "infaas.cli", "infaas.zoo")


def _loaded(kind: str, work: Path) -> set[str]:
    """The project modules a fresh `kind` process has loaded after serving one request."""
    script = REPO / "tests" / "measured_processes.py"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run(
        [sys.executable, str(script), kind, str(work)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert r.returncode == 0, r.stderr[-4000:]
    return set(json.loads(r.stdout.strip().splitlines()[-1]))


def _outside(modules: set[str] | tuple[str, ...]) -> list[str]:
    return sorted(m for m in modules if any(m == n or m.startswith(n + ".") for n in NOT_RUN))


def test_closures_leave_out_the_client_cli_and_zoo() -> None:
    for entry_module in (WORKER_ENTRY, KEYSERVICE_ENTRY):
        closure = import_closure(entry_module)
        assert entry_module in closure
        assert _outside(closure) == [], entry_module
    worker = set(import_closure(WORKER_ENTRY))
    # what the worker runs on decrypted data, and the key service's verifier and store
    assert {"enclave_workers.runtime", "variants.runtime", "infaas.envelope"} <= worker
    assert {"infaas.attestation.verifier", "infaas.attestation.policy", "infaas.store"} <= set(
        import_closure(KEYSERVICE_ENTRY)
    )
    assert "enclave_workers/runtime.py" in closure_files(WORKER_ENTRY)  # package-relative


@pytest.mark.slow
def test_a_real_key_service_loads_only_its_closure(tmp_path: Path) -> None:
    loaded = _loaded("keyservice", tmp_path)
    assert KEYSERVICE_ENTRY in loaded and "infaas.keyservice.service" in loaded
    assert sorted(loaded - set(import_closure(KEYSERVICE_ENTRY))) == []


@pytest.mark.slow
def test_a_real_worker_loads_only_its_closure(
    tmp_path: Path, small_zoo: Path, small_manifest: Manifest
) -> None:
    e = entry(small_manifest, "digits-logreg")
    (tmp_path / "model.onnx").write_bytes(load_model_bytes(small_zoo, e))
    x, y = load_validation(small_zoo, e)
    np.savez(tmp_path / "validation.npz", x=x[:64], y=y[:64] if y is not None else None)
    model = {
        "model_id": e.model_id,
        "task": small_manifest.tasks[e.task].model_dump(mode="json"),
        "record": e.to_model_record().model_dump(mode="json"),
    }
    (tmp_path / "model.json").write_text(json.dumps(model))
    loaded = _loaded("worker", tmp_path)
    assert {WORKER_ENTRY, "enclave_workers.runtime", "variants.runtime"} <= loaded
    assert sorted(loaded - set(import_closure(WORKER_ENTRY))) == []


def _edit(root: Path, rel: str) -> None:
    path = root / rel
    path.write_text(path.read_text() + "\n# an edit\n")


def test_only_edits_to_code_a_process_runs_change_its_measurement(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    for package in PROJECT_PACKAGES:
        ignore = shutil.ignore_patterns("__pycache__")
        shutil.copytree(REPO / package, root / package, ignore=ignore)
    settings = Settings(data_dir=tmp_path / "data")

    def both() -> tuple[bytes, bytes]:
        return worker_measurement(settings, root), keyservice_measurement(root)

    before = both()
    assert before == (worker_measurement(settings), keyservice_measurement())  # same code
    for rel in ("infaas/client/client.py", "infaas/cli.py", "infaas/zoo/build.py"):
        _edit(root, rel)
        assert both() == before, rel
    for rel in (
        "infaas/envelope.py",
        "infaas/attestation/verifier.py",
        "infaas/store/contract.py",
        "infaas/store/backends.py",
    ):
        _edit(root, rel)
        now = both()
        assert now[0] != before[0] and now[1] != before[1], rel
        before = now
    _edit(root, "enclave_workers/runtime.py")
    now = both()
    assert now[0] != before[0]
    # a module nothing imports is not measured
    (root / "infaas/keyservice/unused.py").write_text("x = 1\n")
    assert both() == now


def test_files_are_measured_by_their_package_relative_path(tmp_path: Path) -> None:
    source = tmp_path / "service.py"
    source.write_text("x = 1\n")
    assert measure_files({"infaas/keyservice/service.py": source}) != measure_files(
        {"api/service.py": source}
    )


def test_lazy_exports_count_only_where_they_are_imported(tmp_path: Path) -> None:
    pkg = tmp_path / "infaas"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from infaas.heavy import Heavy\n"
        "def __getattr__(name):\n    from infaas.heavy import Heavy\n    return Heavy\n"
    )
    (pkg / "heavy.py").write_text("Heavy = 1\n")
    (pkg / "light.py").write_text(
        "def f():\n    import importlib\n    importlib.import_module('infaas.inner')\n"
    )
    (pkg / "inner.py").write_text("from . import errors\n")
    (pkg / "errors.py").write_text("")
    (pkg / "user.py").write_text("from infaas import Heavy\n")
    assert import_closure("infaas.light", tmp_path) == (
        "infaas",
        "infaas.errors",
        "infaas.inner",
        "infaas.light",
    )
    assert "infaas.heavy" in import_closure("infaas.user", tmp_path)
