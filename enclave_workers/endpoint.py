"""The worker's HTTP endpoint: ``POST /v1/infer`` served by the worker replica itself.

Mounted by Ray Serve at the route prefix ``/v1/infer``, so the app's root path
``POST /`` is the inference endpoint and a request crosses proxy -> replica
only, as plain Ray Serve does. Errors are the JSON problem body of
`InfaasError.to_problem()` with its status; a 503 carries ``Retry-After``.

Bodies over ``max_request_bytes`` are refused with 413 before any parsing:
by the declared Content-Length, else while the body streams in.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from starlette.types import Receive, Scope, Send

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


def problem_response(exc: InfaasError) -> JSONResponse:
    """The JSON problem answer for an infaas error (Retry-After on 503)."""
    headers: dict[str, str] = {}
    if exc.status_code == 503:
        retry = exc.retry_after_s if isinstance(exc, Overloaded) else 1.0
        headers["Retry-After"] = str(max(1, math.ceil(retry)))
    return JSONResponse(exc.to_problem(), status_code=exc.status_code, headers=headers)


def bearer_token(authorization: str | None) -> str:
    """The token of an ``Authorization: Bearer <token>`` header (401 when absent)."""
    if not authorization:
        raise AuthenticationFailed("missing API token (Authorization: Bearer <token>)")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthenticationFailed("the Authorization header must be 'Bearer <token>'")
    return token.strip()


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The request body, refusing more than `max_bytes` (413) before it is all read."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > max_bytes:
                raise PayloadTooLarge(
                    f"request body of {int(declared)} bytes exceeds the {max_bytes}-byte limit",
                    max_request_bytes=max_bytes,
                )
        except ValueError:
            raise InvalidInput("bad Content-Length header") from None
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise PayloadTooLarge(
                f"request body exceeds the {max_bytes}-byte limit", max_request_bytes=max_bytes
            )
    return bytes(body)


def parse_infer_request(body: bytes) -> InferRequest:
    try:
        return InferRequest.model_validate_json(body)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise InvalidInput(f"invalid InferRequest at {where}: {first['msg']}") from None


class PrefixRoot:
    """ASGI shim: the route prefix itself (``/v1/infer``) is the app's ``/``.

    Serve sets ``root_path`` to the route prefix; a request for exactly the prefix
    would otherwise reach Starlette as an empty path and be redirected (307) to
    the prefix plus a slash, an extra round trip on every inference.
    """

    def __init__(self, app: FastAPI) -> None:
        self.app = app

    def add_exception_handler(self, *args: Any, **kwargs: Any) -> None:
        self.app.add_exception_handler(*args, **kwargs)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            root = scope.get("root_path", "")
            if root and scope["path"] == root:
                scope = dict(scope, path=root + "/", raw_path=(root + "/").encode())
        await self.app(scope, receive, send)


def create_worker_app(runtime: WorkerRuntime, *, max_request_bytes: int) -> FastAPI:
    """The FastAPI app of one worker replica around `runtime` (no global state)."""
    app = FastAPI(title="infaas worker", docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(InfaasError)
    async def _problem(request: Request, exc: InfaasError) -> JSONResponse:
        return problem_response(exc)

    # a plain Starlette route: no dependency injection or body model on the hot path
    async def infer(request: Request) -> Response:
        """``POST /v1/infer``: InferRequest in, InferResponse out (see `infaas.wire`)."""
        try:
            token = bearer_token(request.headers.get("authorization"))
            body = await read_body(request, max_request_bytes)
            response = await runtime.infer(parse_infer_request(body), token)
        except InfaasError as e:
            return problem_response(e)
        except Exception:  # one request's bug must not become another's problem
            log.exception("inference request failed unexpectedly")
            return problem_response(InfaasError("internal error in the worker"))
        return Response(response.model_dump_json(), media_type="application/json")

    app.add_route("/", infer, methods=["POST"], include_in_schema=False)
    return app
