"""The binary envelope transport of ``POST /v1/infer`` (`infaas.wire`, ``application/
vnd.infaas.envelope``): the sealed request and its answer travel as frames, the header
is the associated data, and bad input gets the same precise 4xx as on the JSON path.

The frame tests are pure; the endpoint tests drive a real worker replica of the
shared deployment (tests/conftest.py) as Ray Serve's proxy does, and after every
refusal the same replica still serves a good request.
"""

from __future__ import annotations

import base64
import json
import struct
from collections.abc import Callable, Iterator
from typing import Literal

import httpx
import numpy as np
import pytest

from enclave_workers.endpoint import serve_app
from infaas.envelope import Envelope, canonical_json, open_request, seal_request
from infaas.errors import InvalidInput
from infaas.wire import (
    ENVELOPE_MEDIA_TYPE,
    FRAME_MAGIC,
    MAX_FRAME_HEADER_BYTES,
    InferRequest,
    InferResponse,
    accepts_envelope,
    envelope_frame,
    envelope_from_frame,
    infer_response_from_frame,
)
from tests.asgi import TestClient
from tests.deployment import Deployment

KEY = {"k1": bytes(range(32))}
LIMIT = 64 * 1024


def _sealed(plaintext: bytes = b"tensor bytes" * 10) -> Envelope:
    return seal_request(
        KEY, plaintext, tenant="acme", task="digits", latency_ms=50, min_accuracy=0.5,
        request_id="r1", key_id="k1", variant_id="v.fp32.onnxruntime",
    )  # fmt: skip


def _frame(header: bytes, rest: bytes) -> bytes:
    return FRAME_MAGIC + struct.pack(">I", len(header)) + header + rest


# --- the frame ------------------------------------------------------------------------------


def test_a_frame_is_the_associated_data_then_nonce_and_ciphertext() -> None:
    env = _sealed()
    frame = envelope_frame(env)
    header = env.associated_data()
    assert frame == _frame(header, env.nonce + env.ciphertext)
    back = envelope_from_frame(bytearray(frame))
    assert back.model_dump(exclude={"ciphertext"}) == env.model_dump(exclude={"ciphertext"})
    # the ciphertext is a view into the received buffer, not a copy of the tensor
    assert isinstance(back.ciphertext, memoryview) and back.ciphertext.readonly
    assert bytes(open_request(back, KEY, now=env.timestamp)) == b"tensor bytes" * 10


def _refusals(env: Envelope) -> list[tuple[bytes, str]]:
    """Malformed frames (as a broken client or a hostile path sends them) and what the
    refusal must say."""
    header = env.associated_data()
    meta = json.loads(header)
    rest = env.nonce + env.ciphertext
    return [
        (b"IFE2\x00", "truncated envelope frame: 5 bytes"),
        (b"{" + _frame(header, rest)[1:], "not an envelope frame"),
        (FRAME_MAGIC + struct.pack(">I", 0) + rest, "header length 0 is outside"),
        (
            FRAME_MAGIC + struct.pack(">I", MAX_FRAME_HEADER_BYTES + 1) + header + rest,
            f"header length {MAX_FRAME_HEADER_BYTES + 1} is outside",
        ),
        (FRAME_MAGIC + struct.pack(">I", len(header) + 100) + header + rest[:50], "truncated"),
        (_frame(header, rest[:20]), "cannot hold its"),
        (_frame(b"\xff" + header[1:], rest), "header is not JSON"),
        (_frame(b"[1,2]", rest), "not an envelope's metadata object"),
        (_frame(canonical_json(meta | {"ciphertext": "AA=="}), rest), "metadata object"),
        (_frame(canonical_json(meta | {"latency_ms": -1.0}), rest), "at latency_ms"),
        (_frame(canonical_json(meta | {"v": 1}), rest), "at v"),
        (_frame(canonical_json(meta | {"extra": 1}), rest), "at extra"),
        (_frame(json.dumps(meta).encode(), rest), "not in canonical form"),
        (_frame(canonical_json(meta | {"latency_ms": 50}), rest), "not in canonical form"),
    ]


def test_malformed_frames_are_refused_precisely() -> None:
    for frame, message in _refusals(_sealed()):
        with pytest.raises(InvalidInput, match=message):
            envelope_from_frame(frame)


def test_an_answer_frame_carries_what_served_it_in_its_authenticated_header() -> None:
    env = _sealed().model_copy(
        update={"kind": "response", "variant_id": "v", "architecture": "mlp", "accuracy": 0.9,
                "pool": "cpu", "simulated_tee": True, "measurement": "ab" * 32}
    )  # fmt: skip
    timings = {"infaas-latency-ms": "3.5", "infaas-queue-ms": "0.5", "infaas-batch-size": "2"}
    resp = infer_response_from_frame(envelope_frame(env), timings)
    assert (resp.variant_id, resp.pool, resp.measurement, resp.simulated_tee) == (
        "v", "cpu", "ab" * 32, True,
    )  # fmt: skip
    assert (resp.latency_ms, resp.queue_ms, resp.batch_size) == (3.5, 0.5, 2)
    with pytest.raises(InvalidInput, match="batch_size"):
        infer_response_from_frame(envelope_frame(env), timings | {"infaas-batch-size": "0"})
    with pytest.raises(InvalidInput, match="invalid binary answer at pool"):  # no answer
        infer_response_from_frame(envelope_frame(_sealed()), timings)


def test_accept_negotiation() -> None:
    assert accepts_envelope(f"{ENVELOPE_MEDIA_TYPE}, application/json;q=0.5")
    assert accepts_envelope(f"application/json, {ENVELOPE_MEDIA_TYPE.upper()};q=0.2")
    assert not accepts_envelope(f"{ENVELOPE_MEDIA_TYPE};q=0")
    assert not accepts_envelope("application/json, */*")
    assert not accepts_envelope(None)


# --- the worker's endpoint ------------------------------------------------------------------


@pytest.fixture
def http(deployment: Deployment) -> Iterator[TestClient]:
    with TestClient(serve_app(deployment.runtime, max_request_bytes=LIMIT)) as client:
        yield client


def _headers(dep: Deployment, kind: str = ENVELOPE_MEDIA_TYPE, accept: str = "") -> dict[str, str]:
    h = {"Authorization": f"Bearer {dep.api_tokens['acme']}", "Content-Type": kind}
    return h | ({"Accept": accept} if accept else {})


def _binary(dep: Deployment, x: np.ndarray) -> tuple[InferRequest, bytes]:
    req = dep.request("acme", x)
    return req, envelope_frame(req.envelope)


def test_binary_in_binary_out_and_json_on_request(deployment: Deployment, http: TestClient) -> None:
    dep = deployment
    req, frame = _binary(dep, dep.x[:2])
    r = http.post("/", content=frame, headers=_headers(dep, accept=ENVELOPE_MEDIA_TYPE))
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == ENVELOPE_MEDIA_TYPE
    assert r.content.startswith(FRAME_MAGIC) and b"base64" not in r.content
    answer = infer_response_from_frame(r.content, r.headers)
    assert dep.outputs("acme", req, answer).shape == (2, 10) and answer.batch_size >= 1
    # a binary request answered in JSON when the caller does not accept the frame
    req, frame = _binary(dep, dep.x[:1])
    r = http.post("/", content=frame, headers=_headers(dep))
    assert r.headers["content-type"] == "application/json"
    assert dep.outputs("acme", req, InferResponse.model_validate_json(r.content)).shape == (1, 10)
    # and a JSON request answered in binary when the caller asks for it
    req = dep.request("acme", dep.x[:1])
    r = http.post(
        "/",
        content=req.model_dump_json(),
        headers=_headers(dep, "application/json; charset=utf-8", ENVELOPE_MEDIA_TYPE),
    )
    answer = infer_response_from_frame(r.content, r.headers)
    assert dep.outputs("acme", req, answer).shape == (1, 10)


def _tamper_ciphertext(frame: bytes) -> bytes:
    return frame[:-20] + bytes([frame[-20] ^ 1]) + frame[-19:]


def _tamper_json(body: str) -> bytes:
    doc = json.loads(body)
    ct = bytearray(base64.urlsafe_b64decode(doc["envelope"]["ciphertext"]))
    ct[-4] ^= 1
    doc["envelope"]["ciphertext"] = base64.urlsafe_b64encode(bytes(ct)).decode()
    return json.dumps(doc).encode()


def _retitle(frame: bytes) -> bytes:
    """The frame's header with the SLO floor changed, still canonical: only the tag tells."""
    env = envelope_from_frame(frame)
    meta = json.loads(env.associated_data()) | {"min_accuracy": 0.25}
    return _frame(canonical_json(meta), env.nonce + bytes(env.ciphertext))


Case = tuple[str, Callable[[bytes], bytes], Callable[[str], bytes], int, str]
CASES: list[Case] = [
    ("tampered ciphertext", _tamper_ciphertext, _tamper_json, 400, "decryption_failed"),
    (
        "tampered header",
        _retitle,
        lambda body: json.dumps(
            json.loads(body) | {"envelope": json.loads(body)["envelope"] | {"min_accuracy": 0.25}}
        ).encode(),
        400,
        "decryption_failed",
    ),
    ("truncated", lambda f: f[:6], lambda b: b.encode()[:6], 400, "invalid_input"),
    (
        "oversized",
        lambda f: f + bytes(LIMIT),
        lambda b: b.encode() + bytes(LIMIT),
        413,
        "payload_too_large",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gets_the_same_4xx_on_both_paths(
    deployment: Deployment, http: TestClient, case: Case
) -> None:
    dep = deployment
    _, binary, as_json, status, code = case
    req, frame = _binary(dep, dep.x[:1])
    r_bin = http.post("/", content=binary(frame), headers=_headers(dep))
    req = dep.request("acme", dep.x[:1])
    r_json = http.post(
        "/", content=as_json(req.model_dump_json()), headers=_headers(dep, "application/json")
    )
    for r in (r_bin, r_json):
        assert r.status_code == status and r.json()["code"] == code, r.text
        assert r.headers["content-type"] == "application/problem+json"
    dep.good()


def test_every_malformed_frame_is_a_400_and_the_worker_keeps_serving(
    deployment: Deployment, http: TestClient
) -> None:
    dep = deployment
    req = dep.request("acme", dep.x[:1])
    for frame, message in _refusals(req.envelope):
        r = http.post("/", content=frame, headers=_headers(dep))
        assert r.status_code == 400 and r.json()["code"] == "invalid_input", r.text
        assert message.split(":")[0] in r.json()["detail"]
    req, frame = _binary(dep, dep.x[:3])
    ok = http.post("/", content=frame, headers=_headers(dep, accept=ENVELOPE_MEDIA_TYPE))
    assert dep.outputs("acme", req, infer_response_from_frame(ok.content, ok.headers)).shape == (
        3, 10,
    )  # fmt: skip


def test_a_body_in_another_media_type_is_415_before_it_is_read(
    deployment: Deployment, http: TestClient
) -> None:
    dep = deployment
    _, frame = _binary(dep, dep.x[:1])
    for kind in ("text/plain", "application/octet-stream", "multipart/form-data; boundary=x"):
        r = http.post("/", content=frame, headers=_headers(dep, kind))
        assert r.status_code == 415 and r.json()["code"] == "unsupported_media_type", r.text
        assert ENVELOPE_MEDIA_TYPE in r.json()["detail"]
    # a bad token still comes first: a 415 says nothing to a caller without one
    r = http.post("/", content=frame, headers={"Content-Type": "text/plain"})
    assert r.status_code == 401
    # the refused frame was never read, so its request id is still unused: it serves now
    r = http.post("/", content=frame, headers=_headers(dep))
    assert r.status_code == 200, r.text


def test_a_replayed_frame_is_refused(deployment: Deployment, http: TestClient) -> None:
    dep = deployment
    _, frame = _binary(dep, dep.x[:1])
    assert http.post("/", content=frame, headers=_headers(dep)).status_code == 200
    again = http.post("/", content=frame, headers=_headers(dep))
    assert again.status_code == 409 and again.json()["code"] == "replayed_request"


def test_the_client_sends_frames_and_reads_frames(deployment: Deployment) -> None:
    """`infaas.Client` uses the binary form by default; ``wire="json"`` keeps JSON."""
    from infaas import Client

    dep = deployment
    seen: list[tuple[str, str, bytes]] = []
    app = serve_app(dep.runtime, max_request_bytes=LIMIT)
    with TestClient(app) as upstream:

        def handler(request: httpx.Request) -> httpx.Response:
            body = request.read()
            r = upstream.post("/", content=body, headers=dict(request.headers))
            seen.append((request.headers["content-type"], r.headers["content-type"], body))
            return httpx.Response(r.status_code, headers=r.headers, content=r.content)

        wires: tuple[Literal["binary", "json"], ...] = ("binary", "json")
        for wire in wires:
            client = Client(
                "http://worker", api_token=dep.api_tokens["acme"], principal="acme",
                request_key=dep.tenant_keys["acme"], key_id="acme-k1", wire=wire,
                http=httpx.Client(base_url="http://worker", transport=httpx.MockTransport(handler)),
            )  # fmt: skip
            x = {"x": dep.x[:2]}
            assert client.infer(task="digits", inputs=x, latency_ms=1000).outputs.shape == (2, 10)
    (b_in, b_out, b_body), (j_in, j_out, j_body) = seen
    assert (b_in, b_out) == (ENVELOPE_MEDIA_TYPE, ENVELOPE_MEDIA_TYPE)
    assert (j_in, j_out) == ("application/json", "application/json")
    # no base64 around the ciphertext: the frame is the smaller, and the tensor is in neither
    assert len(b_body) < len(j_body) and dep.x[:2].tobytes() not in b_body
