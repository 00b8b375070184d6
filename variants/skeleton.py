"""The graph as the row-independence proof reads it: no weights, nodes in dataflow order.

A worker proves a model after it has dropped the weights' values (`drop_weights`:
only small integer tensors, the shapes, axes and indices a rule reads, keep
theirs), and shape inference runs on a `skeleton` whose weights are typed graph
inputs, with nothing of the owner's shape claims kept.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from typing import Any

__all__ = ["GRAPH_ATTRIBUTES", "dataflow_order", "drop_weights", "is_small_int", "skeleton"]


def dataflow_order(nodes: Sequence[Any]) -> list[Any]:
    """`nodes` in an order where every producer comes before its consumers.

    ONNX asks for topological order but runtimes accept any (onnxruntime's
    quantizer writes its QDQ nodes after their consumers), so the listed order
    proves nothing. A node that sits on a cycle, or whose input two nodes produce,
    is left out: what it would produce stays unknown, hence ``MIXED``.
    """
    inputs = [set(node.input) for node in nodes]
    outputs = [list(node.output) for node in nodes]
    producers: dict[str, int] = {}
    twice: set[str] = set()
    for i, names in enumerate(outputs):
        for name in names:
            if name in producers:
                twice.add(name)
            elif name:
                producers[name] = i
    waiting = [0] * len(nodes)
    consumers: dict[int, list[int]] = {}
    for i, read in enumerate(inputs):
        if twice and (twice.intersection(outputs[i]) or twice.intersection(read)):
            waiting[i] += 1  # never ready
        for name in read:
            p = producers.get(name)
            if p is not None:
                waiting[i] += 1
                consumers.setdefault(p, []).append(i)
    ready = deque(i for i in range(len(nodes)) if waiting[i] == 0)
    order: list[Any] = []
    while ready:
        i = ready.popleft()
        order.append(nodes[i])
        for j in consumers.get(i, []):
            waiting[j] -= 1
            if waiting[j] == 0:
                ready.append(j)
    return order


# Initializers up to this many elements are kept as values (axes, shapes, indices);
# larger ones are weights, whose values no rule reads.
_SMALL = 64


_INT32, _INT64 = 6, 7  # onnx.TensorProto.INT32, INT64
GRAPH_ATTRIBUTES = (5, 10)  # onnx.AttributeProto.GRAPH, GRAPHS: what carries a subgraph


def is_small_int(tensor: Any) -> bool:
    return tensor.data_type in (_INT32, _INT64) and math.prod(tensor.dims) <= _SMALL


_DATA_FIELDS = (
    "raw_data",
    "float_data",
    "int32_data",
    "int64_data",
    "double_data",
    "uint64_data",
    "string_data",
)


def drop_weights(model: Any) -> Any:
    """`model` (changed in place) without the values of its weights, which no rule reads.

    A worker parses the decrypted bytes while it holds them and proves the graph
    afterwards, keeping no copy of the weights meanwhile.
    """
    for init in model.graph.initializer:
        if not is_small_int(init):
            for name in _DATA_FIELDS:
                init.ClearField(name)
    return model


def skeleton(model: Any) -> Any:
    """`model` with its weights turned into typed graph inputs, for cheap shape inference.

    Shape inference copies the whole model through C++; the weights' values do not
    matter to it, only their types and shapes.
    """
    from onnx import ModelProto

    skeleton = ModelProto()
    skeleton.ir_version = model.ir_version
    skeleton.opset_import.extend(model.opset_import)
    graph, src = skeleton.graph, model.graph
    graph.name = src.name
    graph.node.extend(dataflow_order(src.node))  # shape inference reads nodes in list order
    graph.input.extend(src.input)
    # the owner's value_info and declared output shapes are claims, not facts: a lying one
    # would feed the rules a per-row size the runtime never sees. Shapes are only what
    # inference derives from the input's declared shape and the constants.
    for out in src.output:
        kept = graph.output.add()
        kept.name = out.name
    listed = {i.name for i in src.input}
    for init in src.initializer:
        if is_small_int(init):
            graph.initializer.append(init)
        elif init.name not in listed:
            typed = graph.input.add()
            typed.name = init.name
            tensor_type = typed.type.tensor_type
            tensor_type.elem_type = init.data_type
            dims = tensor_type.shape.dim
            for d in init.dims:
                dims.add().dim_value = d
    return skeleton
