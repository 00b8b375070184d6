"""Variant generation and loading: numerics, unsupported variants, bad input, in-memory."""

from __future__ import annotations

import tempfile
import threading
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from infaas.errors import InvalidInput, InvalidModel, VariantUnsupported
from infaas.types import Backend, Precision, Quantization
from infaas.zoo import Manifest, ZooEntry, load_calibration, load_model_bytes, load_validation
from profiler.profile import profile_variant, validation_set
from tests.zoo_fixtures import entry, small_manifest, small_zoo
from variants import generate
from variants.generate import GeneratedVariant, UnsupportedVariant, generate_variants
from variants.runtime import load_variant

__all__ = ["small_manifest", "small_zoo"]


def _generated(zoo: Path, e: ZooEntry) -> dict[tuple[Precision, Backend, Quantization], object]:
    out = generate_variants(e.to_model_record(), load_model_bytes(zoo, e), load_calibration(zoo, e))
    return {(v.spec.precision, v.spec.backend, v.spec.quantization): v for v in out}


FP32_ORT = (Precision.FP32, Backend.ONNXRUNTIME, Quantization.NONE)
INT8_ORT = (Precision.INT8, Backend.ONNXRUNTIME, Quantization.STATIC_QDQ)
INT8_DYN = (Precision.INT8, Backend.ONNXRUNTIME, Quantization.DYNAMIC)
FP32_OV = (Precision.FP32, Backend.OPENVINO, Quantization.NONE)
BF16_OV = (Precision.BF16, Backend.OPENVINO, Quantization.NONE)
INT8_OV = (Precision.INT8, Backend.OPENVINO, Quantization.STATIC_QDQ)


def _logits(v: object, x: np.ndarray) -> np.ndarray:
    assert isinstance(v, GeneratedVariant), v
    return load_variant(v.spec, v.onnx_bytes, threads=1).run(x)


@pytest.fixture(scope="module")
def digits(small_zoo: Path, small_manifest: Manifest) -> tuple[dict, np.ndarray, np.ndarray]:  # type: ignore[type-arg]
    e = entry(small_manifest, "digits-mlp-large")
    x, y = load_validation(small_zoo, e)
    assert y is not None
    return _generated(small_zoo, e), x, y


def test_every_variant_kind_is_generated(digits: tuple) -> None:  # type: ignore[type-arg]
    variants, _, _ = digits
    assert set(variants) == set(generate.VARIANT_KINDS)
    ids = {v.spec.variant_id for v in variants.values()}
    assert "digits-mlp-large.int8-dyn.onnxruntime" in ids
    assert variants[INT8_ORT].onnx_bytes != variants[FP32_ORT].onnx_bytes
    qdq = onnx.load_model_from_string(variants[INT8_ORT].onnx_bytes)
    assert "QuantizeLinear" in {n.op_type for n in qdq.graph.node}


def test_digits_variants_agree_with_fp32(digits: tuple) -> None:  # type: ignore[type-arg]
    variants, x, y = digits
    ref = _logits(variants[FP32_ORT], x)
    fp32_acc = np.mean(ref.argmax(1) == y)
    assert fp32_acc > 0.95
    np.testing.assert_allclose(_logits(variants[FP32_OV], x), ref, rtol=1e-4, atol=1e-4)
    if isinstance(variants[BF16_OV], GeneratedVariant):
        np.testing.assert_allclose(_logits(variants[BF16_OV], x), ref, rtol=0.05, atol=0.25)
    for kind in (INT8_ORT, INT8_DYN, INT8_OV):
        out = _logits(variants[kind], x)
        assert np.mean(out.argmax(1) == ref.argmax(1)) > 0.97, kind
        assert np.corrcoef(out.ravel(), ref.ravel())[0, 1] > 0.99
        assert abs(np.mean(out.argmax(1) == y) - fp32_acc) < 0.02


def test_image_variants(small_zoo: Path, small_manifest: Manifest) -> None:
    e = entry(small_manifest, "images-resnet18-32px")
    variants = _generated(small_zoo, e)
    x, _ = load_validation(small_zoo, e)
    x = x[:64]
    ref = _logits(variants[FP32_ORT], x)
    top = ref.argmax(1)
    assert len(np.unique(top)) > 10, "logits of the random net must be well spread"
    again = _logits(variants[FP32_ORT], x)
    assert np.mean(again.argmax(1) == top) == 1.0
    ov = _logits(variants[FP32_OV], x)
    np.testing.assert_allclose(ov, ref, rtol=1e-3, atol=1e-3 * float(np.abs(ref).max()))
    assert np.mean(ov.argmax(1) == top) == 1.0
    int8 = _logits(variants[INT8_ORT], x)
    assert 0.8 <= np.mean(int8.argmax(1) == top) <= 1.0
    assert np.corrcoef(int8.ravel(), ref.ravel())[0, 1] > 0.9
    if isinstance(variants[BF16_OV], GeneratedVariant):
        bf16 = _logits(variants[BF16_OV], x)
        assert np.mean(bf16.argmax(1) == top) >= 0.9
        assert not np.array_equal(bf16, ov), "bf16 must really run in bf16"


def test_bf16_unsupported_without_native_support(small_zoo: Path, small_manifest: Manifest) -> None:
    e = entry(small_manifest, "digits-logreg")
    out = generate_variants(
        e.to_model_record(),
        load_model_bytes(small_zoo, e),
        load_calibration(small_zoo, e),
        capabilities={"FP32", "INT8"},
    )
    unsupported = [v for v in out if isinstance(v, UnsupportedVariant)]
    assert [v.spec.precision for v in unsupported] == [Precision.BF16]
    assert "bf16" in unsupported[0].reason and "AMX" in unsupported[0].reason
    assert isinstance(unsupported[0].error(), VariantUnsupported)


def test_load_refuses_unsupported_precision(
    digits: tuple,  # type: ignore[type-arg]
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    variants, _, _ = digits
    v = variants[FP32_OV]
    bf16_spec = v.spec.model_copy(
        update={"precision": Precision.BF16, "variant_id": "x.bf16.openvino"}
    )
    monkeypatch.setattr(generate, "cpu_capabilities", lambda: frozenset({"FP32", "INT8"}))
    with pytest.raises(VariantUnsupported, match="bf16"):
        load_variant(bf16_spec, v.onnx_bytes)


def test_not_onnx_is_invalid_model(small_manifest: Manifest) -> None:
    record = entry(small_manifest, "digits-logreg").to_model_record()
    for junk in (b"", b"hello, not a model", bytes(range(256)) * 4):
        with pytest.raises(InvalidModel, match="is not an ONNX model"):
            generate_variants(record, junk, np.zeros((4, 64), np.float32))


def _custom_op_model() -> bytes:
    g = helper.make_graph(
        [
            helper.make_node("Relu", ["x"], ["h"]),
            helper.make_node("Frobnicate", ["h"], ["logits"], domain="com.example"),
        ],
        "custom",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
    )
    m = helper.make_model(
        g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)]
    )
    m.ir_version = 9
    return bytes(m.SerializeToString())


def test_custom_op_is_invalid_model(small_manifest: Manifest) -> None:
    record = entry(small_manifest, "digits-logreg").to_model_record()
    with pytest.raises(InvalidModel, match="Frobnicate"):
        generate_variants(record, _custom_op_model(), np.zeros((4, 64), np.float32))


def test_wrong_shapes_are_invalid_input(digits: tuple, small_manifest: Manifest) -> None:  # type: ignore[type-arg]
    variants, x, y = digits
    spec = small_manifest.tasks["digits"].input
    with pytest.raises(InvalidInput, match=r"expected \('batch', 64\)") as err:
        validation_set(np.zeros((10, 8, 8), np.float32), None, spec)
    assert "(10, 8, 8)" in err.value.message
    with pytest.raises(InvalidInput, match="labels"):
        validation_set(x, y[:-1], spec)
    v = variants[FP32_ORT]
    with pytest.raises(InvalidInput, match="expected"):
        profile_variant(
            v.spec, v.onnx_bytes, np.zeros((10, 63), np.float32), labels=None, declared_accuracy=0.5
        )
    with pytest.raises(InvalidInput, match=r"got|expected"):
        load_variant(v.spec, v.onnx_bytes).run(np.zeros((2, 63), np.float32))
    record = entry(small_manifest, "digits-logreg").to_model_record()
    with pytest.raises(InvalidInput, match="calibration"):
        generate_variants(record, v.onnx_bytes, np.zeros((4, 32), np.float32))


@pytest.mark.parametrize("opset", [None, 9])
def test_generation_never_touches_disk(
    small_zoo: Path, small_manifest: Manifest, monkeypatch: pytest.MonkeyPatch, opset: int | None
) -> None:
    """Decrypted weights stay in memory: no temp files, no onnx.save during generation.

    At opset <= 9 the quantizers need an opset conversion, which onnxruntime follows
    with shape inference through a temporary file; it is done in memory instead."""
    e = entry(small_manifest, "digits-mlp-small")
    data, calib = load_model_bytes(small_zoo, e), load_calibration(small_zoo, e)
    if opset is not None:  # the MLP's MatMul/Add/Relu/Identity all exist unchanged at opset 9
        old = onnx.load_model_from_string(data)
        old.opset_import[0].version = opset
        data = old.SerializeToString()

    def refuse(*a: object, **k: object) -> None:
        raise AssertionError("variant generation wrote to disk")

    monkeypatch.setattr(tempfile, "mkdtemp", refuse)
    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    monkeypatch.setattr(tempfile, "NamedTemporaryFile", refuse)
    monkeypatch.setattr(onnx, "save_model", refuse)
    monkeypatch.setattr(onnx, "save", refuse)
    out = generate_variants(e.to_model_record(), data, calib)
    assert all(isinstance(v, GeneratedVariant) for v in out if v.spec.precision != Precision.BF16)


@pytest.mark.parametrize("kind", [FP32_ORT, INT8_OV])
def test_concurrent_runs_match_serial(digits: tuple, kind: tuple) -> None:  # type: ignore[type-arg]
    variants, x, _ = digits
    v = variants[kind]
    loaded = load_variant(v.spec, v.onnx_bytes, threads=1)
    batches = [x[i : i + 7] for i in range(0, 140, 7)]
    serial = [loaded.run(b) for b in batches]
    results: dict[int, np.ndarray] = {}
    errors: list[BaseException] = []

    def worker(k: int) -> None:
        try:
            for i in range(k, len(batches), 4):
                results[i] = loaded.run(batches[i])
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for i, s in enumerate(serial):
        np.testing.assert_array_equal(results[i], s)
