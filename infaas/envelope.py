"""The crypto envelope: AES-256-GCM for requests, responses and model artifacts at rest.

Each message is sealed under a tenant's request key (or a model's data key),
named by a key id so keys can rotate. The clear metadata that the untrusted
path needs is the *associated data*: canonical JSON with sorted keys and no
spaces. So an ingress or scheduler can read it but cannot change it without
decryption failing: not downgrade the accuracy asked for, not re-route a
request pinned to a variant or architecture, not relabel an answer.

* a request binds tenant, task, SLO, request id, time, key id and the caller's
  pins (`variant_id`, `architecture`, null when not pinned);
* a response binds the same plus what served it: the variant, its
  architecture, its profiled accuracy, the pool, whether the TEE is simulated
  and the worker's measurement.

Version 2 of the envelope added the pins and the served-by fields to the
associated data; version 1 envelopes are refused (their pins travelled in the
clear).

Errors are distinct: tampered ciphertext or metadata and wrong key give
`DecryptionFailed`; an unknown key id `UnknownKey`; a timestamp outside the
window `ExpiredRequest`; a (tenant, request id) seen before `ReplayedRequest`.
The replay check runs only after authentication succeeds, so forged traffic
cannot burn request ids.

Large buffers use `encrypt_into` / `decrypt_into` into one preallocated
buffer: at 100 MB, allocation, not AES, is what costs.
"""

from __future__ import annotations

import ctypes
import json
import os
import secrets
import struct
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Self, cast

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pydantic import BaseModel, Field

from infaas.errors import (
    DecryptionFailed,
    ExpiredRequest,
    InfaasError,
    ReplayedRequest,
    UnknownKey,
    error_from_code,
    error_from_problem,
)
from infaas.types import BASE64_WIRE

if TYPE_CHECKING:  # the store's job records name `wire` types, which name the envelope
    from infaas.store import MetadataStore

KEY_LEN = 32
NONCE_LEN = 12
TAG_LEN = 16
ENVELOPE_VERSION = 2


def new_key() -> bytes:
    """A fresh random AES-256 key."""
    return secrets.token_bytes(KEY_LEN)


def canonical_json(obj: Mapping[str, Any]) -> bytes:
    """Deterministic JSON: sorted keys, no spaces, UTF-8 (the associated-data form)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


class Keyring:
    """Keys by key id; `current` is the one new messages are sealed under.

    Its repr names key ids only, never key material.
    """

    def __init__(self, keys: Mapping[str, bytes] | None = None, current: str | None = None) -> None:
        self._keys: dict[str, AESGCM] = {}
        self._current: str | None = None
        for kid, key in (keys or {}).items():
            self.add(kid, key)
        if current is not None:
            self.get(current)
            self._current = current

    def add(self, key_id: str, key: bytes, *, make_current: bool = True) -> None:
        if len(key) != KEY_LEN:
            raise ValueError(f"AES-256 keys are {KEY_LEN} bytes, got {len(key)}")
        self._keys[key_id] = AESGCM(key)
        if make_current or self._current is None:
            self._current = key_id

    def remove(self, key_id: str) -> None:
        self._keys.pop(key_id, None)
        if self._current == key_id:
            self._current = next(iter(self._keys), None)

    def get(self, key_id: str) -> AESGCM:
        try:
            return self._keys[key_id]
        except KeyError:
            raise UnknownKey(f"unknown key id {key_id!r}", key_id=key_id) from None

    @property
    def current(self) -> str:
        if self._current is None:
            raise UnknownKey("keyring is empty")
        return self._current

    def __contains__(self, key_id: object) -> bool:
        return key_id in self._keys

    def __repr__(self) -> str:
        return f"Keyring(key_ids={sorted(self._keys)}, current={self._current!r})"


def _as_keyring(keys: Keyring | Mapping[str, bytes]) -> Keyring:
    return keys if isinstance(keys, Keyring) else Keyring(keys)


class Envelope(BaseModel):
    """An AES-256-GCM envelope on the wire. In Python `nonce` and `ciphertext` are raw bytes.

    JSON (bytes as URL-safe base64, padded; standard base64 is accepted on input)::

        {
          "v": 2,
          "kind": "request",
          "tenant": "acme",
          "task": "digits",
          "latency_ms": 50.0,
          "min_accuracy": 0.9,
          "request_id": "4f9c6c0e-…",
          "timestamp": 1763760000.25,
          "key_id": "k1",
          "variant_id": null,
          "architecture": null,
          "accuracy": null,
          "pool": null,
          "simulated_tee": null,
          "measurement": null,
          "header_length": 96,
          "nonce": "q83vEjRWeJCrze8S",
          "ciphertext": "3q2+7w…"
        }

    In a request, `variant_id` and `architecture` are the caller's pins. A
    response has `"kind": "response"`, the request's tenant, task, SLO, request
    id and key id, and what served it: `variant_id`, `architecture`,
    `accuracy` (the variant's authenticated profiled accuracy), `pool`,
    `simulated_tee` and the worker's hex `measurement`. `header_length` is the
    plaintext's ``Inference-Header-Content-Length`` (Triton's binary-data
    extension: the Open Inference Protocol body is a JSON header of that many
    bytes, then raw tensors; null when it is all JSON). Every field but `nonce`
    and `ciphertext` is authenticated as associated data.
    """

    model_config = BASE64_WIRE

    v: Literal[2] = 2
    kind: Literal["request", "response", "error"]
    tenant: str = Field(min_length=1, max_length=128)
    task: str = Field(min_length=1, max_length=128)
    latency_ms: float = Field(gt=0, description="SLO latency target, milliseconds")
    min_accuracy: float = Field(ge=0.0, le=1.0, description="SLO least accuracy")
    request_id: str = Field(min_length=1, max_length=128)
    timestamp: float = Field(description="seconds since the epoch, set by the sender")
    key_id: str = Field(min_length=1, max_length=128)
    variant_id: str | None = Field(
        None, max_length=200, description="request: the pinned variant; response: the served one"
    )
    architecture: str | None = Field(
        None, max_length=128, description="request: the pinned architecture; response: served"
    )
    accuracy: float | None = Field(
        None, ge=0.0, le=1.0, description="response: the served variant's profiled accuracy"
    )
    pool: str | None = Field(None, max_length=128, description="response: the serving pool")
    simulated_tee: bool | None = Field(
        None, description="response: true when the serving TEE is simulated (not confidential)"
    )
    measurement: str | None = Field(None, description="hex measurement of the serving worker")
    header_length: int | None = Field(
        None, ge=0, description="Inference-Header-Content-Length of the sealed body"
    )
    nonce: bytes = Field(min_length=NONCE_LEN, max_length=NONCE_LEN)
    ciphertext: bytes = Field(min_length=TAG_LEN)

    def associated_data(self) -> bytes:
        """The canonical JSON of every field but `nonce` and `ciphertext`: what the tag binds.

        Computed once per envelope (a request's frame check, its opening; an answer's
        sealing, its frame): the model is frozen, and a `model_copy` that updates a
        bound field forgets it.
        """
        aad = self.__dict__.get(_AAD_SLOT)
        if aad is None:
            aad = self.__dict__[_AAD_SLOT] = _aad(self.model_dump(exclude={"nonce", "ciphertext"}))
        return cast(bytes, aad)

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        copy = super().model_copy(update=update, deep=deep)
        if update is not None and update.keys() - {"nonce", "ciphertext"}:
            copy.__dict__.pop(_AAD_SLOT, None)  # the update changes what the tag binds
        return copy

    def __setstate__(self, state: dict[Any, Any]) -> None:
        # an unpickled envelope (one a Ray handle or any host process handed over) computes
        # its own: pickled state is the sender's to write, and a kept associated data that
        # disagreed with the fields would have the tag check what the fields do not say
        fields = state.get("__dict__")
        if isinstance(fields, dict):
            state = state | {"__dict__": {k: v for k, v in fields.items() if k != _AAD_SLOT}}
        super().__setstate__(state)


_AAD_SLOT = "_infaas_associated_data"
"""Where an envelope keeps its associated data once computed (in its ``__dict__``, beside
its fields, as `functools.cached_property` does: pydantic compares and serializes fields)."""


def _aad(meta: Mapping[str, Any]) -> bytes:
    return canonical_json(meta)


def _seal(aead: AESGCM, aad: bytes, plaintext: bytes) -> tuple[bytes, bytes]:
    nonce = os.urandom(NONCE_LEN)
    return nonce, aead.encrypt(nonce, plaintext, aad)


def _open(aead: AESGCM, nonce: bytes, ciphertext: bytes, aad: bytes) -> bytearray:
    if len(ciphertext) < TAG_LEN:
        raise DecryptionFailed("ciphertext shorter than its tag")
    out = bytearray(len(ciphertext) - TAG_LEN)
    try:
        aead.decrypt_into(nonce, ciphertext, aad, out)
    except InvalidTag:
        raise DecryptionFailed(
            "decryption failed: wrong key or tampered ciphertext / associated data"
        ) from None
    return out


def seal_request(
    keys: Keyring | Mapping[str, bytes],
    plaintext: bytes,
    *,
    tenant: str,
    task: str,
    latency_ms: float,
    min_accuracy: float,
    request_id: str,
    key_id: str | None = None,
    timestamp: float | None = None,
    variant_id: str | None = None,
    architecture: str | None = None,
    header_length: int | None = None,
) -> Envelope:
    """Encrypt a request body under the tenant's key (`key_id`, default: current).

    `variant_id` / `architecture` pin what may serve it (bound, so no ingress re-routes
    it); `header_length`: the body's ``Inference-Header-Content-Length`` (None: all JSON).
    """
    ring = _as_keyring(keys)
    kid = key_id or ring.current
    meta: dict[str, Any] = {
        "v": ENVELOPE_VERSION,
        "kind": "request",
        "tenant": tenant,
        "task": task,
        "latency_ms": float(latency_ms),
        "min_accuracy": float(min_accuracy),
        "request_id": request_id,
        "timestamp": float(time.time() if timestamp is None else timestamp),
        "key_id": kid,
        "variant_id": variant_id,
        "architecture": architecture,
        "accuracy": None,
        "pool": None,
        "simulated_tee": None,
        "measurement": None,
        "header_length": header_length,
    }
    Envelope.model_validate(meta | {"nonce": b"\0" * NONCE_LEN, "ciphertext": b"\0" * TAG_LEN})
    nonce, ct = _seal(ring.get(kid), _aad(meta), plaintext)
    return Envelope.model_construct(**meta, nonce=nonce, ciphertext=ct)


def open_request(
    envelope: Envelope,
    keys: Keyring | Mapping[str, bytes],
    *,
    replay_guard: ReplayGuard | None = None,
    window_s: float = 300.0,
    now: float | None = None,
) -> bytearray:
    """Check time window, key id and tag, then record the request id; return the plaintext."""
    if envelope.kind != "request":
        raise DecryptionFailed("not a request envelope")
    t = time.time() if now is None else now
    check_fresh(envelope.timestamp, t, window_s)
    aead = _as_keyring(keys).get(envelope.key_id)
    plaintext = _open(aead, envelope.nonce, envelope.ciphertext, envelope.associated_data())
    if replay_guard is not None:
        replay_guard.check_and_record(envelope.tenant, envelope.request_id, envelope.timestamp, t)
    return plaintext


def check_fresh(timestamp: float, now: float, window_s: float) -> None:
    """Refuse a timestamp older than `window_s` or more than `window_s` in the future."""
    if not now - window_s <= timestamp <= now + window_s:
        raise ExpiredRequest(
            f"request timestamp is outside the {window_s:.0f} s window",
            age_s=round(now - timestamp, 3),
        )


@dataclass(frozen=True, slots=True)
class ServedBy:
    """What served a request, bound into its sealed answer."""

    variant_id: str
    architecture: str
    accuracy: float
    """The variant's profiled accuracy, from its authenticated profile."""
    pool: str
    simulated_tee: bool
    measurement: bytes
    """The serving worker's measurement."""


def seal_response(
    keys: Keyring | Mapping[str, bytes],
    request: Envelope,
    plaintext: bytes,
    *,
    served: ServedBy,
    timestamp: float | None = None,
    header_length: int | None = None,
    kind: Literal["response", "error"] = "response",
) -> Envelope:
    """Encrypt a response under the request's key id, binding what served it.

    `header_length`: the response body's ``Inference-Header-Content-Length``.
    `kind`: ``"error"`` for `seal_error`'s sealed reason, so that a sealed error and a
    sealed answer are never taken for one another (the kind is associated data).
    """
    meta = request.model_dump(exclude={"nonce", "ciphertext"}) | {
        "kind": kind,
        "variant_id": served.variant_id,
        "architecture": served.architecture,
        "accuracy": float(served.accuracy),
        "pool": served.pool,
        "simulated_tee": served.simulated_tee,
        "measurement": served.measurement.hex(),
        "timestamp": float(time.time() if timestamp is None else timestamp),
        "header_length": header_length,
    }
    aad = _aad(meta)
    nonce, ct = _seal(_as_keyring(keys).get(request.key_id), aad, plaintext)
    sealed = Envelope.model_construct(**meta, nonce=nonce, ciphertext=ct)
    sealed.__dict__[_AAD_SLOT] = aad  # `meta` is every field but the two: the same bytes
    return sealed


def open_response(
    envelope: Envelope,
    keys: Keyring | Mapping[str, bytes],
    *,
    request_id: str,
    tenant: str | None = None,
    kind: Literal["response", "error"] = "response",
) -> bytearray:
    """Decrypt a response (or, with `kind` ``"error"``, a sealed error) and check it
    answers `request_id` (and `tenant`)."""
    if envelope.kind != kind:
        raise DecryptionFailed(f"not a {kind} envelope")
    if envelope.request_id != request_id or (tenant is not None and envelope.tenant != tenant):
        raise DecryptionFailed("response does not answer this request")
    aead = _as_keyring(keys).get(envelope.key_id)
    return _open(aead, envelope.nonce, envelope.ciphertext, envelope.associated_data())


# --- errors after decryption --------------------------------------------------------------

SEALED_ERROR_MESSAGE = (
    "the worker refused this request after decrypting it; the reason is sealed for its tenant"
)


def seal_error(
    keys: Keyring | Mapping[str, bytes],
    request: Envelope,
    error: InfaasError,
    *,
    served: ServedBy,
) -> InfaasError:
    """The clear form of an error raised once `request` was decrypted.

    Its message may quote the plaintext (a value that does not parse, a shape),
    so the clear error keeps only the type, status and retry hint; the precise
    problem travels as an ``"error"`` envelope under the request's key in
    its ``sealed`` member, for the tenant's `open_error`.
    """
    body = json.dumps({"error": error.to_problem()}, default=str).encode()
    sealed = seal_response(keys, request, body, served=served, kind="error")
    detail: dict[str, Any] = {"sealed": sealed.model_dump(mode="json")}
    if error.retry_after_s is not None:
        detail["retry_after_s"] = error.retry_after_s
    clear = error_from_code(error.code, f"{SEALED_ERROR_MESSAGE} ({error.code})", detail)
    clear.retry_after_s = error.retry_after_s
    return clear


def open_error(
    error: InfaasError,
    keys: Keyring | Mapping[str, bytes],
    *,
    request_id: str,
    tenant: str | None = None,
) -> InfaasError:
    """The precise error sealed in `error` by `seal_error`; `error` itself when it holds
    none, or none that opens under `keys` for this request."""
    raw = error.detail.get("sealed")
    if raw is None:
        return error
    try:
        envelope = Envelope.model_validate_json(json.dumps(raw))
        plain = open_response(envelope, keys, request_id=request_id, tenant=tenant, kind="error")
        problem = json.loads(bytes(plain))["error"]
        if not isinstance(problem, dict):
            return error
        return error_from_problem(problem)
    except (InfaasError, ValueError, KeyError, TypeError):  # pydantic's ValidationError too
        return error


# --- replay protection --------------------------------------------------------------------


class ReplayGuard(ABC):
    """Remembers (tenant, request id) while the request is fresh; a second sighting is a replay.

    A request is refused as stale once ``now > timestamp + window_s``, so its record
    may go then: records expire at `expires_at`, which adds a tenth of the window
    for clock skew between the replicas that share them.
    """

    def __init__(self, window_s: float = 300.0) -> None:
        self.window_s = window_s

    def expires_at(self, timestamp: float) -> float:
        """When the record of a request stamped `timestamp` can be forgotten."""
        return timestamp + 1.1 * self.window_s

    @abstractmethod
    def check_and_record(self, tenant: str, request_id: str, timestamp: float, now: float) -> None:
        """Record the pair; raise ReplayedRequest if it was already recorded."""


class MemoryReplayGuard(ReplayGuard):
    """Per-process replay guard with expiry (one worker process)."""

    def __init__(self, window_s: float = 300.0) -> None:
        super().__init__(window_s)
        self._seen: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()
        self._last_prune = -float("inf")

    def check_and_record(self, tenant: str, request_id: str, timestamp: float, now: float) -> None:
        key = (tenant, request_id)
        with self._lock:
            if now - self._last_prune > self.window_s / 10:
                self._seen = {k: t for k, t in self._seen.items() if t >= now}
                self._last_prune = now
            if key in self._seen:
                raise ReplayedRequest(
                    "request id already used", tenant=tenant, request_id=request_id
                )
            self._seen[key] = self.expires_at(timestamp)


class StoreReplayGuard(ReplayGuard):
    """Replay guard shared by every replica, via the store's expiring put-if-absent.

    The store drops expired records as part of claiming new ones, so the replay
    namespace stays bounded by the traffic of one window.
    """

    def __init__(self, store: MetadataStore, window_s: float = 300.0) -> None:
        super().__init__(window_s)
        self._store = store

    def check_and_record(self, tenant: str, request_id: str, timestamp: float, now: float) -> None:
        expires = self.expires_at(timestamp)
        if not self._store.claim_request(tenant, request_id, now=now, expires_at=expires):
            raise ReplayedRequest("request id already used", tenant=tenant, request_id=request_id)


def wipe(buf: bytearray) -> None:
    """Overwrite a plaintext buffer (a decrypted request or artifact) in place.

    One ``memset`` over the buffer: no zeroed copy of it is allocated first (a slice
    assignment from ``bytes(n)`` made the wipe of a 100 MB artifact ten times slower).
    """
    n = len(buf)
    if n:
        view = (ctypes.c_char * n).from_buffer(buf)
        ctypes.memset(view, 0, n)
        del view  # the buffer export ends here


# --- model artifacts at rest --------------------------------------------------------------

_ARTIFACT_MAGIC = b"INFAASA1"


def _artifact_header(key_id: str, model_id: str) -> bytes:
    kid, mid = key_id.encode(), model_id.encode()
    return _ARTIFACT_MAGIC + struct.pack(">H", len(kid)) + kid + struct.pack(">H", len(mid)) + mid


def seal_artifact(
    data_key: bytes, key_id: str, model_id: str, plaintext: bytes | bytearray
) -> bytearray:
    """Encrypt model bytes at rest: header(magic, key id, model id) | nonce | ciphertext+tag.

    The header is the associated data, so a blob cannot be passed off as
    another model's or re-labelled with another key id. Returns one buffer,
    written in place (no copy of the ciphertext).
    """
    header = _artifact_header(key_id, model_id)
    nonce = os.urandom(NONCE_LEN)
    start = len(header) + NONCE_LEN
    out = bytearray(start + len(plaintext) + TAG_LEN)
    out[: len(header)] = header
    out[len(header) : start] = nonce
    AESGCM(data_key).encrypt_into(nonce, plaintext, header, memoryview(out)[start:])
    return out


def artifact_key_id(blob: bytes | bytearray) -> str:
    """The key id a sealed artifact names (to fetch the right key)."""
    return _parse_artifact_header(blob)[1]


def _parse_artifact_header(blob: bytes | bytearray) -> tuple[int, str, str]:
    mv = memoryview(blob)
    if bytes(mv[:8]) != _ARTIFACT_MAGIC or len(mv) < 12:
        raise DecryptionFailed("not a sealed infaas artifact")
    (klen,) = struct.unpack_from(">H", mv, 8)
    kid = bytes(mv[10 : 10 + klen]).decode()
    (mlen,) = struct.unpack_from(">H", mv, 10 + klen)
    mid = bytes(mv[12 + klen : 12 + klen + mlen]).decode()
    return 12 + klen + mlen, kid, mid


def open_artifact(
    keys: Keyring | Mapping[str, bytes], model_id: str, blob: bytes | bytearray
) -> bytearray:
    """Decrypt a sealed artifact that must be `model_id`'s; returns a wipeable buffer."""
    hlen, kid, mid = _parse_artifact_header(blob)
    if mid != model_id:
        raise DecryptionFailed(f"artifact is sealed for model {mid!r}, not {model_id!r}")
    aead = _as_keyring(keys).get(kid)
    mv = memoryview(blob)
    nonce = bytes(mv[hlen : hlen + NONCE_LEN])
    ct = mv[hlen + NONCE_LEN :]
    if len(ct) < TAG_LEN:
        raise DecryptionFailed("artifact truncated")
    out = bytearray(len(ct) - TAG_LEN)
    try:
        aead.decrypt_into(nonce, ct, bytes(mv[:hlen]), out)
    except InvalidTag:
        raise DecryptionFailed("artifact decryption failed: wrong key or tampered") from None
    return out
