"""The worker's code measurement: what the key service's policy must allow.

With the simulated TEE this stands in for MRENCLAVE / MRTD: SHA-256 over the
source files the worker executes and the settings that change its behaviour
(`measure_code`). Change a line of worker code or its serving config and the
key service stops releasing keys to it until its policy allows the new value.
Host-specific paths (data dir, store URL, ports) are not part of it.
"""

from __future__ import annotations

from pathlib import Path

from infaas.attestation import measure_code
from infaas.envelope import canonical_json
from infaas.settings import Settings

REPO = Path(__file__).resolve().parent.parent

# Packages whose code runs inside the worker (decrypted weights and tensors pass through them).
WORKER_PACKAGES = ("infaas", "variants", "profiler", "scheduler", "enclave_workers")


def worker_source_files(root: Path = REPO) -> list[Path]:
    """Every Python source file of the worker's packages, sorted."""
    return sorted(p for pkg in WORKER_PACKAGES for p in (root / pkg).rglob("*.py"))


def worker_config(settings: Settings) -> bytes:
    """The measured part of the settings: canonical JSON of what changes worker behaviour."""
    data = settings.model_dump(
        mode="json",
        include={
            "tee_backend",
            "production",
            "max_request_bytes",
            "request_window_s",
            "pools",
            "profiler",
        },
    )
    return canonical_json(data)


def worker_measurement(settings: Settings) -> bytes:
    """The 32-byte measurement a worker built from this tree and `settings` reports."""
    return measure_code(worker_source_files(), worker_config(settings))
