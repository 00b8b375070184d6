"""Open Inference Protocol v2 on the service: health and metadata, never tensors.

=======  ==================================================  =====================================
GET      /v2                                                 server metadata
GET      /v2/health/live                                     the control plane answers
GET      /v2/health/ready                                    ... and the worker deployment too
GET      /v2/models/{task}[/versions/{variant}]              a task as an OIP model (token)
GET      /v2/models/{task}[/versions/{variant}]/ready        a variant of it is profiled (token)
POST     /v2/models/{task}[/versions/{variant}]/infer        refused: 400 ``sealing_required``
=======  ==================================================  =====================================

In a model-less service the model a caller names is the task; a version pins
one of its variants. Metadata comes from the task: its input's name, datatype
and shape with -1 for the batch axis, its output's name and class count.

Inference in the clear is refused here, whatever the model: a tenant's tensors
never cross the host unsealed. OIP v2 inference is served by ``infaas proxy``
on the caller's machine, which attests the service, seals each request for
``POST /v1/infer`` and answers in OIP v2.
"""

from __future__ import annotations

import inspect
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from api.deps import AnyPrincipal, Plane, StoreDep
from infaas.edge import problem_schema
from infaas.errors import SealingRequired, VariantNotFound
from infaas.store import MetadataStore
from infaas.wire import (
    Liveness,
    ModelMetadata,
    ModelReadiness,
    Readiness,
    ServerMetadata,
    TensorMetadata,
)

SERVER_NAME = "infaas"
SERVER_VERSION = "0.1.0"
PLATFORM = "infaas"


def model_metadata(store: MetadataStore, name: str, version: str | None = None) -> ModelMetadata:
    """Task `name` as an OIP model; `version` (a variant of it) narrows its versions."""
    task = store.get_task(name)
    versions = sorted(v.variant_id for v in store.list_variants(task=name))
    if version is not None:
        if version not in versions:
            raise VariantNotFound(
                f"task {name!r} has no variant {version!r}", task=name, variant_id=version
            )
        versions = [version]
    return ModelMetadata(
        name=task.name,
        versions=versions,
        platform=PLATFORM,
        inputs=[
            TensorMetadata(
                name=task.input.name,
                datatype=task.input.datatype,
                shape=[-1, *task.input.shape],
            )
        ],
        outputs=[
            TensorMetadata(name=task.output_name, datatype="FP32", shape=[-1, task.num_classes])
        ],
    )


def model_readiness(store: MetadataStore, name: str, version: str | None) -> JSONResponse:
    versions = model_metadata(store, name, version).versions
    ready = any(store.get_profile(v) is not None for v in versions)
    body = ModelReadiness(name=name, ready=ready)
    return JSONResponse(body.model_dump(mode="json"), status_code=200 if ready else 503)


def _refuse(name: str) -> SealingRequired:
    return SealingRequired(
        f"the service does not take tensors in the clear: run `infaas proxy` on your machine "
        f"and send OIP v2 inference for {name!r} there (it attests the service and seals "
        f"each request for POST /v1/infer)",
        task=name,
    )


def create_oip_router() -> APIRouter:
    router = APIRouter(tags=["open inference protocol v2"], responses={"default": problem_schema()})

    @router.get("/v2", summary="server metadata")
    def server_metadata() -> ServerMetadata:
        return ServerMetadata(name=SERVER_NAME, version=SERVER_VERSION, extensions=[])

    @router.get("/v2/health/live", summary="liveness")
    def live() -> Liveness:
        return Liveness(live=True)

    @router.get(
        "/v2/health/ready",
        summary="readiness: the worker deployment answers",
        response_model=Readiness,
        responses={503: {"description": "not ready", "model": Readiness}},
    )
    async def ready(plane: Plane) -> JSONResponse:
        ok = plane.worker_status is not None
        if plane.worker_status is not None:
            try:
                status = plane.worker_status()
                if inspect.isawaitable(status):
                    await status
            except Exception:
                ok = False
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    @router.get("/v2/models/{name}", summary="a task as an OIP model")
    def metadata(name: str, principal: AnyPrincipal, store: StoreDep) -> ModelMetadata:
        return model_metadata(store, name)

    @router.get("/v2/models/{name}/versions/{version}", summary="one variant of a task")
    def version_metadata(
        name: str, version: str, principal: AnyPrincipal, store: StoreDep
    ) -> ModelMetadata:
        return model_metadata(store, name, version)

    not_ready: dict[int | str, dict[str, Any]] = {
        503: {"description": "no such variant is profiled yet", "model": ModelReadiness}
    }

    @router.get(
        "/v2/models/{name}/ready",
        summary="a variant of the task is ready",
        response_model=ModelReadiness,
        responses=not_ready,
    )
    def model_ready(name: str, principal: AnyPrincipal, store: StoreDep) -> JSONResponse:
        return model_readiness(store, name, None)

    @router.get(
        "/v2/models/{name}/versions/{version}/ready",
        summary="this variant is ready",
        response_model=ModelReadiness,
        responses=not_ready,
    )
    def version_ready(
        name: str, version: str, principal: AnyPrincipal, store: StoreDep
    ) -> JSONResponse:
        return model_readiness(store, name, version)

    refused: dict[int | str, dict[str, Any]] = {
        400: problem_schema() | {"description": "always: use `infaas proxy`"}
    }

    @router.post("/v2/models/{name}/infer", summary="refused (sealing required)", responses=refused)
    def infer(name: str) -> None:
        """Plain OIP v2 inference is refused: send it to `infaas proxy`, which seals it."""
        raise _refuse(name)

    @router.post(
        "/v2/models/{name}/versions/{version}/infer",
        summary="refused (sealing required)",
        responses=refused,
    )
    def version_infer(name: str, version: str) -> None:
        raise _refuse(name)

    return router
