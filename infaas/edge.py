"""The HTTP edge every infaas server shares: problem answers, bearer tokens, body limits.

Three servers face HTTP: the control plane (`api`), the worker ingress
(`enclave_workers.endpoint`) and the key service (`infaas.keyservice.server`).
They answer errors, read credentials and bound request bodies the same way,
written once here:

Problem answers
    Every error is the JSON body of `InfaasError.to_problem()` with the error's
    status (the error tree in `infaas.errors` is the one source of statuses
    and codes)::

        {"code": "model_not_found", "status": 404, "message": "no model 'x' is registered",
         "detail": {"model_id": "x"}}

    so `infaas.Client` rebuilds the same exception type with `error_from_code`.
    A 503 carries ``Retry-After`` (whole seconds, at least 1: an `Overloaded`
    error's own hint, else 1). Request-validation errors become 400
    ``invalid_input`` naming the first field that failed, never echoing the
    submitted value (it may be a large sealed blob); anything unexpected is a
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
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from infaas.errors import (
    AuthenticationFailed,
    InfaasError,
    InvalidInput,
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


def problem_body(exc: InfaasError) -> bytes:
    """The JSON problem body of `exc`, encoded as `problem_response` sends it."""
    return json.dumps(
        exc.to_problem(), ensure_ascii=False, allow_nan=False, separators=(",", ":")
    ).encode()


def problem_response(exc: InfaasError) -> JSONResponse:
    """The JSON problem answer for an infaas error (``Retry-After`` on 503)."""
    return JSONResponse(exc.to_problem(), status_code=exc.status_code, headers=problem_headers(exc))


async def send_problem(send: Send, exc: InfaasError) -> None:
    """Answer with the problem for `exc` from raw ASGI (and close the connection)."""
    body = problem_body(exc)
    headers: list[tuple[bytes, bytes]] = [
        (b"content-type", b"application/json"),
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


_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 401: "authentication_failed"}


def install_error_handlers(app: FastAPI) -> None:
    """One handler per error family on `app`, all answering with the problem body."""

    @app.exception_handler(InfaasError)
    async def _infaas(request: Request, exc: InfaasError) -> JSONResponse:
        if exc.status_code >= 500:
            log.warning("%s %s -> %s: %s", request.method, request.url.path, exc.code, exc)
        return problem_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return problem_response(validation_problem(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if isinstance(exc, _BodyTooLarge):
            return problem_response(too_large(exc.limit, exc.seen))
        body = {
            "code": _HTTP_CODES.get(exc.status_code, "http_error"),
            "status": exc.status_code,
            "message": str(exc.detail),
        }
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # the message may contain anything: log the type only, answer generically
        log.error("unhandled %s on %s %s", type(exc).__name__, request.method, request.url.path)
        return problem_response(InfaasError("internal error"))


def problem_schema() -> dict[str, Any]:
    """OpenAPI description of the problem body, for route `responses=`."""
    return {
        "description": "an infaas error as a JSON problem body",
        "content": {
            "application/json": {
                "example": {
                    "code": "invalid_input",
                    "status": 400,
                    "message": "invalid body field 'model_id': String should match pattern",
                }
            }
        },
    }


# --- bearer tokens ---------------------------------------------------------------------


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
    """The body from its chunks, refusing more than `limit` bytes (413) before it is all read."""
    body = bytearray()
    async for chunk in chunks:
        body += chunk
        if len(body) > limit:
            raise too_large(limit)
    return bytes(body)


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
        try:
            check_declared_length(dict(scope.get("headers") or []).get(b"content-length"), limit)
        except InfaasError as e:
            await send_problem(send, e)
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
                await send_problem(send, too_large(e.limit, e.seen))


class _BodyTooLarge(StarletteHTTPException):
    # an HTTPException, because FastAPI turns any other error raised while it reads
    # the body into a generic 400
    def __init__(self, seen: int, limit: int) -> None:
        super().__init__(413, f"request body exceeds the limit of {limit} bytes")
        self.seen = seen
        self.limit = limit
