"""Worker and key-service measurements are reproducible from the commit alone.

A tenant who checks the transparency log needs to recompute what it should contain:
two clean clones of the same commit must give the same key-service and worker
measurements, and what a working tree holds beside the commit (untracked notes,
byte-code caches, editor files, modules nothing imports) must not change them. A
module the measured process would run instead (an untracked package that shadows a
tracked module) does change them: what runs is what is measured.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from enclave_workers.measurement import worker_measurements
from infaas.keyservice.measurement import keyservice_measurement
from infaas.measurement import REPO
from infaas.settings import Settings

pytestmark = pytest.mark.skipif(
    shutil.which("git") is None or not (REPO / ".git").exists(),
    reason="needs the project's git checkout",
)


def _clone(dst: Path) -> Path:
    head = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "HEAD"], check=True, capture_output=True, text=True
    ).stdout.strip()
    subprocess.run(
        ["git", "clone", "-q", "--shared", "--no-checkout", str(REPO), str(dst)], check=True
    )
    subprocess.run(["git", "-C", str(dst), "checkout", "-q", head], check=True)
    return dst


def _measure(root: Path, settings: Settings) -> tuple[bytes, dict[str, bytes]]:
    return keyservice_measurement(root), worker_measurements(settings, root)


def test_two_clean_clones_measure_the_same_and_untracked_files_change_nothing(
    tmp_path: Path,
) -> None:
    settings = Settings(data_dir=tmp_path / "data", store_url="memory://")
    a, b = _clone(tmp_path / "a"), _clone(tmp_path / "b")
    first = _measure(a, settings)
    assert first == _measure(b, settings)
    assert len(set(first[1].values())) == len(settings.pools)  # one per pool, all distinct

    # what a developer's tree holds beside the commit
    (b / "infaas" / "keyservice" / "__pycache__").mkdir(exist_ok=True)
    (b / "infaas" / "keyservice" / "__pycache__" / "service.cpython-311.pyc").write_bytes(
        b"\0" * 64
    )
    (b / "infaas" / "keyservice" / "scratch.py").write_text("import os\nSECRET = 1\n")
    (b / "enclave_workers" / "notes.md").write_text("todo\n")
    (b / "enclave_workers" / "runtime.py.orig").write_text("old copy\n")
    (b / "variants" / "experiment.py").write_text("from infaas import errors\n")
    (b / "local.yaml").write_text("production: false\n")
    assert _measure(b, settings) == first

    # an untracked package that shadows a measured module runs instead of it: measured
    shadow = b / "infaas" / "keyservice" / "sealing"
    shadow.mkdir()
    (shadow / "__init__.py").write_text((b / "infaas" / "keyservice" / "sealing.py").read_text())
    ks, workers = _measure(b, settings)
    assert ks != first[0] and workers != first[1]


def test_this_tree_measures_as_its_commit_when_the_measured_files_are_committed(
    tmp_path: Path,
) -> None:
    dirty = subprocess.run(
        ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    if any(line[3:].endswith(".py") for line in dirty.splitlines()):
        pytest.skip("this tree has uncommitted changes to Python files")
    settings = Settings(data_dir=tmp_path / "data", store_url="memory://")
    assert _measure(REPO, settings) == _measure(_clone(tmp_path / "c"), settings)
