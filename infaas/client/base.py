"""What the sync `Client` and the `AsyncClient` share: who the caller is, and everything
about an inference that does no I/O.

Credentials, sealing a request, opening and checking its answer, the call's
deadline and the chunks `infer_many` cuts a large batch into live here once;
the two clients add only the HTTP calls (httpx.Client or httpx.AsyncClient).
"""

from __future__ import annotations

import base64
import os
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, Self

import numpy as np

from infaas.client.credentials import KeyServiceTrust, read_credentials, write_credentials
from infaas.client.retry import NO_RETRY, RetryPolicy
from infaas.client.sealing import (
    Ask,
    InferManyResult,
    InferResult,
    named_inputs,
    open_infer_response,
    seal_infer_request,
)
from infaas.envelope import open_error
from infaas.errors import AnswerRejected, AuthenticationFailed, InfaasError, InvalidInput, Timeout
from infaas.protocol import encode_request
from infaas.transparency.witness import LogWitness
from infaas.types import Task
from infaas.wire import (
    ENVELOPE_MEDIA_TYPE,
    InferRequest,
    InferResponse,
    ModelInfo,
    envelope_frame,
    infer_response_from_frame,
    media_type,
)

Role = Literal["tenant", "owner", "admin"]
Inputs = np.ndarray | Mapping[str, np.ndarray]
"""A batch ``(n, *task input shape)``, or named input tensors."""
Step = Callable[[InferResult], InferResult]

DEFAULT_URL = "http://127.0.0.1:8000"


class ClientBase:
    """Credentials and the I/O-free half of inference (see the module docstring)."""

    infer_path = "/v1/infer"

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        *,
        api_token: str | None = None,
        ks_token: str | None = None,
        principal: str | None = None,
        role: Role | None = None,
        request_key: bytes | None = None,
        key_id: str | None = None,
        keyservice: KeyServiceTrust | None = None,
        timeout_s: float = 120.0,
        retry: RetryPolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
        seen_heads: Path | None = None,
        wire: Literal["binary", "json"] = "binary",
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.seen_heads = seen_heads
        """Where the transparency log heads this client saw are kept (None: in memory)."""
        self._witness: LogWitness | None = None
        self.wire = wire
        """How a sealed request travels: a binary envelope frame (`ENVELOPE_MEDIA_TYPE`,
        no base64 for the service to undo) or JSON."""
        self.api_token = api_token
        self.ks_token = ks_token
        self.principal = principal or (api_token.rpartition(".")[0] if api_token else None)
        self.role = role
        self.key_id = key_id
        self._request_key = request_key
        self.keyservice = keyservice
        self.timeout_s = timeout_s
        """Default deadline of one call, all its attempts together (seconds)."""
        self.retry = retry or RetryPolicy()
        self._clock = clock
        self._tasks: dict[str, Task] = {}

    def __repr__(self) -> str:  # never show tokens or keys
        return (
            f"{type(self).__name__}({self.base_url!r}, principal={self.principal!r}, "
            f"role={self.role!r})"
        )

    # -- credentials ------------------------------------------------------------------------

    def credentials(self) -> dict[str, Any]:
        """What `save_credentials` writes (secrets included: keep it private)."""
        return {
            "base_url": self.base_url,
            "principal": self.principal,
            "role": self.role,
            "api_token": self.api_token,
            "ks_token": self.ks_token,
            "key_id": self.key_id,
            "request_key": base64.b64encode(self._request_key).decode()
            if self._request_key
            else None,
            "keyservice": self.keyservice.to_json() if self.keyservice else None,
        }

    def save_credentials(self, path: str | os.PathLike[str]) -> Path:
        """Write the credentials to `path` with mode 0600 (atomically, never world-readable)."""
        return write_credentials(path, self.credentials())

    @classmethod
    def from_credentials(
        cls, path: str | os.PathLike[str], *, base_url: str | None = None, **kwargs: Any
    ) -> Self:
        """A client from a credentials file (refused if others can read it)."""
        data = read_credentials(path)
        key = data.get("request_key")
        ks = data.get("keyservice")
        kwargs.setdefault("seen_heads", Path(path).with_suffix(".log-heads.json"))
        return cls(
            base_url or data.get("base_url") or DEFAULT_URL,
            api_token=data.get("api_token"),
            ks_token=data.get("ks_token"),
            principal=data.get("principal"),
            role=data.get("role"),
            request_key=base64.b64decode(key) if key else None,
            key_id=data.get("key_id"),
            keyservice=KeyServiceTrust.from_json(ks) if ks else None,
            **kwargs,
        )

    # -- one call's deadline ----------------------------------------------------------------

    def _deadline(self, timeout_s: float | None) -> float:
        return self._clock() + (self.timeout_s if timeout_s is None else timeout_s)

    def _remaining(self, deadline: float) -> float:
        """Seconds left before `deadline`; `Timeout` when none are."""
        left = deadline - self._clock()
        if left <= 0:
            raise Timeout("the call's deadline passed before an answer came")
        return left

    # -- inference without I/O --------------------------------------------------------------

    def _unknown_task(self, name: str) -> InvalidInput:
        return InvalidInput(f"unknown task {name!r}; known: {sorted(self._tasks)}", task=name)

    def _retry_for(self, method: str) -> RetryPolicy:
        """A GET changes nothing, so it is tried again; other calls (but inference) are not."""
        return self.retry if method == "GET" else NO_RETRY

    def _needs_task(self, inputs: Inputs | None, plaintext: bytes | None) -> bool:
        return plaintext is None and not isinstance(inputs, Mapping)

    def _seal(
        self,
        spec: Task | None,
        ask: Ask,
        inputs: Inputs | None,
        *,
        request_id: str | None = None,
        cast: bool = True,
        binary: bool = True,
        plaintext: bytes | None = None,
        header_length: int | None = None,
    ) -> InferRequest:
        """Seal one attempt of `ask` (a fresh request id unless given); `plaintext`, an OIP
        v2 body encoded elsewhere, with its ``Inference-Header-Content-Length``."""
        if self._request_key is None or self.key_id is None or self.principal is None:
            raise AuthenticationFailed("no request key: call register_tenant or load credentials")
        rid = request_id or str(uuid.uuid4())
        if plaintext is None:
            tensor = None if spec is None else spec.input
            plaintext, header_length = encode_request(
                named_inputs(inputs if inputs is not None else {}, tensor, cast=cast),
                rid,
                binary=binary,
            )
        return seal_infer_request(
            plaintext, ask, key_id=self.key_id, key=self._request_key, tenant=self.principal,
            request_id=rid, header_length=header_length,
        )  # fmt: skip

    def _infer_call(self, request: InferRequest | bytes) -> dict[str, Any]:
        """The body and media types of one ``POST /v1/infer`` (raw bytes go as JSON)."""
        if isinstance(request, bytes):
            return {"content": request}
        if self.wire == "json":
            return {"content": request.model_dump_json().encode()}
        return {
            "content": envelope_frame(request.envelope),
            "content_type": ENVELOPE_MEDIA_TYPE,
            "accept": f"{ENVELOPE_MEDIA_TYPE}, application/json;q=0.5, application/problem+json",
        }

    @staticmethod
    def _infer_answer(content: bytes, headers: Mapping[str, str]) -> InferResponse:
        """The sealed answer, in the media type it came in (its ``Content-Type``)."""
        if media_type(headers.get("content-type")) != ENVELOPE_MEDIA_TYPE:
            return InferResponse.model_validate_json(content)
        try:
            return infer_response_from_frame(content, headers)
        except InvalidInput as e:
            raise AnswerRejected(f"the binary answer is malformed: {e.message}") from None

    def _opened(self, request: InferRequest | bytes, error: InfaasError) -> InfaasError:
        """The precise reason a worker sealed into `error` for `request`, else `error`."""
        if isinstance(request, bytes) or self._request_key is None or self.key_id is None:
            return error
        env = request.envelope
        keys = {self.key_id: self._request_key}
        return open_error(error, keys, request_id=env.request_id, tenant=env.tenant)

    def open_infer(
        self, request: InferRequest, response: InferResponse, *, body_id: str | None = None
    ) -> InferResult:
        """Decrypt an answer and check it answers `request` (same id, tenant, task, SLO;
        `body_id`: the OIP body's own id, when it is not the envelope's) and that what
        served it meets the request's pins and accuracy floor (`AnswerRejected`)."""
        if self._request_key is None or self.key_id is None:
            raise AuthenticationFailed("no request key")
        return open_infer_response(
            request,
            response,
            key_id=self.key_id,
            key=self._request_key,
            task=self._tasks.get(request.envelope.task),
            body_id=body_id,
            # a caller that refuses a simulated key service refuses simulated workers too
            allow_simulated=self.keyservice.allow_simulated if self.keyservice else True,
        )

    @staticmethod
    def chunk_rows(infos: Sequence[ModelInfo], ask: Ask) -> int:
        """The largest batch every candidate variant of the task accepts (its `max_batch`).

        Candidates are the profiled variants of the task's models (those the
        service can choose), narrowed by the ask's architecture or variant.
        """
        sizes = [
            v.max_batch
            for info in infos
            if info.model.task == ask.task
            for v in info.variants
            if v.variant_id in {p.variant_id for p in info.profiles}
            and ask.architecture in (None, v.architecture)
            and ask.variant_id in (None, v.variant_id)
        ]
        if not sizes:
            raise InvalidInput(f"no profiled variant serves task {ask.task!r} yet", task=ask.task)
        return min(sizes)

    @staticmethod
    def chunks(inputs: np.ndarray, rows: int) -> list[np.ndarray]:
        """`inputs` cut along the batch axis into pieces of at most `rows` rows."""
        x = np.asarray(inputs)
        if x.ndim == 0 or len(x) == 0:
            raise InvalidInput("infer_many needs a batch of at least one row")
        return [x[i : i + rows] for i in range(0, len(x), rows)]

    @staticmethod
    @contextmanager
    def _progress(total: int, enabled: bool, what: str) -> Iterator[Step]:
        """`step(result)` counts one chunk done; a progress bar only when `enabled`."""
        if not enabled:
            yield lambda result: result
            return
        from rich.progress import Progress

        with Progress(transient=True) as bar:
            task_id = bar.add_task(f"{what}: {total} chunks", total=total)

            def step(result: InferResult) -> InferResult:
                bar.advance(task_id)
                return result

            yield step


def merged(results: Sequence[InferResult]) -> InferManyResult:
    """One answer for a batch sent in chunks (outputs in the order of the inputs)."""
    return InferManyResult(
        outputs=np.concatenate([r.outputs for r in results], axis=0),
        chunks=tuple(results),
    )
