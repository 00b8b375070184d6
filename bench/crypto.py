"""Trust-core micro-benchmarks; prints ONE JSON line.

- envelope seal+open throughput on 1 MB and 100 MB payloads, as a ratio to bare
  AES-256-GCM encrypt+decrypt of the same payload in the same run (>1 means the
  envelope is faster: it decrypts into a preallocated buffer);
- sealed model artifact (seal_artifact/open_artifact) ratio on 100 MB;
- key release latency p50/p99 (in-process key service, simulated TEE: nonce,
  quote, verification + policy, HPKE wrap and unwrap of two keys);
- quote verification time (a real Intel SGX quote when the test vectors are
  present, and a simulated quote).

Run: python bench/crypto.py [--quick] [--vectors DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from infaas.attestation import (
    AttestationPolicy,
    AttestationVerifier,
    SimulatedPlatformCA,
    SimulatedTEE,
    load_roots,
    verify_quote,
)
from infaas.envelope import (
    Keyring,
    MemoryReplayGuard,
    new_key,
    open_artifact,
    open_request,
    seal_artifact,
    seal_request,
)
from infaas.keyservice import (
    KeyRequest,
    KeyService,
    KeyServiceClient,
    KeyServiceTrust,
    WorkerKeyClient,
)
from infaas.keyservice.enrolment import issue_enrolment
from infaas.keyservice.trust import ed25519_raw, policy_sha256, release_policy_document
from infaas.store import open_store

DEFAULT_VECTORS = Path(__file__).resolve().parents[2] / "shared" / "testdata" / "attestation"


def _rate(fn: Callable[[], object], nbytes: int, number: int) -> float:
    """Bytes per second over `number` back-to-back calls."""
    t = time.perf_counter()
    for _ in range(number):
        fn()
    return nbytes * number / (time.perf_counter() - t)


def bench_envelope(size: int, repeat: int, number: int) -> dict[str, float]:
    key = new_key()
    payload = os.urandom(size)
    aead = AESGCM(key)
    aad = b'{"tenant":"acme"}'

    def bare() -> None:
        nonce = os.urandom(12)
        aead.decrypt(nonce, aead.encrypt(nonce, payload, aad), aad)

    ring = Keyring({"k1": key})
    guard = MemoryReplayGuard()
    counter = [0]

    def envelope() -> None:
        counter[0] += 1
        env = seal_request(
            ring,
            payload,
            tenant="acme",
            task="bench",
            latency_ms=100,
            min_accuracy=0.5,
            request_id=f"r{counter[0]}",
        )
        open_request(env, ring, replay_guard=guard)

    def artifact() -> None:
        open_artifact(ring, "m", seal_artifact(key, "k1", "m", payload))

    # interleaved, best of `repeat`: the run least disturbed by other load on the machine
    bare_rates, env_rates, art_rates = [], [], []
    for _ in range(repeat):
        bare_rates.append(_rate(bare, size, number))
        env_rates.append(_rate(envelope, size, number))
        art_rates.append(_rate(artifact, size, number))
    b, e, a = max(bare_rates), max(env_rates), max(art_rates)
    return {
        "bare_gbps": round(b / 1e9, 3),
        "envelope_gbps": round(e / 1e9, 3),
        "envelope_ratio": round(e / b, 3),
        "artifact_ratio": round(a / b, 3),
    }


def _pcts(samples: list[float]) -> dict[str, float]:
    s = sorted(samples)
    return {
        "p50_ms": round(statistics.median(s) * 1e3, 3),
        "p99_ms": round(s[min(len(s) - 1, int(0.99 * len(s)))] * 1e3, 3),
    }


def bench_release(n: int) -> dict[str, float]:
    ca = SimulatedPlatformCA.generate("bench")
    ks_m, worker_m = hashlib.sha256(b"ks").digest(), hashlib.sha256(b"worker").digest()
    wpol = AttestationPolicy(allow_simulated=True, allowed_measurements=(worker_m.hex(),))
    release_policy = AttestationVerifier(wpol, extra_roots=[ca.root_cert])
    admin = Ed25519PrivateKey.generate()
    admin_public = ed25519_raw(admin.public_key())
    service = KeyService(
        open_store("memory://"),
        new_key(),
        SimulatedTEE(ca, ks_m),
        release_policy,
        enrolment_key=admin_public,
    )
    document = release_policy_document(release_policy, production=False, enrolment_key=admin_public)
    trust = KeyServiceTrust(
        ks_m.hex(), ca.root_pem, allow_simulated=True, policy_sha256=policy_sha256(document)
    )
    client = KeyServiceClient(service, trust.verifier(), policy_sha256=trust.policy_sha256)
    client.attest()
    owner = client.register(issue_enrolment(admin, "zoo", "owner"))
    tenant = client.register(issue_enrolment(admin, "acme", "tenant"))
    client.upload_model_key(owner, "m", "dk1", new_key())
    client.upload_tenant_key(tenant, "k1", new_key())
    client.grant(owner, "m", "acme")
    client.accept(tenant, "owner", "zoo")
    worker = WorkerKeyClient(
        service,
        SimulatedTEE(ca, worker_m),
        verifier=trust.verifier(),
        policy_sha256=trust.policy_sha256,
    )
    reqs = [
        KeyRequest(kind="model", model_id="m"),
        KeyRequest(kind="tenant", model_id="m", tenant="acme"),
    ]
    samples = []
    for _ in range(n):
        t = time.perf_counter()
        worker.fetch(reqs)
        samples.append(time.perf_counter() - t)
    return _pcts(samples)


def bench_verify(n: int, vectors: Path) -> dict[str, object]:
    out: dict[str, object] = {}
    ca = SimulatedPlatformCA.generate("bench-verify")
    sim = SimulatedTEE(ca, hashlib.sha256(b"w").digest()).generate(b"x")
    samples = []
    for _ in range(n):
        t = time.perf_counter()
        verify_quote(sim, [ca.root_cert])
        samples.append(time.perf_counter() - t)
    out["simulated"] = _pcts(samples)
    quote_path = vectors / "sgx" / "phala_sgx_quote_v3.bin"
    root_path = vectors / "roots" / "intel_sgx_root_ca.pem"
    if quote_path.exists() and root_path.exists():
        raw, roots = quote_path.read_bytes(), load_roots(root_path.read_bytes())
        now = datetime(2025, 6, 20, tzinfo=UTC)
        samples = []
        for _ in range(n):
            t = time.perf_counter()
            verify_quote(raw, roots, now=now)
            samples.append(time.perf_counter() - t)
        out["real_sgx"] = _pcts(samples)
    else:
        out["real_sgx"] = None
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer repetitions (rough numbers)")
    p.add_argument("--vectors", type=Path, default=DEFAULT_VECTORS, help="attestation test vectors")
    p.add_argument("--big-mb", type=int, default=100, help="size of the large payload, MB")
    args = p.parse_args(argv)
    logging.disable(logging.WARNING)  # the simulated TEE's warning is expected here
    q = args.quick
    t0 = time.perf_counter()
    result = {
        "bench": "crypto",
        "python": platform.python_version(),
        "envelope_1mb": bench_envelope(1 << 20, 5 if q else 10, 20),
        f"envelope_{args.big_mb}mb": bench_envelope(args.big_mb << 20, 2 if q else 5, 1),
        "key_release": bench_release(50 if q else 300),
        "quote_verify": bench_verify(50 if q else 300, args.vectors),
    }
    result["elapsed_s"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
