"""A small example zoo (32x32 image models), built once per test session and shared.

Import the fixtures into a test module: ``from tests.zoo_fixtures import small_zoo``.
Both the unit and the integration tests use it; the build reuses what a previous
module already built in the same session directory, so it is paid for once.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from infaas.zoo import Manifest, ZooEntry, build_zoo, load_manifest


@pytest.fixture(scope="session")
def small_zoo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The directory of a small zoo built for this test session."""
    zoo_dir = tmp_path_factory.getbasetemp() / "small-zoo" / "zoo"
    build_zoo(zoo_dir, small=True)
    return zoo_dir


@pytest.fixture(scope="session")
def small_manifest(small_zoo: Path) -> Manifest:
    return load_manifest(small_zoo)


def entry(manifest: Manifest, model_id: str) -> ZooEntry:
    for e in manifest.models:
        if e.model_id == model_id:
            return e
    raise KeyError(model_id)
