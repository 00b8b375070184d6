"""Composite evidence for GPU pools (CPU TEE + GPU bound to one nonce), end to end through
the key service with the SIMULATED CPU and GPU backends, and one normalised appraisal per
evidence whatever the vendor."""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from infaas.attestation import (
    AttestationPolicy,
    AttestationVerifier,
    SimulatedPlatformCA,
    SimulatedTEE,
    load_roots,
    report_data_for,
    verify_quote,
)
from infaas.attestation.appraisal import appraise
from infaas.attestation.simulated_gpu import SimulatedGPU
from infaas.attestation.snp import verify_snp_report
from infaas.attestation.spdm import verify_gpu_report
from infaas.attestation.verifier import GpuEvidence
from infaas.envelope import new_key
from infaas.errors import AttestationFailed
from infaas.keyservice import KeyRequest, KeyService, KeyServiceClient, ReleaseRequest
from infaas.keyservice.sealing import x25519_raw
from infaas.store import open_store
from tests.deployment import ADMIN_PUBLIC, bundle, enrol

KS_M = hashlib.sha256(b"keyservice").digest()
WORKER_M = hashlib.sha256(b"gpu worker").digest()
NOW = dt.datetime(2025, 6, 20, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def ca() -> SimulatedPlatformCA:
    return SimulatedPlatformCA.generate("gpu-pool")


@pytest.fixture(scope="module")
def gpu() -> SimulatedGPU:
    return SimulatedGPU()


def _verifier(
    ca: SimulatedPlatformCA, gpu: SimulatedGPU, m: bytes, **kw: object
) -> AttestationVerifier:
    policy = AttestationPolicy.model_validate(
        {"allow_simulated": True, "allowed_measurements": [m.hex()], **kw}
    )
    return AttestationVerifier(policy, extra_roots=[ca.root_cert], gpu_roots=[gpu.root_cert])


def _evidence(
    ca: SimulatedPlatformCA,
    gpu: SimulatedGPU,
    pk: bytes,
    nonce: bytes,
    gpu_nonce: bytes | None = None,
) -> tuple[bytes, GpuEvidence]:
    binding = report_data_for(pk, nonce)
    cpu = SimulatedTEE(ca, WORKER_M).generate(binding)
    return cpu, GpuEvidence(gpu.generate(gpu_nonce or binding[:32]), gpu.chain_pem)


def test_composite_appraisal_is_normalised(ca: SimulatedPlatformCA, gpu: SimulatedGPU) -> None:
    v = _verifier(ca, gpu, WORKER_M, require_gpu=True)
    cpu, g = _evidence(ca, gpu, b"k" * 32, b"n" * 32)
    a = v.verify_composite(cpu, public_key=b"k" * 32, nonce=b"n" * 32, gpu=g)
    assert a.status == "affirming"
    assert a.cpu.platform == "sgx" and a.gpu is not None and a.gpu.platform == "nvidia-gpu"
    assert a.cpu.simulated and a.gpu.simulated  # labelled, never mistaken for hardware
    assert a.cpu.report_data[:64] == a.gpu.report_data[:64]  # one nonce binds both
    assert set(a.claims()["cpu"]) == set(a.claims()["gpu"])


@pytest.mark.parametrize("case", ["cpu-only", "other-nonce", "unknown-gpu"])
def test_gpu_pool_refuses_anything_but_the_composite(
    ca: SimulatedPlatformCA, gpu: SimulatedGPU, case: str
) -> None:
    v = _verifier(ca, gpu, WORKER_M, require_gpu=True)
    pk, nonce = b"k" * 32, b"n" * 32
    cpu, g = _evidence(ca, gpu, pk, nonce)
    if case == "other-nonce":
        g = _evidence(ca, gpu, pk, nonce, gpu_nonce=b"x" * 32)[1]
    if case == "unknown-gpu":
        other = SimulatedGPU()
        g = GpuEvidence(other.generate(report_data_for(pk, nonce)[:32]), other.chain_pem)
    with pytest.raises(AttestationFailed) as ei:
        v.verify_composite(cpu, public_key=pk, nonce=nonce, gpu=None if case == "cpu-only" else g)
    where = {"cpu-only": ("rule", "gpu_evidence"), "other-nonce": ("rule", "report_data")}
    key, name = where.get(case, ("check", "device_chain"))
    assert ei.value.detail[key] == name
    assert ei.value.status_code == 403


@pytest.fixture
def service(ca: SimulatedPlatformCA, gpu: SimulatedGPU) -> KeyService:
    """A key service whose workers belong to a GPU pool (composite evidence required)."""
    return KeyService(
        open_store("memory://"),
        new_key(),
        SimulatedTEE(ca, KS_M),
        _verifier(ca, gpu, WORKER_M, require_gpu=True),
        enrolment_key=ADMIN_PUBLIC,
    )


def test_key_service_releases_to_gpu_pool_worker_only_for_composite(
    ca: SimulatedPlatformCA, gpu: SimulatedGPU, service: KeyService
) -> None:
    expected = bundle(ca.root_pem, KS_M, _verifier(ca, gpu, WORKER_M, require_gpu=True))
    c = KeyServiceClient(
        service,  # type: ignore[arg-type]
        _verifier(ca, gpu, KS_M),
        policy_sha256=expected.policy_sha256,
    )
    c.attest()
    owner = enrol(c, "zoo", "owner")
    model_key = new_key()
    c.upload_model_key(owner, "llm", "dk1", model_key)
    sk = X25519PrivateKey.generate()
    pk = x25519_raw(sk.public_key())

    def release(with_gpu: bool) -> object:
        nonce = service.issue_nonce().nonce
        cpu, g = _evidence(ca, gpu, pk, nonce)
        extra = {"gpu_evidence": g.report, "gpu_chain": g.chain_pem} if with_gpu else {}
        req = ReleaseRequest(
            evidence=cpu,
            public_key=pk,
            nonce=nonce,
            worker_nonce=b"w" * 32,
            keys=(KeyRequest(kind="model", model_id="llm"),),
            **extra,  # type: ignore[arg-type]
        )
        return service.release(req)

    with pytest.raises(AttestationFailed, match="GPU evidence"):
        release(with_gpu=False)
    assert len(release(with_gpu=True).keys) == 1  # type: ignore[attr-defined]


def test_one_claim_set_for_every_vendor(attestation_data: Path) -> None:
    intel = verify_quote(
        (attestation_data / "tdx/phala_tdx_quote_v4.bin").read_bytes(),
        load_roots((attestation_data / "roots/intel_sgx_root_ca.pem").read_bytes()),
        now=NOW,
    )
    snp = verify_snp_report(
        (attestation_data / "snp/go_sev_guest_milan_report_v2.bin").read_bytes(),
        (attestation_data / "snp/go_sev_guest_milan_vcek.der").read_bytes(),
        x509.load_pem_x509_certificates(
            (attestation_data / "snp/amd_ask_ark_milan.pem").read_bytes()
        ),
        now=NOW,
    )
    chain = x509.load_pem_x509_certificates(
        (attestation_data / "nvidia/hopper_cert_chain.pem").read_bytes()
    )
    gpu = verify_gpu_report(
        (attestation_data / "nvidia/hopper_attestation_report.hex").read_bytes(),
        chain,
        chain[-1:],
        now=NOW,
    )
    policy = AttestationPolicy.cli_default()
    appraisals = [appraise(v, policy.evaluate(v, None, 0)) for v in (intel, snp, gpu)]
    assert [a.platform for a in appraisals] == ["tdx", "snp", "nvidia-gpu"]
    assert [a.status for a in appraisals] == ["affirming", "contraindicated", "affirming"]
    assert not any(a.simulated for a in appraisals)
    assert len({frozenset(a.claims()) for a in appraisals}) == 1


def test_key_service_never_answers_5xx_to_bad_evidence(
    attestation_data: Path, ca: SimulatedPlatformCA, gpu: SimulatedGPU, service: KeyService
) -> None:
    import base64
    import random

    from infaas.keyservice import create_keyservice_app
    from tests.asgi import TestClient

    genuine = [
        (attestation_data / p).read_bytes()
        for p in (
            "sgx/phala_sgx_quote_v3.bin",
            "tdx/phala_tdx_quote_v4.bin",
            "tdx/go_tdx_guest_quote_v5.bin",
            "snp/go_sev_guest_milan_report_v2.bin",
        )
    ]
    rng = random.Random(0)
    bodies: list[bytes] = [b"\x00" * 64, rng.randbytes(4000)]
    for raw in genuine:
        for _ in range(6):
            b = bytearray(raw)
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
            bodies.append(bytes(b[: rng.choice([len(b), len(b) // 2])]))
    b64 = base64.urlsafe_b64encode
    pk = x25519_raw(X25519PrivateKey.generate().public_key())
    codes: set[int] = set()
    with TestClient(create_keyservice_app(service)) as http:
        for body in bodies:
            nonce = base64.urlsafe_b64decode(http.post("/v1/keyservice/nonce").json()["nonce"])
            cpu, g = _evidence(ca, gpu, pk, nonce)
            for evidence, gpu_ev in ((body, g.report), (cpu, body)):
                r = http.post(
                    "/v1/keyservice/release",
                    json={
                        "evidence": b64(evidence).decode(),
                        "public_key": b64(pk).decode(),
                        "nonce": b64(nonce).decode(),
                        "worker_nonce": b64(b"w" * 32).decode(),
                        "keys": [{"kind": "model", "model_id": "llm"}],
                        "gpu_evidence": b64(gpu_ev).decode(),
                        "gpu_chain": b64(g.chain_pem).decode(),
                    },
                )
                assert r.status_code in (400, 403, 422), (r.status_code, r.text[:200])
                codes.add(r.status_code)
    assert 403 in codes  # the evidence reached the verifier, which refused it by type
