"""The attested channel for management calls: sealed end to end to the key service.

Registration (with an administrator's enrolment), token revocation, key uploads,
grants, revocations, consent and key retirement carry tokens and decide who gets keys,
so they cross the host (the Serve proxy, any HTTP hop) only sealed. A client that
attested the key service seals each call with HPKE to the service's attested X25519
key; the call names a fresh answer key, to which the service seals its answer.
Nothing on the path reads a token, an argument or an answer, and a rewritten call
does not open.

Wire format (``POST /v1/keyservice/call``, body ``{"sealed": "<b64>"}``, answer
``{"sealed": "<b64>"}``)::

    call   = HPKE(service key, info="infaas-keyservice/v1 call",
                  {"op": "grant", "args": {...}, "token": "zoo:…",
                   "request_id": "<32 hex>", "sent_at": 1763760000.0,
                   "answer_key": "<hex X25519>"})
    answer = HPKE(answer_key, info="infaas-keyservice/v1 answer <request_id>",
                  {"result": ...} or {"error": {"code", "message", "detail"}})

Replay: the service opens a call only within `window_s` of its ``sent_at`` and only once
per ``request_id`` (remembered for the window; when `max_remembered` ids are in it,
new calls are refused as overloaded rather than any forgotten); a call recorded before
a restart does not open at all (the service's key is made anew at each start). So a
recorded grant cannot be played again after a revoke.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from pydantic import ValidationError

from infaas.envelope import canonical_json
from infaas.errors import (
    DecryptionFailed,
    InfaasError,
    InvalidInput,
    Overloaded,
    ReplayedRequest,
)
from infaas.keyservice.models import CallArgs
from infaas.keyservice.sealing import open_sealed, seal_to, x25519_raw

_CALL_INFO = b"infaas-keyservice/v1 call"


def _answer_info(request_id: str) -> bytes:
    return b"infaas-keyservice/v1 answer " + request_id.encode()


class SealedCall:
    """One call as the client seals it; `open_answer` reads the service's sealed answer."""

    def __init__(
        self,
        service_key: bytes,
        op: str,
        args: Mapping[str, Any],
        token: str | None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.request_id = secrets.token_hex(16)
        self._answer_sk = X25519PrivateKey.generate()
        body = {
            "op": op,
            "args": dict(args),
            "token": token,
            "request_id": self.request_id,
            "sent_at": clock(),
            "answer_key": x25519_raw(self._answer_sk.public_key()).hex(),
        }
        self.sealed = seal_to(service_key, canonical_json(body), _CALL_INFO)

    def open_answer(self, sealed: bytes) -> Any:
        """The call's result; the service's error raised as its infaas type."""
        from infaas.errors import error_from_code

        answer = json.loads(open_sealed(self._answer_sk, sealed, _answer_info(self.request_id)))
        if "error" in answer:
            e = answer["error"]
            raise error_from_code(str(e["code"]), str(e["message"]), e.get("detail"))
        return answer["result"]


class CallOpener:
    """The service's side: open a call once, within its window; seal the answer."""

    def __init__(
        self,
        private_key: X25519PrivateKey,
        *,
        window_s: float = 60.0,
        max_remembered: int = 100_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._sk = private_key
        self._window = window_s
        self._max = max_remembered
        self._clock = clock
        self._seen: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    def open(self, sealed: bytes) -> dict[str, Any]:
        """The call's fields (op, args, token, request_id, answer_key); refused if it does
        not open (rewritten, sealed to another key), is stale, or was seen before."""
        try:
            call: dict[str, Any] = json.loads(open_sealed(self._sk, sealed, _CALL_INFO))
            request_id = str(call["request_id"])
            sent_at = float(call["sent_at"])
            answer_key = bytes.fromhex(str(call["answer_key"]))
            if len(answer_key) != 32 or not isinstance(call.get("args"), dict):
                raise ValueError
        except DecryptionFailed:
            raise DecryptionFailed(
                "sealed key-service call does not open: not sealed to this key service, "
                "or changed on the way"
            ) from None
        except (ValueError, KeyError, TypeError):
            raise InvalidInput("sealed key-service call is malformed") from None
        now = self._clock()
        if abs(now - sent_at) > self._window:
            raise ReplayedRequest(f"key-service call outside its {self._window:.0f} s window")
        with self._lock:
            while self._seen and now - next(iter(self._seen.values())) > 2 * self._window:
                self._seen.popitem(last=False)
            if request_id in self._seen:
                raise ReplayedRequest("key-service call replayed (request id seen before)")
            if len(self._seen) >= self._max:
                # each id remembered may still be played within its window: forgetting one
                # would let its call open again, so new calls wait instead
                raise Overloaded(
                    f"key service holds {self._max} calls within its replay window: retry shortly",
                    retry_after_s=self._window / 10,
                )
            self._seen[request_id] = now
        call["answer_key"] = answer_key
        return call

    @staticmethod
    def seal_answer(
        call: Mapping[str, Any], result: Any = None, error: InfaasError | None = None
    ) -> bytes:
        if error is not None:
            body: dict[str, Any] = {
                "error": {"code": error.code, "message": error.message, "detail": error.detail}
            }
        else:
            body = {"result": result}
        return seal_to(
            call["answer_key"],
            json.dumps(body, default=str).encode(),
            _answer_info(str(call["request_id"])),
        )


def dispatch(service: Any, call: Mapping[str, Any]) -> Any:
    """Run an opened call on `service` (a `KeyService`); its JSON-able result."""
    op, token = str(call["op"]), str(call.get("token") or "")
    try:
        a = CallArgs.model_validate_json(canonical_json(call["args"]))
    except ValidationError as exc:
        raise InvalidInput(
            f"key-service call {op!r} has bad arguments",
            errors=[{"loc": list(e["loc"]), "msg": e["msg"]} for e in exc.errors()],
        ) from None

    def need(name: str) -> Any:
        value = getattr(a, name)
        if value is None:
            raise InvalidInput(f"key-service call {op!r} needs {name}")
        return value

    if op == "register":
        return service.register(need("enrolment"), need("token_sha256")).model_dump(mode="json")
    if op == "revoke_token":
        return service.revoke_token(token or None, a.revocation)
    if op == "set_tenant_key":
        service.set_tenant_key(token, need("key_id"), need("sealed_key"))
    elif op == "retire_tenant_key":
        service.retire_tenant_key(token, need("key_id"))
    elif op == "retire_model_key":
        service.retire_model_key(token, need("model_id"), need("key_id"))
    elif op == "set_model_key":
        service.set_model_key(token, need("model_id"), need("key_id"), need("sealed_key"))
    elif op in ("grant", "revoke"):
        getattr(service, op)(token, need("model_id"), need("tenant"))
    elif op in ("accept", "unaccept"):
        return getattr(service, op)(token, need("kind"), need("name")).model_dump(mode="json")
    elif op == "consent":
        return service.consent(token).model_dump(mode="json")
    elif op == "audit":
        return service.audit(token)
    else:
        raise InvalidInput(f"unknown key-service call {op!r}")
    return None
