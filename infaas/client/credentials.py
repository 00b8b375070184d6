"""What a client keeps between runs: its key-service expectation and its credentials file.

The file holds secrets (API token, key-service token, request key): it is
written atomically with mode 0600 and refused on load if others can read it.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from infaas.errors import AuthenticationFailed
from infaas.keyservice.trust import KeyServiceTrust as KeyServiceTrust


def write_credentials(path: str | os.PathLike[str], data: Mapping[str, Any]) -> Path:
    """Write `data` as JSON to `path` with mode 0600 (atomically, never world-readable)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(dict(data), f, indent=2)
        os.replace(tmp, p)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.chmod(p, 0o600)
    return p


def read_credentials(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The JSON of a credentials file (refused if others can read it)."""
    p = Path(path)
    mode = p.stat().st_mode & 0o777
    if mode & 0o077:
        raise AuthenticationFailed(
            f"credentials file {p} is readable by others (mode {mode:o}); chmod 600 it"
        )
    data: dict[str, Any] = json.loads(p.read_text())
    return data
