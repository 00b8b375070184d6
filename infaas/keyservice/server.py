"""The key service's HTTP server: its FastAPI routes and app (the client is `KeyServiceHttpClient`).

Routes (JSON; bytes as URL-safe base64; owner/tenant calls carry ``Authorization: Bearer <token>``):

=======  =================================  ==========================================
GET      /v1/keyservice/evidence?nonce=B64  service quote binding its key to the nonce
POST     /v1/keyservice/principals          register a tenant or owner -> token (once)
POST     /v1/keyservice/tenant-keys         tenant's request key, sealed to the service
POST     /v1/keyservice/models/{id}/keys    owner's model data key, sealed to the service
POST     /v1/keyservice/models/{id}/grants  owner grants a tenant the model
DELETE   /v1/keyservice/models/{id}/grants/{tenant}   owner revokes
GET      /v1/keyservice/consent             tenant's accepted owners and models
POST     /v1/keyservice/consent             tenant accepts an owner or a model
DELETE   /v1/keyservice/consent/{owners|models}/{name}   tenant withdraws acceptance
POST     /v1/keyservice/nonce               a single-use nonce for worker evidence
POST     /v1/keyservice/release             worker evidence + nonce + key requests
=======  =================================  ==========================================
"""

from __future__ import annotations

import base64
import binascii
from typing import Annotated

from fastapi import APIRouter, FastAPI, Header, Query
from fastapi.responses import Response

from infaas.edge import BodyLimit, bearer_token, install_error_handlers
from infaas.errors import InvalidInput
from infaas.keyservice.models import (
    ConsentPolicy,
    ConsentRequest,
    EvidenceResponse,
    GrantRequest,
    NonceResponse,
    RegisterRequest,
    RegisterResponse,
    ReleaseRequest,
    ReleaseResponse,
    SealedKeyUpload,
)
from infaas.keyservice.service import KeyService

PREFIX = "/v1/keyservice"

MAX_REQUEST_BYTES = 1 << 20
"""The largest body the key service reads: a release with the largest evidence allowed
(three 64 KiB fields, base64) fits several times over; keys and grants are tiny."""


Authorization = Annotated[str | None, Header()]


def create_keyservice_router(service: KeyService) -> APIRouter:
    """The key service's routes around `service` (no global state)."""
    router = APIRouter(prefix=PREFIX, tags=["keyservice"])

    @router.get("/evidence")
    def evidence(nonce: Annotated[str, Query(max_length=128)]) -> EvidenceResponse:
        try:
            raw = base64.b64decode(nonce.replace("-", "+").replace("_", "/"), validate=True)
        except (binascii.Error, ValueError):
            raise InvalidInput("nonce must be base64") from None
        return service.evidence(raw)

    @router.post("/principals", status_code=201)
    def register(body: RegisterRequest) -> RegisterResponse:
        return service.register(body.id, body.role)

    @router.post("/tenant-keys", status_code=204)
    def tenant_key(body: SealedKeyUpload, authorization: Authorization = None) -> Response:
        service.set_tenant_key(bearer_token(authorization), body.key_id, body.sealed_key)
        return Response(status_code=204)

    @router.post("/models/{model_id}/keys", status_code=204)
    def model_key(
        model_id: str, body: SealedKeyUpload, authorization: Authorization = None
    ) -> Response:
        service.set_model_key(bearer_token(authorization), model_id, body.key_id, body.sealed_key)
        return Response(status_code=204)

    @router.post("/models/{model_id}/grants", status_code=204)
    def grant(model_id: str, body: GrantRequest, authorization: Authorization = None) -> Response:
        service.grant(bearer_token(authorization), model_id, body.tenant)
        return Response(status_code=204)

    @router.delete("/models/{model_id}/grants/{tenant}", status_code=204)
    def revoke(model_id: str, tenant: str, authorization: Authorization = None) -> Response:
        service.revoke(bearer_token(authorization), model_id, tenant)
        return Response(status_code=204)

    @router.get("/consent")
    def consent(authorization: Authorization = None) -> ConsentPolicy:
        return service.consent(bearer_token(authorization))

    @router.post("/consent")
    def accept(body: ConsentRequest, authorization: Authorization = None) -> ConsentPolicy:
        return service.accept(bearer_token(authorization), body.kind, body.name)

    @router.delete("/consent/owners/{name}")
    def unaccept_owner(name: str, authorization: Authorization = None) -> ConsentPolicy:
        return service.unaccept(bearer_token(authorization), "owner", name)

    @router.delete("/consent/models/{name}")
    def unaccept_model(name: str, authorization: Authorization = None) -> ConsentPolicy:
        return service.unaccept(bearer_token(authorization), "model", name)

    @router.post("/nonce")
    def nonce() -> NonceResponse:
        return service.issue_nonce()

    @router.post("/release")
    def release(body: ReleaseRequest) -> ReleaseResponse:
        return service.release(body)

    return router


def create_keyservice_app(
    service: KeyService, *, max_request_bytes: int = MAX_REQUEST_BYTES
) -> FastAPI:
    """A FastAPI app serving only the key service, answering errors as the edge does.

    Bodies over `max_request_bytes` are refused (413) before they are read.
    """
    app = FastAPI(title="infaas key service", docs_url=None, redoc_url=None)
    install_error_handlers(app)
    app.include_router(create_keyservice_router(service))
    app.add_middleware(BodyLimit, limit_for=lambda scope: max_request_bytes)
    return app
