"""Once a worker has decrypted a request, nothing about its plaintext leaves in the clear.

A tenant's input that fails after decryption (a value that does not parse, a
field or tensor name of its own, an index the model cannot take) made numpy,
pydantic or onnxruntime write the input into the error. The host sees the
worker's HTTP answer and its logs and stderr: a marker planted in the input
must show in none of them, while the tenant, who holds the key, opens the
precise reason. The worker keeps serving others.
"""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Iterator

import numpy as np
import pytest

from enclave_workers.endpoint import serve_app
from infaas.attestation import SimulatedPlatformCA
from infaas.envelope import SEALED_ERROR_MESSAGE, open_error, seal_request
from infaas.errors import InferenceFailed, InvalidInput, error_from_problem
from infaas.protocol import decode_request
from infaas.wire import InferRequest
from tests.adversarial.owner_models import (
    TASK,
    VICTIM,
    owner_deployment,
    run_alone,
    variant,
    warm,
)
from tests.asgi import TestClient
from tests.deployment import Deployment

MARKER = "Zq7-PLAINTEXT-MARKER-4e1d"
INDEX = 7654321
"""An out-of-range index, exact in FP32, that onnxruntime's message would quote."""


@pytest.fixture(scope="module")
def dep(
    platform_ca: SimulatedPlatformCA, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    deployment = owner_deployment(platform_ca, tmp_path_factory.mktemp("sealed-errors"))
    warm(deployment, deployment.runtime, ["lookup"])
    yield deployment
    deployment.close()


def _tensor(**over: object) -> dict[str, object]:
    return {"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1.0, 0, 0, 0]} | over


BODIES: dict[str, tuple[dict[str, object], str]] = {
    # numpy said "could not convert string to float: '<marker>'"
    "a value that is not a number": (
        {"inputs": [_tensor(data=[MARKER, 0, 0, 0])]},
        "invalid_input",
    ),
    # pydantic names the unknown field
    "a field of the tenant's": ({"inputs": [_tensor()], MARKER: 1}, "invalid_input"),
    # the decoder names the input it got
    "a tensor name of the tenant's": ({"inputs": [_tensor(name=MARKER)]}, "invalid_input"),
    # onnxruntime: "indices element out of data bounds, idx=<marker> must be within ..."
    "an index the model cannot take": (
        {"inputs": [_tensor(data=[float(INDEX), 0, 0, 0])]},
        "inference_failed",
    ),
}
SECRETS = (MARKER, str(INDEX))


def _body(req: InferRequest, body: dict[str, object]) -> bytes:
    return json.dumps(body | {"id": req.envelope.request_id}).encode()


def _sealed(dep: Deployment, body: dict[str, object]) -> InferRequest:
    rid = str(uuid.uuid4())
    env = seal_request(
        {f"{VICTIM}-k1": dep.tenant_keys[VICTIM]},
        json.dumps(body | {"id": rid}).encode(),
        tenant=VICTIM,
        task=TASK.name,
        latency_ms=1000.0,
        min_accuracy=0.0,
        request_id=rid,
        variant_id=variant("lookup"),
    )
    return InferRequest(envelope=env)


@pytest.mark.parametrize("case", sorted(BODIES))
def test_an_error_after_decryption_carries_no_plaintext_in_the_clear(
    dep: Deployment, case: str, json_logs: io.StringIO, capfd: pytest.CaptureFixture[str]
) -> None:
    body, code = BODIES[case]
    if code == "inference_failed":  # the runtime's own message does quote the input
        with pytest.raises(Exception, match=str(INDEX)):
            run_alone("lookup", np.array([[INDEX, 0, 0, 0]], np.float32))
        capfd.readouterr()  # what that session wrote is the test's, not the worker's
    req = _sealed(dep, body)
    with TestClient(serve_app(dep.runtime, max_request_bytes=1 << 20)) as http:
        answer = http.post(
            "/",
            content=req.model_dump_json(),
            headers={"Authorization": f"Bearer {dep.api_tokens[VICTIM]}"},
        )
        good = http.post(
            "/",
            content=dep.request(
                VICTIM, np.array([[2, 0, 0, 0]], np.float32), variant_id=variant("lookup")
            ).model_dump_json(),
            headers={"Authorization": f"Bearer {dep.api_tokens[VICTIM]}"},
        )
    problem = answer.json()
    assert problem["code"] == code and answer.status_code == problem["status"]
    assert problem["detail"].startswith(SEALED_ERROR_MESSAGE)
    assert good.status_code == 200  # the worker goes on serving
    out, err = capfd.readouterr()
    clear = answer.text + json_logs.getvalue() + out + err
    for secret in SECRETS:
        assert secret not in clear, f"{case}: plaintext in the clear body, logs or stderr"

    # the tenant opens the precise reason; the host, without the key, cannot
    clear_error = error_from_problem(problem)
    keys = {f"{VICTIM}-k1": dep.tenant_keys[VICTIM]}
    reason = open_error(clear_error, keys, request_id=req.envelope.request_id, tenant=VICTIM)
    assert type(reason) is type(clear_error) and reason is not clear_error
    assert isinstance(reason, InferenceFailed if code == "inference_failed" else InvalidInput)
    if code == "invalid_input":  # the decoder's own words, back to the tenant only
        with pytest.raises(InvalidInput) as local:
            decode_request(_body(req, body), TASK.input, 8, task=TASK.name)
        assert reason.message == local.value.message
    wrong = {f"{VICTIM}-k1": dep.tenant_keys["bystander"]}
    assert open_error(clear_error, wrong, request_id=req.envelope.request_id) is clear_error
