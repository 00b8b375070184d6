"""Vendor the part of KubeRay's RayService schema that deploy/k8s/rayservice.yaml uses.

    python deploy/k8s/schema/prune_crd.py \
        KUBERAY/ray-operator/config/crd/bases/ray.io_rayservices.yaml

reads the CRD (KubeRay v1.7.0, Apache-2.0), takes its ``v1`` ``openAPIV3Schema`` and keeps,
for every object the manifest fills, the full schema of each field it sets and the name
and type of each field it does not (so a misspelt or misplaced field is still found), and
writes ``rayservice-v1.7.0.schema.json`` beside this file. The whole CRD is about 1 MB
(mostly the Kubernetes pod template); this keeps what the manifest can be checked against.
Run it again after adding a field to the manifest that the vendored schema lacks.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
MANIFEST = HERE.parent / "rayservice.yaml"
OUT = HERE / "rayservice-v1.7.0.schema.json"
_TYPE_KEYS = ("type", "x-kubernetes-int-or-string", "x-kubernetes-preserve-unknown-fields")


def shallow(schema: dict[str, Any]) -> dict[str, Any]:
    """A field the manifest does not set: its type only."""
    kept = {k: schema[k] for k in _TYPE_KEYS if k in schema}
    if "anyOf" in schema:
        kept["anyOf"] = [shallow(s) for s in schema["anyOf"]]
    return kept


def prune(schema: dict[str, Any], value: Any) -> dict[str, Any]:
    """`schema` as deep as `value` goes (every item of a list, each field of an object)."""
    out = {k: v for k, v in schema.items() if k not in ("properties", "items", "description")}
    if "additionalProperties" in schema and isinstance(schema["additionalProperties"], dict):
        out["additionalProperties"] = shallow(schema["additionalProperties"])
    if isinstance(value, dict) and "properties" in schema:
        out["properties"] = {
            name: prune(sub, value[name]) if name in value else shallow(sub)
            for name, sub in schema["properties"].items()
        }
    elif isinstance(value, dict) and isinstance(schema.get("additionalProperties"), dict):
        out["additionalProperties"] = (
            prune(schema["additionalProperties"], next(iter(value.values()), None))
            if value
            else shallow(schema["additionalProperties"])
        )
    if isinstance(value, list) and "items" in schema:
        merged: dict[str, Any] = shallow(schema["items"])
        for item in value:
            merged = _merge(merged, prune(schema["items"], item))
        out["items"] = merged
    return out


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """The union of two prunings of one schema: the deeper of each field."""
    out = {**a, **{k: v for k, v in b.items() if k != "properties"}}
    if "properties" in a or "properties" in b:
        pa, pb = a.get("properties", {}), b.get("properties", {})
        out["properties"] = {k: _merge(pa.get(k, {}), pb.get(k, {})) for k in {**pa, **pb}}
    return out


def main(crd_path: str) -> None:
    crd = yaml.safe_load(Path(crd_path).read_text())
    (v1,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    manifest = yaml.safe_load(MANIFEST.read_text())
    schema = prune(v1["schema"]["openAPIV3Schema"], manifest)
    document = {
        "$comment": (
            "Pruned from KubeRay v1.7.0, ray-operator/config/crd/bases/ray.io_rayservices.yaml "
            "(github.com/ray-project/kuberay, Apache License 2.0), the v1 openAPIV3Schema, by "
            "deploy/k8s/schema/prune_crd.py: full schemas where deploy/k8s/rayservice.yaml "
            "sets a field, name and type elsewhere."
        ),
        **schema,
    }
    OUT.write_text(json.dumps(document, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main(sys.argv[1])
