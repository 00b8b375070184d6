"""The client's side of one inference: seal the request, open and check the answer.

The request body (Open Inference Protocol v2) is sealed under the tenant's
request key with the task, SLO and pins (variant, architecture) as associated
data. The answer is opened only if it is sealed for this request and tenant;
then what it claims must hold: its clear copies agree with the authenticated
fields, the variant and architecture that served it are the pinned ones, its
profiled accuracy meets the caller's floor, and (when asked) the TEE is not
simulated. Otherwise `AnswerRejected`: a rewriting proxy or a lying scheduler
is caught here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from infaas.envelope import ServedBy, open_response, seal_request
from infaas.errors import AnswerRejected, DecryptionFailed, InvalidInput
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
    accuracy: float
    """The served variant's profiled accuracy (bound into the sealed answer)."""
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
        variant_id=ask.variant_id,
        architecture=ask.architecture,
    )
    return InferRequest(envelope=envelope)


def open_infer_response(
    request: InferRequest,
    response: InferResponse,
    *,
    key_id: str,
    key: bytes,
    task: Task | None,
    body_id: str | None = None,
    allow_simulated: bool = True,
) -> InferResult:
    """Decrypt an answer, check it answers `request` (same id, tenant, task, SLO) and that
    what it claims meets the request (`check_served`).

    `body_id` is the ``id`` inside the request's OIP body when it is not the
    envelope's request id (a body another OIP client wrote).
    """
    req, env = request.envelope, response.envelope
    plain = open_response(env, {key_id: key}, request_id=req.request_id, tenant=req.tenant)
    if (env.task, env.latency_ms, env.min_accuracy) != (
        req.task,
        req.latency_ms,
        req.min_accuracy,
    ):
        raise DecryptionFailed("response answers another task or SLO than was asked")
    served = check_served(request, response, allow_simulated=allow_simulated)
    body = bytes(plain)
    meta, outputs = decode_response(body, env.header_length)
    if meta.id is not None and meta.id != (req.request_id if body_id is None else body_id):
        raise DecryptionFailed("response body answers another request id")
    if not outputs:
        raise InvalidInput("response carries no outputs")
    name = task.output_name if task and task.output_name in outputs else next(iter(outputs))
    return InferResult(
        outputs=outputs[name],
        variant_id=served.variant_id,
        pool=served.pool,
        measurement=served.measurement.hex(),
        simulated_tee=served.simulated_tee,
        accuracy=served.accuracy,
        latency_ms=response.latency_ms,
        queue_ms=response.queue_ms,
        batch_size=response.batch_size,
        request_id=req.request_id,
        all_outputs=outputs,
        body=body,
        header_length=env.header_length,
    )


def check_served(
    request: InferRequest, response: InferResponse, *, allow_simulated: bool = True
) -> ServedBy:
    """What served an opened answer, checked against the request; `AnswerRejected` if not.

    Call it only on an answer that opened under the tenant's key: then its
    envelope's fields are what the attested worker sealed, and the clear copies
    beside it must agree with them.
    """
    req, env = request.envelope, response.envelope
    if (
        env.variant_id is None
        or env.architecture is None
        or env.accuracy is None
        or env.pool is None
        or env.simulated_tee is None
        or env.measurement is None
    ):
        raise AnswerRejected("the sealed answer does not say what served it")
    clear = (response.variant_id, response.pool, response.measurement, response.simulated_tee)
    if clear != (env.variant_id, env.pool, env.measurement, env.simulated_tee):
        raise AnswerRejected(
            "the answer's clear metadata disagrees with its sealed envelope",
            variant_id=env.variant_id,
        )
    if req.variant_id is not None and env.variant_id != req.variant_id:
        raise AnswerRejected(
            f"pinned variant {req.variant_id!r} but {env.variant_id!r} served the request",
            variant_id=env.variant_id,
        )
    if req.architecture is not None and env.architecture != req.architecture:
        raise AnswerRejected(
            f"pinned architecture {req.architecture!r} but {env.architecture!r} served it",
            variant_id=env.variant_id,
        )
    if env.accuracy < req.min_accuracy:
        raise AnswerRejected(
            f"variant {env.variant_id!r} has accuracy {env.accuracy:g}, below the "
            f"{req.min_accuracy:g} asked for",
            variant_id=env.variant_id,
        )
    if env.simulated_tee and not allow_simulated:
        raise AnswerRejected("a simulated TEE (not confidential) served the request")
    try:
        measurement = bytes.fromhex(env.measurement)
    except ValueError:
        raise AnswerRejected("the sealed answer's measurement is not hex") from None
    return ServedBy(
        variant_id=env.variant_id,
        architecture=env.architecture,
        accuracy=env.accuracy,
        pool=env.pool,
        simulated_tee=env.simulated_tee,
        measurement=measurement,
    )
