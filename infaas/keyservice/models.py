"""Wire models of the key service. Bytes fields are URL-safe base64 in JSON (either alphabet in)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from infaas.types import BASE64_WIRE, Identifier, base64_fields

KeyId = Identifier


class _Wire(BaseModel):
    model_config = BASE64_WIRE


class EvidenceResponse(_Wire):
    """The service's attestation: a quote whose report data =
    SHA-256(public_key || signing_key || policy_sha256 || nonce) (`infaas.keyservice.trust`).

    ``{"public_key": "<b64 X25519>", "signing_key": "<b64 Ed25519>", "policy_sha256":
    "<hex>", "policy": {<release policy document>}, "quote": "<b64>", "measurement":
    "<hex>", "simulated": true, "status": "simulated TEE (simulated — not confidential)"}``
    """

    public_key: bytes = Field(min_length=32, max_length=32)
    signing_key: bytes = Field(min_length=32, max_length=32, description="Ed25519, raw")
    policy_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    policy: dict[str, Any] = Field(description="the release policy document it hashes")
    quote: bytes
    measurement: str
    simulated: bool
    status: str


class SealedMessage(_Wire):
    """A management call or its answer, HPKE-sealed end to end (`infaas.keyservice.channel`).

    ``{"sealed": "<b64>"}``
    """

    sealed: bytes = Field(min_length=48, max_length=65536)


class CallArgs(_Wire):
    """The arguments of a sealed management call (each call uses the ones it names).

    ``{"model_id": "resnet", "tenant": "acme"}`` (grant),
    ``{"enrolment": "infaas-enrolment-v1.…", "token_sha256": "<hex>"}`` (register),
    ``{"key_id": "k1", "sealed_key": "<b64>"}`` (a tenant's key upload)
    """

    enrolment: str | None = Field(None, max_length=2048, description="administrator-signed")
    token_sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")
    revocation: str | None = Field(None, max_length=2048, description="administrator-signed")
    key_id: KeyId | None = None
    model_id: Identifier | None = None
    tenant: Identifier | None = None
    kind: Literal["owner", "model"] | None = None
    name: Identifier | None = None
    sealed_key: bytes | None = Field(None, min_length=32, max_length=256)


class RegisterResponse(_Wire):
    """``{"id": "acme", "role": "tenant"}``: who the enrolment made (the token is the
    party's own: it sent only its hash)."""

    id: str
    role: Literal["tenant", "owner"]


ConsentKind = Literal["owner", "model"]


class ConsentPolicy(_Wire):
    """The models a tenant's requests may reach: those of the owners it accepted, and the
    models it accepted (each bound to the owner it had when accepted).

    ``{"owners": ["zoo-owner"], "models": {"digits-mlp": "zoo-owner"}}``
    """

    owners: tuple[str, ...] = ()
    models: dict[str, str] = Field(default_factory=dict)


class NonceResponse(_Wire):
    """``{"nonce": "<b64, 32 bytes>", "issued_at": 1763760000.0, "ttl_s": 60.0}``"""

    nonce: bytes
    issued_at: float
    ttl_s: float


def _named_schema(schema: dict[str, Any], cls: type[BaseModel]) -> None:
    """`KeyRequest._named` in its JSON schema: what each kind of request must name."""
    base64_fields(schema, cls)

    def names(kinds: list[str], field: str) -> dict[str, Any]:
        return {
            "if": {"properties": {"kind": {"enum": kinds}}, "required": ["kind"]},
            "then": {"required": [field], "properties": {field: {"type": "string"}}},
        }

    schema["allOf"] = [names(["model", "profile"], "model_id"), names(["tenant"], "tenant")]


class KeyRequest(_Wire):
    """One key a worker asks for.

    ``{"kind": "model", "model_id": "resnet", "key_id": null}`` — the model's data key;
    ``{"kind": "tenant", "tenant": "acme", "model_id": "resnet", "key_id": "k1"}`` —
    a tenant's request key, released only if the owner granted the tenant that model
    *and* the tenant accepted it (or its owner);
    ``{"kind": "tenant", "tenant": "acme", "model_id": null, "key_id": "k1"}`` — the
    request key with the models it may serve (grant and consent both hold), released
    only if there is one;
    ``{"kind": "profile", "model_id": "resnet"}`` — the model's profile key, with
    which workers authenticate the profiles and specs they measure (no owner,
    tenant or host ever holds it). `key_id` null means the current key.
    """

    model_config = BASE64_WIRE | ConfigDict(json_schema_extra=_named_schema)

    kind: Literal["model", "tenant", "profile"]
    model_id: Identifier | None = None
    tenant: Identifier | None = None
    key_id: KeyId | None = None

    @model_validator(mode="after")
    def _named(self) -> KeyRequest:
        if self.kind in ("model", "profile") and self.model_id is None:
            raise ValueError(f"a {self.kind} key request must name the model")
        if self.kind == "tenant" and self.tenant is None:
            raise ValueError("a tenant key request must name the tenant")
        return self


class ReleaseRequest(_Wire):
    """A worker's evidence (report data = SHA-256(public_key || nonce)) and the keys it wants;
    `worker_nonce` is the worker's own, echoed in the signed release."""

    evidence: bytes = Field(min_length=48, max_length=65536)
    public_key: bytes = Field(min_length=32, max_length=32, description="ephemeral X25519")
    nonce: bytes = Field(min_length=32, max_length=32)
    worker_nonce: bytes = Field(min_length=32, max_length=32)
    keys: tuple[KeyRequest, ...] = Field(min_length=1, max_length=64)
    gpu_evidence: bytes | None = Field(
        None, max_length=65536, description="GPU pools: SPDM report, nonce = report data[:32]"
    )
    gpu_chain: bytes | None = Field(None, max_length=65536, description="GPU device chain PEM")


class WrappedKey(_Wire):
    """A released key, HPKE-sealed to the worker's attested ephemeral key.

    A tenant key asked for without a model carries `models`: the models it may serve,
    bound into the seal (HPKE info) so nobody on the way can widen them.
    """

    kind: Literal["model", "tenant", "profile"]
    model_id: str | None
    tenant: str | None
    key_id: str
    sealed_key: bytes
    models: tuple[str, ...] | None = None


class ReleaseResponse(_Wire):
    """The released keys, signed by the key service's attested Ed25519 key over
    `trust.release_statement` (the request's nonces and ephemeral key, each key, `lease_s`)."""

    keys: tuple[WrappedKey, ...]
    lease_s: float = Field(ge=0)
    signature: bytes = Field(min_length=64, max_length=64)
