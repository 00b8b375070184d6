"""The Kubernetes deployment, linted: no cluster and no image build here.

- ``deploy/k8s/rayservice.yaml`` is validated against KubeRay's RayService schema
  (v1.7.0's CRD ``openAPIV3Schema``, vendored and pruned in
  ``deploy/k8s/schema/``), unknown fields refused as ``kubectl --validate=strict``
  would; its Serve config against Ray Serve's own ``ServeDeploySchema`` and infaas's
  settings; and against what infaas needs (TEE placement, the same applications as
  ``deploy/serve-config.yaml``, the volume, the non-root user).
- ``Dockerfile`` gets hadolint's main rules, written here (hadolint is a Haskell
  binary no package registry here ships), and is checked against the repository and
  the manifest.
Each checker is shown to fail on a broken copy.
"""

from __future__ import annotations

import copy
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from api.serve import BuildArgs
from infaas.keyservice.deployment import KeyServiceIngress
from infaas.settings import DEFAULT_CONFIG, load_settings

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = ROOT / "deploy" / "k8s" / "rayservice.yaml"
SCHEMA = ROOT / "deploy" / "k8s" / "schema" / "rayservice-v1.7.0.schema.json"
SERVE_CONFIG = ROOT / "deploy" / "serve-config.yaml"
DOCKERFILE = ROOT / "Dockerfile"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())

# --- the manifest against the CRD's schema ----------------------------------------------


def schema_errors(doc: Any, schema: dict[str, Any]) -> list[str]:
    """What KubeRay's API server would refuse: schema violations and unknown fields."""
    validator = jsonschema.Draft4Validator(schema)
    errors = [
        f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)
    ]
    return errors + unknown_fields(doc, schema, "")


def unknown_fields(doc: Any, schema: dict[str, Any], where: str) -> list[str]:
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    found = []
    if isinstance(doc, dict) and "properties" in schema:
        for key, value in doc.items():
            sub = schema["properties"].get(key)
            if sub is None:
                found.append(f"{where}.{key}: unknown field")
            else:
                found += unknown_fields(value, sub, f"{where}.{key}")
    elif isinstance(doc, dict) and isinstance(schema.get("additionalProperties"), dict):
        for key, value in doc.items():
            found += unknown_fields(value, schema["additionalProperties"], f"{where}.{key}")
    elif isinstance(doc, list) and isinstance(schema.get("items"), dict):
        for i, value in enumerate(doc):
            found += unknown_fields(value, schema["items"], f"{where}[{i}]")
    return found


def load_manifest() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(MANIFEST.read_text())
    return doc


def crd_schema() -> dict[str, Any]:
    schema: dict[str, Any] = yaml.safe_load(SCHEMA.read_text())
    return schema


def test_the_rayservice_is_valid_under_kuberays_schema() -> None:
    doc = load_manifest()
    assert (doc["apiVersion"], doc["kind"]) == ("ray.io/v1", "RayService")
    assert schema_errors(doc, crd_schema()) == []


@pytest.mark.parametrize(
    ("break_it", "expected"),
    [
        (
            lambda d: (
                _tee(d)["template"]["spec"].pop("runtimeClassName")
                and _tee(d)["template"]["spec"].__setitem__("runtimeClasName", "kata-qemu-tdx")
            ),
            "unknown field",
        ),
        (lambda d: _tee(d).__setitem__("replicas", "2"), "is not of type 'integer'"),
        (lambda d: _tee(d).pop("groupName"), "'groupName' is a required property"),
        (
            lambda d: d["spec"]["rayClusterConfig"]["authOptions"].__setitem__("mode", "none"),
            "is not one of",
        ),
        (
            lambda d: _tee(d)["template"]["spec"]["containers"][0]["resources"][
                "limits"
            ].__setitem__("memory", "24 gigs"),
            "does not match",
        ),
    ],
    ids=["misspelt-field", "wrong-type", "missing-required", "bad-enum", "bad-quantity"],
)
def test_the_schema_check_refuses_a_broken_manifest(break_it: Any, expected: str) -> None:
    doc = copy.deepcopy(load_manifest())
    break_it(doc)
    errors = schema_errors(doc, crd_schema())
    assert any(expected in e for e in errors), errors


def test_the_vendored_schema_names_its_source_and_licence() -> None:
    comment = crd_schema()["$comment"]
    assert "KubeRay v1.7.0" in comment and "Apache License 2.0" in comment
    assert "ray.io_rayservices.yaml" in comment


# --- the manifest against what infaas needs -----------------------------------------------


def _tee(doc: dict[str, Any]) -> dict[str, Any]:
    (group,) = [
        g
        for g in doc["spec"]["rayClusterConfig"]["workerGroupSpecs"]
        if g["groupName"] == "tee-tdx"
    ]
    return group


def _head(doc: dict[str, Any]) -> dict[str, Any]:
    head: dict[str, Any] = doc["spec"]["rayClusterConfig"]["headGroupSpec"]
    return head


def _serve_config(doc: dict[str, Any]) -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(doc["spec"]["serveConfigV2"])
    return config


def _containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    groups = [_head(doc), *doc["spec"]["rayClusterConfig"]["workerGroupSpecs"]]
    return [c for g in groups for c in g["template"]["spec"]["containers"]]


def test_the_serve_config_is_ray_serves_and_the_same_applications_as_serve_deploy() -> None:
    config = _serve_config(load_manifest())
    ServeDeploySchema.model_validate(config)  # Ray Serve's own schema of a Serve config
    plain = yaml.safe_load(SERVE_CONFIG.read_text())

    def shape(c: dict[str, Any]) -> list[tuple[str, str, str]]:
        return [(a["name"], a["route_prefix"], a["import_path"]) for a in c["applications"]]

    assert shape(config) == shape(plain)
    args = [a["args"] for a in config["applications"]]
    assert all(a == args[0] for a in args), "every application must build the same settings"


def test_the_settings_are_infaas_settings_for_a_tee_cluster() -> None:
    doc = load_manifest()
    args = BuildArgs.model_validate(_serve_config(doc)["applications"][0]["args"])
    # the image holds the repository's configs/ where the settings file is named
    assert args.config == image_path("configs") / DEFAULT_CONFIG.name
    settings = load_settings(DEFAULT_CONFIG, **args.settings)
    assert settings.production and settings.tee_backend == "tdx-configfs"
    assert settings.store_url.startswith("redis://"), "every node must reach one store"
    mounts = {m["mountPath"] for c in _containers(doc) for m in c["volumeMounts"]}
    per_container = [{m["mountPath"] for m in c["volumeMounts"]} for c in _containers(doc)]
    assert all(str(settings.data_dir) in m for m in per_container), "data dir on every node"
    for path in (settings.attestation_policy, settings.attestation_collateral):
        assert path is not None and any(path.is_relative_to(m) for m in mounts), path


def test_tee_replicas_and_the_key_service_land_only_on_tee_nodes() -> None:
    doc = load_manifest()
    tee, head = _tee(doc), _head(doc)
    offered = {k: float(v) for k, v in tee["resources"].items()}
    settings = BuildArgs.model_validate(_serve_config(doc)["applications"][0]["args"]).settings
    for pool in settings["pools"]:
        for name, amount in pool["custom_resources"].items():
            assert offered.get(name, 0) >= amount, (pool["name"], name)
            assert name not in head.get("resources", {}), "the untrusted head offers no TEE"
    (keyservice,) = [
        d for a in _serve_config(doc)["applications"] for d in a.get("deployments", [])
    ]
    assert keyservice["name"] == KeyServiceIngress.name
    assert set(keyservice["ray_actor_options"]["resources"]) <= set(offered)
    spec = tee["template"]["spec"]
    assert re.fullmatch(r"kata-qemu(-[a-z]+)*-tdx", spec["runtimeClassName"])
    assert spec["nodeSelector"], "the TEE group names the nodes it may run on"
    for c in spec["containers"]:
        assert c["resources"]["requests"] == c["resources"]["limits"], "a Kata VM's size"


def test_every_container_runs_the_projects_image_as_the_images_user() -> None:
    doc = load_manifest()
    version = PYPROJECT["project"]["version"]
    images = {c["image"] for c in _containers(doc)}
    assert len(images) == 1
    (image,) = images
    assert image.rpartition(":")[2] == version, "the image is tagged with the release"
    assert doc["spec"]["rayClusterConfig"]["rayVersion"] == _pinned("ray[serve]")
    uid = dockerfile_user()
    for group in [_head(doc), *doc["spec"]["rayClusterConfig"]["workerGroupSpecs"]]:
        pod = group["template"]["spec"]["securityContext"]
        assert pod["runAsNonRoot"] is True and str(pod["runAsUser"]) == uid
    for c in _containers(doc):
        assert c["securityContext"]["allowPrivilegeEscalation"] is False
        assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]


def _pinned(requirement: str) -> str:
    (pin,) = [d for d in PYPROJECT["project"]["dependencies"] if d.startswith(requirement + "==")]
    return pin.split("==")[1]


# --- the Dockerfile, hadolint's way --------------------------------------------------------


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuations joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def lint(text: str) -> list[str]:
    """hadolint's rules that matter for this image (its rule codes), plus pinning."""
    problems = []
    steps = instructions(text)
    froms = [a for i, a in steps if i == "FROM"]
    for image in froms:
        name, _, tag = image.split()[0].partition(":")
        if not tag or "@" in name:
            problems.append(f"DL3006 always tag the image version: {image}")
        elif tag.split("@")[0] == "latest":
            problems.append(f"DL3007 do not use latest: {image}")
        elif not re.match(r"\d+\.\d+\.\d+", tag):
            problems.append(f"pin the base image to a patch release: {image}")
    users = [a for i, a in steps if i == "USER"]
    if not users or users[-1].split(":")[0] in ("root", "0"):
        problems.append("DL3002 the last USER must not be root")
    elif not users[-1].split(":")[0].isdigit():
        problems.append("the last USER must be numeric (runAsNonRoot checks a uid)")
    for i, args in steps:
        if i == "ADD":
            problems.append(f"DL3020 use COPY, not ADD: {args}")
        if i == "MAINTAINER":
            problems.append("DL4000 MAINTAINER is deprecated")
        if i in ("CMD", "ENTRYPOINT") and not args.startswith("["):
            problems.append(f"DL3025 use the JSON form of {i}")
        if i == "WORKDIR" and not args.startswith("/"):
            problems.append(f"DL3000 WORKDIR must be absolute: {args}")
        if i == "RUN":
            problems += _lint_run(args)
    return problems


def _lint_run(args: str) -> list[str]:
    problems = []
    for command in re.split(r"&&|;", args):
        words = shlex.split(command)
        if not words:
            continue
        if words[0] == "sudo":
            problems.append("DL3004 do not use sudo")
        if words[0] == "apt":
            problems.append("DL3027 use apt-get, not apt")
        if words[:2] == ["apt-get", "install"]:
            if "--no-install-recommends" not in words:
                problems.append("DL3015 apt-get install --no-install-recommends")
            if "-y" not in words and "--yes" not in words:
                problems.append("DL3014 apt-get install -y")
            unpinned = [w for w in words[2:] if not w.startswith("-") and "=" not in w]
            if unpinned:
                problems.append(f"DL3008 pin apt-get packages: {unpinned}")
            if "rm -rf /var/lib/apt/lists/*" not in args:
                problems.append("DL3009 delete the apt-get lists in the same RUN")
        if words[:2] in (["pip", "install"], ["pip3", "install"]):
            if "--no-cache-dir" not in words:
                problems.append("DL3042 pip install --no-cache-dir")
            loose = [w for w in words[2:] if not w.startswith("-") and w != "." and "==" not in w]
            if loose:
                problems.append(f"DL3013 pin pip packages: {loose}")
    return problems


def image_path(source: str) -> Path:
    """Where the Dockerfile's ``COPY <source> <dest>`` puts `source` in the image."""
    workdir = Path("/")
    for i, args in instructions(DOCKERFILE.read_text()):
        if i == "WORKDIR":
            workdir = workdir / args
        if i == "COPY" and shlex.split(args)[:-1] == [source]:
            return workdir / shlex.split(args)[-1]
    raise AssertionError(f"the Dockerfile does not copy {source}")


def dockerfile_user() -> str:
    users = [a for i, a in instructions(DOCKERFILE.read_text()) if i == "USER"]
    return users[-1].split(":")[0]


def test_the_dockerfile_passes_the_lint() -> None:
    assert lint(DOCKERFILE.read_text()) == []


@pytest.mark.parametrize(
    ("edit", "rule"),
    [
        (("FROM python:3.11.7-slim-bookworm", "FROM python:latest"), "DL3007"),
        (("FROM python:3.11.7-slim-bookworm", "FROM python"), "DL3006"),
        (("FROM python:3.11.7-slim-bookworm", "FROM python:3.11-slim"), "patch release"),
        (("USER 1000:1000", "USER root"), "DL3002"),
        (("COPY api ./api", "ADD api ./api"), "DL3020"),
        (("wget=1.21.3-1+deb12u1", "wget"), "DL3008"),
        (("pip install --no-cache-dir .", "pip install ."), "DL3042"),
        (('CMD ["infaas", "--help"]', "CMD infaas --help"), "DL3025"),
    ],
)
def test_the_lint_refuses_a_broken_dockerfile(edit: tuple[str, str], rule: str) -> None:
    old, new = edit
    text = DOCKERFILE.read_text()
    assert old in text
    assert any(rule in p for p in lint(text.replace(old, new)))


def test_the_image_installs_every_package_of_the_project() -> None:
    """``pip install .`` in the image sees every package pyproject names, and no path the
    build copies is left out of the build context by .dockerignore."""
    steps = instructions(DOCKERFILE.read_text())
    copied = {Path(p).parts[0] for i, a in steps if i == "COPY" for p in shlex.split(a)[:-1]}
    ignored = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    packages = {
        p.rstrip("*") for p in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    }
    assert packages | {"pyproject.toml", "README.md"} <= copied
    assert not copied & ignored, copied & ignored
    assert {".git", ".venv"} <= ignored
    for path in copied:
        assert (ROOT / path).exists(), path
    base = next(a for i, a in steps if i == "FROM")
    version = tuple(int(x) for x in re.findall(r":(\d+)\.(\d+)", base)[0])
    minimum = tuple(int(x) for x in PYPROJECT["project"]["requires-python"].lstrip(">=").split("."))
    assert version >= minimum
