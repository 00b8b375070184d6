"""The `infaas` command line as a shell user meets it: --version, --help everywhere, exit
codes (1 runtime, 2 usage, 3 unreachable, 4 auth), --json errors, status, stop and the
admin commands against a real control plane over HTTP (uvicorn on a free port)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from api.app import create_app
from infaas import __version__
from infaas.auth import TokenRegistry
from infaas.cli import main
from infaas.client import Client
from infaas.client.credentials import write_credentials
from infaas.running import Running
from infaas.settings import load_settings
from infaas.store import open_store
from tests.e2e.server import ThreadedServer, free_port

COMMANDS = [
    [],
    ["serve"],
    ["stop"],
    ["status"],
    ["infer"],
    ["models"],
    ["register"],
    ["grant"],
    ["revoke"],
    ["tenant"],
    ["tenant", "create"],
    ["tenant", "list"],
    ["tenant", "accept"],
    ["tenant", "unaccept"],
    ["tenant", "accepted"],
    ["audit"],
    ["owner"],
    ["owner", "create"],
    ["login"],
    ["token"],
    ["token", "revoke"],
    ["zoo", "build"],
    ["profile"],
    ["evidence", "verify"],
]


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def json_error(err: str) -> dict[str, object]:
    body = json.loads(err.strip().splitlines()[-1])
    assert set(body) == {"error", "exit_code"}
    return body  # type: ignore[no-any-return]


@pytest.mark.parametrize("argv", COMMANDS, ids=lambda a: " ".join(a) or "infaas")
def test_every_command_has_help(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main([*argv, "--help"])
    assert e.value.code == 0
    assert "usage: infaas" in capsys.readouterr().out


def test_version_through_the_installed_entry_point() -> None:
    out = subprocess.run(
        [sys.executable, "-c", "import sys; from infaas.cli import main; sys.exit(main())",
         "--version"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert out.stdout.strip() == f"infaas {__version__}"


def test_usage_errors_exit_2_and_are_json_with_json(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["infer", "--task"])
    assert e.value.code == 2
    assert "usage: infaas infer" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["infer", "--json", "--latency-ms", "fast"])
    assert e.value.code == 2
    body = json_error(capsys.readouterr().err)
    assert body["exit_code"] == 2 and "fast" in str(body["error"])


def test_no_credentials_is_an_auth_failure(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(["models", "--data-dir", str(tmp_path)], capsys)
    assert code == 4 and "infaas serve" in err
    code, _, err = run(["models", "--data-dir", str(tmp_path), "--json"], capsys)
    assert code == 4 and json_error(err)["exit_code"] == 4


def test_an_unreachable_service_exits_3(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    code, _, err = run(["status", "--data-dir", str(tmp_path), "--url", dead, "--json"], capsys)
    assert code == 3
    assert json_error(err)["error"]["code"] == "unreachable"  # type: ignore[index]
    creds = write_credentials(tmp_path / "demo.json", {"base_url": dead, "api_token": "demo.x"})
    code, _, err = run(["models", "--credentials", str(creds)], capsys)
    assert code == 3 and "cannot reach" in err
    # nothing to stop
    code, _, err = run(["stop", "--data-dir", str(tmp_path)], capsys)
    assert code == 3 and "no running" in err


def test_stop_terminates_the_recorded_service(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # a process that is not this test's child (so nothing here has to reap it)
    spawn = ["sh", "-c", "sleep 120 >/dev/null 2>&1 & echo $!"]
    pid = int(subprocess.run(spawn, capture_output=True, text=True, check=True).stdout)
    Running(pid, "http://127.0.0.1:1").write(tmp_path)
    code, out, _ = run(["stop", "--data-dir", str(tmp_path), "--json"], capsys)
    assert code == 0 and json.loads(out)["stopped"] == pid
    assert not Running(pid, "").alive()
    assert Running.read(tmp_path) is None


@dataclass
class Service:
    url: str
    data_dir: Path
    tokens: TokenRegistry

    def credentials(self, principal: str, role: str) -> Path:
        token = self.tokens.issue(principal, role)  # type: ignore[arg-type]
        return write_credentials(
            self.data_dir / "credentials" / f"{principal}.json",
            {"base_url": self.url, "api_token": token, "principal": principal, "role": role},
        )


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    """The control plane (no workers) served over real HTTP."""
    settings = load_settings(data_dir=tmp_path, store_url="memory://")
    store = open_store("memory://")
    tokens = TokenRegistry(store)
    app = create_app(settings, store=store, tokens=tokens)
    with ThreadedServer(app, lifespan="auto") as server:
        yield Service(server.url, tmp_path, tokens)


def test_admin_commands_and_exit_codes_against_a_service(
    service: Service, capsys: pytest.CaptureFixture[str]
) -> None:
    admin = service.credentials("admin", "admin")
    tenant = service.credentials("acme", "tenant")
    with Client.from_credentials(admin) as c:
        c.create_tenant("globex", name="Globex")
    code, out, _ = run(["tenant", "list", "--credentials", str(admin), "--json"], capsys)
    assert code == 0
    assert [(t["tenant_id"], t["name"]) for t in json.loads(out)] == [("globex", "Globex")]
    code, out, _ = run(["tenant", "list", "--credentials", str(admin)], capsys)
    assert code == 0 and "globex" in out
    # a tenant is refused the admin's listing: 4
    code, _, err = run(["tenant", "list", "--credentials", str(tenant), "--json"], capsys)
    assert code == 4
    assert json_error(err)["error"]["code"] == "permission_denied"  # type: ignore[index]
    # a wrong token: 4
    wrong = write_credentials(
        service.data_dir / "wrong.json", {"base_url": service.url, "api_token": "admin.nope"}
    )
    code, _, _ = run(["models", "--credentials", str(wrong)], capsys)
    assert code == 4
    # a runtime refusal by the service: 1
    np.save(service.data_dir / "x.npy", np.zeros((1, 64), np.float32))
    code, _, err = run(
        ["infer", "--credentials", str(tenant), "--task", "nope", "--latency-ms", "50",
         "--input", str(service.data_dir / "x.npy")],
        capsys,
    )  # fmt: skip
    assert code == 1 and "unknown task" in err
    # a missing input file is a usage error: 2
    code, _, _ = run(
        ["infer", "--credentials", str(tenant), "--task", "digits", "--input", "/nonexistent.npy"],
        capsys,
    )
    assert code == 2
    # no worker deployment: reachable but degraded, 1; the URL from the running record
    Running(os.getpid(), service.url).write(service.data_dir)
    code, out, _ = run(["status", "--data-dir", str(service.data_dir), "--json"], capsys)
    assert code == 1
    body = json.loads(out)
    assert body["status"] == "degraded" and body["url"] == service.url
    assert body["detail"]["worker"] == "not deployed"
