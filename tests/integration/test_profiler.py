"""`infaas profile` end to end on the small zoo, and the profiler's measurements."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from infaas.settings import Settings
from infaas.store import open_store
from infaas.types import Backend, BatchLatency, Precision, Quantization
from infaas.zoo import Manifest, load_model_bytes, load_validation
from profiler.command import profile_command
from profiler.profile import ProfileOptions, fit_latency_model, profile_variant
from profiler.report import pareto_front
from tests.zoo_fixtures import entry, small_manifest, small_zoo
from variants.generate import variant_spec

__all__ = ["small_manifest", "small_zoo"]

MODELS = ["digits-mlp-small", "images-resnet18-32px"]


def _args(**kw: object) -> argparse.Namespace:
    base: dict[str, object] = {
        "model": MODELS,
        "batch_sizes": "1,2,8",
        "plot": None,
        "json": False,
        "quick": True,
    }
    base.update(kw)
    return argparse.Namespace(**base)


@pytest.fixture()
def data_dir(tmp_path: Path, small_zoo: Path) -> Path:
    shutil.copytree(small_zoo, tmp_path / "zoo")
    return tmp_path


def test_profile_command_stores_profiles_and_plots(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = Settings(data_dir=data_dir)
    assert profile_command(_args(), settings) == 0
    out = capsys.readouterr().out
    assert "digits-mlp-small" in out and "p50@1" in out
    png = data_dir / "profiles.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with open_store(settings.resolved_store_url) as store:
        assert {m.model_id for m in store.list_models()} == set(MODELS)
        variants = store.list_variants()
        assert len(variants) == 12
        profiles = {p.variant_id: p for p in store.list_profiles()}
    assert "digits-mlp-small.fp32.onnxruntime" in profiles
    assert "images-resnet18-32px.int8.openvino" in profiles or "unsupported" in out
    for p in profiles.values():
        assert [b.batch for b in p.batches] == [1, 2, 8]
        assert all(b.p50_ms <= b.p99_ms for b in p.batches)
        assert p.load_ms > 0 and p.latency_model.slope_ms >= 0
    digits = profiles["digits-mlp-small.fp32.onnxruntime"]
    assert digits.accuracy_kind == "validation" and digits.accuracy > 0.9
    img = profiles["images-resnet18-32px.fp32.onnxruntime"]
    assert img.accuracy_kind == "agreement"
    assert img.accuracy == pytest.approx(0.69758)  # declared x agreement 1.0 with itself
    int8 = profiles["images-resnet18-32px.int8.onnxruntime"]
    assert 0.5 < int8.accuracy <= 0.69758


def test_profile_command_json_lines(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    settings = Settings(data_dir=data_dir, store_url="memory://")
    args = _args(model=["digits-logreg"], json=True, batch_sizes="1", plot=data_dir / "p.png")
    assert profile_command(args, settings) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line]
    assert lines and all(d["variant_id"].startswith("digits-logreg.") for d in lines)
    assert (data_dir / "p.png").is_file()


def test_unknown_model_is_refused(data_dir: Path) -> None:
    from infaas.errors import ModelNotFound

    with pytest.raises(ModelNotFound, match="nope"):
        profile_command(_args(model=["nope"]), Settings(data_dir=data_dir))


def test_profile_variant_measures_labelled_accuracy(
    small_zoo: Path, small_manifest: Manifest
) -> None:
    e = entry(small_manifest, "digits-mlp-large")
    x, y = load_validation(small_zoo, e)
    spec = variant_spec(e.to_model_record(), Precision.FP32, Backend.ONNXRUNTIME, Quantization.NONE)
    opts = ProfileOptions(batch_sizes=(1, 4), warmup_runs=1, min_runs=3, min_time_s=0.01)
    m = profile_variant(spec, load_model_bytes(small_zoo, e), x, labels=y, options=opts)
    assert m.profile.accuracy == pytest.approx(e.heldout_accuracy, abs=1e-6)
    assert m.predictions.shape == y.shape
    assert m.profile.peak_memory_bytes >= 0 and m.profile.threads == opts.threads


def test_latency_model_and_pareto() -> None:
    batches = tuple(
        BatchLatency(batch=b, p50_ms=2.0 + 0.5 * b, p99_ms=3.0 + 0.5 * b, throughput_rps=1.0)
        for b in (1, 2, 4, 8)
    )
    lm = fit_latency_model(batches)
    assert lm.intercept_ms == pytest.approx(2.0) and lm.slope_ms == pytest.approx(0.5)
    pts = [(1.0, 0.7), (2.0, 0.8), (3.0, 0.75), (0.5, 0.6)]
    assert pareto_front(pts) == [3, 0, 1]
    assert np.isfinite(lm.predict_ms(16))
