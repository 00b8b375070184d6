"""The crypto envelope: round trips, and each failure as its own typed error."""

from __future__ import annotations

import json
import pickle
from typing import Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from infaas.envelope import (
    Envelope,
    Keyring,
    MemoryReplayGuard,
    ServedBy,
    StoreReplayGuard,
    artifact_key_id,
    canonical_json,
    new_key,
    open_artifact,
    open_error,
    open_request,
    open_response,
    seal_artifact,
    seal_error,
    seal_request,
    seal_response,
    wipe,
)
from infaas.errors import (
    DecryptionFailed,
    ExpiredRequest,
    InvalidInput,
    Overloaded,
    ReplayedRequest,
    UnknownKey,
    error_from_problem,
)
from infaas.store import open_store

T0 = 1_763_760_000.0
KEY = b"\x11" * 32


def _req(keys: Keyring | dict[str, bytes] | None = None, **kw: object) -> Envelope:
    args: dict = {
        "tenant": "acme",
        "task": "digits",
        "latency_ms": 50,
        "min_accuracy": 0.9,
        "request_id": "r-1",
        "timestamp": T0,
    }
    args.update(kw)
    return seal_request(keys or {"k1": KEY}, b"tensor bytes", **args)


def test_request_round_trip_and_wire_json() -> None:
    env = _req()
    wire = env.model_dump_json()
    doc = json.loads(wire)
    assert doc["key_id"] == "k1" and doc["tenant"] == "acme"
    assert isinstance(doc["ciphertext"], str) and isinstance(doc["nonce"], str)
    assert b"tensor bytes" not in wire.encode()
    back = Envelope.model_validate_json(wire)
    assert open_request(back, {"k1": KEY}, now=T0 + 1) == b"tensor bytes"


def test_aad_is_canonical_json() -> None:
    env = _req()
    aad = env.associated_data()
    assert aad == canonical_json(json.loads(aad))
    assert b" " not in aad
    assert json.loads(aad)["min_accuracy"] == 0.9


def test_tampered_ciphertext_is_decryption_failed() -> None:
    env = _req()
    ct = bytearray(env.ciphertext)
    ct[0] ^= 1
    bad = env.model_copy(update={"ciphertext": bytes(ct)})
    with pytest.raises(DecryptionFailed):
        open_request(bad, {"k1": KEY}, now=T0)


@pytest.mark.parametrize(
    "field,value",
    [
        ("min_accuracy", 0.1),
        ("latency_ms", 5000.0),
        ("task", "other"),
        ("tenant", "mallory"),
        ("request_id", "r-2"),
        ("timestamp", T0 + 1),
        ("variant_id", "mlp.int8.onnxruntime"),
        ("architecture", "mlp"),
    ],
)
def test_tampered_metadata_is_decryption_failed(field: str, value: object) -> None:
    """An untrusted scheduler cannot downgrade the SLO, or pin (re-route) an unpinned request,
    silently."""
    bad = _req().model_copy(update={field: value})
    with pytest.raises(DecryptionFailed):
        open_request(bad, {"k1": KEY}, now=T0)


@pytest.mark.parametrize(
    "field,value", [("min_accuracy", 0.1), ("tenant", "mallory"), ("request_id", "r-2")]
)
def test_a_copy_with_edited_metadata_does_not_keep_the_original_associated_data(
    field: str, value: object
) -> None:
    """An envelope computes its associated data once; a copy that edits a field must not
    inherit it (else the tag would be checked against the original's metadata)."""
    env = _req()
    assert open_request(env, {"k1": KEY}, now=T0) == b"tensor bytes"  # computed and kept
    for bad in (
        env.model_copy(update={field: value}),
        env.model_copy(update={field: value}, deep=True),
        Envelope.model_validate(env.model_dump() | {field: value}),
    ):
        assert json.loads(bad.associated_data())[field] == value
        with pytest.raises(DecryptionFailed):
            open_request(bad, {"k1": KEY}, now=T0)
    # a copy that changes no bound field opens; equality and hashing see fields only
    same = env.model_copy(update={"ciphertext": bytes(env.ciphertext)})
    assert same == env and hash(same) == hash(env) == hash(
        Envelope.model_validate(env.model_dump())
    )
    assert open_request(same, {"k1": KEY}, now=T0) == b"tensor bytes"
    assert "_infaas" not in env.model_dump_json() and set(env.model_dump()) == set(
        Envelope.model_fields
    )


def test_an_unpickled_envelope_computes_its_own_associated_data() -> None:
    """A host hands an envelope over pickled (a Ray handle call) with an edited field and the
    original's associated data in its state: the tag is checked against the fields it
    carries, not the associated data the sender wrote."""
    env = _req()
    original = env.associated_data()
    forged = env.model_copy(update={"tenant": "mallory"})
    state = forged.__getstate__()
    state["__dict__"] = state["__dict__"] | {"_infaas_associated_data": original}
    smuggled = Envelope.__new__(Envelope)
    smuggled.__setstate__(state)
    assert smuggled.tenant == "mallory"
    assert json.loads(smuggled.associated_data())["tenant"] == "mallory"
    with pytest.raises(DecryptionFailed):
        open_request(smuggled, {"k1": KEY}, now=T0)
    # an honest round trip still opens
    assert open_request(pickle.loads(pickle.dumps(env)), {"k1": KEY}, now=T0) == b"tensor bytes"


def test_an_answer_binds_the_associated_data_it_carries() -> None:
    """The associated data a sealed answer keeps is exactly its fields' canonical form."""
    req = _req()
    served = ServedBy("mlp.fp32.onnxruntime", "mlp", 0.97, "cpu", True, b"\x01" * 32)
    kinds: tuple[Literal["response", "error"], ...] = ("response", "error")
    for kind in kinds:
        resp = seal_response({"k1": KEY}, req, b"logits", served=served, kind=kind)
        fresh = Envelope.model_validate_json(resp.model_dump_json())
        assert resp.associated_data() == fresh.associated_data()
        assert fresh.associated_data() == canonical_json(json.loads(fresh.associated_data()))
        got = open_response(fresh, {"k1": KEY}, request_id="r-1", tenant="acme", kind=kind)
        assert got == b"logits"


def test_pins_are_associated_data() -> None:
    """A pinned request: the pins are in the associated data; unpinning or re-pinning fails."""
    env = _req(variant_id="mlp.fp32.onnxruntime", architecture="mlp")
    ad = json.loads(env.associated_data())
    assert (ad["variant_id"], ad["architecture"], ad["v"]) == ("mlp.fp32.onnxruntime", "mlp", 2)
    assert open_request(env, {"k1": KEY}, now=T0) == b"tensor bytes"
    for update in ({"variant_id": None}, {"variant_id": "mlp.int8.onnxruntime"},
                   {"architecture": None}, {"architecture": "resnet"}):  # fmt: skip
        with pytest.raises(DecryptionFailed):
            open_request(env.model_copy(update=update), {"k1": KEY}, now=T0)


def test_version_1_envelopes_are_refused() -> None:
    """Version 1 carried the pins outside the associated data: not accepted any more."""
    doc = json.loads(_req().model_dump_json())
    for field in ("architecture", "accuracy", "pool", "simulated_tee"):
        del doc[field]
    with pytest.raises(ValueError, match="v"):
        Envelope.model_validate(doc | {"v": 1})


def test_wrong_key_is_decryption_failed() -> None:
    with pytest.raises(DecryptionFailed, match="wrong key or tampered"):
        open_request(_req(), {"k1": b"\x22" * 32}, now=T0)


def test_unknown_key_id() -> None:
    with pytest.raises(UnknownKey):
        open_request(_req(), {"k2": KEY}, now=T0)


def test_expired_and_future_timestamps() -> None:
    with pytest.raises(ExpiredRequest):
        open_request(_req(), {"k1": KEY}, now=T0 + 301, window_s=300)
    with pytest.raises(ExpiredRequest):
        open_request(_req(), {"k1": KEY}, now=T0 - 301, window_s=300)


@pytest.mark.parametrize("guard_kind", ["memory", "store"])
def test_replay_rejected(guard_kind: str) -> None:
    guard = (
        MemoryReplayGuard() if guard_kind == "memory" else StoreReplayGuard(open_store("memory://"))
    )
    env = _req()
    open_request(env, {"k1": KEY}, replay_guard=guard, now=T0)
    with pytest.raises(ReplayedRequest):
        open_request(env, {"k1": KEY}, replay_guard=guard, now=T0 + 1)
    # same request id, other tenant: not a replay
    other = _req(tenant="globex")
    open_request(other, {"k1": KEY}, replay_guard=guard, now=T0)


def test_forged_request_does_not_burn_request_id() -> None:
    guard = MemoryReplayGuard()
    env = _req()
    forged = env.model_copy(update={"ciphertext": bytes(len(env.ciphertext))})
    with pytest.raises(DecryptionFailed):
        open_request(forged, {"k1": KEY}, replay_guard=guard, now=T0)
    assert open_request(env, {"k1": KEY}, replay_guard=guard, now=T0) == b"tensor bytes"


def test_errors_are_distinct_types() -> None:
    kinds = {DecryptionFailed, UnknownKey, ReplayedRequest, ExpiredRequest}
    assert len(kinds) == 4
    for a in kinds:
        for b in kinds - {a}:
            assert not issubclass(a, b)


def test_key_rotation() -> None:
    ring = Keyring({"k1": KEY})
    old = _req(ring)
    ring.add("k2", b"\x33" * 32)
    new = _req(ring, request_id="r-2")
    assert new.key_id == "k2"
    assert open_request(old, ring, now=T0) == b"tensor bytes"
    assert open_request(new, ring, now=T0) == b"tensor bytes"
    ring.remove("k1")
    with pytest.raises(UnknownKey):
        open_request(old, ring, now=T0)
    assert "11" * 8 not in repr(ring)


def test_response_binds_what_served_it() -> None:
    req = _req()
    m = b"\xaa" * 32
    served = ServedBy("mlp.int8.onnxruntime", "mlp", 0.91, "cpu", True, m)
    resp = seal_response({"k1": KEY}, req, b"logits", served=served)
    assert resp.measurement == m.hex() and resp.kind == "response"
    assert (resp.variant_id, resp.architecture, resp.accuracy) == (served.variant_id, "mlp", 0.91)
    assert (resp.pool, resp.simulated_tee) == ("cpu", True)
    assert open_response(resp, {"k1": KEY}, request_id="r-1", tenant="acme") == b"logits"
    for field, value in [
        ("variant_id", "mlp.fp32.onnxruntime"),
        ("architecture", "resnet"),
        ("accuracy", 0.99),
        ("pool", "gpu"),
        ("simulated_tee", False),
        ("measurement", "bb" * 32),
    ]:
        with pytest.raises(DecryptionFailed):
            open_response(resp.model_copy(update={field: value}), {"k1": KEY}, request_id="r-1")
    with pytest.raises(DecryptionFailed, match="does not answer"):
        open_response(resp, {"k1": KEY}, request_id="r-9")
    # a response cannot be replayed as a request
    with pytest.raises(DecryptionFailed):
        open_request(resp.model_copy(update={"kind": "request"}), {"k1": KEY}, now=resp.timestamp)


SERVED = ServedBy(
    variant_id="v", architecture="mlp", accuracy=0.9, pool="cpu", simulated_tee=True,
    measurement=b"m",
)  # fmt: skip


def test_an_error_after_decryption_is_clear_in_type_only() -> None:
    req = _req()
    secret = "could not convert string to float: 'the tenant's secret'"
    clear = seal_error({"k1": KEY}, req, InvalidInput(secret, got=[1, 4]), served=SERVED)
    problem = json.loads(json.dumps(clear.to_problem()))  # what crosses the host
    assert isinstance(clear, InvalidInput) and clear.status_code == problem["status"] == 400
    assert "secret" not in clear.message and "got" not in problem
    assert b"secret" not in json.dumps(problem).encode()
    received = error_from_problem(problem)
    opened = open_error(received, {"k1": KEY}, request_id="r-1", tenant="acme")
    assert isinstance(opened, InvalidInput) and opened.message == secret
    assert opened.detail == {"got": [1, 4]}
    # another key, another request, or an edited seal: the clear error, nothing more
    assert open_error(received, {"k1": b"\x22" * 32}, request_id="r-1") is received
    assert open_error(received, {"k1": KEY}, request_id="r-2") is received
    forged = error_from_problem(problem | {"sealed": problem["sealed"] | {"variant_id": "w"}})
    assert open_error(forged, {"k1": KEY}, request_id="r-1") is forged


def test_a_sealed_error_and_a_sealed_answer_are_not_interchangeable() -> None:
    req = _req()
    clear = seal_error({"k1": KEY}, req, InvalidInput("bad row"), served=SERVED)
    sealed = Envelope.model_validate(clear.detail["sealed"])
    assert sealed.kind == "error"
    # an error is not an answer: neither as it is nor relabelled (the kind is authenticated)
    with pytest.raises(DecryptionFailed):
        open_response(sealed, {"k1": KEY}, request_id="r-1")
    relabelled = sealed.model_copy(update={"kind": "response"})
    with pytest.raises(DecryptionFailed):
        open_response(relabelled, {"k1": KEY}, request_id="r-1")
    # nor an answer an error
    answer = seal_response({"k1": KEY}, req, b'{"error": {"code": "x"}}', served=SERVED)
    for env in (answer, answer.model_copy(update={"kind": "error"})):
        swapped = error_from_problem(clear.to_problem() | {"sealed": env.model_dump(mode="json")})
        assert open_error(swapped, {"k1": KEY}, request_id="r-1") is swapped


def test_a_sealed_overload_keeps_its_retry_hint_in_the_clear() -> None:
    clear = seal_error({"k1": KEY}, _req(), Overloaded("busy", retry_after_s=2.5), served=SERVED)
    assert isinstance(clear, Overloaded) and clear.retry_after_s == 2.5


def test_artifact_round_trip_and_binding() -> None:
    key = new_key()
    blob = seal_artifact(key, "dk1", "resnet", b"onnx weights" * 1000)
    assert artifact_key_id(blob) == "dk1"
    assert b"onnx weights" not in blob
    assert open_artifact({"dk1": key}, "resnet", blob) == b"onnx weights" * 1000
    with pytest.raises(DecryptionFailed, match="sealed for model"):
        open_artifact({"dk1": key}, "mlp", blob)
    with pytest.raises(UnknownKey):
        open_artifact({"dk2": key}, "resnet", blob)
    with pytest.raises(DecryptionFailed):
        open_artifact({"dk1": new_key()}, "resnet", blob)
    tampered = bytearray(blob)
    tampered[-20] ^= 1
    with pytest.raises(DecryptionFailed):
        open_artifact({"dk1": key}, "resnet", tampered)
    # re-labelling the header (e.g. to another model id of the same length) fails the tag
    relabelled = bytearray(blob)
    relabelled[relabelled.index(b"resnet") : relabelled.index(b"resnet") + 6] = b"resnes"
    with pytest.raises(DecryptionFailed):
        open_artifact({"dk1": key}, "resnes", relabelled)


@settings(max_examples=50, deadline=None)
@given(st.binary(max_size=4096), st.integers(min_value=0, max_value=10_000))
def test_any_single_bit_flip_is_detected(payload: bytes, where: int) -> None:
    env = seal_request(
        {"k1": KEY},
        payload,
        tenant="t",
        task="x",
        latency_ms=1,
        min_accuracy=0,
        request_id="r",
        timestamp=T0,
    )
    ct = bytearray(env.ciphertext)
    ct[where % len(ct)] ^= 1 << (where % 8)
    with pytest.raises(DecryptionFailed):
        open_request(env.model_copy(update={"ciphertext": bytes(ct)}), {"k1": KEY}, now=T0)


def test_wipe_zeroes_a_plaintext_buffer_in_place() -> None:
    """The decrypted artifact or request is overwritten where it lies (no copy is left
    holding it), and the buffer stays usable: wiping ends its export."""
    plain = open_artifact({"mk1": KEY}, "m", seal_artifact(KEY, "mk1", "m", b"weights" * 1000))
    view = memoryview(plain)
    wipe(plain)
    assert plain == bytearray(7000) and view.tobytes() == bytes(7000)
    view.release()
    plain.extend(b"x")  # no export left behind
    empty = bytearray()
    wipe(empty)
    assert empty == bytearray()
