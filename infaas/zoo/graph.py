"""A tiny ONNX graph builder over numpy initializers, shared by the zoo's networks.

`Graph` emits nodes and, where it is given calibration activations, computes
their numpy values as it goes (the image networks take batch-norm statistics
from them). `OPSET` and `IR_VERSION` are what every zoo model (and every test
graph built by hand) is written with.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

OPSET = 17
# onnx 1.23 writes IR version 14 by default; onnxruntime 1.31 reads at most 13.
IR_VERSION = 9


class Graph:
    """A tiny ONNX graph builder over numpy initializers."""

    def __init__(self, acts: dict[str, np.ndarray] | None = None) -> None:
        # numpy values of the tensors, computed as the graph is built, on a batch of
        # calibration inputs (only where `acts` is given)
        self.acts: dict[str, np.ndarray] = dict(acts or {})
        self.nodes: list[Any] = []
        self.inits: dict[str, np.ndarray] = {}
        self._n = 0

    def name(self, prefix: str) -> str:
        self._n += 1
        return f"{prefix}_{self._n}"

    def const(self, prefix: str, value: np.ndarray) -> str:
        n = self.name(prefix)
        self.inits[n] = np.ascontiguousarray(value, dtype=np.float32)
        return n

    def op(
        self, op_type: str, inputs: Sequence[str], value: np.ndarray | None = None, **attrs: Any
    ) -> str:
        from onnx import helper

        out = self.name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=out, **attrs))
        if value is not None:
            self.acts[out] = value
        elif self.acts and all(i in self.acts or i in self.inits for i in inputs):
            self.acts[out] = np_eval(op_type, [self.acts.get(i, self.inits.get(i)) for i in inputs])
        return out

    def keep_only(self, *names: str) -> None:
        self.acts = {n: self.acts[n] for n in names}

    def finish(
        self, graph_name: str, input_name: str, input_shape: Sequence[int], output: str
    ) -> bytes:
        from onnx import TensorProto, checker, helper, numpy_helper

        self.nodes.append(helper.make_node("Identity", [output], ["logits"], name="logits"))
        x = helper.make_tensor_value_info(
            input_name, TensorProto.FLOAT, ["batch", *[int(d) for d in input_shape]]
        )
        y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", None])
        graph = helper.make_graph(
            self.nodes,
            graph_name,
            [x],
            [y],
            initializer=[numpy_helper.from_array(v, k) for k, v in self.inits.items()],
        )
        model = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", OPSET)],
            producer_name="infaas-zoo",
            producer_version="1",
        )
        model.ir_version = IR_VERSION
        checker.check_model(model)
        return bytes(model.SerializeToString())

    @property
    def num_parameters(self) -> int:
        return int(sum(v.size for v in self.inits.values()))


def np_eval(op_type: str, ins: list[Any]) -> np.ndarray:
    """numpy values of the few ops the image builder emits (besides Conv)."""
    x = ins[0]
    if op_type == "Relu":
        out = np.maximum(x, 0)
    elif op_type == "Add":
        out = x + ins[1]
    elif op_type == "MaxPool":  # 3x3, stride 2, pad 1
        p = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
        win = np.lib.stride_tricks.sliding_window_view(p, (3, 3), axis=(2, 3))
        out = win[:, :, ::2, ::2].max(axis=(4, 5))
    elif op_type == "GlobalAveragePool":
        out = x.mean(axis=(2, 3), keepdims=True)
    elif op_type == "Flatten":
        out = x.reshape(x.shape[0], -1)
    elif op_type == "Gemm":
        out = x @ ins[1] + ins[2]
    else:  # pragma: no cover - the builder emits only the ops above
        raise NotImplementedError(op_type)
    return np.asarray(out, dtype=np.float32)
