"""The TEE worker runtime: one request from ciphertext in to ciphertext out.

`WorkerRuntime` is plain Python (no Ray): the Ray Serve deployment
(`enclave_workers.deployment`) and the unit tests drive the same object.

For each `InferRequest`::

    API token -> tenant            (TokenRegistry, once; must equal envelope.tenant, else 403)
    tenant key + the models it may serve    cached; released by the key service only
                                            to attested workers, with the models the
                                            owner granted *and* the tenant accepted
    select(candidates within those models, query, SLO, this worker's load)  metadata only
    open_request (AES-GCM over the envelope metadata and pins, time window, replay guard)
    chosen variant's accuracy >= envelope.min_accuracy   (both authenticated now: no
                                            hint, pin or store edit downgrades it)
    decode OIP v2 against the task's input spec
    VariantHost.execute: packer.use(variant) -> DynamicBatcher (cross-tenant batch only for
                                            a variant proven row-independent, output contract
                                            checked; `enclave_workers.packer`)
    encode_response -> seal_response under the tenant's key, bound to what served it
                                            (variant, architecture, accuracy, pool, TEE kind,
                                            measurement)

Any error once the request is decrypted goes back as `seal_error` makes it: type
and status in the clear, the precise message (which may quote the input) sealed
under the tenant's key; an unexpected exception is logged by type only.

The candidate set is rebuilt from the store at most every `refresh_s` seconds,
off the request path, from the variants whose profile and spec verify under
their model's profile key (`enclave_workers.profiles`): what an attested worker
measured, not what the store says; a variant's sealed artifact must be the one
its profile measured before it loads. Replay protection is per-process memory first (cheap,
synchronous) and the shared store second; the store write (group-committed with the
other requests in flight, `enclave_workers.replay`) overlaps the inference and is
awaited before the response is sealed, so a replay at another replica gets 409 and
no output. Variants load through the `ModelPacker`:
sealed artifact -> model key -> decrypt in memory -> session -> wipe.

Every plaintext buffer (request body, model bytes) is wiped once used. Errors
of one request are raised to its caller only; the batch, the packer and the
other requests go on.
"""

from __future__ import annotations

import asyncio
import ctypes
import hashlib
import math
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, NewType, TypeVar

from pydantic import ValidationError

from enclave_workers.batcher import batch_limit
from enclave_workers.keycache import KeyCache
from enclave_workers.packer import VariantHost
from enclave_workers.preparation import PreparationOptions, prepare_model
from enclave_workers.profiles import artifact_digest, authenticate_profile, verified
from enclave_workers.replay import SharedReplayRecord
from enclave_workers.sandbox import Sandbox
from infaas.artifacts import ArtifactStore, artifact_name, variant_part
from infaas.attestation import SIMULATED_LABEL
from infaas.attestation.backends import EvidenceGenerator, GpuEvidenceGenerator
from infaas.auth import TokenRegistry
from infaas.envelope import (
    Keyring,
    MemoryReplayGuard,
    ServedBy,
    artifact_key_id,
    open_artifact,
    open_request,
    seal_error,
    seal_response,
    wipe,
)
from infaas.errors import (
    DecryptionFailed,
    InfaasError,
    InvalidInput,
    NoFeasibleVariant,
    PermissionDenied,
    UnverifiedProfile,
    VariantNotFound,
)
from infaas.keyservice import KeyServiceTransport, KeyServiceTrust, WorkerKeyClient
from infaas.logs import get_logger
from infaas.protocol import decode_request, encode_response
from infaas.settings import Pool, Settings
from infaas.store import MetadataStore
from infaas.telemetry.recorder import Recorder
from infaas.types import SLO, Profile, Task, VariantSpec
from infaas.wire import InferRequest, InferResponse, JobStatus
from scheduler.policy import (
    CandidateSet,
    LoadSnapshot,
    Query,
    QueryKind,
    Selection,
    demand_key,
    route_select,
)
from scheduler.routing import LoadReport, RoutingHints
from variants.runtime import LoadedVariant, load_variant, row_proof

log = get_logger(__name__)
Verified = NewType("Verified", str)
"""A tenant id `WorkerRuntime.authenticate` read from an API token it verified."""

DEFAULT_MEMORY_BUDGET_BYTES = 4 * 1024**3

T = TypeVar("T")


def _scrub_bytes(data: bytes) -> None:
    """Best-effort zeroing of an immutable bytes copy of plaintext (CPython only).

    The runtimes take `bytes`, not a wipeable buffer; once the session is built
    (both copy what they parse) the copy is dead weight that holds weights.
    """
    if sys.implementation.name != "cpython" or not data:
        return
    offset = sys.getsizeof(b"") - 1  # ob_sval within a PyBytesObject
    ctypes.memset(id(data) + offset, 0, len(data))


class WorkerRuntime:
    """Serves sealed inference requests and prepares registered models, inside a TEE.

    `keyservice` is the deployment's trust bundle: no key is accepted from a key service
    whose code or release policy differ from it. Knobs beyond the injected
    collaborators: `pool` (default the first of the
    settings), `memory_budget_bytes` of the packer, `inference_threads` of the
    bounded pool (default: the pool's CPUs), `batch_wait_ms` a batch waits for
    company (0: batches form from what queued meanwhile), `inline_batch_ms`
    (variants whose full batch is predicted faster run on the event loop, as
    plain Serve's batch handler does), `refresh_s` between candidate-set
    rebuilds, `tenant_key_ttl_s`, `token_cache_s`, `shared_replay_guard`
    (replay records in the store as well as in memory), `preparation` options.
    """

    def __init__(
        self,
        settings: Settings,
        store: MetadataStore,
        artifacts: ArtifactStore,
        key_transport: KeyServiceTransport,
        tee: EvidenceGenerator,
        *,
        keyservice: KeyServiceTrust,
        gpu: GpuEvidenceGenerator | None = None,
        pool: Pool | None = None,
        memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET_BYTES,
        inference_threads: int | None = None,
        batch_wait_ms: float = 0.0,
        inline_batch_ms: float = 5.0,
        refresh_s: float = 2.0,
        tenant_key_ttl_s: float = 60.0,
        token_cache_s: float = 1.0,
        shared_replay_guard: bool = True,
        preparation: PreparationOptions | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.store = store
        self.clock = clock
        """Wall clock of the request window and replay records."""
        self.artifacts = artifacts
        self.tee = tee
        self.pool = pool or settings.pools[0]
        self.measurement = tee.measurement
        self.gpu = gpu
        self._keys = KeyCache(
            WorkerKeyClient(
                key_transport,
                tee,
                gpu,
                verifier=keyservice.verifier(),
                policy_sha256=keyservice.policy_sha256,
                # heads seen are TEE state (a host restoring an older file only makes the
                # worker compare with an older head)
                log=keyservice.witness(
                    settings.data_dir / "simulated-tee" / f"worker-log-heads-{self.pool.name}.json"
                    if tee.simulated
                    else None
                ),
            ),
            tenant_ttl_s=tenant_key_ttl_s,
        )
        self._tokens = TokenRegistry(store)
        self._token_cache: dict[str, tuple[Verified, float]] = {}
        self._token_cache_s = token_cache_s
        self._memory_replay = MemoryReplayGuard(settings.request_window_s)
        self._shared_replay = (
            SharedReplayRecord(store, settings.request_window_s) if shared_replay_guard else None
        )
        self._candidates = CandidateSet([])
        self.refused_profiles: dict[str, str] = {}
        """variant id -> why its profile or spec is not believed (edited, forged, copied)."""
        self.host = VariantHost(
            self._load_sync,
            lambda: self._candidates,
            memory_budget_bytes=memory_budget_bytes,
            threads=inference_threads or max(1, math.ceil(self.pool.num_cpus)),
            batch_wait_ms=batch_wait_ms,
            inline_batch_ms=inline_batch_ms,
        )
        """The variants this replica holds and runs (packer, batchers, live loads)."""
        self._tasks: dict[str, Task] = {}
        self._refresh_s = refresh_s
        self._refreshed_at = -math.inf
        self._refreshing = False
        self._refresh_lock = threading.Lock()
        self._preparing: dict[str, threading.Lock] = {}
        self._preparing_guard = threading.Lock()
        self._preparation = preparation or PreparationOptions.from_settings(
            settings, pool=self.pool.name
        )
        # one preparation child at a time: concurrent profiling would distort the timings
        self._sandbox = Sandbox(self._preparation.limits)
        self.started_at = time.time()
        self.requests_served = 0
        self.errors: Counter[str] = Counter()
        # autoscaler: arrivals per demand class (metadata), and its routing hints
        self.arrivals: Counter[str] = Counter()
        self.routing: RoutingHints | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        # per-request metadata for the dashboard and /metrics (flushed by the deployment)
        self.telemetry = Recorder("worker", pool=self.pool.name)
        if tee.simulated:
            log.warning("worker runs on %s", tee.status())

    def __repr__(self) -> str:
        return f"WorkerRuntime(pool={self.pool.name!r}, tee={self.tee.status()!r})"

    # --- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        """Load the candidate set and fetch the model keys it needs (attested release).

        Key prefetch is best effort: a key service that is not up yet only
        moves the first release to the first request.
        """
        self.refresh_candidates()
        self.prefetch_model_keys()
        self._keys.start_renewal()  # tenant key leases, renewed off the request path

    def prefetch_model_keys(self) -> int:
        """Fetch (in one attested release) the data keys of candidate models not yet held,
        so a cold start is decrypt + session, not a key-service round trip too."""
        models = sorted({c.spec.model_id for c in self._candidates})
        try:
            n = self._keys.prefetch_models(models)
        except InfaasError as e:
            log.warning("model key prefetch failed (%s): %s", e.code, e.message)
            return 0
        except OSError as e:  # key service unreachable
            log.warning("model key prefetch failed: %s", type(e).__name__)
            return 0
        if n:
            log.info("attested to the key service; %d model key(s) released", n)
        return n

    async def close(self) -> None:
        self._keys.close()
        await self.host.close()
        if self._shared_replay is not None:
            self._shared_replay.close()

    # --- candidates ---------------------------------------------------------------------

    def refresh_candidates(self) -> None:
        """Rebuild the candidate set and task table from the store (blocking).

        Only variants whose profile an attested worker measured (its MAC verifies
        under the model's profile key) become candidates; the others are refused,
        logged once and listed in `status`.
        """
        with self._refresh_lock:
            checked = verified(
                self.store.list_variants(), self.store.list_profiles(), self._profile_key
            )
            tasks = {t.name: t for t in self.store.list_tasks()}
            candidates = CandidateSet.build(checked.variants, checked.profiles, [self.pool])
            for vid, why in checked.refused.items():
                if self.refused_profiles.get(vid) != why:
                    log.warning("not using variant %s: %s", vid, why)
            self.refused_profiles = checked.refused
            self._candidates, self._tasks = candidates, tasks
            self._refreshed_at = time.monotonic()

    def _profile_key(self, model_id: str) -> bytes:
        try:
            return self._keys.profile_key(model_id)
        except InfaasError:
            raise
        except Exception as e:  # key service unreachable: verify again at the next refresh
            raise InfaasError(f"no profile key: {type(e).__name__}") from None

    def _maybe_refresh(self) -> None:
        if self._refreshing or time.monotonic() - self._refreshed_at < self._refresh_s:
            return
        self._refreshing = True

        def run() -> None:
            try:
                self.refresh_candidates()
                self.prefetch_model_keys()
            except Exception as e:  # a store hiccup must not stop serving the current set
                log.warning("candidate refresh failed: %s", e)
            finally:
                self._refreshing = False

        asyncio.get_running_loop().run_in_executor(None, run)

    @property
    def candidates(self) -> CandidateSet:
        return self._candidates

    # --- model preparation --------------------------------------------------------------

    def prepare_model(self, model_id: str) -> JobStatus:
        """Generate, profile and register the variants of a stored model (blocking).

        A second call while this worker prepares the same model returns the
        current status instead of starting again.
        """
        with self._preparing_guard:
            lock = self._preparing.setdefault(model_id, threading.Lock())
        if not lock.acquire(blocking=False):
            job = self.store.get_job(model_id)
            return job or JobStatus(model_id=model_id, state="running", updated_at=time.time())
        try:
            job = prepare_model(
                model_id,
                store=self.store,
                artifacts=self.artifacts,
                keys=lambda m, k: self._keys.model_key(m, k)[1],
                options=self._preparation,
                authenticate=self._authenticate_profile,
                sandbox=self._sandbox,
            )
            self.refresh_candidates()
            return job
        finally:
            lock.release()

    def _authenticate_profile(
        self, spec: VariantSpec, profile: Profile, sealed_artifact: bytes | bytearray
    ) -> Profile:
        """What this worker measured, MACed under the model's profile key (attested release)."""
        return authenticate_profile(
            self._keys.profile_key(spec.model_id),
            spec,
            profile,
            sealed_artifact=sealed_artifact,
            measurement=self.measurement,
        )

    # --- loading variants ---------------------------------------------------------------

    def _load_sync(self, variant_id: str) -> tuple[LoadedVariant, int]:
        cand = self._candidates.get(variant_id)
        if cand is None:  # only verified candidates load: their spec says how to run them
            raise VariantNotFound(f"variant {variant_id} is not a verified candidate here")
        spec = cand.spec
        owner = self.store.get_model(spec.model_id).owner
        blob = self.artifacts.get(artifact_name(owner, spec.model_id, variant_part(variant_id)))
        if artifact_digest(blob) != cand.profile.artifact_sha256:
            raise UnverifiedProfile(
                f"the stored artifact of {variant_id} is not the one its profile measured",
                variant_id=variant_id,
            )
        key_id = artifact_key_id(blob)
        _, key = self._keys.model_key(spec.model_id, key_id)
        plain = open_artifact({key_id: key}, variant_id, blob)
        del blob
        size = len(plain)
        raw = b""
        try:
            raw = bytes(plain)  # onnxruntime and OpenVINO take bytes, not a buffer
            loaded = load_variant(spec, raw, self.pool.threads_per_replica)
            proof = row_proof(raw)  # from the very bytes the session runs
        finally:
            wipe(plain)
            _scrub_bytes(raw)
        self.host.prove(variant_id, loaded, proof)
        peak = cand.profile.peak_memory_bytes
        log.info("loaded variant %s", variant_id)
        return loaded, max(peak, 3 * size)

    # --- the request path ---------------------------------------------------------------

    def authenticate(self, token: str | None) -> Verified:
        """The tenant a token belongs to; AuthenticationFailed otherwise. Cached for
        `token_cache_s` (1 s): a revoked API token is refused within that."""
        digest = hashlib.sha256((token or "").encode()).hexdigest()
        hit = self._token_cache.get(digest)
        now = time.monotonic()
        if hit is not None and hit[1] > now:
            return hit[0]
        principal = Verified(self._tokens.verify(token, "tenant").id)
        if len(self._token_cache) > 10_000:
            self._token_cache.clear()
        self._token_cache[digest] = (principal, now + self._token_cache_s)
        return principal

    async def _choose(
        self, request: InferRequest, query: Query, slo: SLO
    ) -> tuple[Selection, Keyring]:
        """The cheapest feasible variant among the models the tenant may use (granted to it
        and accepted by it, as the key service released its key), and the tenant's key."""
        env = request.envelope
        if query.kind is QueryKind.VARIANT and query.name in self.refused_profiles:
            why = self.refused_profiles[query.name]
            raise UnverifiedProfile(why, variant_id=query.name)
        access = await self._keys.tenant_access_async(env.tenant, env.key_id)
        load = LoadSnapshot(self.host.loads())
        decision_started = time.perf_counter()
        selection = route_select(
            self._candidates, query, slo, load, self.routing, allowed=access.models
        )
        self.telemetry.decided(time.perf_counter() - decision_started)
        return selection, access.keyring

    def _query(self, request: InferRequest) -> Query:
        env = request.envelope  # the pins are associated data: checked when the request opens
        if env.variant_id is not None:
            return Query.for_variant(env.variant_id)
        if env.architecture is not None:
            return Query.for_architecture(env.architecture)
        return Query.for_task(env.task)

    async def infer(
        self, request: InferRequest, token: str | None = None, *, tenant: Verified | None = None
    ) -> InferResponse:
        """Serve a sealed request sent with `token` (or `tenant`, verified); InfaasError if not."""
        t0 = time.perf_counter()
        self.loop = asyncio.get_running_loop()
        self._maybe_refresh()
        try:
            who = self.authenticate(token) if tenant is None else tenant
            response = await self._infer(request, who, t0)
        except InfaasError as e:
            self.errors[e.code] += 1
            self.telemetry.request_failed(request.envelope, e.code, t0)
            raise
        except Exception:
            self.telemetry.request_failed(request.envelope, "internal_error", t0)
            raise
        self.requests_served += 1
        self.telemetry.request_served(request.envelope, response)
        return response

    async def _infer(self, request: InferRequest, tenant: Verified, t0: float) -> InferResponse:
        env = request.envelope
        if env.kind != "request":
            raise DecryptionFailed("not a request envelope")
        if tenant != env.tenant:
            raise PermissionDenied("the API token belongs to another tenant than the envelope")
        try:
            slo = SLO(latency_ms=env.latency_ms, min_accuracy=env.min_accuracy)
        except ValidationError as e:
            raise InvalidInput(f"bad SLO in the envelope: {e.errors()[0]['msg']}") from None
        self.arrivals[demand_key(env.task, slo.latency_ms, slo.min_accuracy)] += 1
        query = self._query(request)
        selection, keys = await self._choose(request, query, slo)
        cand = selection.candidate
        if cand.spec.task != env.task:
            raise InvalidInput(f"variant {cand.variant_id} serves task {cand.spec.task!r}")
        now = self.clock()
        plaintext = open_request(
            env,
            keys,
            replay_guard=self._memory_replay,
            window_s=self.settings.request_window_s,
            now=now,
        )
        shared: asyncio.Future[None] | None = None
        if self._shared_replay is not None:  # written with its neighbours' while it runs
            shared = self._shared_replay.claim(env.tenant, env.request_id, env.timestamp, now)
        served = ServedBy(
            variant_id=cand.variant_id,
            architecture=cand.spec.architecture,
            accuracy=cand.accuracy,
            pool=self.pool.name,
            simulated_tee=self.tee.simulated,
            measurement=self.measurement,
        )
        try:
            # the SLO is authenticated now: whatever chose the variant, it must meet it
            if cand.accuracy < env.min_accuracy:
                raise NoFeasibleVariant(
                    f"variant {cand.variant_id} has accuracy {cand.accuracy:g}, below the "
                    f"{env.min_accuracy:g} the request asks for",
                    reason="accuracy",
                )
            task = self._tasks.get(cand.spec.task)
            if task is None:
                raise InvalidInput(f"task {cand.spec.task!r} is not registered")
            # decode reads the wipeable buffer in place (bytes-typed, bytearray-safe)
            oip, x = decode_request(
                plaintext,
                task.input,
                cand.max_batch,
                env.header_length,
                task=task.name,
                outputs=(task.output_name,),
            )
            limit = batch_limit(cand.profile.latency_model, env.latency_ms / 2, cand.max_batch)
            out, batch, queue_ms = await self.host.execute(
                cand, x, limit, tenant=env.tenant, classes=task.num_classes
            )
            body = encode_response(
                {task.output_name: out}, task.name, oip, model_version=cand.variant_id
            )
            if shared is not None:
                await shared
                shared = None
            sealed = seal_response(
                keys, env, body.content, served=served, header_length=body.header_length
            )
        except InfaasError as e:
            raise seal_error(keys, env, e, served=served) from None
        except Exception as e:  # a bug: its message may hold plaintext, so not even the log
            log.error("request %s failed after decryption: %s", env.request_id, type(e).__name__)
            internal = InfaasError("internal error in the worker")
            raise seal_error(keys, env, internal, served=served) from None
        finally:
            wipe(plaintext)
            if shared is not None:  # an earlier error: still let the record land, quietly
                shared.add_done_callback(lambda f: f.cancelled() or f.exception())
        return InferResponse(
            envelope=sealed,
            variant_id=cand.variant_id,
            pool=self.pool.name,
            measurement=self.measurement.hex(),
            simulated_tee=self.tee.simulated,
            latency_ms=(time.perf_counter() - t0) * 1e3,
            queue_ms=queue_ms,
            batch_size=batch,
        )

    # --- status -------------------------------------------------------------------------

    def load_report(self, replica: str) -> LoadReport:
        """This replica's traffic for the autoscaler: arrivals per class, queues, loaded."""
        states = list(self.host.states.items())
        return LoadReport(
            replica=replica,
            ts=time.time(),
            arrivals=dict(self.arrivals),
            outstanding={v: st.outstanding for v, st in states},
            loaded=list(self.host.packer.stats().loaded),
            served={v: st.served for v, st in states},
            served_ms={v: round(st.served_ms, 3) for v, st in states},
        )

    def status(self) -> dict[str, Any]:
        """Health and dashboard view: no keys, no plaintext, only metadata."""
        stats = self.host.packer.stats()
        return {
            "measurement": self.measurement.hex(),
            "tee_backend": self.tee.name,
            "simulated": self.tee.simulated,
            "tee_status": self.tee.status(),
            "gpu_status": self.gpu.status() if self.gpu is not None else None,
            "warning": SIMULATED_LABEL if self.tee.simulated else "",
            "attested_at": self._keys.last_release_at,
            "key_releases": self._keys.releases,
            "started_at": self.started_at,
            "pid": os.getpid(),
            "pool": self.pool.name,
            "candidates": len(self._candidates),
            "refused_profiles": dict(self.refused_profiles),
            "loaded_variants": list(stats.loaded),
            "packer": {
                "used_bytes": stats.used_bytes,
                "budget_bytes": stats.budget_bytes,
                "loads": stats.loads,
                "evictions": stats.evictions,
            },
            "queues": {
                vid: {
                    "outstanding": st.outstanding,
                    "served": st.served,
                    "batches": st.batcher.stats.batches,
                    "samples": st.batcher.stats.samples,
                    "largest_batch": st.batcher.stats.largest,
                }
                for vid, st in self.host.states.items()
            },
            "requests_served": self.requests_served,
            "errors": dict(self.errors),
        }
