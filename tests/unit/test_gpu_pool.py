"""A GPU pool end to end: typed settings, a worker presenting composite evidence (SIMULATED
CPU TEE + SIMULATED GPU, bound to one nonce) through `WorkerKeyClient`, and the real key
service over HTTP releasing keys to a GPU-pool worker only for that composite.

The attacker is the host: it runs the worker without its GPU's evidence, replays GPU
evidence from an earlier release, or swaps in another GPU; each is refused naming the
check, while the CPU pool's workers keep getting their keys.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from pydantic import ValidationError

from enclave_workers.measurement import worker_measurement
from infaas.attestation import SIMULATED_LABEL
from infaas.attestation.backends import EvidenceGenerator, GpuEvidenceGenerator
from infaas.attestation.deployment import (
    create_gpu,
    create_tee,
    create_verifier,
    create_worker_verifiers,
    simulated_ca,
)
from infaas.attestation.simulated_gpu import SimulatedGPU
from infaas.envelope import new_key
from infaas.errors import AttestationFailed
from infaas.keyservice import (
    KeyService,
    KeyServiceClient,
    KeyServiceHttpClient,
    KeyServiceTrust,
    WorkerKeyClient,
    create_keyservice_app,
)
from infaas.settings import Pool, Settings
from infaas.store import open_store
from tests.asgi import TestClient
from tests.deployment import ADMIN_PUBLIC, bundle, enrol

KS_M = hashlib.sha256(b"keyservice of a gpu deployment").digest()
CPU_M = hashlib.sha256(b"cpu-pool worker").digest()
GPU_M = hashlib.sha256(b"gpu-pool worker").digest()


def _settings(tmp_path: Path, **gpu_attestation: object) -> Settings:
    return Settings(
        data_dir=tmp_path,
        store_url="memory://",
        pools=(
            Pool(name="cpu", num_cpus=1, cost_per_replica_s=1.0),
            Pool(
                name="gpu",
                num_cpus=1,
                num_gpus=1,
                cost_per_replica_s=4.0,
                gpu_attestation=gpu_attestation,  # type: ignore[arg-type]
            ),
        ),
    )


class ReplayingGPU:
    """The host's GPU: it hands out the evidence of the first release at every later one."""

    name = "replaying"
    simulated = True

    def __init__(self, gpu: SimulatedGPU) -> None:
        self._gpu = gpu
        self._first: bytes | None = None
        self.chain_pem = gpu.chain_pem

    def generate(self, nonce: bytes) -> bytes:
        if self._first is None:
            self._first = self._gpu.generate(nonce)
        return self._first

    def status(self) -> str:
        return "replaying"


@pytest.fixture
def deployment(tmp_path: Path) -> tuple[Settings, KeyServiceHttpClient, bytes, TestClient]:
    """A key service from the settings' per-pool verifiers, over HTTP, with one model key."""
    settings = _settings(tmp_path)
    service = KeyService(
        open_store("memory://"),
        new_key(),
        create_tee(settings, KS_M),
        create_worker_verifiers(settings, {"cpu": CPU_M, "gpu": GPU_M}),
        enrolment_key=ADMIN_PUBLIC,
    )
    http = TestClient(create_keyservice_app(service))
    remote = KeyServiceHttpClient(http)
    trust = _trust(settings)
    owner = KeyServiceClient(
        remote, create_verifier(settings, measurements=[KS_M]), policy_sha256=trust.policy_sha256
    )
    owner.attest()
    token = enrol(owner, "zoo", "owner")
    model_key = new_key()
    owner.upload_model_key(token, "llm", "dk1", model_key)
    return settings, remote, model_key, http


def _worker(
    settings: Settings,
    remote: KeyServiceHttpClient,
    measurement: bytes,
    gpu: GpuEvidenceGenerator | None,
) -> WorkerKeyClient:
    tee: EvidenceGenerator = create_tee(settings, measurement)
    trust = _trust(settings)
    return WorkerKeyClient(
        remote, tee, gpu, verifier=trust.verifier(), policy_sha256=trust.policy_sha256
    )


def _trust(settings: Settings) -> KeyServiceTrust:
    """The deployment's published bundle: its key service releases to these two pools."""
    return bundle(
        simulated_ca(settings).root_pem,
        KS_M,
        create_worker_verifiers(settings, {"cpu": CPU_M, "gpu": GPU_M}),
    )


def test_gpu_pool_worker_gets_keys_for_the_composite(
    deployment: tuple[Settings, KeyServiceHttpClient, bytes, TestClient],
) -> None:
    settings, remote, model_key, http = deployment
    with http:
        gpu = create_gpu(settings, settings.pool("gpu"))
        assert gpu is not None and gpu.simulated and SIMULATED_LABEL in gpu.status()
        assert _worker(settings, remote, GPU_M, gpu).model_key("llm").key == model_key
        # a CPU pool needs no GPU: its workers present CPU evidence alone
        assert create_gpu(settings, settings.pool("cpu")) is None
        assert _worker(settings, remote, CPU_M, None).model_key("llm").key == model_key


@pytest.mark.parametrize(
    "attack,where,name",
    [
        ("no-gpu-evidence", "rule", "gpu_evidence"),
        ("gpu-evidence-of-another-nonce", "rule", "report_data"),
        ("another-gpu", "check", "device_chain"),
    ],
)
def test_gpu_pool_worker_is_refused_naming_the_check(
    deployment: tuple[Settings, KeyServiceHttpClient, bytes, TestClient],
    attack: str,
    where: str,
    name: str,
) -> None:
    settings, remote, _model_key, http = deployment
    genuine = create_gpu(settings, settings.pool("gpu"))
    assert isinstance(genuine, SimulatedGPU)
    gpu: GpuEvidenceGenerator | None = {
        "no-gpu-evidence": None,
        "gpu-evidence-of-another-nonce": ReplayingGPU(genuine),
        "another-gpu": SimulatedGPU(),
    }[attack]
    worker = _worker(settings, remote, GPU_M, gpu)
    with http:
        if attack == "gpu-evidence-of-another-nonce":
            worker.model_key("llm")  # the first release: evidence over its own nonce
        with pytest.raises(AttestationFailed) as ei:
            worker.model_key("llm")
    assert ei.value.detail[where] == name
    assert ei.value.status_code == 403


def test_a_gpu_pool_worker_cannot_pass_as_a_cpu_pool_worker(tmp_path: Path) -> None:
    """The pool is in the measured config: the host cannot relabel a GPU-pool worker."""
    settings = _settings(tmp_path)
    m = {p.name: worker_measurement(settings, pool=p.name) for p in settings.pools}
    assert m["cpu"] != m["gpu"]
    assert worker_measurement(settings) == m["cpu"]  # the first pool by default
    verifiers = create_worker_verifiers(settings, m)
    assert verifiers.verifier_for(m["gpu"]).policy.require_gpu
    assert not verifiers.verifier_for(m["cpu"]).policy.require_gpu
    with pytest.raises(AttestationFailed) as ei:
        verifiers.verifier_for(hashlib.sha256(b"a third build").digest())
    assert ei.value.detail["rule"] == "measurement"


def test_gpu_pool_settings_are_typed(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="gpu_attestation"):
        Pool(name="g", num_gpus=1, cost_per_replica_s=1.0)  # GPUs nobody attests
    with pytest.raises(ValidationError, match="measurements"):
        _settings(tmp_path, policy={"measurements": {1: ["not hex"]}})
    with pytest.raises(ValidationError, match="simulated GPU"):
        Settings(
            production=True,
            tee_backend="tdx-configfs",
            pools=(_settings(tmp_path).pool("gpu"),),
        )
    # the pool's reference measurements are what its verifier judges the GPU by
    wrong = {1: ["ab" * 48]}
    settings = _settings(tmp_path, policy={"measurements": wrong})
    v = create_worker_verifiers(settings, {"cpu": CPU_M, "gpu": GPU_M}).verifier_for(GPU_M)
    assert v.policy.gpu.measurements == {1: ("ab" * 48,)}


def test_pool_reference_measurements_refuse_another_gpu_build(tmp_path: Path) -> None:
    from infaas.attestation import report_data_for
    from infaas.attestation.verifier import GpuEvidence

    settings = _settings(tmp_path, policy={"measurements": {1: ["ab" * 48]}})
    verifiers = create_worker_verifiers(settings, {"cpu": CPU_M, "gpu": GPU_M})
    gpu = create_gpu(settings, settings.pool("gpu"))
    assert gpu is not None
    binding = report_data_for(b"k" * 32, b"n" * 32)
    with pytest.raises(AttestationFailed) as ei:
        verifiers.verify_composite(
            create_tee(settings, GPU_M).generate(binding),
            public_key=b"k" * 32,
            nonce=b"n" * 32,
            gpu=GpuEvidence(gpu.generate(binding[:32]), gpu.chain_pem),
        )
    assert ei.value.detail["rule"] == "gpu_measurements"


def test_simulated_gpu_identity_persists(tmp_path: Path) -> None:
    a = SimulatedGPU.load_or_create(tmp_path / "gpu")
    b = SimulatedGPU.load_or_create(tmp_path / "gpu")
    assert a.chain_pem == b.chain_pem
    assert (tmp_path / "gpu" / "device.key").stat().st_mode & 0o077 == 0
