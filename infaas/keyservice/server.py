"""The key service's HTTP server: its FastAPI routes and app (the client is `KeyServiceHttpClient`).

Routes (JSON; bytes as URL-safe base64):

=======  =================================  ==========================================
GET      /v1/keyservice/evidence?nonce=B64  service quote binding its keys, its release
                                            policy hash and the nonce
POST     /v1/keyservice/call                a management call sealed to the attested
                                            service (register, key upload and
                                            retirement, grant, revoke, consent); the
                                            answer sealed to the caller
                                            (`infaas.keyservice.channel`)
POST     /v1/keyservice/nonce               a single-use nonce for worker evidence
POST     /v1/keyservice/release             worker evidence + nonce + key requests; the
                                            answer signed by the service
GET      /v1/keyservice/transparency        the public transparency log: its key, every
                                            entry, the latest signed tree head
POST     /v1/keyservice/transparency/proof  inclusion proofs of entries and the
                                            consistency proof from a size seen before
=======  =================================  ==========================================

No token, key or management answer crosses in clear: the host sees a call's size and
whether it opened.
"""

from __future__ import annotations

import base64
import binascii
from typing import Annotated

from fastapi import APIRouter, FastAPI, Query

from infaas.edge import BodyLimit, install_error_handlers, problem_schema
from infaas.errors import InvalidInput
from infaas.keyservice.models import (
    EvidenceResponse,
    NonceResponse,
    ReleaseRequest,
    ReleaseResponse,
    SealedMessage,
)
from infaas.keyservice.service import KeyService
from infaas.transparency.log import LogExport, LogProof, ProofRequest
from infaas.types import base64_pattern

PREFIX = "/v1/keyservice"

MAX_REQUEST_BYTES = 1 << 20
"""The largest body the key service reads: a release with the largest evidence allowed
(three 64 KiB fields, base64) fits several times over; keys and grants are tiny."""


def create_keyservice_router(service: KeyService) -> APIRouter:
    """The key service's routes around `service` (no global state)."""
    router = APIRouter(prefix=PREFIX, tags=["keyservice"], responses={"default": problem_schema()})

    @router.get("/evidence")
    def evidence(
        nonce: Annotated[
            str,
            Query(
                min_length=24,
                max_length=88,
                pattern=base64_pattern(16, 64, padded=True),
                description="16..64 random bytes, base64 (either alphabet, padded)",
            ),
        ],
    ) -> EvidenceResponse:
        try:
            raw = base64.b64decode(nonce.replace("-", "+").replace("_", "/"), validate=True)
        except (binascii.Error, ValueError):
            raise InvalidInput("nonce must be base64") from None
        return service.evidence(raw)

    @router.post("/call")
    def call(body: SealedMessage) -> SealedMessage:
        return SealedMessage(sealed=service.call(body.sealed))

    @router.post("/nonce")
    def nonce() -> NonceResponse:
        return service.issue_nonce()

    @router.post("/release")
    def release(body: ReleaseRequest) -> ReleaseResponse:
        return service.release(body)

    @router.get("/transparency")
    def transparency_log() -> LogExport:
        return service.transparency.export()

    @router.post("/transparency/proof")
    def transparency_proof(body: ProofRequest) -> LogProof:
        return service.transparency_proof(body)

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
