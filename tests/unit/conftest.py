"""Unit tests are pure: starting Ray in one is a bug (Ray's `disallow_ray_init`)."""

from __future__ import annotations

import importlib.util
from typing import Any, NoReturn

import pytest


@pytest.fixture(autouse=True)
def disallow_ray_init(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any `ray.init` call fail; ray is imported only if it is installed."""
    if importlib.util.find_spec("ray") is None:
        return
    import ray

    def _refuse(*args: Any, **kwargs: Any) -> NoReturn:
        raise RuntimeError("unit tests must not start Ray; move this test to tests/integration")

    monkeypatch.setattr(ray, "init", _refuse)
