"""``infaas proxy``: a local Open Inference Protocol v2 gateway on the caller's machine.

Triton's and KServe's clients speak plain OIP v2; infaas takes tensors only
sealed. The proxy stands between them, on the tenant's own machine, holding the
tenant's credentials (the pattern of attested inference clients that run a
local endpoint)::

    tritonclient ──OIP v2 (JSON or binary)──> infaas proxy ──sealed /v1/infer──> infaas
                 <──OIP v2 answer───────────              <──sealed answer─────

- On start it attests the service's key service (`infaas.Client`); it serves
  nothing before that passes.
- ``POST /v2/models/{task}[/versions/{variant}]/infer``: the body, JSON or with
  Triton's binary-data extension (``Inference-Header-Content-Length``), is
  sealed as it came under the tenant's request key, its header length bound in
  the envelope; the task is the model name, a version pins that variant, and
  the SLO comes from the request's ``parameters`` (``latency_ms``,
  ``min_accuracy``; else the proxy's defaults). The opened answer goes back as
  the worker encoded it, with ``Inference-Header-Content-Length`` when it
  carries binary data, and what served it in ``Infaas-Variant``,
  ``Infaas-Measurement`` and ``Infaas-Simulated-Tee`` headers.
- Health and model metadata (``/v2/health/*``, ``/v2/models/...``) are
  forwarded to the service, with the tenant's token where it needs one; ``/v2``
  names the ``binary_tensor_data`` extension the proxy speaks.
- Errors are the service's RFC 9457 problems, with the OIP's ``error`` member.

It listens on loopback by default: whoever reaches it uses the tenant's keys.
"""

from __future__ import annotations

import argparse
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import Response
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.types import Scope

from infaas.client import Client
from infaas.edge import BodyLimit, install_error_handlers, problem_response, read_body
from infaas.errors import InfaasError, InvalidInput, invalid_at
from infaas.logs import get_logger
from infaas.protocol import parse_header_length, read_request_header
from infaas.settings import Settings
from infaas.types import SLO
from infaas.wire import ServerMetadata

log = get_logger(__name__)

SLO_PARAMETERS = ("latency_ms", "min_accuracy")
_FORWARDED = ("content-type", "retry-after")


def slo_of(parameters: dict[str, Any] | None, default: SLO) -> SLO:
    """The SLO a request's ``parameters`` ask for, the proxy's defaults for the rest."""
    asked = {k: v for k, v in (parameters or {}).items() if k in SLO_PARAMETERS}
    for k, v in asked.items():
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise InvalidInput(f"parameter {k!r} must be a number")
    try:
        return SLO(**(default.model_dump(include=set(SLO_PARAMETERS)) | asked))
    except ValidationError as e:
        raise invalid_at(e, "parameters", "parameters") from None


class Gateway:
    """Seals OIP v2 requests for one tenant and opens the answers (`infaas.Client` inside)."""

    def __init__(self, client: Client, default_slo: SLO, http: httpx.Client | None = None) -> None:
        self.client = client
        self.default_slo = default_slo
        self.http = http or httpx.Client(base_url=client.base_url, timeout=30.0)

    def infer(
        self, task: str, version: str | None, body: bytes, header_length: int | None
    ) -> Response:
        request = read_request_header(body, header_length)
        slo = slo_of(request.parameters, self.default_slo)
        result = self.client.infer_body(
            body,
            header_length=header_length,
            body_id=request.id,
            task=task,
            latency_ms=slo.latency_ms,
            min_accuracy=slo.min_accuracy,
            variant_id=version,
        )
        headers = {
            "Infaas-Variant": result.variant_id,
            "Infaas-Measurement": result.measurement,
            "Infaas-Simulated-Tee": "true" if result.simulated_tee else "false",
        }
        media = "application/json"
        if result.header_length is not None:
            headers["Inference-Header-Content-Length"] = str(result.header_length)
            media = "application/octet-stream"
        return Response(result.body, headers=headers, media_type=media)

    def forward(self, path: str, *, token: bool) -> Response:
        """A GET to the service, its answer passed through (problems included)."""
        headers = {"Accept": "application/json, application/problem+json"}
        if token and self.client.api_token:
            headers["Authorization"] = f"Bearer {self.client.api_token}"
        try:
            r = self.http.get(path, headers=headers)
        except httpx.TransportError as e:
            raise InfaasError(f"cannot reach infaas at {self.client.base_url}: {e}") from e
        kept = {k: v for k, v in r.headers.items() if k.lower() in _FORWARDED}
        return Response(r.content, status_code=r.status_code, headers=kept)


def create_proxy_app(gateway: Gateway, *, max_request_bytes: int) -> FastAPI:
    """The proxy's OIP v2 app around `gateway` (no global state)."""
    app = FastAPI(
        title="infaas proxy (Open Inference Protocol v2, sealed to infaas)",
        version="0.1.0",
        docs_url=None,
        redoc_url=None,
    )
    install_error_handlers(app)

    async def infer(request: Request, task: str, version: str | None) -> Response:
        length = parse_header_length(request.headers.get("inference-header-content-length"))
        body = await read_body(request.stream(), max_request_bytes)
        try:
            return await run_in_threadpool(gateway.infer, task, version, body, length)
        except InfaasError as e:
            return problem_response(e, oip=True)

    @app.post("/v2/models/{name}/infer")
    async def model_infer(request: Request, name: str) -> Response:
        return await infer(request, name, None)

    @app.post("/v2/models/{name}/versions/{version}/infer")
    async def version_infer(request: Request, name: str, version: str) -> Response:
        return await infer(request, name, version)

    async def forward(path: str, token: bool) -> Response:
        return await run_in_threadpool(gateway.forward, path, token=token)

    @app.get("/v2")
    def server_metadata() -> ServerMetadata:
        # the proxy, not the service, takes tensors: it speaks Triton's binary extension
        return ServerMetadata(name="infaas", version="0.1.0", extensions=["binary_tensor_data"])

    @app.get("/v2/health/{what}")
    async def health(what: str) -> Response:
        return await forward(f"/v2/health/{what}", False)

    @app.get("/v2/models/{rest:path}")
    async def models(rest: str) -> Response:
        return await forward(f"/v2/models/{rest}", True)

    def limit_for(scope: Scope) -> int:
        return max_request_bytes

    app.add_middleware(BodyLimit, limit_for=limit_for)
    return app


def proxy_command(args: argparse.Namespace, settings: Settings, client: Client) -> int:
    """Attest the service, then serve OIP v2 on `--listen` until interrupted."""
    import uvicorn

    host, _, port = str(args.listen).rpartition(":")
    if not host or not port.isdigit():
        raise InvalidInput(f"--listen takes HOST:PORT, got {args.listen!r}")
    measurement = client.attest_keyservice()
    client.tasks()
    default = SLO(
        latency_ms=args.latency_ms or settings.slo_defaults.latency_ms,
        min_accuracy=settings.slo_defaults.min_accuracy
        if args.min_accuracy is None
        else args.min_accuracy,
    )
    app = create_proxy_app(Gateway(client, default), max_request_bytes=settings.max_request_bytes)
    print(
        f"infaas proxy: key service of {client.base_url} attested (measurement "
        f"{measurement[:16]}…); tenant {client.principal!r}; OIP v2 on http://{host}:{port}/v2",
        flush=True,
    )
    uvicorn.run(app, host=host.strip("[]"), port=int(port), log_level="warning")
    return 0
