"""The client's HTTP: bearer auth, no redirects, typed errors from problem bodies."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx

from infaas.errors import (
    AuthenticationFailed,
    InfaasError,
    InvalidInput,
    PayloadTooLarge,
    error_from_code,
)


def send(
    http: httpx.Client,
    method: str,
    path: str,
    *,
    token: str | None = None,
    base_url: str | None = None,
    json_body: Any = None,
    content: bytes | None = None,
    params: Mapping[str, str] | None = None,
) -> httpx.Response:
    """One request to the control plane; an error answer raises its `infaas.errors` type."""
    headers = {"Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if content is not None:
        headers["Content-Type"] = "application/json"
    try:
        r = http.request(
            method, path, json=json_body, content=content, params=params, headers=headers
        )
    except httpx.TransportError as e:
        raise InfaasError(
            f"cannot reach infaas at {base_url or http.base_url}: {type(e).__name__}: {e}"
        ) from e
    if r.status_code >= 300:
        # redirects are not followed: a POST body must not be re-sent elsewhere silently
        raise problem_error(r)
    return r


def problem_error(response: httpx.Response) -> InfaasError:
    """The typed infaas error an error response carries (its problem body's `code`)."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and "code" in body:
        detail = body.get("detail")
        return error_from_code(
            str(body["code"]),
            str(body.get("message", "")),
            detail if isinstance(detail, dict) else None,
        )
    status = response.status_code
    text = response.text[:200]
    if status == 413:
        return PayloadTooLarge(f"request too large (HTTP 413): {text}")
    if status == 401:
        return AuthenticationFailed(f"HTTP 401: {text}")
    if status in (400, 422):
        return InvalidInput(f"HTTP {status}: {text}")
    return InfaasError(f"HTTP {status} from {response.request.url.path}: {text}")
