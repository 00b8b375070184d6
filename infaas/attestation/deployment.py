"""Wiring attestation from `Settings`: the TEE backend, the GPU, the policy, the verifiers.

The serving path calls these instead of building backends by hand::

    tee = create_tee(settings, worker_measurement(settings, pool=pool.name))
    gpu = create_gpu(settings, pool)            # None unless the pool has GPUs
    # the key service: one verifier per pool, a GPU pool's requiring the composite
    verifiers = create_worker_verifiers(settings, {pool.name: measurement, ...})

With `tee_backend: simulated` the deployment's simulated platform CA lives in
`data_dir/simulated-tee/` and is trusted only if the policy allows simulated
evidence; production settings refuse the simulated backend (see `Settings`)
and a policy that allows it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from infaas.attestation.backends import (
    ConfigfsTsm,
    EvidenceGenerator,
    GpuEvidenceGenerator,
    GramineSGX,
)
from infaas.attestation.collateral import collateral_entries
from infaas.attestation.policy import AttestationPolicy
from infaas.attestation.simulated import SimulatedPlatformCA, SimulatedTEE
from infaas.attestation.simulated_gpu import SimulatedGPU
from infaas.attestation.verifier import AttestationVerifier, PoolVerifiers
from infaas.errors import AttestationFailed
from infaas.settings import REPO_CONFIGS, Pool, Settings


def simulated_ca(settings: Settings) -> SimulatedPlatformCA:
    """The deployment's simulated platform CA (created on first use)."""
    return SimulatedPlatformCA.load_or_create(settings.data_dir / "simulated-tee")


def simulated_gpu(settings: Settings) -> SimulatedGPU:
    """The deployment's simulated GPU identity (created on first use)."""
    return SimulatedGPU.load_or_create(settings.data_dir / "simulated-gpu")


def create_gpu(settings: Settings, pool: Pool) -> GpuEvidenceGenerator | None:
    """The GPU evidence of a worker of `pool`: None for a pool without GPU attestation."""
    if pool.gpu_attestation is None:
        return None
    return simulated_gpu(settings)  # the only backend; production settings refuse it


def create_tee(settings: Settings, measurement: bytes) -> EvidenceGenerator:
    """The evidence generator `settings.tee_backend` names."""
    if settings.tee_backend == "simulated":
        if settings.production:
            raise AttestationFailed("production settings refuse the simulated TEE")
        return SimulatedTEE(simulated_ca(settings), measurement)
    if settings.tee_backend == "sgx-gramine":
        return GramineSGX()
    return ConfigfsTsm()


def load_policy(settings: Settings) -> AttestationPolicy:
    """`settings.attestation_policy`, else the repository's default for the backend."""
    path: Path = settings.attestation_policy or (
        REPO_CONFIGS
        / (
            "attestation-simulated.yaml"
            if settings.tee_backend == "simulated"
            else "attestation-production.yaml"
        )
    )
    policy = AttestationPolicy.from_yaml(path)
    if settings.production and not policy.production:
        raise AttestationFailed(f"production settings need a production policy, not {path}")
    return policy


def load_collateral(settings: Settings) -> Any:
    """`settings.attestation_collateral` (one Intel PCS collateral or a bundle), or None.

    Production settings require it: without collateral nothing says whether the
    platform's TCB is patched, whether the quoting enclave is Intel's, or whether
    the PCK certificate was revoked.
    """
    path = settings.attestation_collateral
    if path is None:
        if settings.production:
            raise AttestationFailed(
                "production settings need attestation_collateral (Intel PCS collateral "
                "JSON the operator refreshes): TCB status, QE identity and CRLs are checked"
            )
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise AttestationFailed(f"cannot read attestation collateral {path}: {exc}") from None
    collateral_entries(data)  # shape check now, not at the first worker
    return data


def create_verifier(
    settings: Settings,
    *,
    measurements: Sequence[bytes] = (),
    policy: AttestationPolicy | None = None,
) -> AttestationVerifier:
    """A verifier for `settings`: policy + these measurements (+ simulated CA if allowed),
    with the configured collateral (required in production)."""
    pol = (policy or load_policy(settings)).with_measurements(*measurements)
    extra = [simulated_ca(settings).root_cert] if pol.allow_simulated else []
    return AttestationVerifier(pol, extra_roots=extra, collateral=load_collateral(settings))


def create_worker_verifiers(settings: Settings, measurements: Mapping[str, bytes]) -> PoolVerifiers:
    """The key service's judge of worker evidence: per pool, the policy admitting exactly that
    pool's worker measurement (`measurements`, by pool name); a GPU pool's verifier requires
    the composite, judged by the pool's `gpu_attestation`. Measurements the policy file
    lists go to a verifier of the file as it is."""
    base = load_policy(settings)
    collateral = load_collateral(settings)
    extra = [simulated_ca(settings).root_cert] if base.allow_simulated else []
    by_measurement: dict[bytes, AttestationVerifier] = {}
    for pool in settings.pools:
        if pool.name not in measurements:
            raise AttestationFailed(f"no worker measurement given for pool {pool.name!r}")
        pol = base.model_copy(update={"allowed_measurements": (measurements[pool.name].hex(),)})
        gpu_roots = []
        if pool.gpu_attestation is not None:
            pol = pol.model_copy(update={"require_gpu": True, "gpu": pool.gpu_attestation.policy})
            if pool.gpu_attestation.backend == "simulated":
                gpu_roots = [simulated_gpu(settings).root_cert]
        by_measurement[measurements[pool.name]] = AttestationVerifier(
            pol, extra_roots=extra, collateral=collateral, gpu_roots=gpu_roots
        )
    default = (
        AttestationVerifier(base, extra_roots=extra, collateral=collateral)
        if base.allowed_measurements
        else None
    )
    return PoolVerifiers(by_measurement, default)
