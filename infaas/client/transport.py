"""The client's HTTP: bearer auth, no redirects, typed errors from problem bodies.

`send` (httpx.Client) and `send_async` (httpx.AsyncClient) differ only in the
await: both build the same headers, turn transport failures into
`Unreachable` / `Timeout`, and error answers into their `infaas.errors` type,
with the answer's ``Retry-After`` as the error's `retry_after_s`.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Mapping
from typing import Any

import httpx

from infaas.errors import (
    AuthenticationFailed,
    InfaasError,
    InvalidInput,
    Overloaded,
    PayloadTooLarge,
    RateLimited,
    ReplicaUnavailable,
    Timeout,
    Unreachable,
    error_from_problem,
    is_platform_failure,
    is_problem,
)


def _headers(
    token: str | None, content: bytes | None, content_type: str | None, accept: str | None
) -> dict[str, str]:
    headers = {"Accept": accept or "application/json, application/problem+json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if content is not None:
        headers["Content-Type"] = content_type or "application/json"
    return headers


def transport_error(e: httpx.TransportError, base_url: object) -> InfaasError:
    """`Timeout` for a read/write/pool timeout, `Unreachable` for any other transport failure.

    A connect timeout is `Unreachable`: nothing reached the service.
    """
    what = f"{type(e).__name__}: {e}".rstrip(": ")
    if isinstance(e, httpx.TimeoutException) and not isinstance(e, httpx.ConnectTimeout):
        return Timeout(f"no answer from infaas at {base_url} in time ({what})")
    return Unreachable(f"cannot reach infaas at {base_url}: {what}")


def _checked(r: httpx.Response) -> httpx.Response:
    if r.status_code >= 300:
        # redirects are not followed: a POST body must not be re-sent elsewhere silently
        raise problem_error(r)
    return r


def request_options(
    *,
    token: str | None = None,
    json_body: Any = None,
    content: bytes | None = None,
    params: Mapping[str, str] | None = None,
    timeout_s: float | None = None,
    content_type: str | None = None,
    accept: str | None = None,
) -> dict[str, Any]:
    """The httpx keywords of one call: bearer token, body (`content` is JSON unless
    `content_type` says otherwise), query, ``Accept``, per-call timeout."""
    return {
        "json": json_body,
        "content": content,
        "params": params,
        "headers": _headers(token, content, content_type, accept),
        "timeout": httpx.Timeout(timeout_s) if timeout_s is not None else httpx.USE_CLIENT_DEFAULT,
    }


def send(http: httpx.Client, method: str, path: str, **options: Any) -> httpx.Response:
    """One request (keywords of `request_options`); an error answer raises its
    `infaas.errors` type."""
    try:
        r = http.request(method, path, **request_options(**options))
    except httpx.TransportError as e:
        raise transport_error(e, http.base_url) from e
    return _checked(r)


async def send_async(
    http: httpx.AsyncClient, method: str, path: str, **options: Any
) -> httpx.Response:
    """`send` for an `httpx.AsyncClient`."""
    try:
        r = await http.request(method, path, **request_options(**options))
    except httpx.TransportError as e:
        raise transport_error(e, http.base_url) from e
    return _checked(r)


def retry_after_s(response: httpx.Response, now: float | None = None) -> float | None:
    """The answer's ``Retry-After`` in seconds (delay-seconds or an HTTP date), if any."""
    value = response.headers.get("retry-after")
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def problem_error(response: httpx.Response) -> InfaasError:
    """The typed infaas error an error response carries (its problem body's `code`)."""
    err = _problem_error(response)
    hint = retry_after_s(response)
    if hint is not None:
        err.retry_after_s = hint
    return err


def _problem_error(response: httpx.Response) -> InfaasError:
    try:
        body = response.json()
    except ValueError:
        body = None
    if is_problem(body):
        return error_from_problem(body)
    status = response.status_code
    text = response.text[:200]
    if status == 413:
        return PayloadTooLarge(f"request too large (HTTP 413): {text}")
    if status == 401:
        return AuthenticationFailed(f"HTTP 401: {text}")
    if status in (400, 422):
        return InvalidInput(f"HTTP {status}: {text}")
    if status == 429:
        return RateLimited(f"HTTP 429: {text}")
    if status == 503:
        # e.g. Ray Serve's own back-pressure answer (plain text, Retry-After)
        return Overloaded(f"HTTP 503: {text}")
    if is_platform_failure(status, body):
        return ReplicaUnavailable(
            f"HTTP {status} from {response.request.url.path} without an infaas answer: the "
            f"replica serving it died or went away ({text})",
            http_status=status,
        )
    return InfaasError(f"HTTP {status} from {response.request.url.path}: {text}")
