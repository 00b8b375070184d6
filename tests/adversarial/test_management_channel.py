"""Management calls cross the host only sealed: a real HTTP proxy in front of the key
service records, rewrites and replays them, and learns and changes nothing.

The key service runs under uvicorn; the proxy is a second uvicorn server forwarding every
request with httpx, as a Serve proxy or any HTTP hop would, and keeping what it saw.
"""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from starlette.requests import Request
from starlette.responses import Response

from infaas.attestation import SimulatedPlatformCA
from infaas.envelope import new_key
from infaas.errors import DecryptionFailed, InvalidInput, PermissionDenied
from infaas.keyservice import KeyServiceClient, KeyServiceHttpClient, create_keyservice_app
from tests.deployment import Deployment, enrol
from tests.e2e.server import ThreadedServer
from tests.security.markers import encodings

Rewrite = Callable[[str, bytes], bytes]


@dataclass
class Proxy:
    """The host's HTTP hop: forwards to `upstream`, recording (path, request, answer)."""

    upstream: str
    seen: list[tuple[str, bytes, bytes]] = field(default_factory=list)
    rewrite_request: Rewrite = lambda path, body: body
    rewrite_answer: Rewrite = lambda path, body: body

    async def __call__(self, scope: dict, receive: object, send: object) -> None:
        request = Request(scope, receive)  # type: ignore[arg-type]
        body = self.rewrite_request(request.url.path, await request.body())
        async with httpx.AsyncClient(base_url=self.upstream) as up:
            r = await up.request(
                request.method,
                request.url.path,
                params=request.query_params,
                content=body,
                headers={"content-type": request.headers.get("content-type", "")},
            )
        answer = self.rewrite_answer(request.url.path, r.content)
        self.seen.append((request.url.path, body, answer))
        response = Response(answer, r.status_code, media_type=r.headers.get("content-type"))
        await response(scope, receive, send)  # type: ignore[arg-type]

    def post(self, path: str, body: bytes) -> httpx.Response:
        return httpx.post(self.upstream + path, content=body, headers=_JSON)


_JSON = {"content-type": "application/json"}


@dataclass
class World:
    dep: Deployment
    proxy: Proxy
    client: KeyServiceClient


@pytest.fixture
def world(platform_ca: SimulatedPlatformCA, tmp_path: Path) -> Iterator[World]:
    dep = Deployment.create(platform_ca, tmp_path)
    with ThreadedServer(create_keyservice_app(dep.service)) as service:
        proxy = Proxy(service.url)
        with ThreadedServer(proxy) as front, httpx.Client(base_url=front.url, timeout=30) as http:
            trust = dep.trust
            client = KeyServiceClient(
                KeyServiceHttpClient(http), trust.verifier(), policy_sha256=trust.policy_sha256
            )
            yield World(dep, proxy, client)


def _flip_sealed(path: str, body: bytes) -> bytes:
    """Flip one byte inside a sealed call or answer (JSON ``{"sealed": b64}``)."""
    if not path.endswith("/call") or not body:
        return body
    msg = json.loads(body)
    raw = bytearray(base64.urlsafe_b64decode(msg["sealed"]))
    raw[len(raw) // 2] ^= 0x01
    msg["sealed"] = base64.urlsafe_b64encode(bytes(raw)).decode()
    return json.dumps(msg).encode()


def test_the_proxy_reads_no_token_and_no_key(world: World) -> None:
    c, seen = world.client, world.proxy.seen
    owner = enrol(c, "zoo", "owner")
    tenant = enrol(c, "acme", "tenant")
    model_key, tenant_key = new_key(), new_key()
    c.upload_model_key(owner, "resnet", "dk1", model_key)
    c.upload_tenant_key(tenant, "k1", tenant_key)
    c.grant(owner, "resnet", "acme")
    c.accept(tenant, "owner", "zoo")
    assert c.consent(tenant).owners == ("zoo",)
    c.revoke(owner, "resnet", "acme")
    c.retire_tenant_key(tenant, "k1")
    calls = [s for s in seen if s[0].endswith("/call")]
    assert len(calls) == 9
    wire = b"\n".join(req + b"\n" + ans for _, req, ans in seen)
    for secret in (owner.encode(), tenant.encode(), model_key, tenant_key):
        for form in encodings(secret):
            assert form not in wire
    # nor what the calls were: names and arguments travel sealed too
    for name in (b"acme", b"resnet", b"grant", b"revoke"):
        assert name not in b"\n".join(req + ans for _, req, ans in calls)


def test_a_rewritten_call_does_not_open_and_changes_nothing(world: World) -> None:
    c, dep = world.client, world.dep
    owner = enrol(c, "zoo", "owner")
    tenant = enrol(c, "acme", "tenant")
    c.upload_model_key(owner, "resnet", "dk1", new_key())
    c.upload_tenant_key(tenant, "k1", new_key())
    c.accept(tenant, "model", "resnet")
    world.proxy.rewrite_request = _flip_sealed
    with pytest.raises(DecryptionFailed, match="does not open"):
        c.grant(owner, "resnet", "acme")
    with pytest.raises(PermissionDenied, match="not granted"):
        dep.worker_keys().tenant_key("acme", "resnet")


def test_a_rewritten_answer_is_refused_by_the_client(world: World) -> None:
    world.proxy.rewrite_answer = _flip_sealed
    with pytest.raises(DecryptionFailed):
        enrol(world.client, "zoo", "owner")


def test_a_recorded_grant_cannot_be_replayed_after_revoke(world: World) -> None:
    c, dep, proxy = world.client, world.dep, world.proxy
    owner = enrol(c, "zoo", "owner")
    tenant = enrol(c, "acme", "tenant")
    c.upload_model_key(owner, "resnet", "dk1", new_key())
    c.upload_tenant_key(tenant, "k1", new_key())
    c.accept(tenant, "owner", "zoo")
    c.grant(owner, "resnet", "acme")
    _, recorded_grant, _ = proxy.seen[-1]
    assert dep.worker_keys().tenant_key("acme", "resnet").key_id == "k1"
    c.revoke(owner, "resnet", "acme")
    r = proxy.post("/v1/keyservice/call", recorded_grant)
    assert r.status_code == 409 and r.json()["code"] == "replayed_request"
    with pytest.raises(PermissionDenied, match="not granted"):
        dep.worker_keys().tenant_key("acme", "resnet")
    # nor after the key service restarts: its new key does not open the old call
    restarted = Deployment.key_service(dep.ca, dep.store, dep.kek, counter=dep.counter)
    with pytest.raises(DecryptionFailed):
        restarted.call(base64.urlsafe_b64decode(json.loads(recorded_grant)["sealed"]))


def test_sealed_arguments_are_validated_like_plain_ones(world: World) -> None:
    with pytest.raises(InvalidInput, match="no valid principal id"):
        enrol(world.client, "../escape", "tenant")
    with pytest.raises(InvalidInput, match="bad arguments"):
        world.client._sealed("register", enrolment="x", token_sha256="not hex")
    owner = enrol(world.client, "zoo", "owner")
    with pytest.raises(InvalidInput, match="needs tenant"):
        world.client._sealed("grant", owner, model_id="resnet")


def test_a_flood_of_calls_does_not_make_the_service_forget_a_recorded_one() -> None:
    """The proxy records a grant, then seals calls of its own to the service's public key
    (anyone can: HPKE base mode) until the ids it remembers are full, and plays the grant
    again within its window: refused, not forgotten (8 stands for the 100,000 bound)."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    from infaas.errors import Overloaded, ReplayedRequest
    from infaas.keyservice.channel import CallOpener, SealedCall
    from infaas.keyservice.sealing import x25519_raw

    sk = X25519PrivateKey.generate()
    opener = CallOpener(sk, max_remembered=8)
    public = x25519_raw(sk.public_key())
    grant = SealedCall(public, "grant", {"model_id": "resnet", "tenant": "acme"}, "zoo:t")
    assert opener.open(grant.sealed)["op"] == "grant"
    for _ in range(8):
        with contextlib.suppress(Overloaded):
            opener.open(SealedCall(public, "consent", {}, None).sealed)
    with pytest.raises(ReplayedRequest):
        opener.open(grant.sealed)
