"""One simulated deployment for the tests: platform CA, policy, key service, sealed model, worker.

`Deployment.create` builds the trusted parts on a memory store: a key service
on the simulated TEE (its release policy admits `WORKER_MEASUREMENT` only) and
an attested key-service client (expecting `KS_MEASUREMENT`). Principals are
added the way they join a real deployment (`add_owner`, `add_model_key`,
`add_tenant`), a model is registered sealed (`register_model`), and
`start_worker` runs a real `WorkerRuntime` against all of it. `request`,
`infer` and `outputs` seal, send and open one request as a tenant would.

The ``deployment`` fixture (tests/conftest.py) is one such deployment with the
small zoo's digits model prepared by its worker, shared by the test session
because preparing the variants costs most of a minute.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from enclave_workers.preparation import validation_artifact
from enclave_workers.profiles import authenticate_profile
from enclave_workers.runtime import WorkerRuntime
from infaas.artifacts import (
    MODEL_PART,
    VALIDATION_PART,
    ArtifactStore,
    artifact_name,
    variant_part,
)
from infaas.attestation import (
    AttestationPolicy,
    AttestationVerifier,
    SimulatedPlatformCA,
    SimulatedTEE,
)
from infaas.auth import TokenRegistry
from infaas.envelope import new_key, open_response, seal_artifact, seal_request
from infaas.keyservice import (
    KeyRequest,
    KeyService,
    KeyServiceClient,
    KeyServiceTrust,
    WorkerKeyClient,
)
from infaas.keyservice.counter import MemoryCounter
from infaas.keyservice.enrolment import issue_enrolment
from infaas.keyservice.principals import Role
from infaas.keyservice.trust import ed25519_raw, policy_sha256, release_policy_document
from infaas.protocol import decode_response, encode_request
from infaas.settings import Settings
from infaas.store import MemoryStore, MetadataStore
from infaas.types import ModelRecord, Profile, Task, VariantSpec
from infaas.wire import InferRequest, InferResponse

KS_MEASUREMENT = hashlib.sha256(b"keyservice under test").digest()
ADMIN_KEY = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"administrator").digest())
"""The tests' administrator: its enrolment key's public half is in every test key service's
release policy (`ADMIN_PUBLIC`), so only its enrolments register principals."""
ADMIN_PUBLIC = ed25519_raw(ADMIN_KEY.public_key())
WORKER_MEASUREMENT = hashlib.sha256(b"worker under test").digest()


def policy(measurement: bytes) -> AttestationPolicy:
    """The attestation policy of the tests: simulated evidence of one measurement, fresh."""
    return AttestationPolicy(
        allow_simulated=True, allowed_measurements=(measurement.hex(),), max_evidence_age_s=60
    )


def worker_verifier(ca: SimulatedPlatformCA) -> AttestationVerifier:
    """The key service's release policy in the tests: workers of `WORKER_MEASUREMENT` only."""
    return AttestationVerifier(policy(WORKER_MEASUREMENT), extra_roots=[ca.root_cert])


def bundle(
    roots_pem: bytes,
    measurement: bytes,
    release_policy: Any,
    *,
    production: bool = False,
    enrolment_key: bytes | None = ADMIN_PUBLIC,
) -> KeyServiceTrust:
    """The trust bundle of a simulated key service of `measurement` releasing keys under
    `release_policy` (its worker verifier) and enrolling with `enrolment_key`, as the
    deployment would publish it."""
    document = release_policy_document(
        release_policy, production=production, enrolment_key=enrolment_key
    )
    return KeyServiceTrust(
        measurement.hex(),
        roots_pem,
        allow_simulated=True,
        policy_sha256=policy_sha256(document),
        release_policy=document,
    )


def trust(ca: SimulatedPlatformCA) -> KeyServiceTrust:
    """The tests' published trust bundle: the key service's code and release policy."""
    return bundle(ca.root_pem, KS_MEASUREMENT, worker_verifier(ca))


def enrol(keys: KeyServiceClient, principal: str, role: Role) -> str:
    """Register `principal` as `role` with an enrolment of the tests' administrator, as the
    party's own login does; its key-service token (made on the party's side)."""
    return keys.register(issue_enrolment(ADMIN_KEY, principal, role))


def put_sealed_model(
    artifacts: ArtifactStore,
    data_key: bytes,
    record: ModelRecord,
    onnx: bytes,
    x: np.ndarray,
    y: np.ndarray | None,
) -> None:
    """What a registration stores beside the store: the FP32 graph and the validation set,
    sealed under the model's data key (key id ``m1``) in the owner's namespace."""
    model_id = record.model_id
    stored = artifact_name(record.owner, model_id, MODEL_PART)
    artifacts.put(stored, seal_artifact(data_key, "m1", model_id, onnx))
    npz = io.BytesIO()
    np.savez(npz, x=x, **({} if y is None else {"y": y}))
    label = validation_artifact(model_id)
    stored = artifact_name(record.owner, model_id, VALIDATION_PART)
    artifacts.put(stored, seal_artifact(data_key, "m1", label, npz.getvalue()))


@dataclass
class Deployment:
    """A key service, a store, sealed artifacts and (after `start_worker`) a real worker."""

    ca: SimulatedPlatformCA
    settings: Settings
    store: MetadataStore
    artifacts: ArtifactStore
    kek: bytes
    counter: MemoryCounter
    """The key service's monotonic counter (TEE state: a restart passes the same one)."""
    service: KeyService
    keys: KeyServiceClient
    """The attested key-service client the principals' set-up goes through."""
    tokens: TokenRegistry
    ks_tokens: dict[str, str] = field(default_factory=dict)
    api_tokens: dict[str, str] = field(default_factory=dict)
    tenant_keys: dict[str, bytes] = field(default_factory=dict)
    model_keys: dict[str, bytes] = field(default_factory=dict)
    worker: WorkerRuntime | None = None
    # the registered model's plaintext, kept by the test (the owner's side)
    onnx: bytes = b""
    x: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.float32))
    y: np.ndarray | None = None
    task: str = ""
    variants: list[str] = field(default_factory=list)

    @classmethod
    def create(
        cls,
        ca: SimulatedPlatformCA,
        data_dir: Path,
        settings: Settings | None = None,
        store: MetadataStore | None = None,
        **service_options: Any,
    ) -> Deployment:
        """A fresh deployment (on `store`, by default a memory store); `service_options` go
        to the `KeyService` (e.g. its clock)."""
        settings = settings or Settings(data_dir=data_dir, store_url="memory://")
        store = store or MemoryStore()
        kek = new_key()
        counter = MemoryCounter()
        service = cls.key_service(ca, store, kek, counter=counter, **service_options)
        bundle = trust(ca)
        keys = KeyServiceClient(service, bundle.verifier(), policy_sha256=bundle.policy_sha256)
        keys.attest()
        artifacts = ArtifactStore(data_dir / "artifacts")
        return cls(
            ca, settings, store, artifacts, kek, counter, service, keys, TokenRegistry(store)
        )

    @staticmethod
    def key_service(
        ca: SimulatedPlatformCA, store: MetadataStore, kek: bytes, **kw: Any
    ) -> KeyService:
        """A key service on `store` under `kek` (a second one over the same state and
        `counter`: a restart)."""
        kw.setdefault("enrolment_key", ADMIN_PUBLIC)
        return KeyService(store, kek, SimulatedTEE(ca, KS_MEASUREMENT), worker_verifier(ca), **kw)

    def worker_tee(self, measurement: bytes = WORKER_MEASUREMENT, **kw: Any) -> SimulatedTEE:
        return SimulatedTEE(self.ca, measurement, **kw)

    def worker_keys(
        self,
        measurement: bytes = WORKER_MEASUREMENT,
        *,
        transport: Any = None,
        tee: SimulatedTEE | None = None,
        **kw: Any,
    ) -> WorkerKeyClient:
        """What a worker of `measurement` (or `tee`) holds to fetch keys (attested on each
        release) from this key service (or `transport`), expecting this deployment's bundle."""
        bundle = self.trust
        return WorkerKeyClient(
            transport or self.service,
            tee or self.worker_tee(measurement, **kw),
            verifier=bundle.verifier(),
            policy_sha256=bundle.policy_sha256,
        )

    @property
    def trust(self) -> KeyServiceTrust:
        """This deployment's published trust bundle."""
        return trust(self.ca)

    # -- principals -------------------------------------------------------------------------

    def add_owner(self, owner: str) -> str:
        """Register a model owner with the key service and the API; its key-service token."""
        self.ks_tokens[owner] = enrol(self.keys, owner, "owner")
        self.api_tokens[owner] = self.tokens.issue(owner, "owner")
        return self.ks_tokens[owner]

    def add_model_key(self, owner: str, model_id: str, key_id: str = "m1") -> bytes:
        """A fresh data key for `model_id`, given to the key service only."""
        key = new_key()
        self.keys.upload_model_key(self.ks_tokens[owner], model_id, key_id, key)
        self.model_keys[model_id] = key
        return key

    def add_tenant(
        self,
        tenant: str,
        *,
        owner: str | None = None,
        grant: tuple[str, ...] = (),
        key_id: str | None = None,
        accept: bool = True,
    ) -> None:
        """Register a tenant with a request key (id `key_id`, by default ``f"{tenant}-k1"``,
        the id `request` seals under), granted the models in `grant` by `owner`; the tenant
        accepts `owner` unless `accept` is false (a grant alone serves nothing)."""
        ks_token = enrol(self.keys, tenant, "tenant")
        self.ks_tokens[tenant] = ks_token
        self.tenant_keys[tenant] = new_key()
        self.keys.upload_tenant_key(ks_token, key_id or f"{tenant}-k1", self.tenant_keys[tenant])
        for model_id in grant:
            assert owner is not None
            self.keys.grant(self.ks_tokens[owner], model_id, tenant)
        if owner is not None and accept:
            self.keys.accept(ks_token, "owner", owner)
        self.api_tokens[tenant] = self.tokens.issue(tenant, "tenant")

    # -- the model --------------------------------------------------------------------------

    def register_model(
        self,
        owner: str,
        record: ModelRecord,
        task: Task,
        onnx: bytes,
        x: np.ndarray,
        y: np.ndarray | None,
    ) -> None:
        """What an owner's registration leaves: the sealed FP32 graph and validation set,
        the model record and its task (the worker prepares the variants from these)."""
        data_key = self.add_model_key(owner, record.model_id)
        put_sealed_model(self.artifacts, data_key, record, onnx, x, y)
        self.store.put_task(task)
        self.store.put_model(record)
        self.onnx, self.x, self.y, self.task = onnx, x, y, task.name

    def add_variant(self, spec: VariantSpec, profile: Profile, onnx: bytes) -> None:
        """What preparing a variant leaves: its graph sealed under the model's data key
        (named by the variant id), its spec and its profile (MACed as an attested worker
        that measured it does)."""
        sealed = seal_artifact(self.model_keys[spec.model_id], "m1", spec.variant_id, onnx)
        self.store.put_variant(spec)
        self.artifacts.put(self.variant_artifact(spec.variant_id), sealed)
        self.put_profile(spec, profile)
        self.variants.append(spec.variant_id)

    def variant_artifact(self, variant_id: str) -> str:
        """The storage name of a variant's sealed graph (in its owner's namespace)."""
        spec = self.store.get_variant(variant_id)
        owner = self.store.get_model(spec.model_id).owner
        return artifact_name(owner, spec.model_id, variant_part(variant_id))

    def profile_key(self, model_id: str) -> bytes:
        """The model's profile key, as the key service releases it to an attested worker."""
        (released,) = self.worker_keys().fetch([KeyRequest(kind="profile", model_id=model_id)])
        return released.key

    def put_profile(self, spec: VariantSpec, profile: Profile) -> Profile:
        """Store `profile` for the variant as an attested worker that measured it would:
        bound to the spec and the stored sealed artifact under the model's profile key."""
        authentic = authenticate_profile(
            self.profile_key(spec.model_id),
            spec,
            profile,
            sealed_artifact=self.artifacts.get(self.variant_artifact(spec.variant_id)),
            measurement=WORKER_MEASUREMENT,
        )
        self.store.put_profile(authentic)
        return authentic

    def new_worker(self, **options: Any) -> WorkerRuntime:
        """A started worker runtime on this deployment (simulated TEE of `WORKER_MEASUREMENT`);
        another replica, when `start_worker` already ran. The caller closes it."""
        options.setdefault("refresh_s", 3600.0)
        options.setdefault("keyservice", self.trust)
        runtime = WorkerRuntime(
            self.settings,
            self.store,
            self.artifacts,
            self.service,
            self.worker_tee(),
            **options,
        )
        runtime.start()
        return runtime

    def start_worker(self, **options: Any) -> WorkerRuntime:
        """Start this deployment's worker (`runtime`); `close` stops it."""
        self.worker = self.new_worker(**options)
        return self.worker

    @property
    def runtime(self) -> WorkerRuntime:
        """The started worker."""
        assert self.worker is not None, "start_worker first"
        return self.worker

    def close(self) -> None:
        if self.worker is not None:
            asyncio.run(self.worker.close())
            self.worker = None

    # -- a tenant's requests ----------------------------------------------------------------

    def request(
        self,
        tenant: str,
        x: np.ndarray,
        *,
        latency_ms: float = 1000.0,
        min_accuracy: float = 0.0,
        key_tenant: str | None = None,
        variant_id: str | None = None,
        binary: bool = True,
        timestamp: float | None = None,
    ) -> InferRequest:
        """`x` sealed by `tenant` (under `key_tenant`'s key, if given: a wrong key)."""
        rid = uuid.uuid4().hex
        body, header_length = encode_request({"x": x}, request_id=rid, binary=binary)
        env = seal_request(
            {f"{tenant}-k1": self.tenant_keys[key_tenant or tenant]},
            body,
            tenant=tenant,
            task=self.task,
            latency_ms=latency_ms,
            min_accuracy=min_accuracy,
            request_id=rid,
            timestamp=timestamp,
            header_length=header_length,
            variant_id=variant_id,
        )
        return InferRequest(envelope=env)

    def outputs(self, tenant: str, req: InferRequest, resp: InferResponse) -> np.ndarray:
        """The tenant opens the answer to `req`: its logits."""
        plain = open_response(
            resp.envelope,
            {f"{tenant}-k1": self.tenant_keys[tenant]},
            request_id=req.envelope.request_id,
            tenant=tenant,
        )
        _, arrays = decode_response(bytes(plain), resp.envelope.header_length)
        return arrays["logits"]

    def infer(self, tenant: str, req: InferRequest, token: str | None = None) -> InferResponse:
        """`req` through the worker with `tenant`'s API token (or `token`)."""
        runtime = self.runtime

        async def go() -> InferResponse:
            return await runtime.infer(req, token or self.api_tokens[tenant])

        return asyncio.run(go())

    def good(self, tenant: str = "acme") -> None:
        """A well-formed request still succeeds (after a refused one)."""
        req = self.request(tenant, self.x[:3])
        out = self.outputs(tenant, req, self.infer(tenant, req))
        assert out.shape == (3, 10)
