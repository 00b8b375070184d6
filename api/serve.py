"""Ray Serve composition: the key service, the control plane and the workers' inference app.

Three applications behind one Serve HTTP proxy:

=============  ==================  ==============================================
application    route prefix        ingress
=============  ==================  ==============================================
``keyservice`` ``/v1/keyservice``  `KeyServiceIngress`
                                   (`infaas.keyservice.deployment`): the attested
                                   key service, its own TEE workload and evidence
``infer``      ``/v1/infer``       the worker deployment itself
                                   (`enclave_workers.deployment.build_infer_app`):
                                   one hop from the proxy to the model, as in
                                   plain Ray Serve
``control``    ``/``               `ControlIngress`: `api.app.create_app`, which
                                   reaches the workers through a handle; it
                                   also answers the Open Inference Protocol's
                                   ``/v2`` health and metadata (no tensors)
=============  ==================  ==============================================

The control plane and the key service reserve no CPU: the pools' CPUs are for
the workers.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI
from ray import serve
from ray.serve.handle import DeploymentHandle

from api.app import create_app
from api.autoscaler import AUTOSCALER_APP, build_autoscaler_app
from infaas.keyservice.deployment import KeyServiceIngress
from infaas.keyservice.server import PREFIX as KEYSERVICE_PREFIX
from infaas.logs import configure_logging, get_logger
from infaas.settings import Settings

log = get_logger(__name__)

KEYSERVICE_APP = "keyservice"
CONTROL_APP = "control"
INFER_APP = "infer"
INFER_PREFIX = "/v1/infer"
_QUIET = {"enable_access_log": False}


@serve.deployment(
    name="Control",
    num_replicas=1,
    ray_actor_options={"num_cpus": 0},
    max_ongoing_requests=100,
    logging_config=_QUIET,
)
@serve.ingress()
class ControlIngress:
    """The control plane; it reaches the worker deployment through its app handle."""

    def __init__(self, settings: Settings, infer_app: str | None = INFER_APP) -> None:
        configure_logging()
        self._settings = settings
        self._infer_app = infer_app
        self._handle: DeploymentHandle[Any] | None = None

    def _worker(self) -> DeploymentHandle[Any]:
        if self._infer_app is None:
            raise RuntimeError("no worker application is deployed")
        if self._handle is None:
            self._handle = serve.get_app_handle(self._infer_app)
        return self._handle

    async def _prepare(self, model_id: str) -> Any:
        return await self._worker().prepare_model.remote(model_id)

    async def _status(self) -> Mapping[str, Any]:
        status = await self._worker().status.remote()
        if isinstance(status, Mapping):
            return status
        if hasattr(status, "model_dump"):
            dumped: dict[str, Any] = status.model_dump(mode="json")
            return dumped
        return {"status": str(status)}

    def __serve_build_asgi_app__(self) -> FastAPI:
        has_worker = self._infer_app is not None
        return create_app(
            self._settings,
            prepare=self._prepare if has_worker else None,
            worker_status=self._status if has_worker else None,
        )


def build_keyservice_app(
    settings: Settings, measurements: Mapping[str, bytes] | None = None
) -> serve.Application:
    """The key service, releasing keys to the workers of these `measurements` (by pool;
    default: this tree's)."""
    from enclave_workers.measurement import worker_measurements

    pools = measurements if measurements is not None else worker_measurements(settings)
    app: serve.Application = KeyServiceIngress.bind(  # type: ignore[attr-defined]
        settings, {pool: m.hex() for pool, m in pools.items()}
    )
    return app


def build_control_app(settings: Settings, *, with_workers: bool = True) -> serve.Application:
    app: serve.Application = ControlIngress.bind(  # type: ignore[attr-defined]
        settings, INFER_APP if with_workers else None
    )
    return app


def local_url(settings: Settings, port: int | None = None) -> str:
    host = settings.http_host if settings.http_host not in ("0.0.0.0", "::") else "127.0.0.1"
    return f"http://{host}:{port or settings.http_port}"


def deploy(settings: Settings) -> list[str]:
    """Run the three applications on the Serve instance already started; their names.

    The key service comes first (workers fetch keys from it as they start),
    then the workers, then the control plane that holds their handle.
    """
    from enclave_workers.deployment import build_infer_app
    from enclave_workers.measurement import worker_measurements
    from infaas.keyservice.measurement import keyservice_trust

    measurements = worker_measurements(settings)
    serve.run(
        build_keyservice_app(settings, measurements),
        name=KEYSERVICE_APP,
        route_prefix=KEYSERVICE_PREFIX,
    )
    apps = [KEYSERVICE_APP]
    trust = keyservice_trust(settings, measurements)
    serve.run(
        build_infer_app(settings, local_url(settings), keyservice=trust),
        name=INFER_APP,
        route_prefix=INFER_PREFIX,
    )
    apps.append(INFER_APP)
    if settings.autoscaler.policy != "off":
        serve.run(build_autoscaler_app(settings), name=AUTOSCALER_APP, route_prefix=None)
        apps.append(AUTOSCALER_APP)
    serve.run(
        build_control_app(settings, with_workers=True),
        name=CONTROL_APP,
        route_prefix="/",
    )
    apps.append(CONTROL_APP)
    return apps
