"""A model owner's graph that tries to read host files or run unvetted operators is refused.

Each model is what an owner would upload: an initializer stored as external
data naming a host path the worker can read (its credentials, its sealing key),
hidden at the top, in a sparse initializer, in a ``Constant`` inside an ``If``
branch; a custom-domain operator inside a branch; a model-local function. The
refusal must come before ``onnx.checker`` runs (the checker opens the path), so
the answer is the same whether the named file exists or not.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from infaas.errors import InvalidModel
from variants.admission import validate_model

SECRET = b"owner-must-never-read-this"


def _graph(nodes: list[Any], inits: list[Any] | None = None, name: str = "g") -> Any:
    return helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        initializer=inits or [],
    )


def _model(graph: Any, **kw: Any) -> bytes:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], **kw)
    model.ir_version = 8
    return bytes(model.SerializeToString())


def _external(name: str, location: str) -> Any:
    t = numpy_helper.from_array(np.zeros(4, np.float32), name)
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    for k, v in {"location": location, "offset": "0", "length": "16"}.items():
        entry = t.external_data.add()
        entry.key, entry.value = k, v
    return t


def external_initializer(location: str) -> bytes:
    return _model(_graph([helper.make_node("Add", ["x", "w"], ["y"])], [_external("w", location)]))


def external_sparse_initializer(location: str) -> bytes:
    values = _external("w", location)
    indices = numpy_helper.from_array(np.arange(4, dtype=np.int64), "w_idx")
    sparse = helper.make_sparse_tensor(values, indices, [4])
    graph = _graph([helper.make_node("Add", ["x", "w"], ["y"])])
    graph.sparse_initializer.append(sparse)
    return _model(graph)


def external_constant_in_branch(location: str) -> bytes:
    def branch(name: str, value: Any) -> Any:
        return helper.make_graph(
            [helper.make_node("Constant", [], [f"{name}_c"], value=value)],
            name,
            [],
            [helper.make_tensor_value_info(f"{name}_c", TensorProto.FLOAT, [4])],
        )

    plain = numpy_helper.from_array(np.zeros(4, np.float32), "plain")
    cond = numpy_helper.from_array(np.array(True), "cond")
    return _model(
        _graph(
            [
                helper.make_node(
                    "If",
                    ["cond"],
                    ["c"],
                    then_branch=branch("then", _external("hidden", location)),
                    else_branch=branch("else", plain),
                ),
                helper.make_node("Add", ["x", "c"], ["y"]),
            ],
            [cond],
        )
    )


def custom_op_in_branch(location: str) -> bytes:
    del location

    def branch(name: str, op: str, domain: str) -> Any:
        return helper.make_graph(
            [helper.make_node(op, ["x"], [f"{name}_y"], domain=domain)],
            name,
            [],
            [helper.make_tensor_value_info(f"{name}_y", TensorProto.FLOAT, ["batch", 4])],
        )

    cond = numpy_helper.from_array(np.array(True), "cond")
    graph = _graph(
        [
            helper.make_node(
                "If",
                ["cond"],
                ["y"],
                then_branch=branch("then", "ReadHostFile", "com.evil"),
                else_branch=branch("else", "Relu", ""),
            )
        ],
        [cond],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.evil", 1)],
    )
    model.ir_version = 8
    return bytes(model.SerializeToString())


def local_function(location: str) -> bytes:
    del location
    fn = helper.make_function(
        "com.owner", "Twice", ["a"], ["b"], [helper.make_node("Add", ["a", "a"], ["b"])],
        [helper.make_opsetid("", 17)],
    )  # fmt: skip
    graph = _graph([helper.make_node("Twice", ["x"], ["y"], domain="com.owner")])
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.owner", 1)],
        functions=[fn],
    )
    model.ir_version = 8
    return bytes(model.SerializeToString())


ATTACKS = {
    "external-initializer": (external_initializer, "external data"),
    "external-sparse-initializer": (external_sparse_initializer, "external data"),
    "external-constant-in-if-branch": (external_constant_in_branch, "external data"),
    "custom-op-in-if-branch": (custom_op_in_branch, "com.evil::ReadHostFile"),
    "model-local-function": (local_function, "model-local functions"),
}


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_a_model_reaching_outside_itself_is_refused(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    build, says = ATTACKS[name]
    # the worker's working directory holds a secret the owner names by a relative path
    monkeypatch.chdir(tmp_path)
    (tmp_path / "credentials.json").write_bytes(SECRET * 4)
    answers = []
    for location in ("credentials.json", "no-such-file.json"):
        with pytest.raises(InvalidModel) as refused:
            validate_model(build(location), "model evil")
        answers.append(refused.value.message)
        assert says in refused.value.message
        assert SECRET.decode() not in refused.value.message
    # the same answer whether the host file exists or not: the path was never resolved
    assert answers[0] == answers[1].replace("no-such-file.json", "credentials.json")
