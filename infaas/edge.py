"""The HTTP edge every infaas server shares: problem answers, bearer tokens, body limits.

Three servers face HTTP: the control plane (`api`), the worker ingress
(`enclave_workers.endpoint`) and the key service (`infaas.keyservice.server`).
They answer errors, read credentials and bound request bodies the same way,
written once here:

Problem answers
    Every error is an RFC 9457 problem, ``application/problem+json``, built by
    `InfaasError.to_problem()` with the error's status (the error tree in
    `infaas.errors` is the one source of statuses and codes)::

        {"type": "/problems/model_not_found", "title": "Model not found", "status": 404,
         "detail": "no model 'x' is registered", "code": "model_not_found", "model_id": "x"}

    so `infaas.Client` rebuilds the same exception type from `code` and the
    extension members. Under ``/v2`` (the Open Inference Protocol, whose
    clients read ``{"error": "..."}``) the problem also carries ``error``, the
    same text as `detail`. A 503 carries ``Retry-After`` (whole seconds, at
    least 1: an `Overloaded` error's own hint, else 1). Request-validation
    errors become 400 ``invalid_input`` naming the first field that failed,
    never echoing the submitted value (it may be a large sealed blob); an
    unknown route or method is a problem too; anything unexpected is a
    generic 500 whose message is not shown.
Bearer tokens
    ``Authorization: Bearer <token>`` (scheme case-insensitive); a malformed
    header is 401 ``authentication_failed``.
Body limits
    A body over its limit is 413 ``payload_too_large`` before it is buffered
    whole: by the declared Content-Length, else while it streams in (chunked
    uploads declare none). `BodyLimit` does this as ASGI middleware for a
    framework app; `check_declared_length` and `read_body` do it for a raw
    ASGI handler (the worker's hot path, where framework layers cost time).
"""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from infaas.errors import (
    AuthenticationFailed,
    InfaasError,
    InvalidInput,
    MethodNotAllowed,
    NotFound,
    Overloaded,
    PayloadTooLarge,
)
from infaas.logs import get_logger

log = get_logger(__name__)

# --- problem answers -------------------------------------------------------------------


def problem_headers(exc: InfaasError) -> dict[str, str]:
    """Extra headers of a problem answer: ``Retry-After`` on 503."""
    if exc.status_code != 503:
        return {}
    retry = exc.retry_after_s if isinstance(exc, Overloaded) else 1.0
    return {"Retry-After": str(max(1, math.ceil(retry)))}


PROBLEM_JSON = "application/problem+json"
OIP_PREFIX = "/v2"


def problem(exc: InfaasError, *, oip: bool = False) -> dict[str, Any]:
    """The problem body of `exc`; with `oip`, also the Open Inference Protocol's ``error``."""
    body = exc.to_problem()
    if oip:
        body["error"] = exc.message
    return body


def is_oip_path(path: str) -> bool:
    return path == OIP_PREFIX or path.startswith(OIP_PREFIX + "/")


def problem_body(exc: InfaasError, *, oip: bool = False) -> bytes:
    """The problem body of `exc`, encoded as `problem_response` sends it."""
    return json.dumps(
        problem(exc, oip=oip), ensure_ascii=False, allow_nan=False, separators=(",", ":")
    ).encode()


class ProblemResponse(JSONResponse):
    media_type = PROBLEM_JSON


def problem_response(exc: InfaasError, *, oip: bool = False) -> JSONResponse:
    """The problem answer for an infaas error (``Retry-After`` on 503)."""
    return ProblemResponse(
        problem(exc, oip=oip), status_code=exc.status_code, headers=problem_headers(exc)
    )


async def send_problem(send: Send, exc: InfaasError, *, oip: bool = False) -> None:
    """Answer with the problem for `exc` from raw ASGI (and close the connection)."""
    body = problem_body(exc, oip=oip)
    headers: list[tuple[bytes, bytes]] = [
        (b"content-type", PROBLEM_JSON.encode()),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    headers += [(k.lower().encode(), v.encode()) for k, v in problem_headers(exc).items()]
    await send({"type": "http.response.start", "status": exc.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _where(loc: tuple[int | str, ...]) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] in ("body", "query", "path", "header"):
        kind, rest = parts[0], parts[1:]
        return f"{kind} field {'.'.join(rest)!r}" if rest else f"{kind}"
    return ".".join(parts) or "request"


def validation_problem(exc: RequestValidationError) -> InvalidInput:
    """A precise `InvalidInput` for the first failing field, all failures in `detail`."""
    errors = list(exc.errors())
    if not errors:
        return InvalidInput("invalid request")
    first = errors[0]
    if first.get("type") == "json_invalid":
        message = f"malformed JSON in request body: {first.get('msg', '')}"
    else:
        message = f"invalid {_where(tuple(first.get('loc', ())))}: {first.get('msg', '')}"
    slim = [
        {"loc": [str(p) for p in e.get("loc", ())], "type": e.get("type"), "msg": e.get("msg")}
        for e in errors[:20]
    ]
    return InvalidInput(message, errors=slim)


def http_problem(status: int, message: str) -> InfaasError:
    """A framework's own HTTP error (unknown route, wrong method) as an infaas error."""
    if status == 404:
        return NotFound(message or "no such route")
    if status == 405:
        return MethodNotAllowed(message or "method not allowed")
    if status == 401:
        return AuthenticationFailed(message)
    if 400 <= status < 500:
        return InvalidInput(message)
    return InfaasError("internal error")


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def allowed_methods(app: FastAPI, scope: Scope) -> list[str]:
    """Every method some route of `app` takes at the request's path, for a 405's ``Allow``.

    The router names only the first route whose path matched; a path served by several
    routes (``GET`` and ``POST /v1/models``) takes the methods of all of them. Each method
    is asked of each route (only on a 405), so included routers answer for themselves.
    """
    return [
        method
        for method in _METHODS
        if any(r.matches({**scope, "method": method})[0] is Match.FULL for r in app.router.routes)
    ]


def install_error_handlers(app: FastAPI) -> None:
    """One handler per error family on `app`, all answering with the problem body."""

    def answer(
        request: Request, exc: InfaasError, headers: dict[str, str] | None = None
    ) -> JSONResponse:
        response = problem_response(exc, oip=is_oip_path(request.url.path))
        response.headers.update(headers or {})
        return response

    @app.exception_handler(InfaasError)
    async def _infaas(request: Request, exc: InfaasError) -> JSONResponse:
        if exc.status_code >= 500:
            log.warning("%s %s -> %s: %s", request.method, request.url.path, exc.code, exc)
        return answer(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return answer(request, validation_problem(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if isinstance(exc, _BodyTooLarge):
            return answer(request, too_large(exc.limit, exc.seen))
        err = http_problem(exc.status_code, str(exc.detail))
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["Allow"] = ", ".join(allowed_methods(request.app, request.scope))
        return answer(request, err, headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # the message may contain anything: log the type only, answer generically
        log.error("unhandled %s on %s %s", type(exc).__name__, request.method, request.url.path)
        return answer(request, InfaasError("internal error"))


PROBLEM_SCHEMA: dict[str, Any] = {
    "title": "Problem",
    "description": "An RFC 9457 problem; the error's own fields are extension members.",
    "type": "object",
    "required": ["type", "title", "status", "detail", "code"],
    "properties": {
        "type": {"type": "string", "format": "uri-reference", "example": "/problems/not_found"},
        "title": {"type": "string", "example": "Not found"},
        "status": {"type": "integer", "example": 404},
        "detail": {"type": "string", "example": "no task 'x' is registered"},
        "code": {
            "type": "string",
            "description": "the error's code; clients map it to a typed exception",
            "example": "not_found",
        },
        "error": {
            "type": "string",
            "description": "under /v2 only: the Open Inference Protocol's error text",
        },
    },
    "additionalProperties": True,
}


def problem_schema() -> dict[str, Any]:
    """OpenAPI description of a problem answer, for route `responses=`."""
    return {
        "description": "an RFC 9457 problem (application/problem+json)",
        "content": {PROBLEM_JSON: {"schema": PROBLEM_SCHEMA}},
    }


# --- bearer tokens ---------------------------------------------------------------------


BEARER = HTTPBearer(
    auto_error=False,
    scheme_name="bearer",
    description="an infaas API token: `Authorization: Bearer <token>`",
)
"""The bearer scheme, as the OpenAPI document names it (``Security(BEARER)`` on a route);
the header itself is read by `optional_bearer_token`, whose refusals are problems."""


def optional_bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header; None without a header."""
    if authorization is None:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthenticationFailed("the Authorization header must be 'Bearer <token>'")
    return token.strip()


def bearer_token(authorization: str | None) -> str:
    """The token of an ``Authorization: Bearer <token>`` header (401 when absent)."""
    token = optional_bearer_token(authorization or None)
    if token is None:
        raise AuthenticationFailed("missing API token (Authorization: Bearer <token>)")
    return token


# --- body limits -----------------------------------------------------------------------


def too_large(limit: int, size: int | None = None) -> PayloadTooLarge:
    """The 413 for a body of `size` bytes (None: not yet known) over `limit`."""
    what = f"request body of {size} bytes" if size is not None else "request body"
    detail: dict[str, int] = {"limit_bytes": limit}
    if size is not None:
        detail["size_bytes"] = size
    return PayloadTooLarge(f"{what} exceeds the limit of {limit} bytes", **detail)


def check_declared_length(content_length: str | bytes | None, limit: int) -> None:
    """Refuse a declared Content-Length over `limit` (413) or malformed (400)."""
    if content_length is None:
        return
    try:
        size = int(content_length)
    except ValueError:
        size = -1
    if size < 0:
        raise InvalidInput("bad Content-Length header")
    if size > limit:
        raise too_large(limit, size)


async def read_body(chunks: AsyncIterator[bytes], limit: int) -> bytes:
    """The body from its chunks, refusing more than `limit` bytes (413) before it is all read.

    One copy at most (none for a body that came in one chunk), not a growing
    buffer copied again into `bytes`: an image-sized body is the tensor itself.
    """
    parts: list[bytes] = []
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise too_large(limit)
        parts.append(chunk)
    return parts[0] if len(parts) == 1 else b"".join(parts)


class BodyLimit:
    """ASGI middleware: refuse request bodies above a per-request limit with 413.

    Checks Content-Length up front and counts streamed bytes too, so an
    oversized body is never buffered whole.
    """

    def __init__(self, app: ASGIApp, limit_for: Callable[[Scope], int]) -> None:
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope)
        oip = is_oip_path(str(scope.get("path", "")))
        try:
            check_declared_length(dict(scope.get("headers") or []).get(b"content-length"), limit)
        except InfaasError as e:
            await send_problem(send, e, oip=oip)
            return
        seen = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise _BodyTooLarge(seen, limit)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _BodyTooLarge as e:
            if not started:
                await send_problem(send, too_large(e.limit, e.seen), oip=oip)


class _BodyTooLarge(StarletteHTTPException):
    # an HTTPException, because FastAPI turns any other error raised while it reads
    # the body into a generic 400
    def __init__(self, seen: int, limit: int) -> None:
        super().__init__(413, f"request body exceeds the limit of {limit} bytes")
        self.seen = seen
        self.limit = limit
