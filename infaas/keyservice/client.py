"""Both ends of the key service: the client (tenants, owners) and the worker.

`KeyServiceClient` attests the service before anything is sent to it: it
picks a nonce, fetches evidence, verifies it against the client's policy
(expected measurement of the key service), checks that the report data binds
the service's keys and release policy to the nonce and that the policy is the
trust bundle's (`infaas.keyservice.trust.attest_keyservice`). Only then does it
seal keys to that public key.

`WorkerKeyClient` runs inside a TEE worker. It attests the key service the same
way (once, and again when a release does not verify under the key it knows),
then for each release makes an ephemeral X25519 key and a nonce of its own,
asks for the service's nonce, quotes SHA-256(ephemeral public key || nonce) (in
a GPU pool its GPU signs the same binding: composite evidence), and accepts the
answer only if the attested key service signed it for exactly this request;
it unwraps the released keys with the ephemeral private key, which never
leaves memory.

Both talk to a `KeyServiceTransport`: the in-process `KeyService` itself or
`KeyServiceHttpClient` (httpx) for a remote one.
"""

from __future__ import annotations

import base64
import math
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import httpx
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from infaas.attestation.backends import EvidenceGenerator, GpuEvidenceGenerator, report_data_for
from infaas.attestation.verifier import AttestationVerifier
from infaas.attestation.verify import VerifiedQuote
from infaas.errors import (
    AttestationFailed,
    InvalidInput,
    ReplicaUnavailable,
    error_from_problem,
    is_platform_failure,
    is_problem,
)
from infaas.keyservice.channel import SealedCall
from infaas.keyservice.enrolment import statement_subject
from infaas.keyservice.models import (
    ConsentKind,
    ConsentPolicy,
    EvidenceResponse,
    KeyRequest,
    NonceResponse,
    RegisterResponse,
    ReleaseRequest,
    ReleaseResponse,
    SealedMessage,
)
from infaas.keyservice.principals import token_sha256
from infaas.keyservice.sealing import info_for, open_sealed, seal_to, x25519_raw
from infaas.keyservice.server import PREFIX
from infaas.keyservice.service import release_info
from infaas.keyservice.trust import AttestedKeyService, attest_keyservice
from infaas.transparency.log import LogExport, LogProof, ProofRequest
from infaas.transparency.witness import LogWitness


class KeyServiceTransport(Protocol):
    """What clients and workers need from a key service, local or remote: its evidence,
    sealed management calls (`infaas.keyservice.channel`), nonces and releases."""

    def evidence(self, nonce: bytes) -> EvidenceResponse: ...
    def call(self, sealed: bytes) -> bytes: ...
    def issue_nonce(self) -> NonceResponse: ...
    def release(self, req: ReleaseRequest) -> ReleaseResponse: ...
    def transparency_proof(self, req: ProofRequest) -> LogProof: ...


class KeyServiceHttpClient:
    """`KeyServiceTransport` over HTTP (errors come back as the same infaas types)."""

    def __init__(self, http: httpx.Client) -> None:
        self._http = http

    def _call(self, method: str, path: str, **kw: object) -> httpx.Response:
        headers = {"Content-Type": "application/json"}
        r = self._http.request(method, PREFIX + path, headers=headers, **kw)  # type: ignore[arg-type]
        if r.status_code < 400:
            return r
        try:
            body = r.json()
        except ValueError:
            body = None
        if is_problem(body):
            raise error_from_problem(body)
        if r.status_code == 422:
            raise InvalidInput("key service refused the request body", errors=body)
        if is_platform_failure(r.status_code, body):
            # a key service replica that died mid-call
            raise ReplicaUnavailable(
                f"the key service's replica went away (HTTP {r.status_code})",
                http_status=r.status_code,
            )
        r.raise_for_status()
        return r

    def evidence(self, nonce: bytes) -> EvidenceResponse:
        r = self._call("GET", "/evidence", params={"nonce": base64.b64encode(nonce).decode()})
        return EvidenceResponse.model_validate_json(r.content)

    def call(self, sealed: bytes) -> bytes:
        body = SealedMessage(sealed=sealed)
        r = self._call("POST", "/call", content=body.model_dump_json())
        return SealedMessage.model_validate_json(r.content).sealed

    def issue_nonce(self) -> NonceResponse:
        return NonceResponse.model_validate_json(self._call("POST", "/nonce").content)

    def release(self, req: ReleaseRequest) -> ReleaseResponse:
        r = self._call("POST", "/release", content=req.model_dump_json())
        return ReleaseResponse.model_validate_json(r.content)

    def transparency_proof(self, req: ProofRequest) -> LogProof:
        r = self._call("POST", "/transparency/proof", content=req.model_dump_json())
        return LogProof.model_validate_json(r.content)

    def transparency_log(self) -> LogExport:
        return LogExport.model_validate_json(self._call("GET", "/transparency").content)


class KeyServiceClient:
    """Tenant / owner side: attest the key service, then seal keys to it."""

    def __init__(
        self,
        transport: KeyServiceTransport,
        verifier: AttestationVerifier,
        *,
        policy_sha256: str,
        log: LogWitness | None = None,
    ) -> None:
        self._t = transport
        self._verifier = verifier
        self._policy_sha256 = policy_sha256
        self._log = log
        self._service_key: bytes | None = None
        self.verified: VerifiedQuote | None = None
        self.attested: AttestedKeyService | None = None

    def attest(self) -> bytes:
        """Verify the service's evidence (code and release policy) over a fresh nonce; return
        its public key."""
        self.attested = attest_keyservice(
            self._t.evidence,
            self._verifier,
            self._policy_sha256,
            log=self._log,
            prove=self._t.transparency_proof,
        )
        self.verified = self.attested.verified
        self._service_key = self.attested.hpke_public_key
        return self._service_key

    @property
    def service_key(self) -> bytes:
        if self._service_key is None:
            raise AttestationFailed("key service not attested yet: call attest() first")
        return self._service_key

    def _attested_key(self) -> bytes:
        if self.attested is None:
            self.attest()
        return self.service_key

    def _sealed(self, op: str, token: str | None = None, **args: Any) -> Any:
        """One management call, sealed end to end to the attested service (attested first
        if it was not yet); the answer opened here."""
        call = SealedCall(self._attested_key(), op, args, token)
        return call.open_answer(self._t.call(call.sealed))

    def register(self, enrolment: str) -> str:
        """Register with an administrator's one-time enrolment; returns the key-service token,
        made here (only its hash is sent: nobody else ever holds it)."""
        token = f"{statement_subject(enrolment)}:{secrets.token_urlsafe(32)}"
        answer = self._sealed("register", enrolment=enrolment, token_sha256=token_sha256(token))
        RegisterResponse.model_validate(answer)
        return token

    def revoke_token(self, token: str | None = None, *, revocation: str | None = None) -> str:
        """Revoke `token` (one's own), or the token an administrator's signed `revocation`
        names; the principal revoked."""
        return str(self._sealed("revoke_token", token, revocation=revocation))

    def upload_tenant_key(self, token: str, key_id: str, key: bytes) -> None:
        tenant = token.rpartition(":")[0]
        info = info_for("tenant-key", {"tenant": tenant, "key_id": key_id})
        sealed = seal_to(self._attested_key(), key, info)
        self._sealed("set_tenant_key", token, key_id=key_id, sealed_key=_b64(sealed))

    def retire_tenant_key(self, token: str, key_id: str) -> None:
        """Never release request key `key_id` again (workers drop it within its lease)."""
        self._sealed("retire_tenant_key", token, key_id=key_id)

    def upload_model_key(self, token: str, model_id: str, key_id: str, key: bytes) -> None:
        info = info_for("model-key", {"model_id": model_id, "key_id": key_id})
        sealed = _b64(seal_to(self._attested_key(), key, info))
        self._sealed("set_model_key", token, model_id=model_id, key_id=key_id, sealed_key=sealed)

    def retire_model_key(self, token: str, model_id: str, key_id: str) -> None:
        """Never release data key `key_id` of `model_id` again (if current: the model is
        served no more once the tenant keys' leases end)."""
        self._sealed("retire_model_key", token, model_id=model_id, key_id=key_id)

    def grant(self, token: str, model_id: str, tenant: str) -> None:
        self._sealed("grant", token, model_id=model_id, tenant=tenant)

    def revoke(self, token: str, model_id: str, tenant: str) -> None:
        self._sealed("revoke", token, model_id=model_id, tenant=tenant)

    def accept(self, token: str, kind: ConsentKind, name: str) -> ConsentPolicy:
        return ConsentPolicy.model_validate(self._sealed("accept", token, kind=kind, name=name))

    def unaccept(self, token: str, kind: ConsentKind, name: str) -> ConsentPolicy:
        answer = self._sealed("unaccept", token, kind=kind, name=name)
        return ConsentPolicy.model_validate(answer)

    def consent(self, token: str) -> ConsentPolicy:
        return ConsentPolicy.model_validate(self._sealed("consent", token))

    def audit(self, token: str) -> list[dict[str, Any]]:
        """The token's principal's own audit trail (`infaas.keyservice.audit`), oldest first."""
        answer: list[dict[str, Any]] = self._sealed("audit", token)
        return answer


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


@dataclass(frozen=True)
class ReleasedKey:
    kind: str
    model_id: str | None
    tenant: str | None
    key_id: str
    key: bytes
    models: tuple[str, ...] | None = None
    """A tenant key asked for without a model: the models it may serve."""
    valid_until: float = math.inf
    """End of its lease, on the worker's clock: the signed lease counted from the moment the
    worker asked (so no clock of the key service or the host needs to agree with it)."""

    def __repr__(self) -> str:  # never show key material
        return f"ReleasedKey({self.kind}, {self.model_id}, {self.tenant}, {self.key_id})"


class WorkerKeyClient:
    """Worker side: prove itself with fresh evidence, unwrap the released keys.

    A GPU-pool worker also has its `gpu`: its report is over the same binding of the
    ephemeral key and the service's nonce as the CPU quote (composite evidence).
    """

    def __init__(
        self,
        transport: KeyServiceTransport,
        tee: EvidenceGenerator,
        gpu: GpuEvidenceGenerator | None = None,
        *,
        verifier: AttestationVerifier,
        policy_sha256: str,
        log: LogWitness | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._t = transport
        self._tee = tee
        self._gpu = gpu
        self._verifier = verifier
        self._policy_sha256 = policy_sha256
        self._log = log
        self._clock = clock
        self._lock = threading.Lock()
        self.attested: AttestedKeyService | None = None

    def attest(self) -> AttestedKeyService:
        """Attest the key service (code and release policy) anew; AttestationFailed if not."""
        attested = attest_keyservice(
            self._t.evidence,
            self._verifier,
            self._policy_sha256,
            log=self._log,
            prove=self._t.transparency_proof,
        )
        with self._lock:
            self.attested = attested
        return attested

    def _check(self, resp: ReleaseResponse, **binding: Any) -> None:
        attested = self.attested or self.attest()
        try:
            attested.check_release(resp, **binding)
        except AttestationFailed:
            # the key service may have restarted with new keys: attest once more, then judge
            fresh = self.attest()
            if fresh.signing_public_key == attested.signing_public_key:
                raise
            fresh.check_release(resp, **binding)

    def fetch(self, requests: Sequence[KeyRequest]) -> list[ReleasedKey]:
        """The keys asked for, from a release the attested key service signed for this request.

        Raises AttestationFailed (saying why) for a key service whose code or policy is not
        the trust bundle's, or an answer it did not sign for exactly this request.
        """
        if self.attested is None:
            self.attest()
        asked_at = self._clock()  # before the nonce: the lease cannot outlast what was signed
        sk = X25519PrivateKey.generate()
        pk = x25519_raw(sk.public_key())
        worker_nonce = secrets.token_bytes(32)
        nonce = self._t.issue_nonce().nonce
        binding = report_data_for(pk, nonce)
        req = ReleaseRequest(
            evidence=self._tee.generate(binding),
            public_key=pk,
            nonce=nonce,
            worker_nonce=worker_nonce,
            keys=tuple(requests),
        )
        if self._gpu is not None:
            req = req.model_copy(
                update={
                    "gpu_evidence": self._gpu.generate(binding[:32]),
                    "gpu_chain": self._gpu.chain_pem,
                }
            )
        resp = self._t.release(req)
        self._check(resp, requests=req.keys, nonce=nonce, worker_nonce=worker_nonce, worker_key=pk)
        return unwrap_released(resp, sk, valid_until=asked_at + resp.lease_s)

    def model_key(self, model_id: str, key_id: str | None = None) -> ReleasedKey:
        return self.fetch([KeyRequest(kind="model", model_id=model_id, key_id=key_id)])[0]

    def tenant_key(
        self, tenant: str, model_id: str | None, key_id: str | None = None
    ) -> ReleasedKey:
        """The tenant's key for `model_id`, or (None) with every model it may serve."""
        req = KeyRequest(kind="tenant", model_id=model_id, tenant=tenant, key_id=key_id)
        return self.fetch([req])[0]


def unwrap_released(
    resp: ReleaseResponse, private_key: X25519PrivateKey, *, valid_until: float = math.inf
) -> list[ReleasedKey]:
    """Open each wrapped key with the worker's ephemeral private key."""
    out: list[ReleasedKey] = []
    for w in resp.keys:
        key = open_sealed(private_key, w.sealed_key, release_info(w))
        out.append(ReleasedKey(w.kind, w.model_id, w.tenant, w.key_id, key, w.models, valid_until))
    return out
