"""The example zoo: real digits accuracies, declared image accuracies, manifest."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from infaas.zoo import (
    TORCHVISION_TOP1,
    Manifest,
    build_zoo,
    load_calibration,
    load_manifest,
    load_model_bytes,
    load_validation,
    tasks,
)
from infaas.zoo.images import image_model_id
from tests.zoo_fixtures import entry, small_manifest, small_zoo

__all__ = ["small_manifest", "small_zoo"]


def test_manifest_lists_every_model(small_manifest: Manifest) -> None:
    ids = [e.model_id for e in small_manifest.models]
    assert ids == [
        "digits-logreg",
        "digits-mlp-small",
        "digits-mlp-large",
        "images-resnet18-32px",
        "images-resnet34-32px",
        "images-resnet50-32px",
    ]
    assert set(small_manifest.tasks) == {"digits", "images"}


def test_digits_accuracies_are_real_and_differ(small_manifest: Manifest) -> None:
    accs = {e.architecture: e.heldout_accuracy for e in small_manifest.models if e.task == "digits"}
    assert all(a is not None for a in accs.values())
    assert accs["mlp-large"] is not None and accs["mlp-large"] > 0.95
    assert accs["logreg"] is not None and accs["logreg"] > 0.9
    assert len(set(accs.values())) == 3, accs
    assert accs["mlp-large"] > accs["logreg"]


def test_digits_validation_set_is_labelled_heldout(
    small_zoo: Path, small_manifest: Manifest
) -> None:
    e = entry(small_manifest, "digits-mlp-large")
    x, y = load_validation(small_zoo, e)
    assert y is not None and x.shape == (len(y), 64) and x.dtype == np.float32
    assert set(np.unique(y)) == set(range(10))
    assert load_calibration(small_zoo, e).shape[1:] == (64,)


def test_image_models_declare_torchvision_accuracy(
    small_zoo: Path, small_manifest: Manifest
) -> None:
    params = {}
    for arch, top1 in TORCHVISION_TOP1.items():
        e = entry(small_manifest, image_model_id(arch, small=True))
        assert e.declared_accuracy == top1
        assert "torchvision" in e.accuracy_source
        assert e.input.shape == (3, 32, 32)
        assert e.num_classes == 1000
        params[arch] = e.num_parameters
        model = onnx.load_model_from_string(load_model_bytes(small_zoo, e))
        onnx.checker.check_model(model)
        assert {n.op_type for n in model.graph.node} >= {"Conv", "Add", "Relu", "Gemm"}
    assert params["resnet18"] < params["resnet34"]
    x, y = load_validation(small_zoo, entry(small_manifest, "images-resnet18-32px"))
    assert y is None and x.shape[1:] == (3, 32, 32)


def test_manifest_records_digest_and_size(small_zoo: Path, small_manifest: Manifest) -> None:
    for e in small_manifest.models:
        data = (small_zoo / e.file).read_bytes()
        assert len(data) == e.size_bytes
        record = e.to_model_record()
        assert record.artifact_sha256 == e.sha256 and record.task == e.task


def test_rebuild_reuses_models(small_zoo: Path, small_manifest: Manifest) -> None:
    again = build_zoo(small_zoo, small=True)
    assert [e.sha256 for e in again] == [e.sha256 for e in small_manifest.models]


def test_missing_manifest_hints_at_build(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="infaas zoo build"):
        load_manifest(tmp_path)


def test_tasks_follow_resolution() -> None:
    assert tasks()["images"].input.shape == (3, 224, 224)
    assert tasks(small=True)["images"].input.shape == (3, 32, 32)
    assert tasks()["digits"].num_classes == 10
