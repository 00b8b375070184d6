"""The worker's HTTP endpoint: ``POST /v1/infer`` served by the worker replica itself.

Mounted by Ray Serve at the route prefix ``/v1/infer``, so the app's root path
is the inference endpoint and a request crosses proxy -> replica only, as plain
Ray Serve does. Errors are the JSON problem body of `InfaasError.to_problem()`
with its status; a 503 carries ``Retry-After``. Bodies over
``max_request_bytes`` are refused with 413 before any parsing: by the declared
Content-Length, else while the body streams in.

`WorkerASGI` is what a replica serves: ``POST`` at the root goes straight to
the runtime as raw ASGI (no framework layers on the hot path, where every
microsecond is visible next to plain Ray Serve); anything else falls through
to a small FastAPI app (the same endpoint, 404/405, exception handlers).
FastAPI's native OpenTelemetry is switched off: request spans, metrics and
exception logs of a TEE worker would leak metadata to whatever collects them.
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from starlette.types import Message, Receive, Scope, Send

from enclave_workers.runtime import WorkerRuntime
from infaas.errors import (
    AuthenticationFailed,
    InfaasError,
    InvalidInput,
    Overloaded,
    PayloadTooLarge,
)
from infaas.wire import InferRequest

log = logging.getLogger("infaas.enclave_workers.endpoint")

_JSON = b"application/json"


def problem_headers(exc: InfaasError) -> dict[str, str]:
    """Extra headers of a problem answer: Retry-After on 503."""
    if exc.status_code != 503:
        return {}
    retry = exc.retry_after_s if isinstance(exc, Overloaded) else 1.0
    return {"Retry-After": str(max(1, math.ceil(retry)))}


def problem_response(exc: InfaasError) -> JSONResponse:
    """The JSON problem answer for an infaas error (Retry-After on 503)."""
    return JSONResponse(exc.to_problem(), status_code=exc.status_code, headers=problem_headers(exc))


def bearer_token(authorization: str | None) -> str:
    """The token of an ``Authorization: Bearer <token>`` header (401 when absent)."""
    if not authorization:
        raise AuthenticationFailed("missing API token (Authorization: Bearer <token>)")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthenticationFailed("the Authorization header must be 'Bearer <token>'")
    return token.strip()


def _too_large(max_bytes: int, size: int | None = None) -> PayloadTooLarge:
    what = f"request body of {size} bytes" if size is not None else "request body"
    return PayloadTooLarge(
        f"{what} exceeds the {max_bytes}-byte limit", max_request_bytes=max_bytes
    )


def check_declared_length(content_length: str | None, max_bytes: int) -> None:
    if content_length is None:
        return
    try:
        size = int(content_length)
    except ValueError:
        raise InvalidInput("bad Content-Length header") from None
    if size > max_bytes:
        raise _too_large(max_bytes, size)


async def collect(chunks: AsyncIterator[bytes], max_bytes: int) -> bytes:
    """The body from its chunks, refusing more than `max_bytes` (413) before it is all read."""
    body = bytearray()
    async for chunk in chunks:
        body += chunk
        if len(body) > max_bytes:
            raise _too_large(max_bytes)
    return bytes(body)


def parse_infer_request(body: bytes) -> InferRequest:
    try:
        return InferRequest.model_validate_json(body)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise InvalidInput(f"invalid InferRequest at {where}: {first['msg']}") from None


async def answer(
    runtime: WorkerRuntime,
    authorization: str | None,
    content_length: str | None,
    chunks: AsyncIterator[bytes],
    max_bytes: int,
) -> tuple[int, bytes, dict[str, str]]:
    """(status, JSON body, extra headers) for one ``POST /v1/infer``; never raises."""
    try:
        token = bearer_token(authorization)
        check_declared_length(content_length, max_bytes)
        request = parse_infer_request(await collect(chunks, max_bytes))
        response = await runtime.infer(request, token)
    except InfaasError as e:
        return e.status_code, _problem_body(e), problem_headers(e)
    except Exception:  # one request's bug must not become another's problem
        log.exception("inference request failed unexpectedly")
        err = InfaasError("internal error in the worker")
        return err.status_code, _problem_body(err), {}
    return 200, response.model_dump_json().encode(), {}


def _problem_body(exc: InfaasError) -> bytes:
    return bytes(JSONResponse(exc.to_problem()).body)


class WorkerASGI:
    """A replica's ASGI app: raw fast path for ``POST`` at the root, FastAPI for the rest.

    Serve sets ``root_path`` to the route prefix; a request for exactly the
    prefix (``/v1/infer``) is the root too, without a 307 to ``/v1/infer/``.
    """

    def __init__(self, runtime: WorkerRuntime, app: FastAPI, *, max_request_bytes: int) -> None:
        self.runtime = runtime
        self.app = app
        self.max_request_bytes = max_request_bytes

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
        authorization = content_length = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value.decode("latin-1")
            elif name == b"content-length":
                content_length = value.decode("latin-1")

        async def chunks() -> AsyncIterator[bytes]:
            while True:
                message: Message = await receive()
                if message["type"] == "http.disconnect":
                    raise InvalidInput("client disconnected before the body was complete")
                yield message.get("body", b"")
                if not message.get("more_body", False):
                    return

        status, body, extra = await answer(
            self.runtime, authorization, content_length, chunks(), self.max_request_bytes
        )
        headers = [(b"content-type", _JSON), (b"content-length", str(len(body)).encode())]
        headers += [(k.lower().encode(), v.encode()) for k, v in extra.items()]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def create_worker_app(runtime: WorkerRuntime, *, max_request_bytes: int) -> FastAPI:
    """The FastAPI app of one worker replica around `runtime` (no global state)."""
    app = FastAPI(
        title="infaas worker",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        telemetry={"tracing": False, "metrics": False, "logs": False, "operation_spans": False},
    )

    @app.exception_handler(InfaasError)
    async def _problem(request: Request, exc: InfaasError) -> JSONResponse:
        return problem_response(exc)

    async def infer(request: Request) -> Response:
        """``POST /v1/infer``: InferRequest in, InferResponse out (see `infaas.wire`)."""
        status, body, extra = await answer(
            runtime,
            request.headers.get("authorization"),
            request.headers.get("content-length"),
            request.stream(),
            max_request_bytes,
        )
        return Response(body, status_code=status, headers=extra, media_type="application/json")

    app.add_route("/", infer, methods=["POST"], include_in_schema=False)
    return app


def serve_app(runtime: WorkerRuntime, *, max_request_bytes: int) -> WorkerASGI:
    """What a replica serves: `WorkerASGI` around `create_worker_app`."""
    app = create_worker_app(runtime, max_request_bytes=max_request_bytes)
    return WorkerASGI(runtime, app, max_request_bytes=max_request_bytes)
