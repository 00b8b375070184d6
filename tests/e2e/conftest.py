"""One `infaas serve --small` for all e2e tests: the example zoo, the demo tenant, real Ray.

Starting it takes minutes on two cores, so the dashboard and the end-to-end tests share it
(their checks are relative: counters move, charts match what the service lists). It stops
after the last e2e test, not at the end of the session, so no later test meets its Ray.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.server import Served, start_serve, stop_serve

# small enough that an oversized body is cheap to send, large enough for a batch of images
MAX_REQUEST_BYTES = 1 << 20

_E2E = __file__.rsplit("/", 1)[0]
_running: list[Served] = []


def _stop() -> None:
    while _running:
        s = _running.pop()
        code = stop_serve(s)
        assert code == 0, f"infaas serve exited with {code}:\n{s.log_text()[-4000:]}"


@pytest.fixture(scope="session")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("serve")
    s = start_serve(root, "--small", env={"INFAAS_MAX_REQUEST_BYTES": str(MAX_REQUEST_BYTES)})
    _running.append(s)
    try:
        yield s
    finally:
        _stop()


def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    if nextitem is None or not str(nextitem.path).startswith(_E2E + "/"):
        _stop()
