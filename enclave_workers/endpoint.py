"""The worker's HTTP endpoint: ``POST /v1/infer`` served by the worker replica itself.

Mounted by Ray Serve at the route prefix ``/v1/infer``, so the app's root path
is the inference endpoint and a request crosses proxy -> replica only, as plain
Ray Serve does. Errors, the bearer token and the body limit are the shared
HTTP edge's (`infaas.edge`): the RFC 9457 problem with its status (a 503
carries ``Retry-After``); bodies over ``max_request_bytes`` refused with 413
before any parsing, by the declared Content-Length, else while the body
streams in.

The request travels as a binary envelope frame (``Content-Type:
application/vnd.infaas.envelope``, `infaas.wire`: the associated data as its
header, then nonce and ciphertext, decrypted in place from the received body) or
as JSON; the answer is a frame when ``Accept`` lists that type, else JSON. Any
other ``Content-Type`` is refused with 415 before the body is read; a malformed
frame gets the precise 400 a malformed JSON body gets.

Load shedding: a replica holds at most `Admission.limit` inference requests at
once (running, batching or waiting for a batch); one more is answered at once
with 503 ``overloaded`` and ``Retry-After`` (through the edge), before its body
is read, instead of joining a queue that only grows under a flood.

`WorkerASGI` is what a replica serves: ``POST`` at the root goes straight to
the runtime as raw ASGI (no framework layers on the hot path, where every
microsecond is visible next to plain Ray Serve); anything else falls through
to a small FastAPI app (the same endpoint, 404/405, exception handlers).
FastAPI's native OpenTelemetry is switched off: request spans, metrics and
exception logs of a TEE worker would leak metadata to whatever collects them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response
from pydantic import ValidationError
from starlette.types import Message, Receive, Scope, Send

from enclave_workers.runtime import WorkerRuntime
from infaas.edge import (
    PROBLEM_JSON,
    bearer_token,
    check_declared_length,
    install_error_handlers,
    problem_body,
    problem_headers,
    read_body,
)
from infaas.errors import InfaasError, InvalidInput, Overloaded, UnsupportedMediaType
from infaas.logs import get_logger
from infaas.settings import Settings
from infaas.telemetry.records import QUEUE_BUCKETS
from infaas.wire import (
    ENVELOPE_MEDIA_TYPE,
    InferRequest,
    accepts_envelope,
    envelope_from_frame,
    infer_response_frame,
    media_type,
)

log = get_logger(__name__)


def parse_infer_request(body: bytes | bytearray, content_type: str = "") -> InferRequest:
    """The request a body carries, in its media type (`ENVELOPE_MEDIA_TYPE` or JSON)."""
    if content_type == ENVELOPE_MEDIA_TYPE:
        return InferRequest.model_construct(envelope=envelope_from_frame(body))
    try:
        return InferRequest.model_validate_json(body)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise InvalidInput(f"invalid InferRequest at {where}: {first['msg']}") from None


def request_media_type(content_type: str | None) -> str:
    """The request's media type: the binary envelope or JSON (the default when unnamed);
    `UnsupportedMediaType` (415) for anything else."""
    kind = media_type(content_type)
    if kind in ("", "application/json"):
        return "application/json"
    if kind == ENVELOPE_MEDIA_TYPE:
        return kind
    raise UnsupportedMediaType(
        f"POST /v1/infer reads {ENVELOPE_MEDIA_TYPE} or application/json, not {kind!r}"
    )


class Admission:
    """At most `limit` requests held at once; the next is refused with `Overloaded`."""

    def __init__(self, limit: int, retry_after_s: float = 1.0) -> None:
        if limit < 1:
            raise ValueError("the admission limit must be at least 1")
        self.limit = limit
        self.retry_after_s = retry_after_s
        self.held = 0
        self.shed = 0
        """Requests refused so far (a counter for status and metrics)."""
        self.arrivals = [0] * (len(QUEUE_BUCKETS) + 1)
        """Histogram of the requests held when one arrived (bounds `QUEUE_BUCKETS`)."""
        self.arrivals_sum = 0

    @classmethod
    def of(cls, settings: Settings) -> Admission:
        """The settings' `max_queued_requests` and `shed_retry_after_s`."""
        return cls(settings.max_queued_requests, settings.shed_retry_after_s)

    def snapshot(self) -> dict[str, Any]:
        """Metadata for the replica's status record: limit, held, shed, the histogram."""
        return {
            "limit": self.limit,
            "held": self.held,
            "shed": self.shed,
            "queue_buckets": list(self.arrivals),
            "queue_sum": self.arrivals_sum,
        }

    @contextmanager
    def admit(self) -> Iterator[None]:
        i = next((i for i, b in enumerate(QUEUE_BUCKETS) if self.held <= b), len(QUEUE_BUCKETS))
        self.arrivals[i] += 1
        self.arrivals_sum += self.held
        if self.held >= self.limit:
            self.shed += 1
            raise Overloaded(
                f"this worker holds {self.held} requests, its limit; try again shortly",
                retry_after_s=self.retry_after_s,
                queued=self.held,
            )
        self.held += 1
        try:
            yield
        finally:
            self.held -= 1


async def answer(
    runtime: WorkerRuntime,
    headers: InferHeaders,
    chunks: AsyncIterator[bytes],
    max_bytes: int,
    admission: Admission,
) -> tuple[int, bytes, dict[str, str]]:
    """(status, body, headers with its content-type) for one ``POST /v1/infer``; never
    raises. The answer is binary when ``Accept`` lists `ENVELOPE_MEDIA_TYPE`, else JSON."""
    try:
        with admission.admit():
            # the one token check of a request, before its body is read (a bad token costs
            # no read); the runtime holds the tenant it names to the envelope's
            tenant = runtime.authenticate(bearer_token(headers.authorization))
            kind = request_media_type(headers.content_type)
            check_declared_length(headers.content_length, max_bytes)
            request = parse_infer_request(await read_body(chunks, max_bytes), kind)
            response = await runtime.infer(request, tenant=tenant)
    except InfaasError as e:
        return e.status_code, problem_body(e), {"content-type": PROBLEM_JSON, **problem_headers(e)}
    except Exception:  # one request's bug must not become another's problem
        log.exception("inference request failed unexpectedly")
        err = InfaasError("internal error in the worker")
        return err.status_code, problem_body(err), {"content-type": PROBLEM_JSON}
    if accepts_envelope(headers.accept):
        frame, timings = infer_response_frame(response)
        return 200, frame, {"content-type": ENVELOPE_MEDIA_TYPE, **timings}
    return 200, response.model_dump_json().encode(), {"content-type": "application/json"}


@dataclass(frozen=True, slots=True)
class InferHeaders:
    """The request headers ``POST /v1/infer`` reads."""

    authorization: str | None = None
    content_type: str | None = None
    content_length: str | None = None
    accept: str | None = None

    @classmethod
    def of_scope(cls, scope: Scope) -> InferHeaders:
        found: dict[str, str] = {}
        for name, value in scope["headers"]:
            key = _WANTED.get(name)
            if key is not None:
                found[key] = value.decode("latin-1")
        return cls(**found)


_WANTED = {
    b"authorization": "authorization",
    b"content-type": "content_type",
    b"content-length": "content_length",
    b"accept": "accept",
}


class WorkerASGI:
    """A replica's ASGI app: raw fast path for ``POST`` at the root, FastAPI for the rest.

    Serve sets ``root_path`` to the route prefix; a request for exactly the
    prefix (``/v1/infer``) is the root too, without a 307 to ``/v1/infer/``.
    """

    def __init__(
        self, runtime: WorkerRuntime, app: FastAPI, *, max_request_bytes: int, admission: Admission
    ) -> None:
        self.runtime = runtime
        self.app = app
        self.max_request_bytes = max_request_bytes
        self.admission = admission

    def add_exception_handler(self, *args: Any, **kwargs: Any) -> None:
        self.app.add_exception_handler(*args, **kwargs)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            root = scope.get("root_path", "")
            if scope["path"] in (root, root + "/"):
                await self._infer(scope, receive, send)
                return
        await self.app(scope, receive, send)

    async def _infer(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def chunks() -> AsyncIterator[bytes]:
            while True:
                message: Message = await receive()
                if message["type"] == "http.disconnect":
                    raise InvalidInput("client disconnected before the body was complete")
                yield message.get("body", b"")
                if not message.get("more_body", False):
                    return

        status, body, extra = await answer(
            self.runtime,
            InferHeaders.of_scope(scope),
            chunks(),
            self.max_request_bytes,
            self.admission,
        )
        headers = [(b"content-length", str(len(body)).encode())]
        headers += [(k.lower().encode(), v.encode()) for k, v in extra.items()]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def create_worker_app(
    runtime: WorkerRuntime, *, max_request_bytes: int, admission: Admission | None = None
) -> FastAPI:
    """The FastAPI app of one worker replica around `runtime` (no global state)."""
    admission = admission or Admission.of(runtime.settings)
    app = FastAPI(
        title="infaas worker",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        telemetry={"tracing": False, "metrics": False, "logs": False, "operation_spans": False},
    )

    install_error_handlers(app)

    async def infer(request: Request) -> Response:
        """``POST /v1/infer``: InferRequest in, InferResponse out (see `infaas.wire`)."""
        h = request.headers
        status, body, extra = await answer(
            runtime,
            InferHeaders(
                h.get("authorization"), h.get("content-type"), h.get("content-length"),
                h.get("accept"),
            ),
            request.stream(),
            max_request_bytes,
            admission,
        )  # fmt: skip
        return Response(body, status_code=status, headers=extra)

    app.add_route("/", infer, methods=["POST"], include_in_schema=False)
    return app


def serve_app(
    runtime: WorkerRuntime, *, max_request_bytes: int, admission: Admission | None = None
) -> WorkerASGI:
    """What a replica serves: `WorkerASGI` around `create_worker_app`, one `Admission` for
    both (by default the runtime's settings: `max_queued_requests`, `shed_retry_after_s`)."""
    admission = admission or Admission.of(runtime.settings)
    app = create_worker_app(runtime, max_request_bytes=max_request_bytes, admission=admission)
    return WorkerASGI(runtime, app, max_request_bytes=max_request_bytes, admission=admission)
