"""Neither runtime writes telemetry when used through `variants` (security regression).

onnxruntime's telemetry database (~/.cache/Microsoft) and OpenVINO's client id and
usage statistics (~/intel) record graph names, producers and run durations: model
metadata a tenant never agreed to share. Each check runs in a fresh subprocess
with HOME pointing at an empty directory, so nothing was imported before.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

TINY_MODEL = """
import numpy as np
from onnx import TensorProto, helper, numpy_helper
w = numpy_helper.from_array(np.random.default_rng(0).normal(size=(16, 4)).astype(np.float32), "w")
g = helper.make_graph(
    [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["logits"])],
    "secret-graph-name",
    [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
    [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 4])],
    initializer=[w],
)
m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], producer_name="secret")
m.ir_version = 9
model = m.SerializeToString()
x = np.random.default_rng(1).normal(size=(8, 16)).astype(np.float32)
"""

THROUGH_VARIANTS = (
    TINY_MODEL
    + """
from infaas.types import ModelRecord
from variants.generate import GeneratedVariant, generate_variants
from variants.runtime import load_variant
import hashlib
record = ModelRecord(model_id="tiny", task="t", architecture="a",
                     artifact_sha256=hashlib.sha256(model).hexdigest(),
                     size_bytes=len(model), num_parameters=64)
ran = 0
for v in generate_variants(record, model, x):
    if isinstance(v, GeneratedVariant):
        load_variant(v.spec, v.onnx_bytes, threads=1).run(x)
        ran += 1
print("ran", ran)
"""
)

DIRECT = (
    TINY_MODEL
    + """
import onnxruntime as ort
ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, {"x": x})
import openvino as ov
core = ov.Core()
core.compile_model(core.read_model(model=model, weights=b""), "CPU")(x)
print("ran direct")
"""
)


def _run(code: str, home: Path) -> str:
    env = {
        k: v
        for k, v in os.environ.items()
        # onnxruntime also stays quiet where CI is set: drop it, so both runs see a
        # user's environment and the control run can show what the defaults write.
        if k not in ("ORT_DISABLE_TELEMETRY", "HOME", "XDG_CACHE_HOME", "CI")
    }
    env.update(HOME=str(home), PYTHONPATH=str(REPO))
    home.mkdir()
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        cwd=home,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_variants_write_no_telemetry(tmp_path: Path) -> None:
    home = tmp_path / "home"
    out = _run(THROUGH_VARIANTS, home)
    assert "ran 6" in out or "ran 5" in out, out  # 5 where the CPU has no bf16
    assert not (home / ".cache" / "Microsoft").exists(), _files(home)
    # The only thing under ~/intel is the opt-out consent file, saying "no".
    intel = home / "intel"
    assert _files(intel) == ["openvino_telemetry"], _files(home)
    assert (intel / "openvino_telemetry").read_text().strip() == "0"
    leaked = [f for f in _files(home) if f not in ("intel/openvino_telemetry",)]
    assert leaked == [], leaked


def test_control_runtimes_do_write_telemetry_by_default(tmp_path: Path) -> None:
    """Proves the check above can fail: used directly, the runtimes do write."""
    home = tmp_path / "home"
    _run(DIRECT, home)
    assert (home / ".cache" / "Microsoft").exists(), _files(home)
