"""Cold start of a sealed variant vs a session from plaintext bytes (used by bench/serving.py).

The sealed path is the worker's own: a fresh `WorkerRuntime` (the class every
EnclaveWorker replica runs, built the way `enclave_workers.deployment` builds
it: simulated TEE of the deployment's worker measurement, the real key service
over HTTP, the same store and artifact directory) verifies its candidates and
then `host.preload([variant])` runs the load path a replica runs on its first
request for a variant: read the sealed artifact, check its digest against the
authenticated profile, fetch the model's data key from the key service
(attested release), AES-256-GCM open, `load_variant`, wipe the plaintext. Two
forms are timed:

- ``sealed_key_fetch``: the key cache is empty, so the load waits for one
  attested key release (a replica that never prefetched the key);
- ``sealed_key_held``: the runtime prefetched its candidates' keys first, as a
  replica does when it starts (`WorkerRuntime.start`), so the load is digest +
  decrypt + session.

The baseline, ``plaintext``, is `load_variant` on the plaintext bytes with the
same threads. The three are interleaved per repetition (rotating the order) and
every ratio is taken within one repetition; each is reported as median/min/max.
The row-independence analysis a load starts in the background is awaited
outside the timed span, so it does not steal CPU from the next load.
"""

from __future__ import annotations

import asyncio
import gc
import time
from typing import Any

import httpx
import numpy as np


def _runtime(settings: Any, keyservice_url: str, trust: Any, store: Any, artifacts: Any) -> Any:
    from enclave_workers.measurement import worker_measurement
    from enclave_workers.runtime import WorkerRuntime
    from infaas.attestation.deployment import create_tee
    from infaas.keyservice import KeyServiceHttpClient

    pool = settings.pools[0]
    tee = create_tee(settings, worker_measurement(settings, pool=pool.name))
    transport = KeyServiceHttpClient(httpx.Client(base_url=keyservice_url, timeout=30.0))
    rt = WorkerRuntime(
        settings, store, artifacts, transport, tee, keyservice=trust, pool=pool, refresh_s=1e9
    )
    rt.refresh_candidates()  # verifies the profiles (the profile key release is not timed)
    return rt


def _timed_sealed_load(rt: Any, variant_id: str) -> float:
    t0 = time.perf_counter()
    loaded = rt.host.preload([variant_id])
    elapsed = (time.perf_counter() - t0) * 1e3
    if loaded != [variant_id]:
        raise RuntimeError(f"the worker runtime did not load {variant_id} (see its log)")
    proof = rt.host.proofs.get(variant_id)
    if proof is not None:
        proof.result(timeout=600)
    return elapsed


def _close(rt: Any) -> None:
    asyncio.run(rt.close())
    del rt
    gc.collect()


def measure(
    settings: Any,
    keyservice_url: str,
    trust: Any,
    store: Any,
    artifacts: Any,
    variant_id: str,
    plaintext: bytes,
    repetitions: int,
) -> dict[str, Any]:
    """Median/min/max of the sealed cold starts, the plaintext session and their ratios."""
    from variants.runtime import load_variant

    spec = store.get_variant(variant_id)
    threads = settings.pools[0].threads_per_replica
    runs: dict[str, list[float]] = {"sealed_key_fetch": [], "sealed_key_held": [], "plaintext": []}

    def sealed_key_fetch() -> float:
        rt = _runtime(settings, keyservice_url, trust, store, artifacts)
        try:
            return _timed_sealed_load(rt, variant_id)
        finally:
            _close(rt)

    def sealed_key_held() -> float:
        rt = _runtime(settings, keyservice_url, trust, store, artifacts)
        try:
            if rt.prefetch_model_keys() < 1:
                raise RuntimeError("the key service released no model key to the runtime")
            return _timed_sealed_load(rt, variant_id)
        finally:
            _close(rt)

    def plain() -> float:
        raw = bytes(plaintext)
        t0 = time.perf_counter()
        v = load_variant(spec, raw, threads)
        elapsed = (time.perf_counter() - t0) * 1e3
        v.close()
        del v
        gc.collect()
        return elapsed

    forms = [("sealed_key_fetch", sealed_key_fetch), ("sealed_key_held", sealed_key_held)]
    forms.append(("plaintext", plain))
    plain()  # the first session of a runtime in a process pays one-time initialisation
    for i in range(repetitions):
        k = i % len(forms)
        for name, fn in forms[k:] + forms[:k]:
            runs[name].append(round(fn(), 2))
    fetch = [a / b for a, b in zip(runs["sealed_key_fetch"], runs["plaintext"], strict=True)]
    held = [a / b for a, b in zip(runs["sealed_key_held"], runs["plaintext"], strict=True)]
    return {
        "variant": variant_id,
        "artifact_bytes": len(plaintext),
        "ms": {name: _spread(v) for name, v in runs.items()},
        "ratios": {
            "sealed_key_fetch_over_plaintext": _spread(fetch),
            "sealed_key_held_over_plaintext": _spread(held),
        },
    }


def _spread(values: list[float]) -> dict[str, Any]:
    return {
        "median": round(float(np.median(values)), 3),
        "min": round(min(values), 3),
        "max": round(max(values), 3),
        "runs": [round(v, 3) for v in values],
    }
