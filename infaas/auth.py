"""API tokens: random secrets shown once, stored only as SHA-256 in the metadata store.

A token reads ``<principal>.<secret>``; the principal part lets a verifier find
the one hash to compare against (in constant time) without scanning them all.
Roles: ``tenant`` (infer), ``owner`` (register models), ``admin`` (tenants, dashboard),
``metrics`` (read ``/metrics`` only: what a Prometheus scraper is given).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass
from typing import Literal

from infaas.errors import AuthenticationFailed, Conflict, PermissionDenied
from infaas.store import MetadataStore

Role = Literal["tenant", "owner", "admin", "metrics"]


@dataclass(frozen=True)
class Principal:
    id: str
    role: Role


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class TokenRegistry:
    """Issues and verifies API tokens against hashes kept in the store."""

    def __init__(self, store: MetadataStore) -> None:
        self._store = store

    def issue(self, principal: str, role: Role, *, replace: bool = False) -> str:
        """A new token for `principal`; refuses to overwrite one unless `replace`."""
        secret = secrets.token_urlsafe(32)
        record = json.dumps({"role": role, "sha256": _digest(secret)}).encode()
        if not self._store.put_token_record(principal, record, replace=replace):
            raise Conflict(f"{principal!r} already has a token", principal=principal)
        return f"{principal}.{secret}"

    def verify(self, token: str | None, *roles: Role) -> Principal:
        """The principal a token names, if the token is right and has one of `roles`."""
        if not token:
            raise AuthenticationFailed("missing API token (Authorization: Bearer <token>)")
        principal, sep, secret = token.rpartition(".")
        raw = self._store.get_token_record(principal) if sep and principal else None
        if raw is None:
            raise AuthenticationFailed("unknown or malformed API token")
        record = json.loads(raw)
        if not hmac.compare_digest(record["sha256"], _digest(secret)):
            raise AuthenticationFailed("unknown or malformed API token")
        role: Role = record["role"]
        if roles and role not in roles and role != "admin":
            raise PermissionDenied(
                f"{principal!r} is a {role}; this needs {' or '.join(roles)}", principal=principal
            )
        return Principal(principal, role)

    def revoke(self, principal: str) -> bool:
        return self._store.delete_token_record(principal)
