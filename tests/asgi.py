"""Starlette's `TestClient`, imported once for every test module.

Starlette deprecates driving `TestClient` with httpx (it wants "httpx2", not
installed); the client under test speaks httpx, so TestClient over httpx is
what the tests need. The warning is silenced here, for this import only.
"""

from __future__ import annotations

import warnings

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

__all__ = ["TestClient"]
