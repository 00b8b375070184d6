"""`infaas trust export`: the bundle an operator publishes attests the key service the
deployment really runs, and refuses the same code started by the host with another policy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from enclave_workers.measurement import worker_measurements
from infaas.cli import main
from infaas.errors import AttestationFailed
from infaas.keyservice import KeyServiceClient, KeyServiceHttpClient, KeyServiceTrust
from infaas.keyservice.deployment import KeyServiceIngress
from infaas.keyservice.enrolment import load_or_create_enrolment_key
from infaas.keyservice.trust import ed25519_raw
from infaas.settings import Settings
from tests.asgi import TestClient


def _attest(settings: Settings, bundle: KeyServiceTrust, enrolment_key: bytes | None) -> str:
    """Start the key service as its Serve replica does (trusting `enrolment_key`), attest it
    over HTTP with `bundle`."""
    measurements = {pool: m.hex() for pool, m in worker_measurements(settings).items()}
    # the class as written, below Serve's ASGI wrapper (whose constructor needs a replica)
    replica = KeyServiceIngress.func_or_class.__mro__[1](  # type: ignore[attr-defined]
        settings, measurements, enrolment_key.hex() if enrolment_key else None
    )
    with TestClient(replica.__serve_build_asgi_app__()) as http:
        c = KeyServiceClient(
            KeyServiceHttpClient(http),
            bundle.verifier(),
            policy_sha256=bundle.policy_sha256,
            log=bundle.witness(),
        )
        c.attest()
        assert c.attested is not None
        return c.attested.policy_sha256


def test_exported_bundle_attests_the_key_service_and_refuses_another_policy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    admin = load_or_create_enrolment_key(tmp_path)  # the administrator's (first serve)
    admin_public = ed25519_raw(admin.public_key())
    out = tmp_path / "trust.json"
    argv = ["trust", "export", "--data-dir", str(tmp_path), "--store-url", "memory://"]
    assert main([*argv, "--out", str(out)]) == 0
    bundle = KeyServiceTrust.from_json(json.loads(out.read_text()))
    assert bundle.allow_simulated and len(bundle.policy_sha256) == 64
    assert len(bundle.log_public_key) == 64  # the log its identity and workers must be in
    assert bundle.release_policy is not None
    assert "-----BEGIN CERTIFICATE-----" in bundle.roots_pem.decode()
    assert "PRIVATE" not in out.read_text()

    settings = Settings(data_dir=tmp_path, store_url="memory://")
    assert bundle.release_policy["enrolment_key"] == admin_public.hex()
    assert _attest(settings, bundle, admin_public) == bundle.policy_sha256

    # the host starts the same code trusting an enrolment key of its own (to enrol anyone)
    host_admin = ed25519_raw(Ed25519PrivateKey.generate().public_key())
    with pytest.raises(AttestationFailed, match="another policy"):
        _attest(settings, bundle, host_admin)

    # the host starts the same code with a policy file of its own that admits debug workers
    permissive = tmp_path / "permissive.yaml"
    permissive.write_text("attestation:\n  allow_simulated: true\n  allow_debug: true\n")
    host_settings = settings.model_copy(update={"attestation_policy": permissive})
    with pytest.raises(AttestationFailed, match="another policy"):
        _attest(host_settings, bundle, admin_public)

    # the same command prints the bundle for scripts
    capsys.readouterr()
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["policy_sha256"] == bundle.policy_sha256
