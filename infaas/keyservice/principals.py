"""Who may act on the key service: tenants and model owners, enrolled and revocable.

A party registers with a one-time enrolment its administrator signed
(`infaas.keyservice.enrolment`); it made its key-service token on its own machine and
sends only the token's SHA-256, so neither the administrator nor the key service ever
holds the token. Each decision here is the key service's, on its own sealed records
(a store writer can neither add a principal nor un-use an enrolment it cannot seal):

* an enrolment opens only under the enrolment key in the service's release policy,
  before it expires, once (its ``enrolment_id`` is recorded when used), and only for a
  name nobody holds (or whose holder was revoked, with the same role, by an enrolment
  issued after the revocation: one issued before it, unused, does not reopen the name);
* a token is refused once revoked, by its holder (``revoke_token``) or by the
  administrator (a signed revocation issued after the holder's enrolment); a revoked
  principal's keys are no longer released either (`KeyService` asks `check_active`),
  so a worker stops serving them when their lease runs out (within a second).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import threading
from collections.abc import Callable
from typing import Any, Literal, Protocol

from pydantic import TypeAdapter, ValidationError

from infaas.errors import AuthenticationFailed, Conflict, InvalidInput, PermissionDenied
from infaas.keyservice.enrolment import verify_statement
from infaas.keyservice.models import RegisterResponse
from infaas.logs import get_logger
from infaas.store import SealedTable
from infaas.types import Identifier

log = get_logger(__name__)

Role = Literal["tenant", "owner"]
_IDENTIFIER: TypeAdapter[str] = TypeAdapter(Identifier)
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


class Records(Protocol):
    """The key service's sealed records (what `KeyService` keeps its state in)."""

    def get(self, namespace: SealedTable, key: str) -> dict[str, Any] | None: ...
    def put(self, namespace: SealedTable, key: str, obj: dict[str, Any]) -> None: ...
    def put_if_absent(self, namespace: SealedTable, key: str, obj: dict[str, Any]) -> bool: ...


def token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Principals:
    """Enrolment, token checks and revocation (see the module docstring)."""

    def __init__(
        self,
        records: Records,
        enrolment_key: bytes | None,
        *,
        lock: threading.RLock,
        clock: Callable[[], float],
    ) -> None:
        self._records = records
        self._enrolment_key = enrolment_key
        self._lock = lock
        self._clock = clock

    def register(self, enrolment: str, token_hash: str) -> RegisterResponse:
        """Create the tenant or owner an administrator's enrolment names, with the token
        whose SHA-256 is `token_hash`."""
        if self._enrolment_key is None:
            raise PermissionDenied(
                "this key service accepts no enrolment: its policy names no administrator "
                "enrolment key"
            )
        st = verify_statement(enrolment, self._enrolment_key, "enrolment")
        try:
            principal_id = _IDENTIFIER.validate_python(st.id)
        except ValidationError:
            raise InvalidInput(f"enrolment names no valid principal id ({st.id!r})") from None
        if st.role not in ("tenant", "owner") or not st.enrolment_id or st.expires_at is None:
            raise InvalidInput("enrolment lacks its role, id or expiry")
        if self._clock() > st.expires_at:
            raise AuthenticationFailed(f"enrolment of {principal_id!r} has expired")
        if not _SHA256_HEX.match(token_hash):
            raise InvalidInput("token_sha256 must be 64 lowercase hex digits")
        spent = Conflict("this enrolment was used already: ask the administrator for another")
        with self._lock:
            if self._records.get(SealedTable.ENROLMENT, st.enrolment_id) is not None:
                raise spent
            rec = self._records.get(SealedTable.PRINCIPAL, principal_id)
            if rec is not None and not (rec.get("revoked_at") and rec["role"] == st.role):
                raise Conflict(f"principal {principal_id!r} already exists")
            if rec is not None and st.issued_at <= float(
                rec.get("revoked_as_of") or rec["revoked_at"]
            ):
                raise AuthenticationFailed(
                    f"enrolment of {principal_id!r} was issued before its revocation: ask "
                    "the administrator for a new one"
                )
            used = {"id": principal_id, "used_at": self._clock()}
            if not self._records.put_if_absent(SealedTable.ENROLMENT, st.enrolment_id, used):
                raise spent
            # back after a revocation: keys uploaded before are released no more (they may
            # have leaked with the token), and none is current until the party uploads one
            fresh = {"keys_valid_from": self._clock(), "current_key_id": None} if rec else {}
            self._records.put(
                SealedTable.PRINCIPAL,
                principal_id,
                (rec or {})
                | fresh
                | {
                    "id": principal_id,
                    "role": st.role,
                    "token_sha256": token_hash,
                    "enrolled_at": st.issued_at,
                    "revoked_at": None,
                },
            )
        log.info("enrolled %s %s", st.role, principal_id)
        return RegisterResponse(id=principal_id, role=st.role)

    def _record_of(self, token: str) -> tuple[str, dict[str, Any]]:
        principal_id, sep, _ = token.rpartition(":")
        rec = self._records.get(SealedTable.PRINCIPAL, principal_id) if sep else None
        stored = rec.get("token_sha256") if rec is not None else None
        if rec is None or not stored or not hmac.compare_digest(stored, token_sha256(token)):
            raise AuthenticationFailed("invalid key service token")
        if rec.get("revoked_at"):
            raise AuthenticationFailed(f"the key service token of {principal_id!r} is revoked")
        return principal_id, rec

    def authenticate(self, token: str, role: Role) -> str:
        """The principal id a token belongs to; AuthenticationFailed unless it is valid and
        not revoked (read from the sealed record at each call: a revocation holds at once)."""
        principal_id, rec = self._record_of(token)
        if rec["role"] != role:
            raise PermissionDenied(f"{principal_id!r} is not a {role}")
        return principal_id

    def revoke(self, *, token: str | None = None, revocation: str | None = None) -> str:
        """Revoke a token: the caller's own (`token`), or the one an administrator's signed
        `revocation` names; the principal revoked."""
        with self._lock:
            if token:
                principal_id, rec = self._record_of(token)
            elif revocation and self._enrolment_key is not None:
                st = verify_statement(revocation, self._enrolment_key, "revocation")
                principal_id = st.id
                found = self._records.get(SealedTable.PRINCIPAL, principal_id)
                if found is None:
                    raise AuthenticationFailed(f"no principal {principal_id!r} to revoke")
                if st.issued_at < float(found.get("enrolled_at") or 0.0):
                    raise AuthenticationFailed(
                        f"revocation of {principal_id!r} predates its current enrolment"
                    )
                rec = found
            else:
                raise AuthenticationFailed("revoking a token needs the token or a revocation")
            now = self._clock()
            # enrolments issued up to then (administrator's clock for its revocation) stay void
            as_of = now if token else st.issued_at
            self._records.put(
                SealedTable.PRINCIPAL,
                principal_id,
                rec | {"revoked_at": now, "revoked_as_of": as_of},
            )
        log.info("revoked the key service token of %s", principal_id)
        return principal_id

    def check_active(self, principal_id: str, what: str) -> dict[str, Any]:
        """The record of `principal_id`; PermissionDenied when it was revoked (its keys are
        not released)."""
        rec = self._records.get(SealedTable.PRINCIPAL, principal_id)
        if rec is None or rec.get("revoked_at"):
            raise PermissionDenied(f"{what}: {principal_id!r} is revoked or unknown")
        return rec
