"""One `infaas serve --small` per e2e module: the example zoo, the demo tenant, real Ray."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.server import Served, start_serve, stop_serve

# small enough that an oversized body is cheap to send, large enough for a batch of images
MAX_REQUEST_BYTES = 1 << 20


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("serve")
    s = start_serve(root, "--small", env={"INFAAS_MAX_REQUEST_BYTES": str(MAX_REQUEST_BYTES)})
    try:
        yield s
    finally:
        code = stop_serve(s)
        assert code == 0, f"infaas serve exited with {code}:\n{s.log_text()[-4000:]}"
