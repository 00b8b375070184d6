"""The key service's identity: what its evidence measures (the MRENCLAVE stand-in) and the
trust bundle a deployment publishes for it (code measurement and release policy)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from infaas.attestation.deployment import create_worker_verifiers, load_policy, simulated_ca
from infaas.keyservice.enrolment import enrolment_public_key
from infaas.keyservice.trust import KeyServiceTrust, policy_sha256, release_policy_document
from infaas.measurement import REPO, measure_closure
from infaas.settings import Settings
from infaas.transparency.log import raw_public_key, simulated_log_key

# The module the key service's replica is started from: Ray imports it to build
# `KeyServiceIngress`, so everything it imports runs in the key service (and
# tests/unit/test_measurement.py fails if the class lives elsewhere).
KEYSERVICE_ENTRY = "infaas.keyservice.deployment"


def keyservice_measurement(root: Path = REPO) -> bytes:
    """What the key service's evidence measures: the code its replica runs.

    The import closure of `KEYSERVICE_ENTRY` by package-relative path
    (`infaas.measurement`), so the verifier, policy, store and envelope code it
    runs count, and the client, the CLI and the example zoo do not.
    """
    return measure_closure(KEYSERVICE_ENTRY, b"infaas-keyservice/v1", root)


def keyservice_trust(
    settings: Settings, worker_measurements: Mapping[str, bytes]
) -> KeyServiceTrust:
    """The deployment's trust bundle (`infaas trust export`): its key service's code
    measurement, the hash of the release policy it runs for these `worker_measurements`
    (by pool), the roots its evidence chains to and its transparency log's public key.

    The key service computes its policy from the same settings and measurements
    (`KeyServiceIngress`); any difference (another policy file, another worker list, a
    debug or simulated allowance, the production flag) gives another hash, which clients
    and workers refuse.
    """
    document = release_policy_document(
        create_worker_verifiers(settings, worker_measurements),
        production=settings.production,
        enrolment_key=enrolment_public_key(settings.data_dir),
    )
    if settings.tee_backend == "simulated":
        roots_pem = simulated_ca(settings).root_pem
    else:
        roots_pem = b"".join(
            c.public_bytes(serialization.Encoding.PEM) for c in load_policy(settings).roots
        )
    simulated = settings.tee_backend == "simulated"
    return KeyServiceTrust(
        measurement=keyservice_measurement().hex(),
        roots_pem=roots_pem,
        allow_simulated=simulated,
        policy_sha256=policy_sha256(document),
        release_policy=document,
        # the log key of a hardware key service is derived inside it: its bundle takes the
        # key from the log's own export (GET /v1/keyservice/transparency)
        log_public_key=raw_public_key(simulated_log_key(settings.data_dir)).hex()
        if simulated
        else "",
    )
