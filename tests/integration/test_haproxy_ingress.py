"""`infaas serve --ingress haproxy`: the service behind Ray Serve's HAProxy ingress, for real.

The SLO benchmark runs every policy this way (configs/slo-eval.yaml); this test
shows the option starts HAProxy with this instance's own files and ports rather
than Ray's shared defaults (``/tmp/haproxy-serve``, 8404 and 9101), that the
control plane answers through it, and that the service stops cleanly.
"""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from api.command import haproxy_environment
from infaas.client import Client
from tests.e2e.server import start_serve, stop_serve

pytestmark = pytest.mark.timeout(600)


def test_haproxy_environment_is_per_instance(tmp_path: Path) -> None:
    a = haproxy_environment(tmp_path / "a")
    b = haproxy_environment(tmp_path / "b")
    assert a["RAY_SERVE_HAPROXY_CONFIG_FILE_LOC"] == str(tmp_path / "a" / "haproxy.cfg")
    assert a["RAY_SERVE_ENABLE_HA_PROXY"] == "1"
    for key in ("CONFIG_FILE_LOC", "SOCKET_PATH", "SERVER_STATE_BASE", "SERVER_STATE_FILE"):
        name = f"RAY_SERVE_HAPROXY_{key}"
        assert a[name].startswith(str(tmp_path / "a")), name
        assert a[name] != b[name]
    ports = {a["RAY_SERVE_HAPROXY_STATS_PORT"], a["RAY_SERVE_HAPROXY_METRICS_PORT"]}
    assert len(ports) == 2 and not ports & {"8404", "9101"}


def test_serve_behind_haproxy(tmp_path: Path) -> None:
    served = start_serve(tmp_path, "--no-zoo", "--ingress", "haproxy", timeout_s=300)
    try:
        said = re.search(
            r"ingress: HAProxy \(files under (\S+), stats on port (\d+)", served.log_text()
        )
        assert said is not None, served.log_text()[-3000:]
        configs = list(Path(said.group(1)).rglob("haproxy.cfg"))
        assert configs, f"no haproxy.cfg under {said.group(1)}"
        text = configs[0].read_text()
        stats = re.search(r"listen stats\s+bind \*:(\d+)", text)
        assert stats is not None and stats.group(1) == said.group(2) != "8404"
        assert (
            f":{served.url.rsplit(':', 1)[1]}" in text
        )  # HAProxy, not Serve's proxy, holds the service port
        assert httpx.get(f"{served.url}/readyz", timeout=30).status_code == 200
        with Client.from_credentials(served.credentials("admin"), base_url=served.url) as admin:
            assert admin.tasks() == []  # an authenticated call through the ingress
    finally:
        code = stop_serve(served)
    assert code == 0, served.log_text()[-4000:]
    assert not Path(said.group(1)).exists()  # its files go with it
