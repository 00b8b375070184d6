"""The public surface, settings layering, domain-type validation and the error registry."""

from __future__ import annotations

import ast
import types
from pathlib import Path

import pytest
from pydantic import ValidationError

import infaas
from infaas import errors
from infaas.settings import Settings, load_settings
from infaas.types import SLO, Backend, Precision, Quantization, TensorSpec, VariantSpec


def test_exported_members() -> None:
    # The export list is derived from the package's explicit re-exports (`from m import X as X`),
    # and every public non-module name it holds must be among them (submodules appear as a side
    # effect of importing them, so they do not count).
    tree = ast.parse(Path(infaas.__file__).read_text())
    reexported = {
        alias.asname
        for node in ast.walk(tree)  # `if TYPE_CHECKING:` holds the lazy exports' imports
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
        if alias.asname == alias.name
    }
    public = {
        name
        for name, value in vars(infaas).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert set(infaas.__all__) == reexported | {"__version__"}
    assert public <= reexported
    for name in infaas.__all__:
        assert getattr(infaas, name) is not None, name


def test_settings_layering(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("http_port: 9100\nnum_cpus: 4\n")
    s = load_settings(cfg)
    assert (s.http_port, s.num_cpus) == (9100, 4)
    monkeypatch.setenv("INFAAS_HTTP_PORT", "9200")
    assert load_settings(cfg).http_port == 9200
    assert load_settings(cfg, http_port=9300).http_port == 9300
    data = Path("data").resolve()  # the data dir is absolute (tests/unit/test_data_dir_absolute.py)
    assert load_settings(cfg).resolved_store_url == f"sqlite:///{data}/infaas.db"


def test_production_refuses_simulated_tee(tmp_path: Path) -> None:
    cfg = tmp_path / "prod.yaml"
    cfg.write_text("production: true\ntee_backend: simulated\n")
    with pytest.raises(ValidationError, match="refuse the simulated TEE"):
        load_settings(cfg)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_settings(tmp_path / "nope.yaml")


def test_unknown_setting_is_refused() -> None:
    with pytest.raises(ValidationError):
        Settings(http_prot=1)  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"precision": Precision.INT8}, "must name its quantization"),
        ({"quantization": Quantization.DYNAMIC}, "only int8 variants are quantized"),
        ({"precision": Precision.BF16}, "bf16 variants run on openvino"),
    ],
)
def test_variant_spec_consistency(kwargs: dict[str, object], message: str) -> None:
    base: dict[str, object] = {
        "variant_id": "m.fp32.onnxruntime",
        "model_id": "m",
        "task": "t",
        "architecture": "a",
        "precision": Precision.FP32,
        "backend": Backend.ONNXRUNTIME,
    }
    with pytest.raises(ValidationError, match=message):
        VariantSpec(**{**base, **kwargs})  # type: ignore[arg-type]


def test_slo_and_tensor_bounds() -> None:
    with pytest.raises(ValidationError):
        SLO(latency_ms=0)
    with pytest.raises(ValidationError):
        SLO(latency_ms=10, min_accuracy=1.5)
    with pytest.raises(ValidationError, match="positive"):
        TensorSpec(name="x", shape=(3, 0))


def test_error_codes_round_trip() -> None:
    for cls in [errors.ModelNotFound, errors.DecryptionFailed, errors.NoFeasibleVariant]:
        err = cls("boom", thing=1)
        body = err.to_problem()
        assert body["type"] == f"/problems/{cls.code}" and body["detail"] == "boom"
        assert body["status"] == cls.status_code and body["thing"] == 1
        back = errors.error_from_problem(body)
        assert type(back) is cls and back.message == "boom"
        assert back.status_code == err.status_code and back.detail == {"thing": 1}
    over = errors.error_from_code("overloaded", "busy", {"retry_after_s": 2.5})
    assert isinstance(over, errors.Overloaded) and over.retry_after_s == 2.5
    assert type(errors.error_from_code("never-heard", "x")) is errors.InfaasError
