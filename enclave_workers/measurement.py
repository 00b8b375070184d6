"""The worker's code measurement: what the key service's policy must allow.

With the simulated TEE this stands in for MRENCLAVE / MRTD: SHA-256 over the
import closure of the worker deployment module (every project module a worker
replica loads, by package-relative path; `infaas.measurement`) and the
settings that change its behaviour, and the pool it serves. Change a line of code the worker runs or
its serving config and the key service stops releasing keys to it until its
policy allows the new value; the client, the CLI and the example zoo are not
part of it. Host-specific paths (data dir, store URL, ports) are not either.
"""

from __future__ import annotations

from pathlib import Path

from infaas.envelope import canonical_json
from infaas.keyservice.measurement import keyservice_trust
from infaas.keyservice.trust import KeyServiceTrust
from infaas.measurement import REPO, closure_files, measure_files
from infaas.settings import Settings

# The module a worker replica is started from (Ray imports it to build the deployment).
WORKER_ENTRY = "enclave_workers.deployment"


def worker_source_files(root: Path = REPO) -> dict[str, Path]:
    """The worker's measured source files, by path relative to `root`."""
    return closure_files(WORKER_ENTRY, root)


def worker_config(settings: Settings, pool: str | None = None) -> bytes:
    """The measured part of the settings: canonical JSON of what changes worker behaviour,
    and the worker's pool (the key service tells a GPU pool's workers by it)."""
    data = settings.model_dump(
        mode="json",
        include={
            "tee_backend",
            "production",
            "max_request_bytes",
            "request_window_s",
            "pools",
            "profiler",
            "preparation",
        },
    )
    data["pool"] = pool or settings.pools[0].name
    return canonical_json(data)


def worker_measurement(settings: Settings, root: Path = REPO, *, pool: str | None = None) -> bytes:
    """The 32-byte measurement a worker of `pool` (default: the first) built from the tree
    at `root` and `settings` reports."""
    return measure_files(worker_source_files(root), worker_config(settings, pool))


def worker_measurements(settings: Settings, root: Path = REPO) -> dict[str, bytes]:
    """The measurement of this deployment's workers in each pool, by pool name: what the key
    service releases keys to (a GPU pool's workers only with their GPU's evidence)."""
    return {p.name: worker_measurement(settings, root, pool=p.name) for p in settings.pools}


def deployment_trust(settings: Settings, root: Path = REPO) -> KeyServiceTrust:
    """The trust bundle of this deployment (`keyservice_trust`) for this tree's workers."""
    return keyservice_trust(settings, worker_measurements(settings, root))
