"""Errors raised by infaas, each carrying the HTTP status the API answers with.

The hierarchy::

    InfaasError (500)
    ├── InvalidInput (400)
    │   ├── InvalidModel (400)             not ONNX, unsupported ops, bad validation set
    │   │   └── PreparationLimitExceeded (400)  preparing it took more memory or time than allowed
    │   ├── SealingRequired (400)          plain OIP v2 inference sent to the service
    │   ├── PayloadTooLarge (413)
    │   └── UnsupportedMediaType (415)     a body in a Content-Type the endpoint does not read
    ├── AuthenticationFailed (401)
    ├── PermissionDenied (403)
    │   └── AttestationFailed (403)        evidence did not verify or broke policy
    ├── NotFound (404)
    │   ├── ModelNotFound (404)
    │   └── VariantNotFound (404)
    ├── MethodNotAllowed (405)
    ├── Conflict (409)
    ├── CryptoError (400)
    │   ├── DecryptionFailed (400)         wrong key, tampered ciphertext or associated data
    │   ├── UnknownKey (400)               key id not known (rotated away or never issued)
    │   ├── ReplayedRequest (409)
    │   └── ExpiredRequest (400)
    ├── NoFeasibleVariant (422)
    │   └── UnverifiedProfile (422)        a profile or spec that no attested worker measured
    ├── VariantUnsupported (422)           a backend cannot run a variant on this hardware
    ├── InferenceFailed (422)              the model failed on this request's input
    ├── RateLimited (429, Retry-After)
    ├── OutputContractViolated (502)       the model's output broke its task's shape or dtype
    ├── Overloaded (503, Retry-After)
    ├── StoreUnavailable (503)
    ├── RollbackDetected (500)         the key service found its state rolled back; it refuses
    ├── TeeUnavailable (503)           the configured TEE device is absent
    ├── ReplicaUnavailable (503)       the replica serving the call died or went away mid-call
    ├── Unreachable (503)              client side: no connection to the service
    ├── Timeout (504)                  client side: the call's deadline passed
    └── AnswerRejected (502)           client side: a sealed answer claims what was not asked

Over HTTP each error is an RFC 9457 problem (`to_problem`, ``application/problem+json``)::

    {"type": "/problems/model_not_found", "title": "Model not found", "status": 404,
     "detail": "no model 'x' is registered", "code": "model_not_found", "model_id": "x"}

`detail` is the message; the keyword arguments an error was raised with are
extension members beside it. The client maps the `code` back to the same class
through `error_from_problem`, so callers catch the same types locally and
remotely. Any error may carry `retry_after_s`, the server's ``Retry-After`` hint.
An error raised once a worker has decrypted a request travels with a
content-free `detail` in the clear and its own problem sealed for the tenant
(`infaas.envelope.seal_error`).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, ClassVar, TypeGuard

if TYPE_CHECKING:
    from pydantic import ValidationError

PROBLEM_MEMBERS = frozenset({"type", "title", "status", "detail", "instance", "code"})
"""The members RFC 9457 defines, and ours (`code`); an error's own fields never replace them."""


def problem_type(code: str) -> str:
    """The problem type URI of an error code: a reference the control plane resolves."""
    return f"/problems/{code}"


class InfaasError(Exception):
    """Base of every infaas error."""

    status_code: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"
    retry_after_s: float | None = None
    """Seconds the server asked the caller to wait before trying again (``Retry-After``)."""

    def __init__(self, message: str, **detail: Any) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail

    @classmethod
    def title(cls) -> str:
        """A short summary of the problem type, the same for every occurrence."""
        words = re.sub(r"(?<!^)(?=[A-Z])", " ", cls.__name__).lower()
        return (words[:1].upper() + words[1:]) if cls is not InfaasError else "Internal error"

    def to_problem(self) -> dict[str, Any]:
        """The RFC 9457 problem body the API answers with (the fields as extension members)."""
        body: dict[str, Any] = {
            "type": problem_type(self.code),
            "title": self.title(),
            "status": self.status_code,
            "detail": self.message,
            "code": self.code,
        }
        body.update((k, v) for k, v in self.detail.items() if k not in PROBLEM_MEMBERS)
        return body


class InvalidInput(InfaasError):
    status_code = 400
    code = "invalid_input"


def invalid_at(exc: ValidationError, what: str, whole: str) -> InvalidInput:
    """An `InvalidInput` naming where in `what` pydantic's first refusal is, and why.

    `whole` names the location when the whole value was refused (an empty ``loc``).
    """
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or whole
    return InvalidInput(f"invalid {what} at {where}: {first['msg']}")


class InvalidModel(InvalidInput):
    code = "invalid_model"


class PreparationLimitExceeded(InvalidModel):
    """Preparing the model (conversion, quantization, profiling) went over a sandbox limit."""

    code = "preparation_limit_exceeded"


class SealingRequired(InvalidInput):
    """Inference in the clear is refused: tensors cross the host only sealed."""

    code = "sealing_required"


class PayloadTooLarge(InvalidInput):
    status_code = 413
    code = "payload_too_large"


class UnsupportedMediaType(InvalidInput):
    status_code = 415
    code = "unsupported_media_type"


class AuthenticationFailed(InfaasError):
    status_code = 401
    code = "authentication_failed"


class PermissionDenied(InfaasError):
    status_code = 403
    code = "permission_denied"


class AttestationFailed(PermissionDenied):
    code = "attestation_failed"


class NotFound(InfaasError):
    status_code = 404
    code = "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"


class VariantNotFound(NotFound):
    code = "variant_not_found"


class MethodNotAllowed(InfaasError):
    """The route exists, the method does not."""

    status_code = 405
    code = "method_not_allowed"


class Conflict(InfaasError):
    status_code = 409
    code = "conflict"


class CryptoError(InfaasError):
    status_code = 400
    code = "crypto_error"


class DecryptionFailed(CryptoError):
    code = "decryption_failed"


class UnknownKey(CryptoError):
    code = "unknown_key"


class ReplayedRequest(CryptoError):
    status_code = 409
    code = "replayed_request"


class ExpiredRequest(CryptoError):
    code = "expired_request"


class NoFeasibleVariant(InfaasError):
    status_code = 422
    code = "no_feasible_variant"


class UnverifiedProfile(NoFeasibleVariant):
    """A variant's profile or spec does not verify under its model's profile key (edited,
    forged, or copied from another variant): the worker does not use it."""

    code = "unverified_profile"


class VariantUnsupported(InfaasError):
    status_code = 422
    code = "variant_unsupported"


class RateLimited(InfaasError):
    status_code = 429
    code = "rate_limited"


class InferenceFailed(InfaasError):
    """The runtime failed on a request's input; its own message (which may quote input
    values) is never kept."""

    status_code = 422
    code = "inference_failed"


class OutputContractViolated(InfaasError):
    """A model returned other than one row per input row of its task's output dtype;
    none of its rows are returned."""

    status_code = 502
    code = "output_contract_violated"


class Overloaded(InfaasError):
    status_code = 503
    code = "overloaded"
    retry_after_s: float = 1.0

    def __init__(self, message: str, retry_after_s: float = 1.0, **detail: Any) -> None:
        super().__init__(message, retry_after_s=retry_after_s, **detail)
        self.retry_after_s = retry_after_s


class StoreUnavailable(InfaasError):
    status_code = 503
    code = "store_unavailable"


def _all_subclasses(cls: type[InfaasError]) -> list[type[InfaasError]]:
    out: list[type[InfaasError]] = []
    for sub in cls.__subclasses__():
        out.append(sub)
        out.extend(_all_subclasses(sub))
    return out


def error_classes() -> dict[str, type[InfaasError]]:
    """Every error class by its code."""
    classes: list[type[InfaasError]] = [InfaasError, *_all_subclasses(InfaasError)]
    return {c.code: c for c in classes}


def error_from_problem(body: dict[str, Any]) -> InfaasError:
    """The typed error an RFC 9457 problem body names (its `code`; its extension members)."""
    fields = {k: v for k, v in body.items() if k not in PROBLEM_MEMBERS}
    return error_from_code(str(body.get("code", "")), str(body.get("detail", "")), fields)


def is_problem(body: object) -> TypeGuard[dict[str, Any]]:
    """Whether a decoded error answer is an infaas problem (it names its `code`)."""
    return isinstance(body, dict) and "code" in body


PLATFORM_FAILURES = frozenset({500, 502})
"""Statuses that, without an infaas problem body, only the serving platform answers."""


def is_platform_failure(status: int, body: object) -> bool:
    """Whether an error answer is the serving platform's, not infaas's.

    Every infaas server answers each call with a body of its own (a sealed answer or a
    problem), so a 500 / 502 without a problem body is the proxy's, e.g. Ray Serve's for a
    replica that died mid-call: `ReplicaUnavailable`, where a problem is infaas's answer.
    """
    return status in PLATFORM_FAILURES and not is_problem(body)


def error_from_code(code: str, message: str, detail: dict[str, Any] | None = None) -> InfaasError:
    """Rebuild the typed error an API problem body names (unknown codes give the base)."""
    cls = error_classes().get(code, InfaasError)
    err: InfaasError = cls.__new__(cls)
    InfaasError.__init__(err, message, **(detail or {}))
    if isinstance(err, Overloaded):
        err.retry_after_s = float((detail or {}).get("retry_after_s", 1.0))
    return err


class RollbackDetected(InfaasError):
    """The key service found its state in the store older than, or not, what its log and
    monotonic counter commit to (restored, reordered or deleted records): it refuses to
    release or change anything until restarted over the genuine state."""

    status_code = 500
    code = "rollback_detected"


class TeeUnavailable(InfaasError):
    """The configured TEE device is absent (not inside an enclave / confidential VM)."""

    status_code = 503
    code = "tee_unavailable"


class ReplicaUnavailable(InfaasError):
    """The replica serving the call died or became unreachable before it answered (a killed
    process, a lost node): nothing was answered, so the call may be sent again; an
    inference is re-sealed under a new request id, so no request id is answered twice.

    The control plane raises it for a handle call whose replica died; the client raises it
    for a bare 500 / 502 on a route whose every infaas answer carries a body of its own (a
    sealed answer or a problem): the serving platform's proxy answered, not infaas."""

    status_code = 503
    code = "replica_unavailable"


class Unreachable(InfaasError):
    """The client could not connect to the service (refused, reset, DNS, TLS)."""

    status_code = 503
    code = "unreachable"


class Timeout(InfaasError):
    """The client's deadline for a call passed before an answer came."""

    status_code = 504
    code = "timeout"


class AnswerRejected(InfaasError):
    """Client side: an answer that opened under the tenant's key claims what the request did
    not allow (another variant or architecture than pinned, accuracy below the floor, a
    simulated TEE when that is refused), or its clear copies disagree with the sealed ones."""

    status_code = 502
    code = "answer_rejected"
