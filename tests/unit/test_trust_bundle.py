"""`infaas trust export`: the bundle an operator publishes attests the key service the
deployment really runs, and refuses the same code started by the host with another policy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from enclave_workers.measurement import worker_measurements
from infaas.cli import main
from infaas.errors import AttestationFailed
from infaas.keyservice import KeyServiceClient, KeyServiceHttpClient, KeyServiceTrust
from infaas.keyservice.deployment import KeyServiceIngress
from infaas.settings import Settings
from tests.asgi import TestClient


def _attest(settings: Settings, bundle: KeyServiceTrust) -> str:
    """Start the key service as its Serve replica does, attest it over HTTP with `bundle`."""
    measurements = {pool: m.hex() for pool, m in worker_measurements(settings).items()}
    # the class as written, below Serve's ASGI wrapper (whose constructor needs a replica)
    replica = KeyServiceIngress.func_or_class.__mro__[1](settings, measurements)  # type: ignore[attr-defined]
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
    assert _attest(settings, bundle) == bundle.policy_sha256

    # the host starts the same code with a policy file of its own that admits debug workers
    permissive = tmp_path / "permissive.yaml"
    permissive.write_text("attestation:\n  allow_simulated: true\n  allow_debug: true\n")
    host_settings = settings.model_copy(update={"attestation_policy": permissive})
    with pytest.raises(AttestationFailed, match="another policy"):
        _attest(host_settings, bundle)

    # the same command prints the bundle for scripts
    capsys.readouterr()
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["policy_sha256"] == bundle.policy_sha256
