"""The control-plane app: everything but inference (which the worker replicas serve).

``create_app(settings, store=..., artifacts=..., tokens=..., prepare=..., worker_status=...)``
builds a FastAPI app around injected parts; nothing is global. In Ray Serve,
`api.serve` passes callables that reach the worker deployment through its
handle; tests pass plain functions.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from starlette.types import Scope

from api.dashboard import install_dashboard
from api.deps import ControlPlane, PrepareFn, WorkerStatusFn
from api.openapi import create_problems_router, install_openapi
from api.routes.health import SIMULATED_WARNING, create_health_router
from api.routes.models import create_models_router, registration_body_limit
from api.routes.oip import create_oip_router
from api.routes.tenants import create_tenants_router
from infaas.artifacts import ArtifactStore
from infaas.auth import TokenRegistry
from infaas.edge import BodyLimit, install_error_handlers
from infaas.settings import Settings
from infaas.store import MetadataStore, open_store

DESCRIPTION = """\
Control plane of **infaas**, model-less confidential inference-as-a-service:
register sealed models, follow their variant generation and profiling, list
tasks, models and profiles, create tenants. Inference is `POST /v1/infer`, served
by the attested worker replicas; key custody is the attested key service under
`/v1/keyservice`; `/v2` is the Open Inference Protocol's health and metadata (its
inference goes through `infaas proxy`, which seals it). Errors are RFC 9457
problems (`application/problem+json`): `type`, `title`, `status`, `detail`, and the
`code` clients map to typed exceptions, with the error's fields beside it.
"""


def create_app(
    settings: Settings,
    *,
    store: MetadataStore | None = None,
    artifacts: ArtifactStore | None = None,
    tokens: TokenRegistry | None = None,
    prepare: PrepareFn | None = None,
    worker_status: WorkerStatusFn | None = None,
) -> FastAPI:
    """A control-plane app over `settings`; parts not given are built from them."""
    store = store if store is not None else open_store(settings.resolved_store_url)
    plane = ControlPlane(
        settings=settings,
        store=store,
        artifacts=artifacts or ArtifactStore(settings.data_dir / "artifacts"),
        tokens=tokens or TokenRegistry(store),
        prepare=prepare,
        worker_status=worker_status,
        max_model_bytes=settings.max_model_bytes,
    )
    simulated = settings.tee_backend == "simulated"
    app = FastAPI(
        title="infaas control plane" + (" — " + SIMULATED_WARNING if simulated else ""),
        description=DESCRIPTION,
        version="0.1.0",
    )
    app.state.plane = plane
    install_error_handlers(app)
    app.include_router(create_health_router())
    app.include_router(create_models_router())
    app.include_router(create_tenants_router())
    app.include_router(create_oip_router())
    app.include_router(create_problems_router())
    install_dashboard(app)  # /dashboard (admin) and /metrics
    install_openapi(app)

    @app.get("/", include_in_schema=False)
    def index() -> dict[str, Any]:
        return {
            "service": "infaas",
            "tee_backend": settings.tee_backend,
            "simulated_tee": simulated,
            "warning": SIMULATED_WARNING if simulated else None,
            "docs": "/docs",
            "dashboard": "/dashboard/",
        }

    def limit_for(scope: Scope) -> int:
        if scope.get("method") == "POST" and str(scope.get("path", "")).endswith("/v1/models"):
            limit = registration_body_limit(settings.max_model_bytes)
            return max(limit, settings.max_request_bytes)
        return settings.max_request_bytes

    app.add_middleware(BodyLimit, limit_for=limit_for)
    return app
