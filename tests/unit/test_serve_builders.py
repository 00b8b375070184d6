"""The Ray Serve way to deploy infaas: builders, `serve build`, the Serve config file.

What `serve deploy deploy/serve-config.yaml` and `serve run api.serve:control_builder`
rely on, checked without a cluster: the config is valid for this Ray, its applications are
infaas's own (names and routes that cannot replace another team's), every import path is a
builder that turns the config's ``args`` into the application it names, and ``serve build``
accepts the module-level applications. The two-node test
(tests/integration/test_two_nodes.py) applies the same file to a running cluster.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from api.serve import APPS, ROUTES, BuildArgs, builder_settings

serve_schema = pytest.importorskip("ray.serve.schema")
serve_api = pytest.importorskip("ray.serve._private.api")
build_app_module = pytest.importorskip("ray.serve._private.build_app")
ray_utils = pytest.importorskip("ray._common.utils")

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "deploy" / "serve-config.yaml"
INGRESS = {"infaas-keyservice": "KeyService", "infaas-infer": "EnclaveWorker"}
INGRESS["infaas-control"] = "Control"


def _config() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(CONFIG.read_text())
    return loaded


def test_the_config_file_is_valid_and_names_only_infaas_applications() -> None:
    config = serve_schema.ServeDeploySchema.model_validate(_config())
    names = [app.name for app in config.applications]
    assert names == ["infaas-keyservice", "infaas-infer", "infaas-control"]
    assert set(names) <= set(APPS) and all(n.startswith("infaas-") for n in APPS)
    for app in config.applications:
        assert app.route_prefix == ROUTES[app.name]
    # the replicas agree on one deployment: the same settings in every application
    assert len({yaml.safe_dump(app.args) for app in config.applications}) == 1
    settings = config.applications[0].args["settings"]
    assert settings["http_port"] == config.http_options.port


def test_every_builder_makes_the_application_it_names(tmp_path: Path) -> None:
    checks = {"replica_health_check_period_s": 0.5, "replica_health_check_timeout_s": 4.0}
    for app in _config()["applications"]:
        args = {"settings": app["args"]["settings"] | {"data_dir": str(tmp_path)} | checks}
        builder = ray_utils.import_attr(app["import_path"])
        application = serve_api.call_user_app_builder_with_args_if_necessary(builder, args)
        built = build_app_module.build_app(application, name=app["name"])
        assert built.ingress_deployment_name == INGRESS[app["name"]], app["name"]
        # a dead replica of any of them is noticed (and replaced) at the settings' pace
        for d in built.deployments:
            config = d._deployment_config
            assert (config.health_check_period_s, config.health_check_timeout_s) == (0.5, 4.0)


def test_builder_args_are_checked_and_paths_resolved_where_the_builder_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    settings = builder_settings({"settings": {"data_dir": "infaas-data", "http_port": 8123}})
    assert settings.data_dir == tmp_path / "infaas-data" and settings.http_port == 8123
    cfg = tmp_path / "c.yaml"
    cfg.write_text("http_port: 9100\n")
    assert builder_settings({"config": str(cfg)}).http_port == 9100
    with pytest.raises(ValueError, match="datadir"):
        BuildArgs.model_validate({"datadir": "x"})  # a typo is refused, not ignored
    with pytest.raises(ValueError, match="not_a_setting"):
        builder_settings({"settings": {"not_a_setting": 1}})


def test_serve_build_accepts_the_applications(tmp_path: Path) -> None:
    out = tmp_path / "built.yaml"
    serve_cli = Path(sys.executable).parent / "serve"
    env = os.environ | {"INFAAS_DATA_DIR": str(tmp_path / "data"), "PYTHONPATH": str(REPO)}
    paths = ["api.serve:keyservice", "api.serve:infer", "api.serve:control"]
    done = subprocess.run(
        [str(serve_cli), "build", *paths, "-o", str(out)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    built = serve_schema.ServeDeploySchema.model_validate(yaml.safe_load(out.read_text()))
    assert [a.import_path for a in built.applications] == paths
    deployments = [[d.name for d in a.deployments] for a in built.applications]
    assert deployments == [["KeyService"], ["EnclaveWorker"], ["Control"]]
