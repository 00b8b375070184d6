"""What an owner's ONNX model may contain before any runtime or checker sees it.

A model owner is not trusted by the tenants nor by the host, and the worker
that prepares the model holds other parties' keys. So the bytes are inspected
as data first, everywhere in the graph, subgraphs and model-local functions
included:

* **no external data**: a tensor stored as external data names a file path;
  onnxruntime and OpenVINO, loading from bytes, resolve it against the
  worker's working directory, and ``onnx.checker`` opens it too (both reading
  a host file and telling the owner whether it exists). Initializers, sparse
  initializers, ``Constant`` values and every tensor attribute are checked
  before the checker runs.
* **standard operators only**: every node, at any depth, must be an operator
  of the default ONNX domain that both backends implement; a custom domain
  hidden in an ``If``/``Loop`` branch is refused like one at the top.
* **no model-local functions or training information**: neither backend needs
  them for inference and each is another place to hide nodes.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from infaas.errors import InvalidModel

# Domains whose operators both backends implement. Anything else (a custom
# domain, com.microsoft contrib ops) would run on one backend at best.
SUPPORTED_DOMAINS = frozenset({"", "ai.onnx"})


def _subgraphs(node: Any) -> Iterator[Any]:
    for attr in node.attribute:
        if attr.HasField("g"):
            yield attr.g
        yield from attr.graphs


def _graphs(graph: Any) -> Iterator[Any]:
    """`graph` and every graph nested in its nodes' attributes, depth first."""
    yield graph
    for node in graph.node:
        for sub in _subgraphs(node):
            yield from _graphs(sub)


def _tensors(graph: Any) -> Iterator[tuple[str, Any]]:
    """Every TensorProto stored in `graph` itself (not its subgraphs), with where it is.

    Where is said by position, never by the owner's tensor or node names: the
    refusal lands in the job record and the error body, which the host sees.
    """
    for i, t in enumerate(graph.initializer):
        yield f"initializer #{i}", t
    for i, s in enumerate(graph.sparse_initializer):
        yield f"sparse initializer #{i}", s.values
        yield f"sparse initializer #{i} (indices)", s.indices
    for k, node in enumerate(graph.node):
        for attr in node.attribute:
            where = f"attribute {attr.name!r} of node #{k} ({node.op_type})"
            if attr.HasField("t"):
                yield where, attr.t
            for t in attr.tensors:
                yield where, t
            if attr.HasField("sparse_tensor"):
                yield where, attr.sparse_tensor.values
                yield where, attr.sparse_tensor.indices
            for s in attr.sparse_tensors:
                yield where, s.values
                yield where, s.indices


def check_contents(model: Any, what: str = "model") -> None:
    """Refuse external data, non-standard operators, local functions and training info."""
    import onnx

    if len(model.functions):
        raise InvalidModel(f"{what} defines model-local functions, which are not accepted")
    if len(model.training_info):
        raise InvalidModel(f"{what} carries training information, which is not accepted")
    for graph in _graphs(model.graph):
        for where, tensor in _tensors(graph):
            if tensor.data_location == onnx.TensorProto.EXTERNAL or len(tensor.external_data):
                raise InvalidModel(
                    f"{what} stores {where} as external data; weights must be inside the model"
                )
        for k, node in enumerate(graph.node):
            domain = node.domain or ""
            if domain not in SUPPORTED_DOMAINS or not onnx.defs.has(node.op_type, domain):
                qual = f"{domain}::{node.op_type}" if domain else node.op_type
                raise InvalidModel(
                    f"{what} uses operator {qual} (node #{k}), which the "
                    "backends (onnxruntime, OpenVINO) do not support",
                    op_type=node.op_type,
                    domain=domain,
                )


def validate_model(onnx_bytes: bytes, what: str = "model") -> Any:
    """Parse and check FP32 ONNX bytes; returns the ModelProto.

    Raises InvalidModel if the bytes are not an ONNX model, or hold anything
    `check_contents` refuses (naming it), or fail ONNX's own checker.
    """
    import onnx
    from google.protobuf.message import DecodeError  # type: ignore[import-untyped]

    if not isinstance(onnx_bytes, bytes | bytearray | memoryview) or len(onnx_bytes) == 0:
        raise InvalidModel(f"{what} is not an ONNX model: empty or not bytes")
    try:
        # parsing only: loading from a string never follows external-data paths
        model = onnx.load_model_from_string(bytes(onnx_bytes))
    except (DecodeError, ValueError, RuntimeError) as e:
        raise InvalidModel(f"{what} is not an ONNX model ({type(e).__name__})") from e
    if model.ir_version <= 0 or not model.HasField("graph") or len(model.graph.node) == 0:
        raise InvalidModel(f"{what} is not an ONNX model: no IR version or no graph")
    check_contents(model, what)  # before the checker, which would open external files
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as e:
        # the checker's text quotes the owner's node and tensor names: run it locally for them
        raise InvalidModel(f"{what} is not a valid ONNX model (onnx.checker refused it)") from e
    if len(model.graph.input) != 1 or len(model.graph.output) < 1:
        raise InvalidModel(f"{what} must have exactly one input and a logits output")
    return model
