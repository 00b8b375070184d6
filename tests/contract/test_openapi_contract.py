"""Schemathesis against the service's whole OpenAPI document, in process.

The three apps that share the service's HTTP port (the control plane, the key
service, the worker replicas' ``POST /v1/infer``) are built over a memory
store and a simulated-TEE key service and worker (`tests.deployment`), and
routed by the prefixes Ray Serve mounts them at: no Ray, no socket. The
document is the one the control plane serves at ``/openapi.json``; every
operation in it is called with schemathesis's positive and negative examples
(a bounded number each) and every answer is checked: never a 5xx, status,
content type, headers and body as documented, schema-invalid requests
refused.

A caller cannot forge a sealed body (an envelope, a sealed key-service call,
worker evidence, a sealed model artifact): schema-valid random bytes never
open, so for those operations "a schema-valid request is accepted" cannot hold,
and the test checks instead that each refusal is the precise 4xx the sealing
promises.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, seed, settings
from schemathesis.core.parameters import ParameterLocation
from schemathesis.specs.openapi.checks import positive_data_acceptance
from starlette.types import ASGIApp, Receive, Scope, Send

from api.app import create_app
from api.serve import INFER_PREFIX
from enclave_workers.endpoint import serve_app
from infaas.attestation import SimulatedPlatformCA
from infaas.keyservice import create_keyservice_app
from infaas.keyservice.server import PREFIX as KEYSERVICE_PREFIX
from infaas.settings import Settings
from infaas.store import open_store
from infaas.wire import JobStatus
from tests.asgi import TestClient
from tests.deployment import Deployment

MAX_EXAMPLES = int(os.environ.get("INFAAS_CONTRACT_EXAMPLES", "10"))
"""Examples per operation and generation mode: the whole run stays within seconds."""

DERANDOMIZE = "INFAAS_CONTRACT_SEED" not in os.environ
"""CI draws the same examples every run, so a pass or a failure is the code's, not the draw's;
``INFAAS_CONTRACT_SEED=N`` (with ``INFAAS_CONTRACT_EXAMPLES`` raised) explores other draws."""

SEALED = {
    # operation -> the codes a schema-valid but unsealed (forged) body is refused with
    "POST /v1/infer": {"decryption_failed", "invalid_input", "permission_denied"},
    "POST /v1/keyservice/call": {"decryption_failed", "invalid_input"},
    "POST /v1/keyservice/release": {"invalid_input", "attestation_failed", "permission_denied"},
    "POST /v1/models": {"invalid_model", "conflict"},
    "POST /v2/models/{name}/infer": {"sealing_required"},
    "POST /v2/models/{name}/versions/{version}/infer": {"sealing_required"},
}


class Service:
    """The service's three apps on one port, routed by prefix as Ray Serve mounts them.

    Made when the module is collected (schemathesis binds its schema to an app then);
    its apps are built over a deployment by `bind`, in a fixture.
    """

    def __init__(self) -> None:
        self.apps: tuple[ASGIApp, ASGIApp, ASGIApp] | None = None

    def bind(self, dep: Deployment) -> None:
        async def prepare(model_id: str) -> JobStatus:
            # registrations of forged artifacts never reach here (they are refused first)
            return JobStatus(model_id=model_id, state="queued")

        control = create_app(
            dep.settings,
            store=dep.store,
            artifacts=dep.artifacts,
            tokens=dep.tokens,
            prepare=prepare,
            worker_status=dep.runtime.status,
        )
        keyservice = create_keyservice_app(dep.service)
        worker = serve_app(dep.runtime, max_request_bytes=dep.settings.max_request_bytes)
        self.apps = (control, keyservice, worker)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert self.apps is not None, "bind the service to a deployment first"
        control, keyservice, worker = self.apps
        path = str(scope.get("path", ""))
        if scope["type"] == "http" and (
            path == INFER_PREFIX or path.startswith(INFER_PREFIX + "/")
        ):
            await worker({**scope, "root_path": INFER_PREFIX}, receive, send)
        elif scope["type"] == "http" and path.startswith(KEYSERVICE_PREFIX + "/"):
            await keyservice(scope, receive, send)
        else:
            await control(scope, receive, send)


SERVICE = Service()


@pytest.fixture(scope="module")
def deployment_under_test(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """A deployment of its own (the fuzzer creates principals): an owner, a tenant, a worker."""
    dep = Deployment.create(
        SimulatedPlatformCA.generate("contract"), tmp_path_factory.mktemp("contract")
    )
    dep.add_owner("owner1")
    dep.add_tenant("acme")
    dep.start_worker()
    dep.api_tokens["admin"] = dep.tokens.issue("root", "admin")
    yield dep
    dep.close()


@pytest.fixture(scope="module")
def service(deployment_under_test: Deployment) -> Iterator[Service]:
    SERVICE.bind(deployment_under_test)
    yield SERVICE
    SERVICE.apps = None


def served_document() -> dict[str, Any]:
    """The document the control plane serves at ``/openapi.json`` (built with no state)."""
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(data_dir=Path(tmp), store_url="memory://")
        return create_app(settings, store=open_store("memory://")).openapi()


# loaded when the module is collected: schemathesis parametrizes the test by operation
schema = schemathesis.openapi.from_dict(served_document())
schema.app = SERVICE


def token_for(dep: Deployment, method: str, path: str) -> str:
    """A valid token of the role the operation wants: so the fuzzer gets past the door."""
    if path == INFER_PREFIX:
        return dep.api_tokens["acme"]
    if (method, path) == ("POST", "/v1/models"):
        return dep.api_tokens["owner1"]
    return dep.api_tokens["admin"]


def _about_credentials(case: schemathesis.Case) -> bool:
    """Whether schemathesis made this case to go without credentials or with bad ones: a
    negative case in the headers (a missing ``Authorization`` is one), or a coverage case
    naming it. Those keep what they have and must be refused (401), never given a token."""
    meta = case.meta
    if meta is None:
        return False
    if meta.is_negative_at(ParameterLocation.HEADER):
        return True
    return "auth" in str(getattr(meta.phase.data, "parameter", "") or "").lower()


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=DERANDOMIZE,
    database=None,
)
@seed(int(os.environ.get("INFAAS_CONTRACT_SEED", "0")))
def test_every_operation_answers_as_documented(
    case: schemathesis.Case, service: Service, deployment_under_test: Deployment
) -> None:
    # the routes that name the bearer scheme get a real token of the role they want, so the
    # fuzzer reaches the handlers; given as explicit headers (not written into the case),
    # schemathesis's ignored_auth check then sends each secured operation again without a
    # token and with a bad one, and both must be refused
    headers = None
    if case.operation.definition.raw.get("security") and not _about_credentials(case):
        token = token_for(deployment_under_test, case.method.upper(), case.path)
        headers = {"Authorization": f"Bearer {token}"}
    operation = f"{case.method.upper()} {case.path}"
    sealed = SEALED.get(operation)
    response = case.call_and_validate(
        headers=headers, excluded_checks=[positive_data_acceptance] if sealed else None
    )
    assert response.status_code < 500, response.text
    if sealed is not None and 400 <= response.status_code < 500 and response.status_code != 401:
        code = response.json().get("code")
        assert code in sealed | {
            "invalid_input",
            "payload_too_large",
            "method_not_allowed",
            "unsupported_media_type",
        }, (
            operation,
            response.text,
        )


def test_the_document_describes_every_interface(service: Service) -> None:
    """Inference, the key service, OIP v2 and the management routes are all in the document
    the service serves, and it is the document the run above is generated from."""
    with TestClient(service) as http:
        served = http.get("/openapi.json").json()
    assert served["paths"] == schema.raw_schema["paths"]
    paths = served["paths"]
    expected = {
        ("post", INFER_PREFIX),
        ("get", KEYSERVICE_PREFIX + "/evidence"),
        ("post", KEYSERVICE_PREFIX + "/call"),
        ("post", KEYSERVICE_PREFIX + "/nonce"),
        ("post", KEYSERVICE_PREFIX + "/release"),
        ("get", "/v2"),
        ("get", "/v2/health/live"),
        ("get", "/v2/health/ready"),
        ("get", "/v2/models/{name}"),
        ("get", "/v2/models/{name}/versions/{version}"),
        ("get", "/v2/models/{name}/ready"),
        ("post", "/v2/models/{name}/infer"),
        ("post", "/v1/models"),
        ("get", "/v1/models"),
        ("get", "/v1/models/{model_id}"),
        ("get", "/v1/jobs/{model_id}"),
        ("get", "/v1/tasks"),
        ("post", "/v1/tenants"),
        ("get", "/v1/tenants"),
        ("post", "/v1/owners"),
        ("post", "/v1/scrapers"),
        ("get", "/problems/{code}"),
        ("get", "/metrics"),
    }
    documented = {(m, p) for p, ops in paths.items() for m in ops}
    assert expected <= documented, sorted(expected - documented)
    # whatever the key service serves is in the document (its routes are added there)
    assert service.apps is not None
    keyservice = service.apps[1]
    assert isinstance(keyservice, FastAPI)
    served_by_keyservice = {(m, p) for p, ops in keyservice.openapi()["paths"].items() for m in ops}
    assert served_by_keyservice <= documented, sorted(served_by_keyservice - documented)
    for path, ops in paths.items():
        for method, op in ops.items():
            # errors are documented as problems, never as FastAPI's 422 (the edge answers 400)
            assert "422" not in op["responses"], (method, path)
            assert "default" in op["responses"] or path in ("/healthz", "/readyz"), (method, path)
            # credentials are the bearer scheme, never a plain header parameter
            assert "authorization" not in {p["name"].lower() for p in op.get("parameters", [])}
    assert served["components"]["securitySchemes"]["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "an infaas API token: `Authorization: Bearer <token>`",
    }
    assert paths[INFER_PREFIX]["post"]["security"] == [{"bearer": []}]
    assert paths["/v1/tenants"]["post"]["security"] == [{"bearer": []}]


def test_a_forged_envelope_is_a_precise_400(
    service: Service, deployment_under_test: Deployment
) -> None:
    """The shape schemathesis generates for ``POST /v1/infer``, but sealed by no one."""
    body = {
        "envelope": {
            "kind": "request",
            "tenant": "acme",
            "task": "digits",
            "latency_ms": 50.0,
            "min_accuracy": 0.5,
            "request_id": "r1",
            "timestamp": 0.0,
            "key_id": "acme-k1",
            "nonce": "A" * 16,
            "ciphertext": "A" * 24,
        }
    }
    with TestClient(service) as http:
        r = http.post(
            INFER_PREFIX,
            json=body,
            headers={"Authorization": f"Bearer {deployment_under_test.api_tokens['acme']}"},
        )
    assert 400 <= r.status_code < 500, r.text
    assert r.headers["content-type"] == "application/problem+json"


def test_405_names_every_method_of_the_path(service: Service) -> None:
    """``/v1/models`` is served by two routes (GET, POST): a 405 names both in ``Allow``."""
    with TestClient(service) as http:
        r = http.delete("/v1/models")
    assert r.status_code == 405 and r.json()["code"] == "method_not_allowed"
    assert {m.strip() for m in r.headers["allow"].split(",")} >= {"GET", "POST"}
