"""A model owner's graph that mixes the rows of a batch must never be proven row-independent.

Each graph below is written as an owner who wants a co-batched victim's row
would write it. Each is first *run* (onnxruntime, batch of 3) to show it really
leaks: changing row 1 changes output row 0 or 2. Then the static check must refuse
it, naming the node. Honest graphs (the zoo's and a few tricky-but-fine ones)
must pass, and must really keep rows apart when run.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from infaas.zoo import Manifest, load_calibration, load_model_bytes
from tests.zoo_fixtures import entry, small_zoo
from variants._telemetry import onnxruntime
from variants.generate import GeneratedVariant, generate_variants
from variants.row_independence import check_row_independence

FEATURES = 4
OPSET = 17


def _model(nodes: list[Any], inits: dict[str, np.ndarray], *, opset: int = OPSET) -> Any:
    graph = helper.make_graph(
        nodes,
        "owner-graph",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", FEATURES])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def _i64(*v: int) -> np.ndarray:
    return np.array(v, dtype=np.int64)


def _f32(a: Any) -> np.ndarray:
    return np.asarray(a, dtype=np.float32)


W = _f32(np.arange(FEATURES * FEATURES).reshape(FEATURES, FEATURES) / 10.0)
SWAP3 = _f32([[0, 1, 0], [1, 0, 0], [0, 0, 1]])  # a fixed-size row permutation


def concat_rotated_rows() -> Any:
    return _model(
        [
            helper.make_node("Slice", ["x", "s1", "e1", "ax"], ["tail"]),
            helper.make_node("Slice", ["x", "s0", "e0", "ax"], ["head"]),
            helper.make_node("Concat", ["tail", "head"], ["y"], axis=0),
        ],
        {"s1": _i64(1), "e1": _i64(1 << 30), "s0": _i64(0), "e0": _i64(1), "ax": _i64(0)},
    )


def concat_shifts_rows() -> Any:
    # a constant row on top: output row i is the input row i-1, another tenant's
    return _model(
        [helper.make_node("Concat", ["pad", "x"], ["y"], axis=0)],
        {"pad": _f32(np.zeros((1, FEATURES)))},
    )


def gemm_trans_a() -> Any:
    # (x^T)^T-free mixing: Gemm(A=x, transA=1) contracts the batch axis
    return _model(
        [
            helper.make_node("Gemm", ["x", "c"], ["g"], transA=1),  # (F, N)^T... -> (F, 3)
            helper.make_node("Gemm", ["x", "g"], ["y"]),  # (N, F) @ (F, 3) -> (N, 3)
        ],
        {"c": _f32(np.ones((3, 3)))},
    )


def matmul_input_second() -> Any:
    return _model([helper.make_node("MatMul", ["p", "x"], ["y"])], {"p": SWAP3})


def flatten_axis0() -> Any:
    return _model(
        [
            helper.make_node("Flatten", ["x"], ["f"], axis=0),  # (1, N*F)
            helper.make_node("Softmax", ["f"], ["s"], axis=-1),  # normalised over every row
            helper.make_node("Reshape", ["s", "shape"], ["y"]),
        ],
        {"shape": _i64(-1, FEATURES)},
    )


def transpose_then_contract() -> Any:
    return _model(
        [
            helper.make_node("Transpose", ["x"], ["t"], perm=[1, 0]),  # (F, N)
            helper.make_node("MatMul", ["t", "p"], ["m"]),  # contracts N
            helper.make_node("Transpose", ["m"], ["y"], perm=[1, 0]),
        ],
        {"p": SWAP3},
    )


def reshape_moves_rows() -> Any:
    # (N, F) -> (N*F/2, 2) -> (N, F): a reshape round trip that misaligns nothing here,
    # but the first reshape alone does not keep one row per batch entry
    return _model(
        [
            helper.make_node("Reshape", ["x", "s1"], ["r"]),
            helper.make_node("Transpose", ["r"], ["t"], perm=[1, 0]),
            helper.make_node("Reshape", ["t", "s2"], ["y"]),
        ],
        {"s1": _i64(-1, 2), "s2": _i64(-1, FEATURES)},
    )


def batchnorm_training() -> Any:
    c = _f32(np.ones(FEATURES))
    z = _f32(np.zeros(FEATURES))
    return _model(
        [
            helper.make_node(
                "BatchNormalization",
                ["x", "c", "z", "z", "c"],
                ["y", "mean_out", "var_out"],
                training_mode=1,
            )
        ],
        {"c": c, "z": z},
    )


def softmax_over_batch() -> Any:
    return _model([helper.make_node("Softmax", ["x"], ["y"], axis=0)], {})


def reduce_over_batch() -> Any:
    return _model(
        [
            helper.make_node("ReduceMean", ["x"], ["m"], axes=[0], keepdims=1),
            helper.make_node("Add", ["x", "m"], ["y"]),
        ],
        {},
    )


def gather_swaps_rows() -> Any:
    return _model([helper.make_node("Gather", ["x", "idx"], ["y"], axis=0)], {"idx": _i64(1, 0, 2)})


def outer_combination() -> Any:
    # x[:, None, :] + x[None, :, :], then a reduction over the new axis: row i sums all rows
    return _model(
        [
            helper.make_node("Unsqueeze", ["x", "a1"], ["u1"]),
            helper.make_node("Unsqueeze", ["x", "a0"], ["u0"]),
            helper.make_node("Add", ["u1", "u0"], ["s"]),
            helper.make_node("ReduceSum", ["s", "a1"], ["y"], keepdims=0),
        ],
        {"a0": _i64(0), "a1": _i64(1)},
    )


def scan_carries_rows() -> Any:
    # a running sum over the rows: Scan's state carries row i-1 into row i
    body = helper.make_graph(
        [
            helper.make_node("Add", ["acc_in", "row"], ["acc_out"]),
            helper.make_node("Identity", ["acc_out"], ["row_out"]),
        ],
        "running-sum",
        [
            helper.make_tensor_value_info("acc_in", TensorProto.FLOAT, [FEATURES]),
            helper.make_tensor_value_info("row", TensorProto.FLOAT, [FEATURES]),
        ],
        [
            helper.make_tensor_value_info("acc_out", TensorProto.FLOAT, [FEATURES]),
            helper.make_tensor_value_info("row_out", TensorProto.FLOAT, [FEATURES]),
        ],
    )
    return _model(
        [helper.make_node("Scan", ["zero", "x"], ["acc", "y"], body=body, num_scan_inputs=1)],
        {"zero": _f32(np.zeros(FEATURES))},
    )


def dynamic_quantization() -> Any:
    # a quantization scale computed over the whole tensor: every row shifts every other row
    return _model(
        [
            helper.make_node("DynamicQuantizeLinear", ["x"], ["q", "scale", "zp"]),
            helper.make_node("DequantizeLinear", ["q", "scale", "zp"], ["y"]),
        ],
        {},
    )


def _lying_shapes(model: Any, claims: dict[str, list[Any]], *, as_outputs: bool) -> Any:
    """`model` with the owner's (false) shape claims, as value_info or as extra outputs."""
    declared = [helper.make_tensor_value_info(k, TensorProto.FLOAT, v) for k, v in claims.items()]
    (model.graph.output if as_outputs else model.graph.value_info).extend(declared)
    return model


def _pair_swap(*, as_outputs: bool) -> Any:
    # t = x[:, :width // 2] is really (N, 2) but declared (N, 4): a Reshape to (-1, 4) then
    # merges rows 2k and 2k+1, a permutation swaps them, and a Reshape back hands each row
    # its neighbour's values. The half width is not static to inference (a Div on a shape).
    swap = np.zeros((FEATURES, FEATURES), np.float32)
    swap[0, 2] = swap[1, 3] = swap[2, 0] = swap[3, 1] = 1
    model = _model(
        [
            helper.make_node("Shape", ["x"], ["sh"]),
            helper.make_node("Gather", ["sh", "i1"], ["w"], axis=0),
            helper.make_node("Div", ["w", "two"], ["half"]),
            helper.make_node("Slice", ["x", "zero", "half", "i1"], ["t"]),
            helper.make_node("Reshape", ["t", "shp4"], ["r"]),
            helper.make_node("MatMul", ["r", "swap"], ["rp"]),
            helper.make_node("Shape", ["rp"], ["sh2"]),
            helper.make_node("Gather", ["sh2", "i1"], ["w2"], axis=0),
            helper.make_node("Slice", ["rp", "zero", "w2", "i1"], ["rp2"]),
            helper.make_node("Reshape", ["rp2", "shp2"], ["u"]),
            helper.make_node("MatMul", ["u", "w_out"], ["y"]),
        ],
        {
            "i1": _i64(1),
            "two": _i64(2),
            "zero": _i64(0),
            "shp4": _i64(-1, 4),
            "shp2": _i64(-1, 2),
            "swap": swap,
            "w_out": _f32(np.ones((2, 3))),
        },
    )
    claims = {"t": ["batch", FEATURES], "rp2": ["m", 2]}
    return _lying_shapes(model, claims, as_outputs=as_outputs)


def value_info_lies() -> Any:
    return _pair_swap(as_outputs=False)


def output_shape_lies() -> Any:
    return _pair_swap(as_outputs=True)


def quantize_scale_per_axis() -> Any:
    # a per-axis scale is applied along `axis` (0), not broadcast from the right: with a
    # batched (N,) scale over an (N, N) tensor whose batch is axis 1, row j reads every scale
    # (a[i, j] = |s[j]|, q[i, j] = a[i, j] / scale[i] with scale[i] = exp(-s[i]))
    return _model(
        [
            helper.make_node("Shape", ["x"], ["n"], start=0, end=1),
            helper.make_node("Concat", ["n", "n"], ["nn"], axis=0),
            helper.make_node("ConstantOfShape", ["nn"], ["zeros"]),
            helper.make_node("ReduceMax", ["x"], ["s"], axes=[1], keepdims=0),
            helper.make_node("Unsqueeze", ["s", "ax0"], ["s_row"]),
            helper.make_node("Add", ["zeros", "s_row"], ["a_signed"]),
            helper.make_node("Abs", ["a_signed"], ["a"]),
            helper.make_node("Neg", ["s"], ["minus_s"]),
            helper.make_node("Exp", ["minus_s"], ["scale"]),
            helper.make_node("QuantizeLinear", ["a", "scale"], ["q"], axis=0),
            helper.make_node("Cast", ["q"], ["qf"], to=TensorProto.FLOAT),
            helper.make_node("Transpose", ["qf"], ["qt"], perm=[1, 0]),
            helper.make_node("ReduceMax", ["qt"], ["r"], axes=[1], keepdims=1),
            helper.make_node("Add", ["r", "zc"], ["y"]),
        ],
        {"ax0": _i64(0), "zc": _f32(np.zeros((1, 3)))},
        opset=15,
    )


def sequence_map_reads_outer_scope() -> Any:
    # SequenceMap over a constant sequence: its body sums the outer-scope x over the batch
    body = helper.make_graph(
        [
            helper.make_node("ReduceSum", ["x", "ax0"], ["colsum"], keepdims=1),
            helper.make_node("Add", ["elem", "colsum"], ["o"]),
        ],
        "body",
        [helper.make_tensor_value_info("elem", TensorProto.FLOAT, [1, FEATURES])],
        [helper.make_tensor_value_info("o", TensorProto.FLOAT, [1, FEATURES])],
    )
    return _model(
        [
            helper.make_node("SequenceConstruct", ["c"], ["seq"]),
            helper.make_node("SequenceMap", ["seq"], ["seq2"], body=body),
            helper.make_node("SequenceAt", ["seq2", "zero"], ["leak"]),
            helper.make_node("Add", ["x", "leak"], ["y"]),
        ],
        {"c": _f32(np.zeros((1, FEATURES))), "zero": np.array(0, np.int64), "ax0": _i64(0)},
    )


# attack -> (graph, the operator the check must name)
MIXING: dict[str, tuple[Callable[[], Any], str]] = {
    "concat-rotated-rows": (concat_rotated_rows, "Slice"),
    "concat-shifts-rows": (concat_shifts_rows, "Concat"),
    "gemm-transA": (gemm_trans_a, "Gemm"),
    "matmul-input-second": (matmul_input_second, "MatMul"),
    "flatten-axis0": (flatten_axis0, "Flatten"),
    "transpose-then-contract": (transpose_then_contract, "MatMul"),
    "reshape-moves-rows": (reshape_moves_rows, "Reshape"),
    "batchnorm-training": (batchnorm_training, "BatchNormalization"),
    "softmax-over-batch": (softmax_over_batch, "Softmax"),
    "reduce-over-batch": (reduce_over_batch, "ReduceMean"),
    "gather-swaps-rows": (gather_swaps_rows, "Gather"),
    "outer-combination": (outer_combination, "Add"),
    "scan-carries-rows": (scan_carries_rows, "Scan"),
    "dynamic-quantization": (dynamic_quantization, "DynamicQuantizeLinear"),
    "value-info-lies": (value_info_lies, "Reshape"),
    "output-shape-lies": (output_shape_lies, "Reshape"),
    "quantize-scale-per-axis": (quantize_scale_per_axis, "QuantizeLinear"),
    "sequence-map-reads-outer-scope": (sequence_map_reads_outer_scope, "SequenceMap"),
}
# attacks that pair rows up need an even batch
ROWS = {"value-info-lies": 4, "output-shape-lies": 4}


def honest_mlp() -> Any:
    return _model(
        [
            helper.make_node("MatMul", ["x", "w"], ["h"]),
            helper.make_node("Relu", ["h"], ["r"]),
            helper.make_node("Gemm", ["r", "w", "b"], ["g"]),
            helper.make_node("Softmax", ["g"], ["y"], axis=-1),
        ],
        {"w": W, "b": _f32(np.ones(FEATURES))},
    )


def honest_transpose_round_trip() -> Any:
    return _model(
        [
            helper.make_node("Unsqueeze", ["x", "a2"], ["u"]),  # (N, F, 1)
            helper.make_node("Transpose", ["u"], ["t"], perm=[1, 0, 2]),  # (F, N, 1)
            helper.make_node("ReduceMax", ["t"], ["m"], axes=[0], keepdims=1),  # over F only
            helper.make_node("Transpose", ["m"], ["t2"], perm=[1, 0, 2]),  # (N, 1, 1)
            helper.make_node("Reshape", ["t2", "shape"], ["r"]),  # (N, 1)
            helper.make_node("Mul", ["x", "r"], ["y"]),
        ],
        {"a2": _i64(2), "shape": _i64(0, 1)},
    )


def honest_reshape() -> Any:
    return _model(
        [
            helper.make_node("Reshape", ["x", "s1"], ["r"]),  # (N, 2, 2)
            helper.make_node("ReduceSum", ["r", "ax"], ["s"], keepdims=0),  # (N, 2)
            helper.make_node("Flatten", ["s"], ["y"], axis=1),
        ],
        {"s1": _i64(-1, 2, 2), "ax": _i64(2)},
    )


def honest_embedding_lookup() -> Any:
    # row i reads the table at an index computed from row i only (an embedding lookup)
    return _model(
        [
            helper.make_node("Slice", ["x", "s0", "e0", "a1"], ["first"]),
            helper.make_node("Clip", ["first", "lo", "hi"], ["clipped"]),
            helper.make_node("Cast", ["clipped"], ["idx"], to=TensorProto.INT64),
            helper.make_node("Gather", ["table", "idx"], ["rows"], axis=0),
            helper.make_node("Squeeze", ["rows", "a1"], ["y"]),
        ],
        {
            "s0": _i64(0),
            "e0": _i64(1),
            "a1": _i64(1),
            "lo": _f32(-5),
            "hi": _f32(4),
            "table": _f32(np.arange(10 * FEATURES).reshape(10, FEATURES)),
        },
    )


def honest_nodes_out_of_order() -> Any:
    # runtimes accept nodes listed after their consumers, as onnxruntime's quantizer writes them
    model = honest_mlp()
    nodes = list(model.graph.node)[::-1]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model


__all__ = ["small_zoo"]

HONEST: dict[str, Callable[[], Any]] = {
    "mlp-gemm-softmax": honest_mlp,
    "transpose-round-trip": honest_transpose_round_trip,
    "reshape-within-rows": honest_reshape,
    "embedding-lookup": honest_embedding_lookup,
    "nodes-out-of-order": honest_nodes_out_of_order,
}


def _run(model: Any, x: np.ndarray) -> np.ndarray:
    ort = onnxruntime()
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.asarray(sess.run(["y"], {"x": x})[0])


def _rows_leak(model: Any, rows: int = 3) -> bool:
    """Changing input row 1 changes another output row (or the output's shape)."""
    rng = np.random.default_rng(0)
    x = _f32(rng.normal(size=(rows, FEATURES)))
    before = _run(model, x)
    x2 = x.copy()
    x2[1] += _f32(rng.normal(size=FEATURES)) * 3
    after = _run(model, x2)
    if before.shape != after.shape or before.shape[0] != rows:
        return True
    others = [i for i in range(rows) if i != 1]
    return not np.array_equal(before[others], after[others])


@pytest.mark.parametrize("name", sorted(MIXING))
def test_a_row_mixing_graph_is_refused(name: str) -> None:
    build, op_type = MIXING[name]
    model = build()
    leaks = _rows_leak(model, ROWS.get(name, 3))
    assert leaks, f"{name} does not actually leak: the test proves nothing"
    verdict = check_row_independence(model)
    assert not verdict.proven, name
    assert verdict.reason.startswith(f"{op_type} node"), verdict.reason


@pytest.mark.parametrize("name", sorted(HONEST))
def test_an_honest_graph_is_proven(name: str) -> None:
    model = HONEST[name]()
    assert not _rows_leak(model)
    verdict = check_row_independence(model)
    assert verdict.proven, verdict.reason


def test_the_zoo_batches_across_tenants(small_zoo: Path) -> None:
    models = sorted(small_zoo.glob("*.onnx"))
    assert models
    for path in models:
        verdict = check_row_independence(onnx.load_model_from_string(path.read_bytes()))
        assert verdict.proven, (path.name, verdict.reason)


def test_every_zoo_variant_but_dynamic_int8_batches_across_tenants(
    small_zoo: Path, small_manifest: Manifest
) -> None:
    """What the README says of the zoo, on the generated variants (static QDQ included)."""
    zoo_entry = entry(small_manifest, "digits-mlp-small")
    generated = generate_variants(
        zoo_entry.to_model_record(),
        load_model_bytes(small_zoo, zoo_entry),
        load_calibration(small_zoo, zoo_entry)[:16],
    )
    verdicts = {
        v.spec.variant_id: check_row_independence(onnx.load_model_from_string(v.onnx_bytes))
        for v in generated
        if isinstance(v, GeneratedVariant)
    }
    assert any(vid.endswith(".int8.onnxruntime") for vid in verdicts)
    for vid, verdict in verdicts.items():
        dynamic = vid.endswith(".int8-dyn.onnxruntime")
        assert verdict.proven != dynamic, (vid, verdict.reason)
