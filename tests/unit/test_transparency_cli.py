"""`infaas transparency verify`: anyone checks a deployment's log and a measurement in it.

The key service is built as its Serve replica builds it (its log under the data dir,
its log key under ``simulated-tee/``); the trust bundle comes from `infaas trust
export`. Then the CLI, run as a tenant would, on the log's export file: the key
service's measurement and policy and the worker measurements are found with checked
inclusion proofs; an unknown measurement, an edited entry, a head not signed by the
pinned key, and a log that forked from the head recorded by an earlier run all exit
non-zero, naming why.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from enclave_workers.measurement import worker_measurements
from infaas.cli import main
from infaas.keyservice import KeyServiceTrust
from infaas.keyservice.deployment import KeyServiceIngress
from infaas.keyservice.enrolment import enrolment_public_key
from infaas.settings import Settings
from infaas.transparency.log import (
    TransparencyLog,
    keyservice_entry,
    simulated_log_key,
    worker_entry,
)


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, KeyServiceTrust, dict]:
    """A data dir whose key service has started once, its bundle and its log export."""
    data = tmp_path_factory.mktemp("deployment")
    base = ["--data-dir", str(data), "--store-url", "memory://"]
    assert main(["trust", "export", *base, "--out", str(data / "trust.json")]) == 0
    bundle = KeyServiceTrust.from_json(json.loads((data / "trust.json").read_text()))
    settings = Settings(data_dir=data, store_url="memory://")
    measurements = {pool: m.hex() for pool, m in worker_measurements(settings).items()}
    KeyServiceIngress.func_or_class.__mro__[1](  # type: ignore[attr-defined]
        settings, measurements, enrolment_public_key(data).hex()
    )
    assert (
        main(["transparency", "export", "--data-dir", str(data), "--out", str(data / "log.json")])
        == 0
    )
    return data, bundle, measurements


def verify(data: Path, *extra: str, log: Path | None = None) -> int:
    argv = ["transparency", "verify", "--log", str(log or data / "log.json")]
    return main([*argv, "--bundle", str(data / "trust.json"), *extra])


def test_verify_finds_the_key_service_and_its_workers(
    deployed: tuple[Path, KeyServiceTrust, dict], capsys: pytest.CaptureFixture[str]
) -> None:
    data, bundle, workers = deployed
    wanted = ["--measurement", bundle.measurement, "--policy", bundle.policy_sha256]
    for m in workers.values():
        wanted += ["--measurement", m]
    capsys.readouterr()
    assert verify(data, *wanted, "--json") == 0
    out = json.loads(capsys.readouterr().out)
    kinds = {f["entry"]["kind"] for f in out["found"]}
    assert kinds == {"keyservice", "worker"} and out["size"] >= 1 + len(set(workers.values()))


def test_verify_refuses_an_unknown_measurement(
    deployed: tuple[Path, KeyServiceTrust, dict], capsys: pytest.CaptureFixture[str]
) -> None:
    data, _, _ = deployed
    assert verify(data, "--measurement", "ab" * 32) != 0
    assert "not in the transparency log" in capsys.readouterr().err


def test_verify_refuses_a_measurement_and_a_policy_never_logged_together(
    deployed: tuple[Path, KeyServiceTrust, dict], capsys: pytest.CaptureFixture[str]
) -> None:
    """A worker's measurement and the key service's policy are each in the log, but no
    key-service entry holds them together: not a key service this deployment runs."""
    data, bundle, workers = deployed
    worker = next(iter(workers.values()))
    assert verify(data, "--measurement", worker, "--policy", bundle.policy_sha256) != 0
    assert "beside the measurements given" in capsys.readouterr().err


def test_verify_refuses_an_edited_log_and_a_foreign_head(
    deployed: tuple[Path, KeyServiceTrust, dict], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, _, _ = deployed
    export = json.loads((data / "log.json").read_text())
    # the host swaps a worker measurement for its own in the copy it serves
    edited = json.loads(json.dumps(export))
    index = next(i for i, e in enumerate(edited["entries"]) if e["kind"] == "worker")
    edited["entries"][index]["measurement"] = "cd" * 32
    (tmp_path / "edited.json").write_text(json.dumps(edited))
    assert verify(data, "--measurement", "cd" * 32, log=tmp_path / "edited.json") != 0
    assert "do not hash to its signed head" in capsys.readouterr().err
    # ... and re-signs it with a key of its own
    own = TransparencyLog(Ed25519PrivateKey.generate())
    for e in edited["entries"]:
        own.append(e)
    (tmp_path / "own.json").write_text(own.export().model_dump_json())
    assert verify(data, "--measurement", "cd" * 32, log=tmp_path / "own.json") != 0
    assert "pinned log" in capsys.readouterr().err


def test_verify_detects_a_fork_from_the_heads_it_recorded(
    deployed: tuple[Path, KeyServiceTrust, dict], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, _, _ = deployed
    heads = tmp_path / "heads.json"
    assert verify(data, "--heads", str(heads)) == 0
    # the same log key (the host has the simulated seed) signs another history
    forked = TransparencyLog(simulated_log_key(data))
    forked.append(worker_entry("ef" * 32))
    for e in json.loads((data / "log.json").read_text())["entries"]:
        forked.append(e)
    (tmp_path / "forked.json").write_text(forked.export().model_dump_json())
    assert verify(data, log=tmp_path / "forked.json") == 0  # alone it is a valid log
    assert verify(data, "--heads", str(heads), log=tmp_path / "forked.json") != 0
    assert "forked" in capsys.readouterr().err


def test_verify_says_a_policy_is_superseded(
    deployed: tuple[Path, KeyServiceTrust, dict], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The key service's policy is in the log, but a later key-service entry for its
    measurement (another policy) is too: the policy is not what it runs now."""
    data, bundle, _ = deployed
    shutil.copytree(data / "transparency", tmp_path / "transparency")
    log = TransparencyLog(simulated_log_key(data), tmp_path / "transparency")
    log.append(keyservice_entry(bundle.measurement, "ef" * 32))
    (tmp_path / "later.json").write_text(log.export().model_dump_json())
    wanted = ["--measurement", bundle.measurement, "--policy", bundle.policy_sha256]
    assert verify(data, *wanted, log=tmp_path / "later.json") != 0
    assert "superseded" in capsys.readouterr().err
    assert verify(data, "--measurement", bundle.measurement, "--policy", "ef" * 32,
                  log=tmp_path / "later.json") == 0  # fmt: skip
