"""Models, their preparation jobs, and tasks.

=======  ======================  =============================================
POST     /v1/models              owner registers a sealed model (202 + job)
GET      /v1/models              models with variants and profiles
GET      /v1/models/{model_id}   one model with variants and profiles
GET      /v1/jobs/{model_id}     progress of variant generation and profiling
GET      /v1/tasks               the tasks callers can name
=======  ======================  =============================================

The control plane never holds a key: the artifact and the validation set
arrive sealed (`infaas.envelope.seal_artifact`) under a data key the owner
gave only to the attested key service, and are stored as they came.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import time
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from api.deps import AnyPrincipal, ControlPlane, Owner, Plane, StoreDep
from infaas.artifacts import MODEL_PART, VALIDATION_PART, artifact_name
from infaas.auth import Principal
from infaas.edge import problem_schema, read_body
from infaas.envelope import artifact_key_id
from infaas.errors import (
    Conflict,
    DecryptionFailed,
    InfaasError,
    InvalidModel,
    ModelNotFound,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
)
from infaas.logs import get_logger
from infaas.store import MetadataStore
from infaas.types import ModelRecord, Task
from infaas.wire import JobStatus, ModelInfo, RegisterModelRequest

log = get_logger(__name__)


def validation_artifact_name(model_id: str) -> str:
    """Sealing label of a model's validation set (its storage name is `artifact_name`'s)."""
    return f"{model_id}.validation"


def _check_sealed(name: str, blob: bytes, key_id: str, limit: int) -> None:
    if len(blob) > limit:
        raise PayloadTooLarge(
            f"{name} is {len(blob)} bytes, more than the limit of {limit}",
            size_bytes=len(blob),
            limit_bytes=limit,
        )
    try:
        sealed_kid = artifact_key_id(blob)
    except (DecryptionFailed, UnicodeDecodeError, IndexError) as e:
        raise InvalidModel(
            f"{name} is not a sealed infaas artifact (seal it with seal_artifact): {e}"
        ) from None
    if sealed_kid != key_id:
        raise InvalidModel(
            f"{name} is sealed under key id {sealed_kid!r}, the request names {key_id!r}"
        )


def _ensure_task(store: MetadataStore, body: RegisterModelRequest) -> None:
    wanted = Task(name=body.task, input=body.input, num_classes=body.num_classes)
    try:
        existing = store.get_task(body.task)
    except NotFound:
        store.put_task(wanted)
        return
    if (existing.input, existing.num_classes) != (wanted.input, wanted.num_classes):
        raise Conflict(
            f"task {body.task!r} takes input {existing.input.model_dump(mode='json')} with "
            f"{existing.num_classes} classes; this model declares "
            f"{wanted.input.model_dump(mode='json')} with {wanted.num_classes}",
            task=body.task,
        )


def register(plane: ControlPlane, body: RegisterModelRequest, owner: Principal) -> JobStatus:
    """Validate, store the sealed blobs and the record, queue the job (blocking I/O)."""
    store = plane.store
    _check_sealed("artifact", body.artifact, body.key_id, plane.max_model_bytes)
    _check_sealed("validation set", body.validation, body.key_id, plane.max_model_bytes)
    try:
        store.get_model(body.model_id)
        raise Conflict(f"model {body.model_id!r} is already registered", model_id=body.model_id)
    except ModelNotFound:
        pass
    job = JobStatus(model_id=body.model_id, state="queued", updated_at=time.time())
    # the job record is the registration's claim: two concurrent uploads of one id
    # cannot both pass it (put-if-absent is atomic in every store backend)
    if not store.claim_job(job):
        raise Conflict(
            f"model {body.model_id!r} is already registered or being registered",
            model_id=body.model_id,
        )
    # storage names in the owner's own namespace: nothing here can name (or, cleaning up,
    # delete) another owner's artifact, whatever model id this owner picked
    model_name = artifact_name(owner.id, body.model_id, MODEL_PART)
    validation_name = artifact_name(owner.id, body.model_id, VALIDATION_PART)
    try:
        _ensure_task(store, body)
        plane.artifacts.put(model_name, body.artifact)
        plane.artifacts.put(validation_name, body.validation)
        store.put_model(
            ModelRecord(
                model_id=body.model_id,
                task=body.task,
                architecture=body.architecture,
                owner=owner.id,
                declared_accuracy=body.declared_accuracy,
                # digest and size of the sealed artifact as stored: the control plane never
                # sees the plaintext, and a plaintext digest would fingerprint the weights
                artifact_sha256=hashlib.sha256(body.artifact).hexdigest(),
                size_bytes=len(body.artifact),
                num_parameters=0,
            )
        )
    except BaseException:
        store.delete_job(body.model_id)
        plane.artifacts.delete(model_name)
        plane.artifacts.delete(validation_name)
        raise
    log.info(
        "owner %s registered model %s (task %s, %d sealed bytes)",
        owner.id,
        body.model_id,
        body.task,
        len(body.artifact),
    )
    return job


def _fail(store: MetadataStore, model_id: str, message: str) -> JobStatus:
    current = store.get_job(model_id)
    if current is not None and current.state in ("ready", "failed"):
        return current
    job = JobStatus(
        model_id=model_id,
        state="failed",
        done=current.done if current else 0,
        total=current.total if current else 0,
        message=message,
        updated_at=time.time(),
    )
    return store.put_job(job)


async def trigger(plane: ControlPlane, model_id: str) -> JobStatus | None:
    """Ask the worker deployment to prepare a model without waiting for it to finish."""
    if plane.prepare is None:
        log.warning("no worker deployment: model %s stays queued", model_id)
        return None
    try:
        result = plane.prepare(model_id)
    except Exception as e:
        log.warning("preparing model %s could not start: %s", model_id, type(e).__name__)
        return await run_in_threadpool(_fail, plane.store, model_id, _describe(e))
    if inspect.isawaitable(result):
        awaitable = result

        async def watch() -> None:
            try:
                await awaitable
            except Exception as e:
                log.warning("preparing model %s failed: %s", model_id, type(e).__name__)
                await run_in_threadpool(_fail, plane.store, model_id, _describe(e))

        task = asyncio.create_task(watch())
        plane.background.add(task)
        task.add_done_callback(plane.background.discard)
    return None


def _describe(e: BaseException) -> str:
    # only infaas errors carry messages written to be shown; others may quote anything
    if isinstance(e, InfaasError):
        return f"{e.code}: {e.message}"
    cause = e.__cause__ or e.__context__
    if isinstance(cause, InfaasError):
        return f"{cause.code}: {cause.message}"
    return f"preparation failed ({type(e).__name__}); see the worker logs"


def model_info(store: MetadataStore, model: ModelRecord) -> ModelInfo:
    variants = store.list_variants(model_id=model.model_id)
    profiles = [p for v in variants if (p := store.get_profile(v.variant_id)) is not None]
    return ModelInfo(
        model=model,
        task=store.get_task(model.task),
        job=store.get_job(model.model_id),
        variants=variants,
        profiles=profiles,
    )


def registration_body_limit(max_model_bytes: int) -> int:
    """The largest `POST /v1/models` body: a sealed model of `max_model_bytes` in base64,
    with its metadata and validation set."""
    return max_model_bytes * 4 // 3 + 65536


async def _registration(request: Request, limit: int) -> RegisterModelRequest:
    """The body of a registration, read only now (after the owner's token was checked)."""
    raw = await read_body(request.stream(), limit)
    try:
        return RegisterModelRequest.model_validate_json(raw)
    except ValidationError as e:
        errors = e.errors(include_url=False, include_input=False, include_context=False)
        raise RequestValidationError(
            [err | {"loc": ("body", *err["loc"])} for err in errors]
        ) from None
    finally:
        del raw


_REGISTRATION_SCHEMA = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    k: v
                    for k, v in RegisterModelRequest.model_json_schema(
                        ref_template="#/components/schemas/{model}"
                    ).items()
                    if k != "$defs"  # TensorSpec: in the components already (Task uses it)
                }
            }
        },
    }
}


def create_models_router() -> APIRouter:
    router = APIRouter(tags=["models"], responses={"default": problem_schema()})

    @router.post(
        "/v1/models",
        status_code=202,
        summary="register a sealed model",
        openapi_extra=_REGISTRATION_SCHEMA,
    )
    async def register_model(request: Request, owner: Owner, plane: Plane) -> JobStatus:
        """Store a sealed FP32 ONNX model and its sealed validation set; start preparing it.

        The owner's token is checked before a byte of the (up to ~1.4 GB) body is read.
        Answers 202 with the queued job; poll `GET /v1/jobs/{model_id}`.
        """
        body = await _registration(request, registration_body_limit(plane.max_model_bytes))
        job = await run_in_threadpool(register, plane, body, owner)
        failed = await trigger(plane, body.model_id)
        return failed or job

    @router.get("/v1/jobs/{model_id}", summary="progress of a model's preparation")
    def get_job(model_id: str, principal: Owner, store: StoreDep) -> JobStatus:
        model = store.get_model(model_id)
        if principal.role != "admin" and model.owner != principal.id:
            raise PermissionDenied(f"model {model_id!r} belongs to another owner")
        job = store.get_job(model_id)
        if job is None:
            raise ModelNotFound(f"no preparation job for model {model_id!r}", model_id=model_id)
        return job

    @router.get("/v1/models", summary="registered models with variants and profiles")
    def list_models(
        principal: AnyPrincipal,
        store: StoreDep,
        task: Annotated[str | None, Query(max_length=128)] = None,
    ) -> list[ModelInfo]:
        return [model_info(store, m) for m in store.list_models(task=task)]

    @router.get("/v1/models/{model_id}", summary="one model with variants and profiles")
    def get_model(model_id: str, principal: AnyPrincipal, store: StoreDep) -> ModelInfo:
        return model_info(store, store.get_model(model_id))

    @router.get("/v1/tasks", summary="the tasks callers can ask for")
    def list_tasks(principal: AnyPrincipal, store: StoreDep) -> list[Task]:
        return store.list_tasks()

    return router
