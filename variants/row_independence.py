"""Whether output row i of a model depends on input row i alone, as cross-tenant batching needs.

A worker puts rows of several tenants into one model invocation and slices the
output back by position. That is safe only if the graph never lets one row
influence another: a model owner who can read the whole batch (a Concat along
axis 0, a Gemm with ``transA=1``, a Softmax over the batch axis, a Loop that
walks the rows, a quantization scale computed over the whole tensor...) can
hand a victim's row to their own tenant. An op-type allow-list is not enough:
the same op mixes rows or not depending on its attributes and operand
positions, so this module tracks a symbolic batch axis through every node,
subgraphs included, with each op's attributes and ranks.

Every tensor is in one of three states:

* ``CONST``: independent of the input's values (initializers, ``Constant``,
  and what is computed from shapes and constants only);
* ``Batch(axis)``: the batch dimension sits at ``axis`` and slice ``i`` along
  it depends on input row ``i`` (and constants) only;
* ``MIXED``: nothing is proven.

Rules are written per op; an op without a rule is ``MIXED``. The verdict is
sound, not complete: a row-independent model can be refused (it is then
batched per tenant, only slower); a row-mixing model is never passed. The
model is proven only when every graph output is ``Batch(0)``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from variants.skeleton import GRAPH_ATTRIBUTES, dataflow_order, drop_weights, is_small_int, skeleton

__all__ = [
    "CONST",
    "MIXED",
    "Batch",
    "RowIndependence",
    "check_row_independence",
    "drop_weights",
]


@dataclass(frozen=True)
class Batch:
    """The tensor's batch dimension is at `axis`; slices along it stay apart."""

    axis: int


class _Marker:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


CONST = _Marker("CONST")
MIXED = _Marker("MIXED")
State = Batch | _Marker


@dataclass(frozen=True)
class RowIndependence:
    """The verdict: `proven`, or the first node (and why) that may mix rows."""

    proven: bool
    reason: str


class _Mixed(Exception):
    """Raised inside the analysis at the first node that may mix rows."""


# Ops applied element by element (numpy broadcasting for several inputs). Their output
# slice i along the batch axis reads input slices i only.
_ELEMENTWISE = frozenset(
    [
        "Abs",
        "Acos",
        "Acosh",
        "Add",
        "And",
        "Asin",
        "Asinh",
        "Atan",
        "Atanh",
        "BitShift",
        "BitwiseAnd",
        "BitwiseNot",
        "BitwiseOr",
        "BitwiseXor",
        "Cast",
        "CastLike",
        "Ceil",
        "Celu",
        "Clip",
        "Cos",
        "Cosh",
        "Div",
        "Elu",
        "Equal",
        "Erf",
        "Exp",
        "Floor",
        "Gelu",
        "Greater",
        "GreaterOrEqual",
        "HardSigmoid",
        "HardSwish",
        "Identity",
        "IsInf",
        "IsNaN",
        "LeakyRelu",
        "Less",
        "LessOrEqual",
        "Log",
        "Max",
        "Mean",
        "Min",
        "Mish",
        "Mod",
        "Mul",
        "Neg",
        "Not",
        "Or",
        "Pow",
        "PRelu",
        "Reciprocal",
        "Relu",
        "Round",
        "Selu",
        "Shrink",
        "Sigmoid",
        "Sign",
        "Sin",
        "Sinh",
        "Softplus",
        "Softsign",
        "Sqrt",
        "Sub",
        "Sum",
        "Tan",
        "Tanh",
        "ThresholdedRelu",
        "Where",
        "Xor",
    ]
)
# Ops over (N, C, spatial...) inputs that compute each sample on its own; the batch must be
# axis 0 and every other operand constant.
_PER_SAMPLE_NCHW = frozenset(
    [
        "AveragePool",
        "Conv",
        "ConvTranspose",
        "DepthToSpace",
        "GlobalAveragePool",
        "GlobalLpPool",
        "GlobalMaxPool",
        "InstanceNormalization",
        "LRN",
        "LpPool",
        "MaxPool",
        "SpaceToDepth",
    ]
)
_REDUCE = frozenset(
    [
        "ReduceL1",
        "ReduceL2",
        "ReduceLogSum",
        "ReduceLogSumExp",
        "ReduceMax",
        "ReduceMean",
        "ReduceMin",
        "ReduceProd",
        "ReduceSum",
        "ReduceSumSquare",
    ]
)
# Opset from which each Reduce op takes `axes` as an input instead of an attribute.
_REDUCE_AXES_INPUT_SINCE = {"ReduceSum": 13}
_SOFTMAX = frozenset({"Softmax", "LogSoftmax", "Hardmax"})


class _Analysis:
    def __init__(self, model: Any) -> None:
        import onnx

        self.onnx = onnx
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
        inferred = onnx.shape_inference.infer_shapes(skeleton(model))
        # what shape inference says of each tensor, read only for the tensors a rule asks about
        self._typed: dict[str, Any] = {}
        self._collect_shapes(inferred.graph)
        self.values: dict[str, np.ndarray] = {}

    # -- shapes and constant values ----------------------------------------------------------
    def _collect_shapes(self, graph: Any) -> None:
        for vi in [*graph.input, *graph.output, *graph.value_info]:
            t = vi.type.tensor_type
            if t.HasField("shape"):
                self._typed[vi.name] = t.shape.dim
        for init in graph.initializer:
            self._typed[init.name] = init.dims
        for node in graph.node:
            for attr in node.attribute:
                for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
                    self._collect_shapes(sub)

    def shape(self, name: str) -> tuple[int | None, ...] | None:
        """The inferred shape of `name` (None where a dimension is symbolic), if known."""
        dims = self._typed.get(name)
        if dims is None:
            return None
        return tuple(
            d if isinstance(d, int) else (d.dim_value if d.HasField("dim_value") else None)
            for d in dims
        )

    def rank(self, name: str) -> int:
        dims = self._typed.get(name)
        if dims is None:
            raise _Mixed(f"the rank of {name!r} is unknown")
        return len(dims)

    def const_ints(self, name: str, what: str) -> list[int]:
        if name not in self.values:
            raise _Mixed(f"{what} is not a constant")
        return [int(v) for v in np.asarray(self.values[name]).reshape(-1)]

    # -- the walk ---------------------------------------------------------------------------
    def graph(self, graph: Any, env: dict[str, State]) -> list[State]:
        numpy_helper = self.onnx.numpy_helper
        for init in graph.initializer:
            env[init.name] = CONST
            if is_small_int(init):  # shapes, axes, indices: the only values a rule reads
                self.values[init.name] = numpy_helper.to_array(init)
        for sparse in graph.sparse_initializer:
            env[sparse.values.name] = CONST
        for node in dataflow_order(graph.node):
            states = [env.get(i, MIXED) if i else CONST for i in node.input]
            where = f"{node.op_type} node {node.name or '?'}"
            try:
                outs = self.node(node, states)
            except _Mixed as e:
                raise _Mixed(f"{where}: {e}") from None
            for name, state in zip(node.output, outs, strict=False):
                if name:
                    env[name] = state
            if node.op_type == "Constant":
                self._constant_value(node)
        return [env.get(o.name, MIXED) for o in graph.output]

    def _constant_value(self, node: Any) -> None:
        helper = self.onnx.helper
        for attr in node.attribute:
            if attr.name == "value":
                self.values[node.output[0]] = self.onnx.numpy_helper.to_array(attr.t)
            elif attr.name in ("value_int", "value_ints"):
                self.values[node.output[0]] = np.asarray(helper.get_attribute_value(attr))

    def node(self, node: Any, states: list[State]) -> list[State]:
        op = node.op_type
        attrs = {a.name: self.onnx.helper.get_attribute_value(a) for a in node.attribute}
        n_out = len(node.output)
        if node.domain not in ("", "ai.onnx"):
            raise _Mixed(f"operator domain {node.domain!r} is not analysed")
        # a subgraph may read any outer-scope tensor, the batch included, whatever it is fed
        carries_graph = any(a.type in GRAPH_ATTRIBUTES for a in node.attribute)
        if all(s is CONST for s in states) and not carries_graph:
            return [CONST] * n_out
        if any(s is MIXED for s in states):
            raise _Mixed("an input may already mix rows")
        batched = [(i, s) for i, s in enumerate(states) if isinstance(s, Batch)]
        if op in ("Shape", "Size"):
            return [CONST]
        if op in _ELEMENTWISE or op == "Dropout":
            if op == "Dropout" and len(states) > 2 and states[2] is not CONST:
                raise _Mixed("training_mode is not a constant")
            return [self._broadcast(node, states)] * n_out
        if op in _PER_SAMPLE_NCHW:
            self._only_first_batched(batched, 0)
            return [Batch(0)] * n_out
        if op == "BatchNormalization":
            if attrs.get("training_mode", 0) or n_out > 1:
                raise _Mixed("training mode computes statistics over the batch")
            self._only_first_batched(batched, 0)
            return [Batch(0)]
        if op in ("LayerNormalization", "GroupNormalization"):
            self._only_first_batched(batched, 0)
            b = self._axis_of(states[0])
            if op == "LayerNormalization":
                axis = self._norm(attrs.get("axis", -1), self.rank(node.input[0]))
                if b >= axis:
                    raise _Mixed(f"normalises over axes {axis}.. which include the batch axis {b}")
            elif b != 0:
                raise _Mixed("the batch is not axis 0")
            return [Batch(b)] + [MIXED] * (n_out - 1)
        if op in _SOFTMAX or op == "LpNormalization":
            b = self._single(batched)
            rank = self.rank(node.input[0])
            single_axis = self.opset >= 13 or op == "LpNormalization"
            axis = self._norm(attrs.get("axis", -1 if single_axis else 1), rank)
            # before opset 13 Softmax flattens to 2-D at `axis` and normalises over axes axis..
            hit = b == axis if single_axis else b >= axis
            if hit:
                raise _Mixed(f"normalises over axis {axis}, the batch axis")
            return [Batch(b)]
        if op in _REDUCE or op in ("ArgMax", "ArgMin"):
            return [self._reduce(node, attrs, states, batched)]
        if op in ("TopK", "CumSum"):
            b = self._single(batched)
            if op == "TopK":
                axis = attrs.get("axis", -1)
            else:
                axis = self.const_ints(node.input[1], "the CumSum axis")[0]
            if self._norm(axis, self.rank(node.input[0])) == b:
                raise _Mixed("runs along the batch axis")
            return [Batch(b)] * n_out
        if op == "Flatten":
            b = self._single(batched)
            axis = self._norm(attrs.get("axis", 1), self.rank(node.input[0]))
            if not (b == 0 and axis == 1):
                raise _Mixed(f"Flatten(axis={axis}) does not keep the batch axis {b} alone")
            return [Batch(0)]
        if op == "Reshape":
            return [self._reshape(node, attrs, batched)]
        if op == "Transpose":
            b = self._single(batched)
            rank = self.rank(node.input[0])
            perm = list(attrs.get("perm", list(range(rank))[::-1]))
            return [Batch(perm.index(b))]
        if op in ("Squeeze", "Unsqueeze"):
            return [self._squeeze(node, attrs, batched)]
        if op == "Concat":
            axes = {self._axis_of(s) for _, s in batched}
            if len(axes) != 1:
                raise _Mixed("inputs have their batch on different axes")
            b = axes.pop()
            if self._norm(attrs["axis"], self.rank(node.output[0])) == b:
                raise _Mixed("concatenates along the batch axis")
            return [Batch(b)]
        if op == "Split":
            b = self._only_first_batched(batched, None)
            if self._norm(attrs.get("axis", 0), self.rank(node.input[0])) == b:
                raise _Mixed("splits along the batch axis")
            return [Batch(b)] * n_out
        if op == "Slice":
            return [self._slice(node, attrs, batched)]
        if op == "Gather":
            return [self._gather(node, attrs, batched)]
        if op in ("Gemm",):
            return [self._gemm(attrs, states)]
        if op == "MatMul":
            return [self._matmul(node, states)]
        if op == "Tile":
            b = self._only_first_batched(batched, None)
            if self.const_ints(node.input[1], "the repeats")[b] != 1:
                raise _Mixed("repeats the batch axis")
            return [Batch(b)]
        if op == "Pad":
            b = self._only_first_batched(batched, None)
            rank = self.rank(node.input[0])
            pads = attrs["pads"] if self.opset < 11 else self.const_ints(node.input[1], "pads")
            if len(node.input) > 3 and node.input[3]:
                raise _Mixed("pads chosen axes (not analysed)")
            if pads[b] != 0 or pads[b + rank] != 0:
                raise _Mixed("pads the batch axis")
            return [Batch(b)]
        if op == "Expand":
            b = self._only_first_batched(batched, None)
            grown = len(self.const_ints(node.input[1], "the shape")) - self.rank(node.input[0])
            return [Batch(b + max(0, grown))]
        if op in ("QuantizeLinear", "DequantizeLinear"):
            # per-axis and blocked scales apply along `axis`, not by numpy broadcasting:
            # only constant scales and zero points are element-wise with constants
            if any(st is not CONST for st in states[1:]):
                raise _Mixed("the scale or zero point is not a constant")
            return [Batch(self._only_first_batched(batched, None))] * n_out
        if carries_graph and op not in ("If", "Loop", "Scan"):
            raise _Mixed("a subgraph may read the whole outer-scope batch")
        if op in ("Loop", "Scan"):
            raise _Mixed("a loop body may carry state from one row to the next")
        if op == "If":
            # a branch may read any outer-scope tensor, the whole batch included
            raise _Mixed("control-flow branches are not analysed")
        raise _Mixed("no rule proves this operator keeps rows apart")

    # -- rules ------------------------------------------------------------------------------
    @staticmethod
    def _norm(axis: int, rank: int) -> int:
        return axis + rank if axis < 0 else axis

    @staticmethod
    def _axis_of(state: State) -> int:
        if not isinstance(state, Batch):
            raise _Mixed("not a batch tensor")
        return state.axis

    @staticmethod
    def _single(batched: Sequence[tuple[int, State]]) -> int:
        if len(batched) != 1:
            raise _Mixed("more than one operand carries the batch")
        return _Analysis._axis_of(batched[0][1])

    @staticmethod
    def _only_first_batched(batched: Sequence[tuple[int, State]], axis: int | None) -> int:
        """The batch is carried by the first operand only (and at `axis`, if given)."""
        if len(batched) != 1 or batched[0][0] != 0:
            raise _Mixed("an operand other than the data carries the batch")
        b = _Analysis._axis_of(batched[0][1])
        if axis is not None and b != axis:
            raise _Mixed(f"the batch is on axis {b}, not {axis}")
        return b

    def _broadcast(self, node: Any, states: Sequence[State]) -> State:
        """Numpy broadcasting aligns axes from the right: all batches must line up."""
        out_rank = self.rank(node.output[0])
        positions = set()
        for name, state in zip(node.input, states, strict=True):
            if isinstance(state, Batch):
                positions.add(out_rank - self.rank(name) + state.axis)
        if len(positions) != 1:
            raise _Mixed("operands carry the batch on different axes (an outer combination)")
        return Batch(positions.pop())

    def _reduce(
        self, node: Any, attrs: Mapping[str, Any], states: Sequence[State], batched: Any
    ) -> State:
        b = self._only_first_batched(batched, None)
        rank = self.rank(node.input[0])
        keepdims = bool(attrs.get("keepdims", 1))
        if node.op_type in ("ArgMax", "ArgMin"):
            axes = [attrs.get("axis", 0)]
        elif self.opset >= _REDUCE_AXES_INPUT_SINCE.get(node.op_type, 18):
            axes = (
                self.const_ints(node.input[1], "the axes")
                if len(node.input) > 1 and node.input[1]
                else []
            )
        else:
            axes = list(attrs.get("axes", []))
        if not axes:
            if attrs.get("noop_with_empty_axes", 0):
                return Batch(b)
            raise _Mixed("reduces over every axis, the batch included")
        axes = [self._norm(a, rank) for a in axes]
        if b in axes:
            raise _Mixed("reduces over the batch axis")
        return Batch(b if keepdims else b - sum(a < b for a in axes))

    def _reshape(self, node: Any, attrs: Mapping[str, Any], batched: Any) -> State:
        b = self._only_first_batched(batched, 0)
        shape = self.const_ints(node.input[1], "the target shape")
        in_shape = self.shape(node.input[0])
        if not shape:
            raise _Mixed("reshapes to a scalar")
        allowzero = attrs.get("allowzero", 0)
        per_row = in_shape[1:] if in_shape is not None else None
        if per_row is None or any(d is None for d in per_row):
            raise _Mixed("the per-row shape is not static")
        rest = shape[1:]
        if any(d in (0, -1) for d in rest) or any(d < 0 for d in rest):
            raise _Mixed("the per-row target shape is not explicit")
        row_elems = int(np.prod([int(d) for d in per_row if d is not None], dtype=np.int64))
        keeps_rows = (shape[0] == 0 and not allowzero) or shape[0] == -1
        if keeps_rows and int(np.prod(rest, dtype=np.int64)) == row_elems:
            return Batch(b)
        raise _Mixed(f"reshape to {shape} does not keep one row per batch entry")

    def _squeeze(self, node: Any, attrs: Mapping[str, Any], batched: Any) -> State:
        b = self._only_first_batched(batched, None)
        if self.opset >= 13:
            if len(node.input) < 2 or not node.input[1]:
                raise _Mixed("squeezes every unit axis, maybe the batch")
            axes = self.const_ints(node.input[1], "the axes")
        else:
            axes = list(attrs.get("axes", []))
            if not axes:
                raise _Mixed("squeezes every unit axis, maybe the batch")
        if node.op_type == "Squeeze":
            axes = [self._norm(a, self.rank(node.input[0])) for a in axes]
            if b in axes:
                raise _Mixed("squeezes the batch axis")
            return Batch(b - sum(a < b for a in axes))
        out_rank = self.rank(node.output[0])
        pos = b
        for a in sorted(self._norm(a, out_rank) for a in axes):
            if a <= pos:
                pos += 1
        return Batch(pos)

    def _slice(self, node: Any, attrs: Mapping[str, Any], batched: Any) -> State:
        b = self._only_first_batched(batched, None)
        rank = self.rank(node.input[0])
        if self.opset < 10:
            axes = list(attrs.get("axes", range(len(attrs["starts"]))))
        elif len(node.input) > 3 and node.input[3]:
            axes = self.const_ints(node.input[3], "the axes")
        else:
            axes = list(range(len(self.const_ints(node.input[1], "the starts"))))
        if b in [self._norm(a, rank) for a in axes]:
            raise _Mixed("slices the batch axis (shifts or drops rows)")
        return Batch(b)

    def _gather(self, node: Any, attrs: Mapping[str, Any], batched: Any) -> State:
        rank = self.rank(node.input[0])
        axis = self._norm(attrs.get("axis", 0), rank)
        if len(batched) == 1 and batched[0][0] == 1:
            # a lookup in a constant table (an embedding): output slice i reads index row i
            # only; the index tensor's axes take the place of the table's `axis`
            return Batch(axis + self._axis_of(batched[0][1]))
        b = self._only_first_batched(batched, None)
        if axis == b:
            raise _Mixed("gathers along the batch axis")
        q = self.rank(node.input[1])
        return Batch(b if b < axis else b + q - 1)

    def _gemm(self, attrs: Mapping[str, Any], states: Sequence[State]) -> State:
        a, bm = states[0], states[1]
        c = states[2] if len(states) > 2 else CONST
        if bm is not CONST or c is not CONST:
            raise _Mixed("B or C carries the batch (only A may)")
        rows_axis = 1 if attrs.get("transA", 0) else 0
        if self._axis_of(a) != rows_axis:
            raise _Mixed("transA puts the batch on the contracted axis")
        return Batch(0)

    def _matmul(self, node: Any, states: Sequence[State]) -> State:
        ra, rb = self.rank(node.input[0]), self.rank(node.input[1])
        out = self.rank(node.output[0])
        sa, sb = states
        if ra < 2 or rb < 2:
            raise _Mixed("1-D operands contract their only axis")
        if isinstance(sb, Batch) and sb.axis >= rb - 2:
            raise _Mixed("the batch is on a matrix axis of the second operand")
        if isinstance(sa, Batch) and sa.axis == ra - 1:
            raise _Mixed("the batch is the contracted axis of the first operand")
        positions = set()
        if isinstance(sa, Batch):
            # a row axis (ra-2) stays the output's row axis; leading axes broadcast from the right
            positions.add(out - ra + sa.axis)
        if isinstance(sb, Batch):
            positions.add(out - rb + sb.axis)
        if len(positions) != 1:
            raise _Mixed("operands carry the batch on different axes")
        return Batch(positions.pop())


def check_row_independence(model: Any) -> RowIndependence:
    """Prove (or not) that `model` (a ModelProto with one batched input) keeps rows apart."""
    try:
        analysis = _Analysis(model)
        graph = model.graph
        inits = {i.name for i in graph.initializer}
        inputs = [i for i in graph.input if i.name not in inits]
        env: dict[str, State] = {i.name: Batch(0) for i in inputs}
        outs = analysis.graph(graph, env)
    except _Mixed as e:
        return RowIndependence(False, str(e))
    for out, state in zip(graph.output, outs, strict=True):
        if state != Batch(0):
            return RowIndependence(False, f"output {out.name!r} is not one row per input row")
    return RowIndependence(True, "every node keeps batch rows apart")
