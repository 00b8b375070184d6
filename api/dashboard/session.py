"""Dashboard login sessions: an admin API token in, a signed, expiring cookie out.

The cookie never holds the API token. It reads
``v1.<expires>.<mac>.<principal>`` with ``mac = HMAC-SHA256(session key,
principal | expires | SHA-256 of the principal's token record)``: it stops
verifying when it expires, and as soon as the admin's token is revoked or
rotated (its record changes). The session key is random, made once and kept
in the store, so every control-plane replica accepts the same cookies; whoever
can write the store can already mint tokens, so that costs nothing.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time

from infaas.auth import Principal, TokenRegistry
from infaas.errors import PermissionDenied
from infaas.store import MetadataStore

COOKIE = "infaas_dashboard"
SESSION_S = 8 * 3600


class Sessions:
    """Creates and checks dashboard session cookies for administrators."""

    def __init__(self, store: MetadataStore, tokens: TokenRegistry) -> None:
        self._store = store
        self._tokens = tokens
        self._key: bytes | None = None

    def _session_key(self) -> bytes:
        if self._key is None:
            key = self._store.dashboard_session_key(secrets.token_bytes(32))
            if key is None or len(key) < 32:
                raise RuntimeError("dashboard session key unavailable")
            self._key = key
        return self._key

    def _mac(self, principal: str, expires: int) -> str:
        record = self._store.get_token_record(principal) or b""
        msg = f"{principal}|{expires}|{hashlib.sha256(record).hexdigest()}".encode()
        return hmac.new(self._session_key(), msg, hashlib.sha256).hexdigest()

    def login(self, token: str) -> tuple[Principal, str]:
        """The admin a token names and a fresh session cookie value (AuthenticationFailed or
        PermissionDenied otherwise)."""
        principal = self._tokens.verify(token, "admin")
        if principal.role != "admin":  # verify lets admins pass any role; demand one here
            raise PermissionDenied("the dashboard needs an administrator's token")
        expires = int(time.time()) + SESSION_S
        return principal, f"v1.{expires}.{self._mac(principal.id, expires)}.{principal.id}"

    def check(self, cookie: str | None) -> Principal | None:
        """The administrator a cookie value stands for, or None."""
        if not cookie or len(cookie) > 512:
            return None
        version, _, rest = cookie.partition(".")
        expires_s, _, rest = rest.partition(".")
        mac, _, principal = rest.partition(".")  # last: principal ids may hold dots
        if version != "v1" or not principal or not expires_s.isdigit() or not mac:
            return None
        expires = int(expires_s)
        if expires < time.time():
            return None
        if not hmac.compare_digest(mac, self._mac(principal, expires)):
            return None
        return Principal(principal, "admin")
