"""The key service (SeSeMI's KeyService): an attested holder of tenant and model keys.

It runs as a TEE workload with its own X25519 key pair (keys are sealed to it)
and Ed25519 key pair (it signs every release), both made in memory at start.
Clients and workers attest it (`evidence(nonce)`: a quote whose report data
binds both public keys, the hash of its release policy and their nonce;
`infaas.keyservice.trust`) and refuse it unless code and policy are those of
the deployment's trust bundle; then they seal keys to it. Model owners upload data keys and grant
tenants the use of their models; tenants upload their request keys. A worker
proves itself with fresh evidence over a service-issued nonce, checked against
the worker policy, and receives exactly the keys it asked for and may have,
sealed to its attested ephemeral key, in a release signed over the request
(its nonces, its key, each key's kind, tenant, model, key id, and the lease).

Consent: an owner's grant alone never sends a tenant's data to a model. Each
tenant keeps its own policy here (the owners and models it accepted, changed
only with its own key-service token), and a tenant's key is released for a
model only when the owner granted it *and* the tenant accepted it or its owner.
Asked for without a model, the tenant's key comes with the models for which
both hold, bound into the seal: the worker selects among those only.

Each model also has a *profile key*, made here (random, kept in the model's
sealed record) and released only to attested workers: with it they MAC the
profiles and variant specs they measure, so the host cannot edit a variant's
accuracy in the store, and the owner cannot state one.

State (principals, keys, grants, consent) lives in the MetadataStore, each record
AES-256-GCM-encrypted under the KEK with "namespace/key" as associated data, so
records cannot be swapped either, and versioned by a hash-chained log tied to a
monotonic counter the host cannot roll back (`infaas.keyservice.state`): restored,
reordered or deleted records are refused. Tokens are stored as SHA-256 hashes only.
Each principal has a private audit trail there (`infaas.keyservice.audit`): the events
that concern it and each key release with the worker measurement it went to (once per
key and worker code: renewals are not events), read only with its own token.

Principals: a tenant or owner registers with a one-time enrolment signed by the
administrator's enrolment key (part of the release policy), sending only the hash of
a token it made itself; tokens can be revoked, and a revoked principal's keys are no
longer released (`infaas.keyservice.principals`).
"""

from __future__ import annotations

import base64
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from infaas.attestation.backends import EvidenceGenerator, report_data_for
from infaas.attestation.verifier import GpuEvidence, NonceIssuer, WorkerVerifier
from infaas.envelope import KEY_LEN
from infaas.errors import (
    Conflict,
    InfaasError,
    InvalidInput,
    NotFound,
    PermissionDenied,
    UnknownKey,
)
from infaas.keyservice.audit import AuditTrail
from infaas.keyservice.channel import CallOpener, dispatch
from infaas.keyservice.counter import MonotonicCounter
from infaas.keyservice.models import (
    ConsentKind,
    ConsentPolicy,
    EvidenceResponse,
    KeyRequest,
    NonceResponse,
    RegisterResponse,
    ReleaseRequest,
    ReleaseResponse,
    WrappedKey,
)
from infaas.keyservice.principals import Principals, Role
from infaas.keyservice.publisher import Publisher
from infaas.keyservice.sealing import info_for, open_sealed, seal_to, x25519_raw
from infaas.keyservice.state import SealedRecords
from infaas.keyservice.trust import (
    ed25519_raw,
    identity_bytes,
    policy_sha256,
    release_policy_document,
    release_statement,
)
from infaas.logs import get_logger
from infaas.store import MetadataStore, SealedTable
from infaas.transparency.log import (
    LogProof,
    ProofRequest,
    TransparencyLog,
    keyservice_entry,
    model_entry,
    worker_entry,
    worker_measurements,
)

log = get_logger(__name__)

PROFILE_KEY_ID = "profile-1"
"""Key id of every model's profile key (one per model; rotation would add another)."""


def release_info(w: WrappedKey) -> bytes:
    """HPKE info of a released key: what it is, and for a tenant key the models it serves."""
    fields: dict[str, Any] = {
        "kind": w.kind,
        "model_id": w.model_id,
        "tenant": w.tenant,
        "key_id": w.key_id,
    }
    if w.models is not None:
        fields["models"] = list(w.models)
    return info_for("release", fields)


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


def _unb64(s: str) -> bytes:
    return base64.b64decode(s)


class KeyService:
    """Holds tenant request keys and model data keys; releases them to attested workers."""

    def __init__(
        self,
        store: MetadataStore,
        kek: bytes,
        tee: EvidenceGenerator,
        worker_verifier: WorkerVerifier,
        *,
        production: bool = False,
        nonce_ttl_s: float = 60.0,
        lease_s: float = 1.0,
        enrolment_key: bytes | None = None,
        clock: Callable[[], float] = time.time,
        counter: MonotonicCounter | None = None,
        transparency: TransparencyLog | None = None,
    ) -> None:
        # versioned by a log whose length `counter` holds (a fresh in-memory one if none:
        # a restart over the same store must then pass the same counter)
        self._records = SealedRecords(store, kek, counter)
        # each principal's private trail of what concerns it (releases once per worker code)
        self._audit = AuditTrail(self._records, clock)
        self._tee = tee
        self._verifier = worker_verifier
        self._clock = clock
        self._nonces = NonceIssuer(ttl_s=nonce_ttl_s, clock=clock)
        self._nonce_ttl_s = nonce_ttl_s
        self._lease_s = lease_s
        # read-modify-write of model/principal records (grants, current key id) is
        # serialised here; one key service process owns its store namespace
        self._lock = threading.RLock()
        # who may register: enrolments signed by the administrator's key (in its policy)
        self._principals = Principals(self._records, enrolment_key, lock=self._lock, clock=clock)
        # the identity key lives only in this process: clients re-attest after a restart
        self._sk = X25519PrivateKey.generate()
        self.public_key = x25519_raw(self._sk.public_key())
        # management calls arrive sealed to that key, once each, within a window
        self._calls = CallOpener(self._sk, window_s=nonce_ttl_s, clock=clock)
        self._signing = Ed25519PrivateKey.generate()
        self.signing_key = ed25519_raw(self._signing.public_key())
        # what it releases keys to is part of its identity (bound into its evidence)
        self.release_policy = release_policy_document(
            worker_verifier, production=production, enrolment_key=enrolment_key
        )
        self.policy_sha256 = policy_sha256(self.release_policy)
        # what it trusts is public before it serves (infaas.transparency.log)
        self.transparency = transparency or TransparencyLog.in_memory()
        # (refused if older than the head its sealed state recorded; each start appends these
        # again, model keys are recorded in that state as they are logged)
        self._publish = Publisher(self.transparency, self._records).publish
        self.transparency.append(keyservice_entry(tee.measurement.hex(), self.policy_sha256))
        for m in worker_measurements(self.release_policy):
            self.transparency.append(worker_entry(m))
        if tee.simulated:
            log.warning("key service runs on %s", tee.status())

    def __repr__(self) -> str:
        return f"KeyService(tee={self._tee.status()!r})"

    def status(self) -> str:
        return f"key service on {self._tee.status()}"

    # --- attestation of the service itself --------------------------------------------

    def evidence(self, nonce: bytes) -> EvidenceResponse:
        """A quote binding this service's keys and release policy to the caller's nonce."""
        if not 16 <= len(nonce) <= 64:
            raise InvalidInput("nonce must be 16..64 bytes")
        identity = identity_bytes(self.public_key, self.signing_key, self.policy_sha256)
        quote = self._tee.generate(report_data_for(identity, nonce))
        return EvidenceResponse(
            public_key=self.public_key,
            signing_key=self.signing_key,
            policy_sha256=self.policy_sha256,
            policy=self.release_policy,
            quote=quote,
            measurement=self._tee.measurement.hex(),
            simulated=self._tee.simulated,
            status=self._tee.status(),
        )

    def transparency_proof(self, req: ProofRequest) -> LogProof:
        """Inclusion proofs of `req.entries` under the log's head, and its consistency with
        the tree of `req.since` entries (`TransparencyLog.prove`)."""
        return self.transparency.prove(req.entries, req.since)

    def call(self, sealed: bytes) -> bytes:
        """A management call sealed to this service (`infaas.keyservice.channel`): open it
        (once, fresh), run it, and seal the answer, an error included, to its answer key."""
        opened = self._calls.open(sealed)
        try:
            return CallOpener.seal_answer(opened, dispatch(self, opened))
        except InfaasError as e:
            return CallOpener.seal_answer(opened, error=e)

    # --- principals ---------------------------------------------------------------------

    def register(self, enrolment: str, token_sha256: str) -> RegisterResponse:
        """Create the tenant or model owner an administrator's one-time enrolment names,
        with the token it made itself (only its hash comes here; `principals`)."""
        registered = self._principals.register(enrolment, token_sha256)
        self._audit.record(registered.id, "registered", role=registered.role)
        return registered

    def authenticate(self, token: str, role: Role) -> str:
        """The principal id a token belongs to; AuthenticationFailed unless it is valid."""
        return self._principals.authenticate(token, role)

    def revoke_token(self, token: str | None = None, revocation: str | None = None) -> str:
        """Revoke the caller's own token, or the one an administrator's signed revocation
        names: it is refused from now on, and the principal's keys are no longer released
        (workers stop serving them within their one-second lease)."""
        principal = self._principals.revoke(token=token, revocation=revocation)
        by = "itself" if token else "the administrator"
        self._audit.record(principal, "token_revoked", by=by)
        return principal

    # --- keys and grants ----------------------------------------------------------------

    def set_tenant_key(self, token: str, key_id: str, sealed_key: bytes) -> None:
        """A tenant uploads its request key `key_id`, sealed to this service; it becomes current."""
        tenant = self.authenticate(token, "tenant")
        key = open_sealed(
            self._sk, sealed_key, info_for("tenant-key", {"tenant": tenant, "key_id": key_id})
        )
        self._check_key(key)
        if not self._records.put_if_absent(
            SealedTable.TENANT_KEY,
            f"{tenant}/{key_id}",
            {"key": _b64(key), "created_at": self._clock()},
        ):
            raise Conflict(f"tenant {tenant!r} already has key id {key_id!r}")
        with self._lock:
            rec = self._records.get(SealedTable.PRINCIPAL, tenant) or {}
            self._records.put(SealedTable.PRINCIPAL, tenant, rec | {"current_key_id": key_id})
        self._audit.record(tenant, "tenant_key_added", key_id=key_id)
        log.info("tenant %s established request key id %s", tenant, key_id)

    def retire_tenant_key(self, token: str, key_id: str) -> None:
        """The tenant retires its request key `key_id`: it is never released again, and
        workers stop serving it when its lease runs out (within a second)."""
        tenant = self.authenticate(token, "tenant")
        name = f"{tenant}/{key_id}"
        with self._lock:
            rec = self._records.get(SealedTable.TENANT_KEY, name)
            if rec is None:
                raise UnknownKey(f"tenant {tenant!r} has no key id {key_id!r}")
            self._records.put(SealedTable.TENANT_KEY, name, rec | {"retired_at": self._clock()})
            principal = self._records.get(SealedTable.PRINCIPAL, tenant) or {}
            if principal.get("current_key_id") == key_id:
                self._records.put(
                    SealedTable.PRINCIPAL, tenant, principal | {"current_key_id": None}
                )
        self._audit.record(tenant, "tenant_key_retired", key_id=key_id)
        log.info("tenant %s retired request key id %s", tenant, key_id)

    def set_model_key(self, token: str, model_id: str, key_id: str, sealed_key: bytes) -> None:
        """A model owner uploads the data key `key_id` of `model_id` (first upload claims it)."""
        owner = self.authenticate(token, "owner")
        key = open_sealed(
            self._sk, sealed_key, info_for("model-key", {"model_id": model_id, "key_id": key_id})
        )
        self._check_key(key)
        with self._lock:
            self._records.put_if_absent(
                SealedTable.MODEL, model_id, {"owner": owner, "grants": [], "current_key_id": None}
            )
            model = self._owned_model(model_id, owner)
            self._publish(model_entry(model_id, key_id, key))
            if not self._records.put_if_absent(
                SealedTable.MODEL_KEY,
                f"{model_id}/{key_id}",
                {"key": _b64(key), "created_at": self._clock()},
            ):
                raise Conflict(f"model {model_id!r} already has key id {key_id!r}")
            self._records.put(SealedTable.MODEL, model_id, model | {"current_key_id": key_id})
        self._audit.record(owner, "model_key_added", model_id=model_id, key_id=key_id)
        log.info("owner %s uploaded data key id %s for model %s", owner, key_id, model_id)

    def retire_model_key(self, token: str, model_id: str, key_id: str) -> None:
        """The owner retires data key `key_id` of `model_id`: it is never released again; if it
        was the current one the model has none, and no tenant key is released for it, so
        workers stop serving the model when the tenant keys' leases end (within a second)."""
        owner = self.authenticate(token, "owner")
        name = f"{model_id}/{key_id}"
        with self._lock:
            model = self._owned_model(model_id, owner)
            rec = self._records.get(SealedTable.MODEL_KEY, name)
            if rec is None:
                raise UnknownKey(f"model {model_id!r} has no key id {key_id!r}")
            self._records.put(SealedTable.MODEL_KEY, name, rec | {"retired_at": self._clock()})
            if model.get("current_key_id") == key_id:
                self._records.put(SealedTable.MODEL, model_id, model | {"current_key_id": None})
        self._audit.record(owner, "model_key_retired", model_id=model_id, key_id=key_id)
        log.info("owner %s retired data key id %s of model %s", owner, key_id, model_id)

    def grant(self, token: str, model_id: str, tenant: str) -> None:
        """Let `tenant` use `model_id` (its request key may then be released for that model)."""
        owner = self.authenticate(token, "owner")
        if self._records.get(SealedTable.PRINCIPAL, tenant) is None:
            raise NotFound(f"tenant {tenant!r} is not registered")
        with self._lock:
            model = self._owned_model(model_id, owner)
            grants = sorted(set(model["grants"]) | {tenant})
            self._records.put(SealedTable.MODEL, model_id, model | {"grants": grants})
        self._grant_event("granted", owner, model_id, tenant)
        log.info("owner %s granted tenant %s model %s", owner, tenant, model_id)

    def revoke(self, token: str, model_id: str, tenant: str) -> None:
        owner = self.authenticate(token, "owner")
        with self._lock:
            model = self._owned_model(model_id, owner)
            grants = [t for t in model["grants"] if t != tenant]
            self._records.put(SealedTable.MODEL, model_id, model | {"grants": grants})
        self._grant_event("revoked", owner, model_id, tenant)
        log.info("owner %s revoked tenant %s from model %s", owner, tenant, model_id)

    # --- consent (the tenant's own policy) ------------------------------------------------

    def accept(self, token: str, kind: ConsentKind, name: str) -> ConsentPolicy:
        """The tenant accepts owner `name` (all its models) or model `name` (bound to the
        owner it has now): its requests may reach them once their owner grants them."""
        tenant = self.authenticate(token, "tenant")
        with self._lock:
            rec, policy = self._consent(tenant)
            if kind == "owner":
                owner = self._records.get(SealedTable.PRINCIPAL, name)
                if owner is None or owner.get("role") != "owner":
                    raise NotFound(f"no model owner {name!r} is registered", owner=name)
                policy = ConsentPolicy(
                    owners=tuple(sorted({*policy.owners, name})), models=policy.models
                )
            else:
                model = self._model(name)
                policy = ConsentPolicy(
                    owners=policy.owners, models=policy.models | {name: str(model["owner"])}
                )
            self._put_consent(tenant, rec, policy)
        self._audit.record(tenant, "accepted", kind=kind, name=name)
        log.info("tenant %s accepted %s %s", tenant, kind, name)
        return policy

    def unaccept(self, token: str, kind: ConsentKind, name: str) -> ConsentPolicy:
        """The tenant withdraws its acceptance of owner or model `name`."""
        tenant = self.authenticate(token, "tenant")
        with self._lock:
            rec, policy = self._consent(tenant)
            if kind == "owner":
                policy = ConsentPolicy(
                    owners=tuple(o for o in policy.owners if o != name), models=policy.models
                )
            else:
                models = {m: o for m, o in policy.models.items() if m != name}
                policy = ConsentPolicy(owners=policy.owners, models=models)
            self._put_consent(tenant, rec, policy)
        self._audit.record(tenant, "withdrew", kind=kind, name=name)
        log.info("tenant %s withdrew its acceptance of %s %s", tenant, kind, name)
        return policy

    # --- the private audit trail ----------------------------------------------------------

    def audit(self, token: str) -> list[dict[str, Any]]:
        """The caller's own audit trail (`infaas.keyservice.audit`), oldest first."""
        principal_id = token.rpartition(":")[0]
        rec = self._records.get(SealedTable.PRINCIPAL, principal_id) or {}
        return self._audit.read(self.authenticate(token, rec.get("role", "tenant")))

    def _grant_event(self, event: str, owner: str, model_id: str, tenant: str) -> None:
        for principal in (owner, tenant):
            self._audit.record(principal, event, model_id=model_id, tenant=tenant, owner=owner)

    def consent(self, token: str) -> ConsentPolicy:
        """The tenant's accepted owners and models."""
        return self._consent(self.authenticate(token, "tenant"))[1]

    def _consent(self, tenant: str) -> tuple[dict[str, Any], ConsentPolicy]:
        rec = self._records.get(SealedTable.PRINCIPAL, tenant) or {}
        return rec, ConsentPolicy.model_validate(rec.get("consent") or {})

    def _put_consent(self, tenant: str, rec: dict[str, Any], policy: ConsentPolicy) -> None:
        self._records.put(
            SealedTable.PRINCIPAL, tenant, rec | {"consent": policy.model_dump(mode="json")}
        )

    @staticmethod
    def _may_use(tenant: str, policy: ConsentPolicy, model_id: str, model: dict[str, Any]) -> str:
        """Why `tenant` may not use `model_id` ('' when grant and consent both hold)."""
        if tenant not in model["grants"]:
            return f"tenant {tenant!r} is not granted model {model_id!r}"
        if model.get("current_key_id") is None:
            return f"model {model_id!r} has no current data key (its owner retired it)"
        owner = model["owner"]
        if owner not in policy.owners and policy.models.get(model_id) != owner:
            return f"tenant {tenant!r} has not accepted model {model_id!r} or its owner {owner!r}"
        return ""

    # --- release to workers -------------------------------------------------------------

    def issue_nonce(self) -> NonceResponse:
        nonce, issued_at = self._nonces.issue()
        return NonceResponse(nonce=nonce, issued_at=issued_at, ttl_s=self._nonce_ttl_s)

    def release(self, req: ReleaseRequest) -> ReleaseResponse:
        """Verify the worker's evidence, then wrap each requested key to its ephemeral key.

        All or nothing: if any requested key may not be released, none is.
        """
        issued_at = self._nonces.consume(req.nonce)
        # a GPU pool's verifier (policy.require_gpu) needs the GPU's evidence too (composite)
        gpu = GpuEvidence(req.gpu_evidence, req.gpu_chain or b"") if req.gpu_evidence else None
        appraisal = self._verifier.verify_composite(
            req.evidence,
            public_key=req.public_key,
            nonce=req.nonce,
            gpu=gpu,
            nonce_issued_at=issued_at,
            now=self._clock(),
        )
        resolved = [self._resolve(k) for k in req.keys]
        # a policy that admits any measurement: this one is published before it gets a key
        self.transparency.append(worker_entry(appraisal.cpu.measurement))
        out: list[WrappedKey] = []
        for k, key_id, key, models in resolved:
            wrapped = WrappedKey(
                kind=k.kind,
                model_id=k.model_id,
                tenant=k.tenant,
                key_id=key_id,
                sealed_key=b"",
                models=models,
            )
            info = release_info(wrapped)
            out.append(
                wrapped.model_copy(update={"sealed_key": seal_to(req.public_key, key, info)})
            )
        statement = release_statement(
            nonce=req.nonce,
            worker_nonce=req.worker_nonce,
            worker_key=req.public_key,
            keys=out,
            lease_s=self._lease_s,
        )
        for w in out:
            self._audit_release(w, appraisal.cpu.measurement)
        log.info(
            "released %d key(s) to worker %s…: %s",
            len(out),
            appraisal.cpu.measurement[:16],
            [(w.kind, w.model_id, w.tenant, w.key_id) for w in out],
        )
        return ReleaseResponse(
            keys=tuple(out), lease_s=self._lease_s, signature=self._signing.sign(statement)
        )

    # --- internals ----------------------------------------------------------------------

    def _audit_release(self, w: WrappedKey, measurement: str) -> None:
        """A release in its principal's trail: a tenant key in the tenant's, a data key in its
        model owner's (profile keys are the workers' own, in no one's)."""
        if w.kind == "tenant" and w.tenant is not None:
            principal = w.tenant
        elif w.kind == "model" and w.model_id is not None:
            principal = str(self._model(w.model_id)["owner"])
        else:
            return
        models = list(w.models) if w.models is not None else None
        self._audit.released(
            principal,
            kind=w.kind,
            key_id=w.key_id,
            model_id=w.model_id,
            models=models,
            worker_measurement=measurement,
        )

    def _resolve(self, k: KeyRequest) -> tuple[KeyRequest, str, bytes, tuple[str, ...] | None]:
        if k.kind == "profile":
            assert k.model_id is not None  # KeyRequest checks it
            if k.key_id not in (None, PROFILE_KEY_ID):
                raise UnknownKey(f"model {k.model_id!r} has no profile key id {k.key_id!r}")
            self._check_owner_active(k.model_id)
            return k, PROFILE_KEY_ID, self._profile_key(k.model_id), None
        if k.kind == "model":
            assert k.model_id is not None  # KeyRequest checks it
            model, owner = self._check_owner_active(k.model_id)
            key_id = k.key_id or model["current_key_id"]
            rec = self._records.get(SealedTable.MODEL_KEY, f"{k.model_id}/{key_id}")
            if key_id is None or rec is None:
                raise UnknownKey(f"model {k.model_id!r} has no key id {key_id!r}")
            if rec.get("retired_at") is not None:
                raise UnknownKey(f"model {k.model_id!r} retired key id {key_id!r}")
            if rec["created_at"] < owner.get("keys_valid_from", 0.0):  # maybe a leaked token's
                raise UnknownKey(f"model {k.model_id!r} key {key_id!r} predates its owner's return")
            return k, str(key_id), _unb64(rec["key"]), None
        if k.tenant is None:
            raise InvalidInput("a tenant key request must name the tenant")
        self._principals.check_active(k.tenant, "tenant key not released")
        tenant_rec, policy = self._consent(k.tenant)
        models: tuple[str, ...] | None = None
        if k.model_id is not None:
            model, _ = self._check_owner_active(k.model_id)
            why = self._may_use(k.tenant, policy, k.model_id, model)
            if why:
                raise PermissionDenied(f"{why}: key not released", tenant=k.tenant)
        else:
            models = self._usable_models(k.tenant, policy)
            if not models:
                raise PermissionDenied(
                    f"tenant {k.tenant!r} may use no model: it must accept a model or its "
                    "owner, and the owner grant it: key not released",
                    tenant=k.tenant,
                )
        key_id = k.key_id or tenant_rec.get("current_key_id")
        rec = self._records.get(SealedTable.TENANT_KEY, f"{k.tenant}/{key_id}")
        if key_id is None or rec is None:
            raise UnknownKey(f"tenant {k.tenant!r} has no key id {key_id!r}")
        if rec.get("retired_at") is not None:
            raise UnknownKey(f"tenant {k.tenant!r} retired key id {key_id!r}")
        if rec["created_at"] < tenant_rec.get("keys_valid_from", 0.0):
            raise UnknownKey(f"tenant {k.tenant!r} key id {key_id!r} predates its re-enrolment")
        return k, str(key_id), _unb64(rec["key"]), models

    def _usable_models(self, tenant: str, policy: ConsentPolicy) -> tuple[str, ...]:
        """The models `tenant` may use: granted by their owner and accepted by the tenant."""
        if not policy.owners and not policy.models:
            return ()
        out = []
        active: dict[str, bool] = {}  # owner -> not revoked (one record read per owner)
        for model_id in self._records.keys(SealedTable.MODEL):
            model = self._records.get(SealedTable.MODEL, model_id)
            if model is None or self._may_use(tenant, policy, model_id, model):
                continue
            owner = str(model["owner"])
            if owner not in active:
                rec = self._records.get(SealedTable.PRINCIPAL, owner)
                active[owner] = rec is not None and not rec.get("revoked_at")
            if active[owner]:
                out.append(model_id)
        return tuple(out)

    def _profile_key(self, model_id: str) -> bytes:
        """The model's profile key, made on first use (records from before it have none)."""
        with self._lock:
            model = self._model(model_id)
            if "profile_key" not in model:
                model = model | {"profile_key": _b64(secrets.token_bytes(KEY_LEN))}
                self._records.put(SealedTable.MODEL, model_id, model)
            return _unb64(model["profile_key"])

    def _check_owner_active(self, model_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """The model's record and its owner's; PermissionDenied if the owner was revoked."""
        model = self._model(model_id)
        what = f"model {model_id!r} key not released"
        return model, self._principals.check_active(str(model["owner"]), what)

    def _model(self, model_id: str) -> dict[str, Any]:
        model = self._records.get(SealedTable.MODEL, model_id)
        if model is None:
            raise NotFound(f"no keys for model {model_id!r}")
        return model

    def _owned_model(self, model_id: str, owner: str) -> dict[str, Any]:
        model = self._model(model_id)
        if model["owner"] != owner:
            raise PermissionDenied(f"model {model_id!r} belongs to another owner")
        return model

    @staticmethod
    def _check_key(key: bytes) -> None:
        if len(key) != KEY_LEN:
            raise InvalidInput(f"keys are {KEY_LEN} bytes (AES-256)")
