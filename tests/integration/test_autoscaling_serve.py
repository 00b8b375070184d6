"""The control loop really changes the worker deployment's replica count under Ray Serve.

Real Ray (2 CPUs) and Serve, the real "infer" application with
``autoscaler.policy = infaas`` (its custom Serve autoscaling policy
`FollowTarget`), synthetic profiled variants in the store, and synthetic
load reports standing in for traffic: the `ControlLoop` ticks, writes its
target, and Serve scales EnclaveWorker up, then back down when the demand
stops. No model is served, so no zoo is needed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest

from api.autoscaler import CandidateCache, ControlLoop
from enclave_workers.deployment import APP_NAME, ROUTE_PREFIX, build_infer_app
from infaas.settings import AutoscalerSettings, Pool, Settings
from infaas.store import MetadataStore, open_store
from infaas.types import ModelRecord
from scheduler.policy import demand_key
from scheduler.routing import LoadReport, read_target
from scheduler.synthetic import synthetic_variant
from tests.integration.serve_stack import ray_serve_with_keyservice, serve_settings

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")

POOL = Pool(name="cpu", num_cpus=0.5, cost_per_replica_s=1.0)
KEY = demand_key("classify", 200, 0.7)


def running_replicas() -> int:
    app = serve.status().applications.get(APP_NAME)
    if app is None:
        return 0
    dep = app.deployments.get("EnclaveWorker")
    return 0 if dep is None else int(dep.replica_states.get("RUNNING", 0))


def wait_for(cond: Callable[[], bool], timeout_s: float, step: Callable[[], None]) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        step()
        if cond():
            return True
        time.sleep(0.5)
    return False


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    s = serve_settings(
        tmp_path_factory.mktemp("autoscale"),
        pools=(POOL,),
        autoscaler=AutoscalerSettings(policy="infaas", min_replicas=1, max_replicas=3),
    )
    with ray_serve_with_keyservice(s) as url:
        # new replicas attest to the key service (no key of the synthetic model: a warning)
        serve.run(build_infer_app(s, url), name=APP_NAME, route_prefix=ROUTE_PREFIX)
        yield s


def test_control_loop_scales_the_worker_deployment(settings: Settings) -> None:
    store: MetadataStore = open_store(settings.resolved_store_url)
    # one variant: ~300 requests/s per replica at a 200 ms target (batch 16)
    spec, profile = synthetic_variant(
        "slow-fp32", task="classify", pool="cpu", accuracy=0.8, intercept_ms=20, slope_ms=2
    )
    store.put_model(
        ModelRecord(
            model_id=spec.model_id,
            task="classify",
            architecture=spec.architecture,
            artifact_sha256="0" * 64,
            size_bytes=1,
            num_parameters=0,
        )
    )
    store.put_variant(spec)
    store.put_profile(profile)
    loop = ControlLoop(
        store=store,
        config=AutoscalerSettings(
            policy="infaas",
            min_replicas=1,
            max_replicas=3,
            cpu_budget=1.5,
            max_replicas_per_pool=3,
            downscale_delay_s=0,
            burst_window_s=1,
            idle_to_zero_s=0,
        ),
        pool=POOL,
        candidates=CandidateCache(store, settings.pools),
    )
    assert running_replicas() == 1
    arrivals = 0
    last = time.time()

    def traffic(rps: float) -> Callable[[], None]:
        def step() -> None:
            nonlocal arrivals, last
            now = time.time()
            arrivals += int(rps * (now - last))
            last = now
            rep = LoadReport(replica="synthetic", ts=now, arrivals={KEY: arrivals})
            store.put_load_report("synthetic", rep)
            loop.tick()

        return step

    # ~400 requests/s: more than one replica at 70 % utilisation
    assert wait_for(lambda: running_replicas() >= 2, 90, traffic(400.0)), (
        f"target {read_target(store)}, running {running_replicas()}"
    )
    target = read_target(store)
    assert target is not None and target.num_replicas >= 2
    # demand stops: back to the floor of one replica
    assert wait_for(lambda: running_replicas() == 1, 90, traffic(0.0)), (
        f"target {read_target(store)}, running {running_replicas()}"
    )
    store.close()
