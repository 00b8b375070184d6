"""Errors as JSON problem bodies, and the request-size limit.

Every error the control plane answers with has the same shape as
`InfaasError.to_problem()`::

    {"code": "model_not_found", "status": 404, "message": "no model 'x' is registered",
     "detail": {"model_id": "x"}}

so `infaas.Client` can rebuild the same exception type with `error_from_code`.
Request-validation errors become 400 `invalid_input` naming the first field that
failed (never echoing the submitted value: it may be a large sealed blob).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from infaas.errors import InfaasError, InvalidInput, Overloaded, PayloadTooLarge

log = logging.getLogger("infaas.api")


def problem_response(exc: InfaasError) -> JSONResponse:
    """The JSON problem response for an infaas error (Retry-After for `Overloaded`)."""
    headers: dict[str, str] = {}
    if isinstance(exc, Overloaded):
        headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after_s)))
    return JSONResponse(exc.to_problem(), status_code=exc.status_code, headers=headers)


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


def install_error_handlers(app: FastAPI) -> None:
    """One handler per error family, all answering with the problem body."""

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
            return problem_response(_too_large(exc.seen, exc.limit))
        codes = {404: "not_found", 405: "method_not_allowed", 401: "authentication_failed"}
        body = {
            "code": codes.get(exc.status_code, "http_error"),
            "status": exc.status_code,
            "message": str(exc.detail),
        }
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # the message may contain anything: log the type only, answer generically
        log.error("unhandled %s on %s %s", type(exc).__name__, request.method, request.url.path)
        return problem_response(InfaasError("internal error"))


class BodyLimit:
    """ASGI middleware: refuse request bodies above a per-request limit with 413.

    Checks Content-Length up front and counts streamed bytes too (chunked
    uploads carry no length), so an oversized body is never buffered whole.
    """

    def __init__(self, app: ASGIApp, limit_for: Callable[[Scope], int]) -> None:
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                declared = -1
            if declared < 0:
                await _send_problem(send, InvalidInput("bad Content-Length header"))
                return
            if declared > limit:
                await _send_problem(send, _too_large(declared, limit))
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
                await _send_problem(send, _too_large(e.seen, e.limit))


class _BodyTooLarge(StarletteHTTPException):
    # an HTTPException, because FastAPI turns any other error raised while it reads
    # the body into a generic 400
    def __init__(self, seen: int, limit: int) -> None:
        super().__init__(413, f"request body exceeds the limit of {limit} bytes")
        self.seen = seen
        self.limit = limit


def _too_large(size: int, limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"request body of {size} bytes exceeds the limit of {limit} bytes",
        size_bytes=size,
        limit_bytes=limit,
    )


async def _send_problem(send: Send, exc: InfaasError) -> None:
    body = json.dumps(exc.to_problem()).encode()
    headers: list[tuple[bytes, bytes]] = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": exc.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": body})


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
