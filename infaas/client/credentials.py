"""What a client keeps between runs: its key-service expectation and its credentials file.

The file holds secrets (API token, key-service token, request key): it is
written atomically with mode 0600 and refused on load if others can read it.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from infaas.attestation.policy import AttestationPolicy
from infaas.errors import AuthenticationFailed


@dataclass(frozen=True)
class KeyServiceTrust:
    """What a client expects of the key service: its measurement and the roots it trusts.

    `roots_pem` is the simulated platform CA's certificate for a simulated
    deployment (then `allow_simulated` must be set: such evidence is not
    confidential) or Intel's root for hardware.
    """

    measurement: str
    roots_pem: bytes
    allow_simulated: bool = False

    def policy(self) -> AttestationPolicy:
        return AttestationPolicy(
            allow_simulated=self.allow_simulated,
            allowed_measurements=(self.measurement.lower(),),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "measurement": self.measurement,
            "roots_pem": self.roots_pem.decode(),
            "allow_simulated": self.allow_simulated,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> KeyServiceTrust:
        return cls(
            measurement=str(data["measurement"]),
            roots_pem=str(data["roots_pem"]).encode(),
            allow_simulated=bool(data.get("allow_simulated", False)),
        )


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
