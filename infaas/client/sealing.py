"""The client's side of one inference: seal the request, open and check the answer.

The request body (Open Inference Protocol v2) is sealed under the tenant's
request key with the task and SLO as associated data. The answer is opened
only if it is sealed for this request and tenant, and its clear metadata
(task, SLO, variant, measurement) must agree with the authenticated one, so a
rewriting proxy or a lying scheduler is caught here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from infaas.envelope import open_response, seal_request
from infaas.errors import DecryptionFailed, InvalidInput
from infaas.protocol import DTYPES, decode_response
from infaas.types import Task, TensorSpec
from infaas.wire import InferRequest, InferResponse


@dataclass(frozen=True)
class InferResult:
    """Decrypted outputs of one request and what served it."""

    outputs: np.ndarray
    """The task's output tensor (e.g. logits), batch axis first."""
    variant_id: str
    pool: str
    measurement: str
    """Hex measurement of the worker that served it (bound into the sealed answer)."""
    simulated_tee: bool
    latency_ms: float
    queue_ms: float
    batch_size: int
    request_id: str
    all_outputs: dict[str, np.ndarray] = field(repr=False, default_factory=dict)
    body: bytes = field(repr=False, default=b"")
    """The opened Open Inference Protocol v2 response body, as the worker encoded it."""
    header_length: int | None = None
    """Its ``Inference-Header-Content-Length`` (None: all JSON)."""


@dataclass(frozen=True)
class InferManyResult:
    """A large batch's outputs, sent in chunks the task's variants accept (`infer_many`)."""

    outputs: np.ndarray
    """The task's output tensor for every input row, in input order."""
    chunks: tuple[InferResult, ...]
    """Each chunk's own answer: what served it, its latency, its request id."""

    @property
    def variant_ids(self) -> list[str]:
        return [c.variant_id for c in self.chunks]


def named_inputs(
    inputs: np.ndarray | Mapping[str, np.ndarray], spec: TensorSpec | None, *, cast: bool = True
) -> dict[str, np.ndarray]:
    """Named input tensors: a mapping as given, or one array under the task's input name.

    With `cast`, an array of the right kind but another width (float64 for a
    float32 input) is converted to the task's dtype.
    """
    if isinstance(inputs, Mapping):
        return {k: np.asarray(v) for k, v in inputs.items()}
    if spec is None:
        raise InvalidInput("a bare array needs the task's input spec")
    arr = np.asarray(inputs)
    want = DTYPES[spec.datatype]
    if cast and arr.dtype != want and arr.dtype.kind == want.kind:
        arr = arr.astype(want)
    return {spec.name: arr}


@dataclass(frozen=True)
class Ask:
    """What one inference asks for: a task, its SLO and, optionally, a narrower choice."""

    task: str
    latency_ms: float
    min_accuracy: float = 0.0
    architecture: str | None = None
    variant_id: str | None = None


def seal_infer_request(
    plaintext: bytes,
    ask: Ask,
    *,
    key_id: str,
    key: bytes,
    tenant: str,
    request_id: str,
    header_length: int | None = None,
) -> InferRequest:
    """The sealed `/v1/infer` request for an encoded body (`header_length`: its
    ``Inference-Header-Content-Length``, None when it is all JSON)."""
    envelope = seal_request(
        {key_id: key},
        plaintext,
        tenant=tenant,
        task=ask.task,
        latency_ms=ask.latency_ms,
        min_accuracy=ask.min_accuracy,
        request_id=request_id,
        key_id=key_id,
        header_length=header_length,
    )
    return InferRequest(envelope=envelope, architecture=ask.architecture, variant_id=ask.variant_id)


def open_infer_response(
    request: InferRequest,
    response: InferResponse,
    *,
    key_id: str,
    key: bytes,
    task: Task | None,
    body_id: str | None = None,
) -> InferResult:
    """Decrypt an answer and check it answers `request` (same id, tenant, task, SLO).

    `body_id` is the ``id`` inside the request's OIP body when it is not the
    envelope's request id (a body another OIP client wrote).
    """
    req, env = request.envelope, response.envelope
    plain = open_response(env, {key_id: key}, request_id=req.request_id, tenant=req.tenant)
    # the clear metadata beside the envelope must agree with the authenticated one
    if (env.task, env.latency_ms, env.min_accuracy) != (
        req.task,
        req.latency_ms,
        req.min_accuracy,
    ):
        raise DecryptionFailed("response answers another task or SLO than was asked")
    if env.variant_id != response.variant_id or env.measurement != response.measurement:
        raise DecryptionFailed("response metadata disagrees with its sealed envelope")
    body = bytes(plain)
    meta, outputs = decode_response(body, env.header_length)
    if meta.id is not None and meta.id != (req.request_id if body_id is None else body_id):
        raise DecryptionFailed("response body answers another request id")
    if not outputs:
        raise InvalidInput("response carries no outputs")
    name = task.output_name if task and task.output_name in outputs else next(iter(outputs))
    return InferResult(
        outputs=outputs[name],
        variant_id=response.variant_id,
        pool=response.pool,
        measurement=response.measurement,
        simulated_tee=response.simulated_tee,
        latency_ms=response.latency_ms,
        queue_ms=response.queue_ms,
        batch_size=response.batch_size,
        request_id=req.request_id,
        all_outputs=outputs,
        body=body,
        header_length=env.header_length,
    )
