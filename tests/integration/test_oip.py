"""The real tritonclient against infaas over real sockets: the service's OIP v2 health and
metadata, and inference through `infaas proxy` while the service sees only sealed bodies.

The service is the shared deployment's control plane, key service and a real worker
replica behind one uvicorn (routed as the Serve proxy routes); every request that
reaches it is recorded. The proxy is `infaas.proxy`'s app around an `infaas.Client`
with a tenant's credentials, on a second uvicorn.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from tritonclient.utils import InferenceServerException

from api.app import create_app
from enclave_workers.endpoint import serve_app
from infaas import Client
from infaas.envelope import open_request
from infaas.keyservice import create_keyservice_router
from infaas.proxy import Gateway, create_proxy_app
from infaas.settings import load_settings
from infaas.types import SLO
from infaas.wire import InferRequest, envelope_from_frame
from tests.deployment import Deployment
from tests.e2e.server import ThreadedServer
from variants.runtime import load_variant

MODEL = "digits-mlp-small"
TENANT = "acme"


@dataclass
class Recorder:
    """ASGI middleware in front of the service: (method, path, body) of every request."""

    app: ASGIApp
    seen: list[tuple[str, str, bytes]] = field(default_factory=list)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        body = bytearray()

        async def recording() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                body.extend(message.get("body", b""))
            return message

        try:
            await self.app(scope, recording, send)
        finally:
            self.seen.append((scope["method"], scope["path"], bytes(body)))


def routed(control: ASGIApp, worker: ASGIApp) -> ASGIApp:
    """The Serve proxy's routing: ``/v1/infer`` to a worker replica, the rest to control."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].rstrip("/") == Client.infer_path:
            await worker({**scope, "root_path": Client.infer_path}, receive, send)
        else:
            await control(scope, receive, send)

    return app


@dataclass
class Stack:
    dep: Deployment
    service: ThreadedServer
    proxy: ThreadedServer
    recorder: Recorder
    token: str


@pytest.fixture(scope="module")
def stack(deployment: Deployment, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    dep = deployment
    settings = load_settings(data_dir=Path(tmp_path_factory.mktemp("oip")), store_url="memory://")
    runtime = dep.new_worker()
    control = create_app(
        settings,
        store=dep.store,
        artifacts=dep.artifacts,
        tokens=dep.tokens,
        worker_status=runtime.status,
    )
    control.include_router(create_keyservice_router(dep.service))
    worker = serve_app(runtime, max_request_bytes=dep.settings.max_request_bytes)
    recorder = Recorder(routed(control, worker))
    try:
        with ThreadedServer(recorder) as service:
            client = Client(
                f"http://{service.address}",
                api_token=dep.api_tokens[TENANT],
                principal=TENANT,
                request_key=dep.tenant_keys[TENANT],
                key_id=f"{TENANT}-k1",
                keyservice=dep.trust,
            )
            client.attest_keyservice()
            gateway = Gateway(client, SLO(latency_ms=1000.0))
            app = create_proxy_app(gateway, max_request_bytes=1 << 20)
            with ThreadedServer(app) as proxy:
                yield Stack(dep, service, proxy, recorder, dep.api_tokens[TENANT])
            client.close()
    finally:
        asyncio.run(runtime.close())


def test_tritonclient_reads_the_services_health_and_metadata(stack: Stack) -> None:
    client = triton.InferenceServerClient(stack.service.address)
    try:
        assert client.is_server_live() and client.is_server_ready()
        assert client.get_server_metadata()["name"] == "infaas"
        auth = {"Authorization": f"Bearer {stack.token}"}
        meta = client.get_model_metadata("digits", headers=auth)
        assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 64]}]
        assert meta["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}]
        assert f"{MODEL}.fp32.onnxruntime" in meta["versions"]
        assert client.is_model_ready("digits", headers=auth)
        # plain inference straight to the service is refused, and says where to go
        x = triton.InferInput("x", [1, 64], "FP32")
        x.set_data_from_numpy(stack.dep.x[:1])
        with pytest.raises(InferenceServerException, match="infaas proxy") as e:
            client.infer("digits", [x], headers=auth)
        assert e.value.status() == "400"
    finally:
        client.close()


def _input(x: np.ndarray, binary: bool) -> triton.InferInput:
    t = triton.InferInput("x", list(x.shape), "FP32")
    t.set_data_from_numpy(x, binary_data=binary)
    return t


def test_tritonclient_infers_through_the_proxy_and_the_service_sees_only_sealed_bodies(
    stack: Stack,
) -> None:
    dep = stack.dep
    x = np.ascontiguousarray(dep.x[:3])
    fp32 = f"{MODEL}.fp32.onnxruntime"
    reference = load_variant(dep.store.get_variant(fp32), dep.onnx).run(x)
    stack.recorder.seen.clear()
    client = triton.InferenceServerClient(stack.proxy.address)
    try:
        assert client.is_server_live() and client.is_server_ready()
        assert client.get_server_metadata()["extensions"] == ["binary_tensor_data"]
        assert client.get_model_metadata("digits")["inputs"][0]["shape"] == [-1, 64]
        assert client.is_model_ready("digits")
        # binary in and out, pinned to the FP32 variant: the exact answer
        result = client.infer(
            "digits",
            [_input(x, True)],
            model_version=fp32,
            outputs=[triton.InferRequestedOutput("logits", binary_data=True)],
            request_id="triton-1",
            parameters={"latency_ms": 500, "min_accuracy": 0.5},
        )
        np.testing.assert_allclose(result.as_numpy("logits"), reference, rtol=1e-5)
        assert result.get_response()["model_version"] == fp32
        assert result.get_response()["id"] == "triton-1"
        # JSON in and out, the variant left to infaas: the same classes
        result = client.infer(
            "digits",
            [_input(x, False)],
            outputs=[triton.InferRequestedOutput("logits", binary_data=False)],
        )
        assert result.get_output("logits")["data"]
        agree = result.as_numpy("logits").argmax(1) == reference.argmax(1)
        assert agree.mean() >= 2 / 3
        # a bad request gets a precise 4xx through the proxy
        with pytest.raises(InferenceServerException, match=r"must have shape \[-1, 64\]") as e:
            client.infer("digits", [_input(np.zeros((1, 63), np.float32), True)])
        assert e.value.status() == "400"
        with pytest.raises(InferenceServerException, match="latency_ms") as e:
            client.infer("digits", [_input(x, True)], parameters={"latency_ms": -1})
        assert e.value.status() == "400"
    finally:
        client.close()
    # malformed bodies and framing: a precise 400 from the proxy, nothing sent on
    url = f"http://{stack.proxy.address}/v2/models/digits/infer"
    for content, headers, message in [
        (b"{not json", {}, "malformed JSON in the inference header"),
        (b'{"inputs": []}', {}, "inputs"),
        (b"{}", {"Inference-Header-Content-Length": "abc"}, "decimal byte count"),
        (b"{}", {"Inference-Header-Content-Length": "9"}, "the body has 2 bytes"),
    ]:
        r = httpx.post(url, content=content, headers=headers)
        assert r.status_code == 400 and r.headers["content-type"] == "application/problem+json"
        assert message in r.json()["error"] and r.json()["code"] == "invalid_input"

    infers = [(m, p, b) for m, p, b in stack.recorder.seen if m == "POST"]
    assert [p for _, p, _ in infers] == [Client.infer_path] * 3  # the bad SLO never left
    assert not any("/infer" in p and p.startswith("/v2") for _, p, _ in stack.recorder.seen)
    for i, (_, _, body) in enumerate(infers):
        assert x.tobytes() not in body and b"binary_data" not in body and b'"x"' not in body
        sealed = InferRequest(envelope=envelope_from_frame(body))  # the client's binary form
        assert x.tobytes() not in bytes(sealed.envelope.ciphertext)
        # ...yet it opens, under the tenant's key only, to the body tritonclient sent
        plain = bytes(open_request(sealed.envelope, {f"{TENANT}-k1": dep.tenant_keys[TENANT]}))
        if i == 0:
            assert sealed.envelope.variant_id == fp32 and sealed.envelope.header_length is not None
            assert plain[sealed.envelope.header_length :] == x.tobytes()
            assert sealed.envelope.latency_ms == 500 and sealed.envelope.min_accuracy == 0.5
        if i == 1:
            assert sealed.envelope.header_length is None and plain.startswith(b"{")
            assert sealed.envelope.latency_ms == 1000  # the proxy's default
