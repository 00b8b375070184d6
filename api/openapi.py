"""The service's one OpenAPI document, and the problem types its errors name.

Three applications share the HTTP port (`api.serve`): the control plane, the
worker replicas (``POST /v1/infer``) and the key service (``/v1/keyservice``).
The control plane's ``/openapi.json`` describes all three, built from the same
pydantic models and routers the other two serve, so it cannot drift from them:
the key service's routes come from `create_keyservice_router` itself, and
``POST /v1/infer`` from the wire models `InferRequest` / `InferResponse`.

``GET /problems/{code}`` resolves the ``type`` of every problem answer
(``/problems/model_not_found``): its title, status and what it means.
"""

from __future__ import annotations

from typing import Any, cast

from fastapi import APIRouter, FastAPI, Security
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, ConfigDict

from infaas.edge import BEARER, problem_schema
from infaas.errors import NotFound, error_classes, problem_type
from infaas.keyservice import KeyService, create_keyservice_router
from infaas.wire import InferRequest, InferResponse


def _infer_router() -> APIRouter:
    """``POST /v1/infer`` as the worker replicas serve it (described, never mounted here)."""
    router = APIRouter(tags=["inference"], responses={"default": problem_schema()})

    @router.post(
        "/v1/infer",
        summary="one sealed inference (served by the worker replicas)",
        dependencies=[Security(BEARER)],
    )
    def infer(body: InferRequest) -> InferResponse:
        """Run a sealed Open Inference Protocol v2 request under the envelope's task and SLO.

        The envelope's plaintext is an OIP v2 request body (its
        ``Inference-Header-Content-Length`` in the envelope's ``header_length``);
        the answer's is the OIP v2 response, sealed under the same tenant key and
        bound to the variant and the worker measurement that served it. A 503
        carries ``Retry-After``.

        The same request and answer also travel as binary envelope frames
        (``Content-Type`` / ``Accept: application/vnd.infaas.envelope``: the
        envelope's associated data as a length-prefixed header, then nonce and
        ciphertext, no base64; the answer's timings in ``Infaas-Latency-Ms``,
        ``Infaas-Queue-Ms``, ``Infaas-Batch-Size``), as `infaas.Client` sends them;
        another ``Content-Type`` gets 415.
        """
        raise NotImplementedError  # documentation only: the worker replicas serve this route

    return router


def install_openapi(app: FastAPI) -> None:
    """Make `app`'s OpenAPI document describe the whole service."""
    # the key service's routes, for their description only: no handler here is ever called
    described = [
        *_infer_router().routes,
        *create_keyservice_router(cast(KeyService, None)).routes,
    ]

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=[*app.routes, *described],
            )
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


class ProblemType(BaseModel):
    """``GET /problems/{code}``: what a problem ``type`` means."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    type: str
    code: str
    title: str
    status: int
    description: str


def create_problems_router() -> APIRouter:
    router = APIRouter(tags=["problems"], responses={"default": problem_schema()})

    @router.get("/problems/{code}", summary="what a problem type means")
    def problem(code: str) -> ProblemType:
        cls = error_classes().get(code)
        if cls is None:
            raise NotFound(f"no problem type {code!r}", code=code)
        return ProblemType(
            type=problem_type(code),
            code=code,
            title=cls.title(),
            status=cls.status_code,
            description=(cls.__doc__ or cls.title()).strip().splitlines()[0],
        )

    return router
