"""A worker serves a sealed request only for the tenant whose live API token came with it.

The worker checks the token once per request, at its own endpoint (inside the TEE
worker, before it reads the body), and holds the tenant it names to the envelope's.
Every inference reaches that endpoint: the JSON and binary wires here; OIP v2
clients through ``infaas proxy``, which seals for this same ``POST /v1/infer``; a
request of several rows and concurrent requests batched by the worker alike. So the
attacks run on each wire, with one row and with several, through the replica's real
ASGI app: a forged token, a live token of another tenant with the victim's sealed
request, and the tenant's own token once revoked. None is served.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from enclave_workers.endpoint import serve_app
from infaas.wire import ENVELOPE_MEDIA_TYPE, InferResponse, envelope_frame
from tests.asgi import TestClient
from tests.deployment import Deployment

MODEL = "digits-mlp-small"
TENANT = "token-tenant"
WIRES = ("json", "binary")
ROWS = (1, 4)


@pytest.fixture(scope="module")
def http(deployment: Deployment) -> Iterator[TestClient]:
    deployment.add_tenant(TENANT, owner="owner1", grant=(MODEL,))
    app = serve_app(deployment.runtime, max_request_bytes=deployment.settings.max_request_bytes)
    with TestClient(app) as client:
        yield client


def _post(dep: Deployment, http: TestClient, wire: str, rows: int, token: str) -> tuple[int, str]:
    """One request sealed by `TENANT`, sent with `token`: (status, problem code or '')."""
    req = dep.request(TENANT, dep.x[:rows])
    headers = {"Authorization": f"Bearer {token}"}
    if wire == "binary":
        headers |= {"Content-Type": ENVELOPE_MEDIA_TYPE}
        r = http.post("/", content=envelope_frame(req.envelope), headers=headers)
    else:
        headers |= {"Content-Type": "application/json"}
        r = http.post("/", content=req.model_dump_json(), headers=headers)
    if r.status_code == 200:
        served = InferResponse.model_validate_json(r.content)
        assert dep.outputs(TENANT, req, served).shape == (rows, 10)
        return 200, ""
    return r.status_code, r.json()["code"]


def _attack(dep: Deployment, http: TestClient, token: str) -> list[tuple[int, str]]:
    """`token` on every wire and batch shape; the worker must serve none of them."""
    served = dep.runtime.requests_served
    got = [_post(dep, http, wire, rows, token) for wire in WIRES for rows in ROWS]
    assert dep.runtime.requests_served == served, got
    return got


def test_forged_foreign_and_revoked_tokens_are_served_on_no_wire(
    deployment: Deployment, http: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    dep = deployment
    token = dep.api_tokens[TENANT]
    checks: list[str | None] = []
    authenticate = dep.runtime.authenticate

    def counted(t: str | None) -> str:
        checks.append(t)
        return authenticate(t)

    monkeypatch.setattr(dep.runtime, "authenticate", counted)
    # the tenant's own live token is served on every wire, its token checked once each
    assert [_post(dep, http, w, n, token) for w in WIRES for n in ROWS] == [(200, "")] * 4
    assert checks == [token] * 4
    # a forged secret under the tenant's name, and a made-up principal
    assert _attack(dep, http, f"{TENANT}.{'A' * 43}") == [(401, "authentication_failed")] * 4
    assert _attack(dep, http, "nobody.secret") == [(401, "authentication_failed")] * 4
    # another tenant's live token with this tenant's sealed request
    foreign = _attack(dep, http, dep.api_tokens["globex"])
    assert foreign == [(403, "permission_denied")] * 4
    # the tenant's own token, revoked: refused once the worker's token cache (1 s) lapses
    assert dep.tokens.revoke(TENANT)
    time.sleep(1.05)
    assert _attack(dep, http, token) == [(401, "authentication_failed")] * 4
