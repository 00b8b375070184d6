"""Liveness and readiness, with the TEE backend in plain sight.

``GET /healthz`` answers while the process runs; ``GET /readyz`` also asks the
worker deployment and answers 503 until it is up. With the simulated backend
both carry ``"simulated_tee": true`` and a warning: nothing here is confidential.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from api.deps import Plane, SettingsDep
from infaas.attestation import SIMULATED_LABEL
from infaas.settings import Settings
from infaas.wire import Health

SIMULATED_WARNING = f"SIMULATED TEE — NOT CONFIDENTIAL ({SIMULATED_LABEL})"


def base_health(settings: Settings) -> Health:
    simulated = settings.tee_backend == "simulated"
    detail = {"warning": SIMULATED_WARNING} if simulated else {}
    return Health(
        status="ok", tee_backend=settings.tee_backend, simulated_tee=simulated, detail=detail
    )


def _flatten(status: Mapping[str, Any]) -> dict[str, str]:
    return {f"worker.{k}": str(v)[:200] for k, v in status.items()}


def create_health_router() -> APIRouter:
    router = APIRouter(tags=["health"])

    @router.get("/healthz", summary="liveness")
    def healthz(settings: SettingsDep) -> Health:
        return base_health(settings)

    @router.get(
        "/readyz", summary="readiness: the worker deployment answers", response_model=Health
    )
    async def readyz(plane: Plane) -> JSONResponse:
        health = base_health(plane.settings)
        detail = dict(health.detail)
        ready = True
        if plane.worker_status is None:
            ready = False
            detail["worker"] = "not deployed"
        else:
            try:
                status = plane.worker_status()
                if inspect.isawaitable(status):
                    status = await status
                detail |= _flatten(status) if isinstance(status, Mapping) else {}
                detail["worker"] = "ready"
            except Exception as e:
                ready = False
                detail["worker"] = f"unavailable ({type(e).__name__})"
        body = health.model_copy(update={"status": "ok" if ready else "degraded", "detail": detail})
        return JSONResponse(body.model_dump(mode="json"), status_code=200 if ready else 503)

    return router
