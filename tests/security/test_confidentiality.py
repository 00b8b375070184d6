"""Plaintext never reaches the untrusted side: logs, the store, Ray's session dir, the data
dir, /tmp, the workers' stderr, error bodies.

A real `infaas serve` runs; an owner registers a model whose weights and
initializer name are recognisable markers, a tenant sends an input made of a
recognisable float pattern, and both are served for real (variants generated,
profiled in the worker's preparation child, inference answered). The owner
also uploads a broken copy of the model (its marker initializer stored as
external data) and the tenant sends the marker input in a wrong shape: both are
refused. After a clean shutdown, every file the service wrote — its log, the
SQLite store (and WAL), the sealed artifacts, the key service's files, Ray's
session directory (logs, the workers' stdout/stderr, object spill) — and every
file created or changed under /tmp while it ran (outside pytest's own
directories, which hold the test's fixtures) is scanned for the markers: raw
bytes, hex, base64 (both alphabets, every alignment) and the decimal text a
log line would print. So is every HTTP body the clients received and every
error message they raised. A positive control proves the scan finds them where
they are.
"""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from onnx import TensorProto, helper, numpy_helper

from infaas import Client
from infaas.artifacts import MODEL_PART, artifact_name
from infaas.errors import InfaasError
from infaas.keyservice.enrolment import issue_enrolment, load_enrolment_key
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


def scan_bytes(items: dict[str, bytes]) -> dict[str, list[str]]:
    """Which markers appear in which of `items` (name -> content)."""
    forms = markers()
    found: dict[str, list[str]] = {}
    for name, data in items.items():
        for what, fs in forms.items():
            if any(f in data for f in fs):
                found.setdefault(what, []).append(name)
    return found


def scan_files(paths: list[Path]) -> dict[str, list[str]]:
    """Which markers appear in which of `paths` (unreadable files are skipped)."""
    found: dict[str, list[str]] = {}
    for path in paths:
        try:
            with path.open("rb") as f:
                data = f.read(MAX_SCAN_BYTES)
        except OSError:
            continue
        for what, names in scan_bytes({str(path): data}).items():
            found.setdefault(what, []).extend(names)
    return found


def scan(roots: list[Path]) -> dict[str, list[str]]:
    """Which markers appear in which files under `roots`."""
    return scan_files(
        [p for root in roots for p in sorted(root.rglob("*")) if p.is_file() and not p.is_symlink()]
    )


TMP = Path("/tmp")


def tmp_files(skip: list[Path]) -> dict[Path, tuple[int, int]]:
    """Regular files under /tmp (not under `skip`), with their mtime and size."""
    out: dict[Path, tuple[int, int]] = {}
    for dirpath, dirnames, filenames in os.walk(TMP):
        here = Path(dirpath)
        dirnames[:] = [d for d in dirnames if here / d not in skip]
        for name in filenames:
            path = here / name
            with contextlib.suppress(OSError):
                st = path.lstat()
                if stat.S_ISREG(st.st_mode):
                    out[path] = (st.st_mtime_ns, st.st_size)
    return out


def created_or_changed(
    before: dict[Path, tuple[int, int]], after: dict[Path, tuple[int, int]]
) -> list[Path]:
    return sorted(p for p, sig in after.items() if before.get(p) != sig)


@dataclass
class Seen:
    """Everything the test's clients received: HTTP bodies and the errors they raised."""

    bodies: dict[str, bytes] = field(default_factory=dict)
    errors: int = 0

    def response(self, r: httpx.Response) -> None:
        r.read()
        key = f"{len(self.bodies)}: HTTP {r.status_code} {r.request.method} {r.url.path}"
        self.bodies[key] = r.content
        self.errors += r.status_code >= 400

    def refused(self, e: InfaasError) -> None:
        self.bodies[f"{len(self.bodies)}: {type(e).__name__}"] = f"{e.message} {e.detail}".encode()


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
def tmp_skip(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """pytest's own directories under /tmp (every session's: they hold test fixtures)."""
    return [tmp_path_factory.getbasetemp().parent]


@pytest.fixture(scope="module")
def tmp_before(tmp_skip: list[Path]) -> dict[Path, tuple[int, int]]:
    return tmp_files(tmp_skip)


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, tmp_before: dict[Path, tuple[int, int]]
) -> Iterator[Served]:
    s = start_serve(tmp_path_factory.mktemp("confidential"), "--no-zoo")
    try:
        yield s
    finally:
        stop_serve(s, remove_ray_dir=False)


def external_data_model() -> bytes:
    """The marker model with its marker-named initializer moved to external data."""
    model = onnx.load_model_from_string(marker_model())
    init = next(t for t in model.graph.initializer if t.name == INIT_NAME)
    init.ClearField("raw_data")
    init.data_location = TensorProto.EXTERNAL
    for k, v in {"location": "data/credentials/admin.json", "offset": "0", "length": "256"}.items():
        entry = init.external_data.add()
        entry.key, entry.value = k, v
    data: bytes = model.SerializeToString()
    return data


def _refused_attempts(owner: Client, tenant: Client, seen: Seen) -> None:
    """A broken upload naming the marker, and the marker input in a wrong shape: refused."""
    rng = np.random.default_rng(8)
    x_val = rng.normal(size=(16, N_IN)).astype(np.float32)
    owner.upload_model(
        "marker-broken", "marker", "gemm", external_data_model(), x_val, None, num_classes=N_OUT,
        declared_accuracy=0.5,
    )  # fmt: skip
    with pytest.raises(InfaasError) as refused:
        owner.wait_ready("marker-broken", progress=False, timeout_s=900)
    seen.refused(refused.value)
    assert "external data" in refused.value.message
    wrong = np.concatenate([INPUT, INPUT[:, :3]], axis=1)
    with pytest.raises(InfaasError) as refused:
        tenant.infer(task="marker", inputs=wrong, latency_ms=10_000)
    seen.refused(refused.value)


def _serve_the_marker_model(owner: Client, tenant: Client, admin_key: Ed25519PrivateKey) -> None:
    owner.attest_keyservice()
    owner.register_owner(issue_enrolment(admin_key, "marker-owner", "owner"))
    tenant.attest_keyservice()
    tenant.register_tenant(issue_enrolment(admin_key, "marker-tenant", "tenant"))
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


def test_no_plaintext_marker_on_the_untrusted_side(
    served: Served, tmp_skip: list[Path], tmp_before: dict[Path, tuple[int, int]]
) -> None:
    seen = Seen()
    with contextlib.ExitStack() as stack:

        def client(creds_path: Path | None = None, **kw: object) -> Client:
            http = stack.enter_context(
                httpx.Client(
                    base_url=served.url, timeout=120.0, event_hooks={"response": [seen.response]}
                )
            )
            if creds_path is not None:
                return Client.from_credentials(creds_path, base_url=served.url, http=http)
            return Client(served.url, http=http, **kw)  # type: ignore[arg-type]

        admin = client(served.credentials("admin"))
        owner_creds = admin.create_owner("marker-owner")
        tenant_creds = admin.create_tenant("marker-tenant")
        owner, tenant = (
            client(
                api_token=c.token, principal=c.principal, role=c.role, keyservice=admin.keyservice
            )
            for c in (owner_creds, tenant_creds)
        )
        _serve_the_marker_model(owner, tenant, load_enrolment_key(served.data_dir))
        _refused_attempts(owner, tenant, seen)
    assert seen.errors >= 1, "no error body reached the clients: the check would be vacuous"
    found = scan_bytes(seen.bodies)
    assert found == {}, f"plaintext markers in what the clients received: {found}"

    code = stop_serve(served, remove_ray_dir=False)
    assert code == 0, served.log_text()[-3000:]
    try:
        roots = [served.log.parent, served.ray_dir]  # the data dir is under the first
        assert any(p.is_file() for p in served.ray_dir.rglob("*.log")), "no Ray logs to scan"
        # the workers' stderr (and the Serve replicas'): Ray keeps each process's in a .err
        assert any(p.is_file() for p in served.ray_dir.rglob("worker-*.err")), "no worker stderr"
        stored = artifact_name("marker-owner", "marker-model", MODEL_PART)
        assert (served.data_dir / "artifacts" / f"{stored}.sealed").is_file()
        found = scan(roots)
        assert found == {}, f"plaintext markers on the untrusted side: {found}"
        new_in_tmp = created_or_changed(tmp_before, tmp_files([*tmp_skip, served.ray_dir]))
        found = scan_files(new_in_tmp)
        assert found == {}, f"plaintext markers in files written under /tmp: {found}"
        # control: the scan did read the store, where metadata is in the clear by design
        store = served.data_dir / "infaas.db"
        assert b"marker-tenant" in store.read_bytes() + _wal(store)
    finally:
        shutil.rmtree(served.ray_dir, ignore_errors=True)


def test_the_tmp_snapshot_sees_a_file_written_during_the_run(tmp_skip: list[Path]) -> None:
    before = tmp_files(tmp_skip)
    path = TMP / f"infaas-scan-control-{os.getpid()}.bin"
    try:
        path.write_bytes(b"." + WEIGHTS.tobytes())
        new = created_or_changed(before, tmp_files(tmp_skip))
        assert path in new
        assert "weights" in scan_files(new)
    finally:
        path.unlink(missing_ok=True)
