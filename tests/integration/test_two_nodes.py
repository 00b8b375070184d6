"""infaas on a Ray cluster of two nodes started with `ray start`, as an operator runs it.

A head node (1 CPU, no TEE) and a worker node (1 CPU, offering ``tee_simulated``), separate
raylets on loopback with token authentication, Redis as the shared store, and another team's
Serve application on the same cluster. The worker pool asks for ``tee_simulated``, so its
replica can only run on the TEE node, though the head has a free CPU too.

1. `infaas serve --ray-address` joins the cluster, deploys, serves; Ctrl-C deletes its own
   applications only: the other team's keeps answering.
2. The Ray Serve way: ``serve deploy`` of the cluster's config (deploy/serve-config.yaml's
   applications beside the other team's), `infaas bootstrap` against the running service,
   then an owner registers a model and a tenant's sealed request is answered, by a replica
   on the TEE node.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from infaas import Client
from infaas.client.enrolment import issue_enrolment_file, login
from infaas.keyservice.enrolment import load_enrolment_key
from infaas.zoo import Manifest, load_model_bytes, load_validation
from tests.ray_nodes import (
    TEE,
    RayNodes,
    free_ports,
    infaas_applications,
    write_cluster_settings,
    write_serve_config,
)
from tests.zoo_fixtures import entry, small_manifest, small_zoo

__all__ = ["small_manifest", "small_zoo"]

pytest.importorskip("ray")
pytestmark = [pytest.mark.slow, pytest.mark.redis, pytest.mark.timeout(900)]

MODEL = "digits-mlp-small"
OTHER = {
    "name": "analytics",
    "route_prefix": "/analytics",
    "import_path": "tests.integration.other_team_app:app",
}


@dataclass
class Cluster:
    nodes: RayNodes
    config: Path
    data_dir: Path
    url: str
    port: int

    def run(self, *cmd: str, timeout_s: float = 300.0) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            list(cmd),
            env=self.nodes.env(),
            cwd=self.nodes.root,
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
        assert done.returncode == 0, f"{cmd[:3]}: {done.stdout[-2000:]}\n{done.stderr[-3000:]}"
        return done

    def serve_config(self, *infaas_apps: dict[str, Any]) -> Path:
        """The cluster's one Serve config: the other team's application and `infaas_apps`."""
        apps = [OTHER, *infaas_apps]
        return write_serve_config(self.nodes.root / f"serve-{len(apps)}.yaml", self.port, apps)


@pytest.fixture(scope="module")
def cluster(redis_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    nodes = RayNodes()
    try:
        nodes.start_head(num_cpus=1)
        nodes.add_worker("tee", num_cpus=1, resources={TEE: 1.0})
        (port,) = free_ports(1)
        data_dir = tmp_path_factory.mktemp("cluster-data")
        config = write_cluster_settings(
            data_dir.parent / "cluster-settings.yaml",
            data_dir=data_dir,
            store_url=redis_server,
            http_port=port,
        )
        c = Cluster(nodes, config, data_dir, f"http://127.0.0.1:{port}", port)
        serve_cli = str(Path(sys.executable).parent / "serve")
        # the other team was there first: Serve runs, with its application
        c.run(serve_cli, "deploy", "--address", nodes.dashboard, str(c.serve_config()))
        _wait_for(lambda: _get(c.url + "/analytics") == 200, "the other team's application")
        yield c
    finally:
        nodes.stop()


def _get(url: str) -> int:
    try:
        return httpx.get(url, timeout=5.0).status_code
    except httpx.HTTPError:
        return 0


def _wait_for(ok: Any, what: str, timeout_s: float = 300.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not ok():
        assert time.monotonic() < deadline, f"{what}: not there after {timeout_s:.0f} s"
        time.sleep(1.0)


def test_stopping_infaas_serve_leaves_the_other_application_running(cluster: Cluster) -> None:
    log = cluster.nodes.root / "infaas-serve.log"
    cmd = [
        sys.executable, "-m", "infaas.cli", "--config", str(cluster.config),
        "serve", "--ray-address", cluster.nodes.address, "--no-zoo", "--no-progress",
    ]  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd, cwd=cluster.nodes.root, env=cluster.nodes.env(), stdout=out, stderr=out
        )
    try:
        _wait_for(
            lambda: "\nREADY" in log.read_text() or proc.poll() is not None, "infaas serve READY"
        )
        assert proc.poll() is None, log.read_text()[-3000:]
        assert _get(cluster.url + "/healthz") == 200
        assert _get(cluster.url + "/analytics") == 200
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        assert proc.wait(timeout=180) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text()
    assert "deleted applications: infaas-control, infaas-infer, infaas-keyservice" in text, text
    # infaas is gone, the other team's application is not
    _wait_for(lambda: _get(cluster.url + "/healthz") == 404, "infaas's routes removed", 60)
    assert _get(cluster.url + "/analytics") == 200
    # and the cluster is the same cluster: both nodes still there
    assert len([n for n in cluster.nodes.list("nodes") if n["state"] == "ALIVE"]) == 2


def test_serve_deploy_bootstrap_and_a_sealed_request_on_the_tee_node(
    cluster: Cluster, small_zoo: Path, small_manifest: Manifest
) -> None:
    config = cluster.serve_config(*infaas_applications(cluster.config))
    serve_cli = str(Path(sys.executable).parent / "serve")
    cluster.run(serve_cli, "deploy", "--address", cluster.nodes.dashboard, str(config))
    bootstrap = [sys.executable, "-m", "infaas.cli", "--config", str(cluster.config)]
    bootstrap += ["bootstrap", "--no-zoo", "--url", cluster.url, "--wait-s", "400"]
    cluster.run(*bootstrap, timeout_s=450)
    assert _get(cluster.url + "/analytics") == 200  # one config for the cluster: still there

    admin = Client.from_credentials(cluster.data_dir / "credentials" / "admin.json")
    enrolment_key = load_enrolment_key(cluster.data_dir)
    owner = login(issue_enrolment_file(admin, enrolment_key, "owner1", "owner", "a model owner"))
    tenant = login(issue_enrolment_file(admin, enrolment_key, "acme", "tenant", "a tenant"))
    zoo = entry(small_manifest, MODEL)
    x, y = load_validation(small_zoo, zoo)
    owner.upload_model(
        MODEL, zoo.task, zoo.architecture, load_model_bytes(small_zoo, zoo), x, y,
        num_classes=zoo.num_classes, input_spec=zoo.input,
        declared_accuracy=zoo.declared_accuracy,
    )  # fmt: skip
    owner.grant(MODEL, "acme")
    tenant.accept("owner1")
    _wait_for(lambda: owner.job(MODEL).state in ("ready", "failed"), "variants", 400)
    assert owner.job(MODEL).state == "ready", owner.job(MODEL).message

    result = tenant.infer(task="digits", inputs=x[:8], latency_ms=2000, min_accuracy=0.5)
    assert result.outputs.shape == (8, 10)
    assert (np.argmax(result.outputs, axis=1) == y[:8]).mean() >= 0.5

    # the replica that answered runs on the node offering the TEE, not on the head
    ready = httpx.get(cluster.url + "/readyz", timeout=30.0).json()
    node_id = ready["detail"]["worker.ray_node_id"]
    nodes = {n["node_id"]: n for n in cluster.nodes.list("nodes") if n["state"] == "ALIVE"}
    assert TEE in nodes[node_id]["resources_total"]
    assert [n for n in nodes.values() if TEE not in n["resources_total"]], "a head without TEE"
    for c in (admin, owner, tenant):
        c.close()
