"""Fixtures shared by every test: a real redis-server, the simulated deployment."""

from __future__ import annotations

import io
import logging
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from enclave_workers.preparation import PreparationOptions
from infaas.attestation import SimulatedPlatformCA
from infaas.logs import JsonFormatter
from infaas.settings import ProfilerSettings, Settings
from infaas.zoo import Manifest, load_model_bytes, load_validation
from profiler.profile import ProfileOptions
from tests.deployment import Deployment
from tests.e2e.server import free_port
from tests.zoo_fixtures import entry, small_manifest, small_zoo

__all__ = ["small_manifest", "small_zoo"]

MODEL = "digits-mlp-small"
"""The model the ``deployment`` fixture registers and prepares."""

SHARED = Path(__file__).resolve().parents[2] / "shared"
ATTESTATION_DATA = SHARED / "testdata" / "attestation"


@pytest.fixture(scope="session")
def attestation_data() -> Path:
    """The real Intel quotes beside the repository; skips where ../shared is absent."""
    if not ATTESTATION_DATA.is_dir():
        pytest.skip(f"attestation test vectors not found at {ATTESTATION_DATA} (../shared absent)")
    return ATTESTATION_DATA


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server on a free loopback port; yields its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    port = free_port()
    workdir = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
        except OSError:
            time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail("redis-server did not start within 10 s")
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(scope="session")
def platform_ca() -> SimulatedPlatformCA:
    """The simulated platform CA every test deployment's TEEs chain to."""
    return SimulatedPlatformCA.generate("infaas tests")


@pytest.fixture(scope="session")
def deployment(
    small_zoo: Path,
    small_manifest: Manifest,
    platform_ca: SimulatedPlatformCA,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Deployment]:
    """A deployment serving the small zoo's digits model, prepared by its real worker.

    Owner ``owner1``; tenants ``acme`` and ``globex`` are granted the model,
    ``initech`` is not. The worker batches requests arriving within 50 ms.
    Shared by the session (preparation is the slow part): tests that change
    its state put it back, and tests that add principals give them names of
    their own.
    """
    zoo_entry = entry(small_manifest, MODEL)
    onnx = load_model_bytes(small_zoo, zoo_entry)
    x, y = load_validation(small_zoo, zoo_entry)
    assert y is not None
    tmp = tmp_path_factory.mktemp("deployment")
    settings = Settings(
        data_dir=tmp,
        store_url="memory://",
        profiler=ProfilerSettings(batch_sizes=(1, 2, 4, 8), validation_samples=128),
    )
    dep = Deployment.create(platform_ca, tmp, settings)
    dep.add_owner("owner1")
    task = small_manifest.tasks[zoo_entry.task]
    dep.register_model("owner1", zoo_entry.to_model_record(), task, onnx, x, y)
    for tenant in ("acme", "globex"):
        dep.add_tenant(tenant, owner="owner1", grant=(MODEL,))
    dep.add_tenant("initech")
    prep = PreparationOptions(
        pool="cpu",
        max_batch=8,
        profile=ProfileOptions(
            batch_sizes=(1, 2, 4, 8), warmup_runs=1, min_runs=3, min_time_s=0.01
        ),
        validation_samples=128,
        calibration_samples=32,
    )
    runtime = dep.start_worker(batch_wait_ms=50.0, preparation=prep)
    job = runtime.prepare_model(MODEL)
    assert job.state == "ready", job.message
    dep.variants = [v.variant_id for v in dep.store.list_variants(model_id=MODEL)]
    yield dep
    dep.close()


@pytest.fixture
def json_logs() -> Iterator[io.StringIO]:
    """Every record of every logger, at DEBUG, as the entry points format them."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.setLevel(logging.DEBUG)
    root = logging.getLogger()
    old = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(old)
