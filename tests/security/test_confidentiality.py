"""Plaintext never reaches the untrusted side: logs, the store, Ray's session dir, the data dir.

A real `infaas serve` runs; an owner registers a model whose weights and
initializer name are recognisable markers, a tenant sends an input made of a
recognisable float pattern, and both are served for real (variants generated,
profiled, inference answered). After a clean shutdown, every file the service
wrote — its log, the SQLite store (and WAL), the sealed artifacts, the key
service's files, Ray's session directory (logs, object spill) — is scanned for
the markers: raw bytes, hex, base64 (both alphabets, every alignment) and the
decimal text a log line would print. A positive control proves the scan finds
them where they are.
"""

from __future__ import annotations

import base64
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from infaas import Client
from infaas.artifacts import MODEL_PART, artifact_name
from infaas.zoo import IR_VERSION, OPSET
from tests.e2e.server import Served, start_serve, stop_serve
from tests.security.markers import encodings

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

N_IN, N_OUT = 16, 4
INIT_NAME = "W_infaas_marker_initializer_c0ffee"
# weights and inputs exactly representable in float32, so their decimal text is known
WEIGHTS = (31337.0 + np.arange(N_IN * N_OUT, dtype=np.float32) / 16).reshape(N_IN, N_OUT)
INPUT = (27182.8125 + np.arange(N_IN, dtype=np.float32) / 32).reshape(1, N_IN)
DECIMALS = (b"31337.0625", b"31337.1875", b"27182.84375", b"27182.875")
MAX_SCAN_BYTES = 1 << 30


def marker_model() -> bytes:
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", INIT_NAME, "b"], ["logits"])],
        "marker",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", N_IN])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", N_OUT])],
        [
            numpy_helper.from_array(WEIGHTS, INIT_NAME),
            numpy_helper.from_array(np.zeros(N_OUT, np.float32), "b"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    data: bytes = model.SerializeToString()
    return data


def markers() -> dict[str, set[bytes]]:
    """Every form of every marker, by what it would reveal."""
    out: dict[str, set[bytes]] = {
        "initializer name": encodings(INIT_NAME.encode()),
        "weights (decimal)": set(DECIMALS[:2]),
        "input (decimal)": set(DECIMALS[2:]),
    }
    w, x = WEIGHTS.tobytes(), INPUT.tobytes()
    out["weights"] = {f for i in range(0, len(w) - 24, 24) for f in encodings(w[i : i + 24])}
    out["input"] = {f for i in range(0, len(x) - 24, 8) for f in encodings(x[i : i + 24])}
    return out


def scan(roots: list[Path]) -> dict[str, list[str]]:
    """Which markers appear in which files under `roots`."""
    forms = markers()
    found: dict[str, list[str]] = {}
    for root in roots:
        for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink()):
            try:
                data = path.read_bytes()[:MAX_SCAN_BYTES]
            except OSError:
                continue
            for what, fs in forms.items():
                if any(f in data for f in fs):
                    found.setdefault(what, []).append(str(path))
    return found


def _wal(db: Path) -> bytes:
    wal = db.with_name(db.name + "-wal")
    return wal.read_bytes() if wal.exists() else b""


def test_the_scan_finds_markers_where_they_are(tmp_path: Path) -> None:
    (tmp_path / "a.bin").write_bytes(b"..." + marker_model() + b"...")
    (tmp_path / "b.log").write_text(
        "input " + base64.b64encode(b"xy" + INPUT.tobytes()).decode() + f" {INPUT.tolist()}\n"
    )
    found = scan([tmp_path])
    assert set(found) == {
        "initializer name",
        "weights",
        "input",
        "input (decimal)",
    }, found
    (tmp_path / "c.txt").write_text(str(WEIGHTS.tolist()))
    assert "weights (decimal)" in scan([tmp_path])


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    s = start_serve(tmp_path_factory.mktemp("confidential"), "--no-zoo")
    try:
        yield s
    finally:
        stop_serve(s, remove_ray_dir=False)


def _serve_the_marker_model(owner: Client, tenant: Client) -> None:
    owner.attest_keyservice()
    owner.register_owner()
    tenant.attest_keyservice()
    tenant.register_tenant()
    rng = np.random.default_rng(7)
    x_val = rng.normal(size=(64, N_IN)).astype(np.float32)
    y_val = np.argmax(x_val @ WEIGHTS, axis=1)
    owner.upload_model(
        "marker-model", "marker", "gemm", marker_model(), x_val, y_val, num_classes=N_OUT
    )
    owner.grant("marker-model", "marker-tenant")
    tenant.accept(str(owner.principal))
    job = owner.wait_ready("marker-model", progress=False, timeout_s=900)
    assert job.state == "ready"
    result = tenant.infer(
        task="marker",
        inputs=INPUT,
        latency_ms=10_000,
        variant_id="marker-model.fp32.onnxruntime",
    )
    np.testing.assert_allclose(result.outputs, INPUT @ WEIGHTS, rtol=1e-5)
    # and once more wherever the scheduler likes
    tenant.infer(task="marker", inputs=INPUT, latency_ms=10_000)


def test_no_plaintext_marker_on_the_untrusted_side(served: Served) -> None:
    with served.client("admin") as admin:
        owner_creds = admin.create_owner("marker-owner")
        tenant_creds = admin.create_tenant("marker-tenant")
        with (
            admin.with_credentials(owner_creds) as owner,
            admin.with_credentials(tenant_creds) as tenant,
        ):
            _serve_the_marker_model(owner, tenant)

    code = stop_serve(served, remove_ray_dir=False)
    assert code == 0, served.log_text()[-3000:]
    try:
        roots = [served.log.parent, served.ray_dir]  # the data dir is under the first
        assert any(p.is_file() for p in served.ray_dir.rglob("*.log")), "no Ray logs to scan"
        stored = artifact_name("marker-owner", "marker-model", MODEL_PART)
        assert (served.data_dir / "artifacts" / f"{stored}.sealed").is_file()
        found = scan(roots)
        assert found == {}, f"plaintext markers on the untrusted side: {found}"
        # control: the scan did read the store, where metadata is in the clear by design
        store = served.data_dir / "infaas.db"
        assert b"marker-tenant" in store.read_bytes() + _wal(store)
    finally:
        shutil.rmtree(served.ray_dir, ignore_errors=True)
