"""Ray Serve composition: the key service, the control plane and the workers' inference app.

Three applications (four with the autoscaler) behind one Serve HTTP proxy:

=====================  ==================  ==========================================
application            route prefix        ingress
=====================  ==================  ==========================================
``infaas-keyservice``  ``/v1/keyservice``  `KeyServiceIngress`
                                           (`infaas.keyservice.deployment`): the
                                           attested key service, its own TEE workload
``infaas-infer``       ``/v1/infer``       the worker deployment itself
                                           (`enclave_workers.deployment`): one hop from
                                           the proxy to the model, as in plain Serve
``infaas-autoscaler``  none                the control loop (`api.autoscaler`), when a
                                           policy is set
``infaas-control``     ``/``               `ControlIngress`: `api.app.create_app`, which
                                           reaches the workers through a handle; it
                                           also answers the Open Inference Protocol's
                                           ``/v2`` health and metadata (no tensors)
=====================  ==================  ==========================================

On a shared Ray cluster the names are infaas's own (the ``infaas-`` prefix), so a
deployment never replaces another team's application, and stopping infaas deletes
exactly these (`undeploy`), never the whole Serve instance. Serve itself refuses a
route prefix another application already holds.

Two ways to run them: `deploy` (what the one command `infaas serve` does), or the
builders below, which `serve run`, `serve build` and a Serve config file
(``deploy/serve-config.yaml``, applied with ``serve deploy``) take: each builder
reads the settings file and overrides its ``args`` name, and `infaas bootstrap`
then sets up the zoo and tenants against the running service.

The control plane and the key service reserve no CPU: the pools' CPUs are for
the workers.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.exceptions import DeploymentUnavailableError, ReplicaUnavailableError
from ray.serve.handle import DeploymentHandle

from api.app import create_app
from api.autoscaler import AUTOSCALER_APP, build_autoscaler_app
from enclave_workers.deployment import APP_NAME as INFER_APP
from enclave_workers.deployment import ROUTE_PREFIX as INFER_PREFIX
from infaas.errors import ReplicaUnavailable
from infaas.keyservice.deployment import KeyServiceIngress
from infaas.keyservice.enrolment import enrolment_public_key
from infaas.keyservice.server import PREFIX as KEYSERVICE_PREFIX
from infaas.logs import configure_logging, get_logger
from infaas.settings import Settings, load_settings

log = get_logger(__name__)

KEYSERVICE_APP = "infaas-keyservice"
CONTROL_APP = "infaas-control"
CONTROL_PREFIX = "/"
APPS = (KEYSERVICE_APP, INFER_APP, AUTOSCALER_APP, CONTROL_APP)
"""Every application infaas may run, in the order `deploy` starts them."""
ROUTES = {KEYSERVICE_APP: KEYSERVICE_PREFIX, INFER_APP: INFER_PREFIX, CONTROL_APP: CONTROL_PREFIX}
_QUIET = {"enable_access_log": False}
_REPLICA_GONE = (RayActorError, ReplicaUnavailableError, DeploymentUnavailableError)
"""What a handle call raises when the replica serving it died, went unreachable (its node
lost) or none can be started: the call was not answered."""


def replica_unavailable(exc: BaseException) -> ReplicaUnavailable | None:
    """The typed, retryable error for a handle call whose replica went away; None for any
    other failure (an answer that is an error stays that error)."""
    if not isinstance(exc, _REPLICA_GONE):
        return None
    return ReplicaUnavailable(
        f"the worker replica serving the call went away ({type(exc).__name__})"
    )


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

    async def _call(self, method: str, *args: Any) -> Any:
        try:
            return await getattr(self._worker(), method).remote(*args)
        except Exception as e:
            typed = replica_unavailable(e)
            if typed is None:
                raise
            raise typed from e

    async def _prepare(self, model_id: str) -> Any:
        return await self._call("prepare_model", model_id)

    async def _status(self) -> Mapping[str, Any]:
        status = await self._call("status")
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


def health_checks(settings: Settings) -> dict[str, float]:
    """How often Serve checks a replica of ours: a dead one is replaced only once a check
    finds it dead (the workers' too: `enclave_workers.deployment.deployment_options`)."""
    return {
        "health_check_period_s": settings.replica_health_check_period_s,
        "health_check_timeout_s": settings.replica_health_check_timeout_s,
    }


def build_keyservice_app(
    settings: Settings, measurements: Mapping[str, bytes] | None = None
) -> serve.Application:
    """The key service, releasing keys to the workers of these `measurements` (by pool;
    default: this tree's)."""
    from enclave_workers.measurement import worker_measurements

    pools = measurements if measurements is not None else worker_measurements(settings)
    deployment = KeyServiceIngress.options(**health_checks(settings))  # type: ignore[attr-defined]
    app: serve.Application = deployment.bind(
        settings,
        {pool: m.hex() for pool, m in pools.items()},
        enrolment_public_key(settings.data_dir).hex(),
    )
    return app


def build_control_app(settings: Settings, *, with_workers: bool = True) -> serve.Application:
    deployment = ControlIngress.options(**health_checks(settings))  # type: ignore[attr-defined]
    app: serve.Application = deployment.bind(settings, INFER_APP if with_workers else None)
    return app


def local_url(settings: Settings, port: int | None = None) -> str:
    host = settings.http_host if settings.http_host not in ("0.0.0.0", "::") else "127.0.0.1"
    return f"http://{host}:{port or settings.http_port}"


def build_worker_app(settings: Settings) -> serve.Application:
    """The workers of the first pool, checking the key service against this deployment's
    trust bundle and reaching it through the Serve proxy of their own node."""
    from enclave_workers.deployment import build_infer_app
    from enclave_workers.measurement import worker_measurements
    from infaas.keyservice.measurement import keyservice_trust

    trust = keyservice_trust(settings, worker_measurements(settings))
    return build_infer_app(settings, local_url(settings), keyservice=trust)


def deploy(settings: Settings) -> list[str]:
    """Run the applications on the Serve instance already started; their names.

    The key service comes first (workers fetch keys from it as they start),
    then the workers, then the control plane that holds their handle.
    """
    from enclave_workers.measurement import worker_measurements

    serve.run(
        build_keyservice_app(settings, worker_measurements(settings)),
        name=KEYSERVICE_APP,
        route_prefix=KEYSERVICE_PREFIX,
    )
    apps = [KEYSERVICE_APP]
    serve.run(build_worker_app(settings), name=INFER_APP, route_prefix=INFER_PREFIX)
    apps.append(INFER_APP)
    if settings.autoscaler.policy != "off":
        serve.run(build_autoscaler_app(settings), name=AUTOSCALER_APP, route_prefix=None)
        apps.append(AUTOSCALER_APP)
    serve.run(build_control_app(settings), name=CONTROL_APP, route_prefix=CONTROL_PREFIX)
    apps.append(CONTROL_APP)
    return apps


def undeploy(names: Iterable[str] = APPS) -> list[str]:
    """Delete infaas's applications (the control plane first), and nothing else on the
    cluster; the names deleted."""
    running = set(serve.status().applications)
    gone = [name for name in reversed(list(names)) if name in running]
    for name in gone:
        serve.delete(name)
    return gone


class BuildArgs(BaseModel):
    """The ``args`` of a builder: ``serve run api.serve:control_builder config=...``, or a
    Serve config file's ``args:`` (which may nest ``settings``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    config: Path | None = Field(
        None, description="settings YAML (default: INFAAS_CONFIG, else configs/default.yaml)"
    )
    settings: dict[str, Any] = Field(
        default_factory=dict,
        description="settings that override the file and INFAAS_* variables, e.g. data_dir",
    )


def builder_settings(args: Mapping[str, Any]) -> Settings:
    """The settings a builder's `args` name (paths resolved where the builder runs)."""
    parsed = BuildArgs.model_validate(dict(args))
    return load_settings(parsed.config, **parsed.settings)


def keyservice_builder(args: dict[str, Any]) -> serve.Application:
    """Builder of ``infaas-keyservice`` (route ``/v1/keyservice``)."""
    return build_keyservice_app(builder_settings(args))


def infer_builder(args: dict[str, Any]) -> serve.Application:
    """Builder of ``infaas-infer`` (route ``/v1/infer``): the first pool's workers."""
    return build_worker_app(builder_settings(args))


def control_builder(args: dict[str, Any]) -> serve.Application:
    """Builder of ``infaas-control`` (route ``/``)."""
    return build_control_app(builder_settings(args))


def autoscaler_builder(args: dict[str, Any]) -> serve.Application:
    """Builder of ``infaas-autoscaler`` (no route)."""
    return build_autoscaler_app(builder_settings(args))


_BUILT = {
    "keyservice": keyservice_builder,
    "infer": infer_builder,
    "control": control_builder,
    "autoscaler": autoscaler_builder,
}


def __getattr__(name: str) -> serve.Application:
    """``api.serve:keyservice`` (``infer``, ``control``, ``autoscaler``): the application
    built from the settings of the environment, for ``serve build``, which takes
    applications, not builders."""
    if name in _BUILT:
        return _BUILT[name]({})
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
