"""The Python client: the trusted end of infaas, on the caller's machine.

Everything confidential happens here or in an attested worker::

    from infaas import Client

    client = Client.from_credentials("data/credentials/demo.json")
    result = client.infer(task="digits", inputs=x, latency_ms=50, min_accuracy=0.9)
    result.outputs, result.variant_id, result.measurement, result.simulated_tee

- Before handing the key service any key, the client attests it
  (`attest_keyservice`): the service's quote must verify to a trusted root and
  carry the expected measurement, and bind the service's public key to a fresh
  nonce. Keys are then HPKE-sealed to that key.
- `infer` seals an Open Inference Protocol v2 body under the tenant's request
  key (task and SLO are authenticated associated data), and opens the sealed
  answer, checking that it answers this request, this task and this SLO.
- A tenant or owner joins with an administrator's one-time enrolment
  (`infaas.client.enrolment.login`, ``infaas login``): its key-service token
  and request key are made here; the administrator never holds them.
- `upload_model` generates a data key, gives it only to the attested key
  service, seals the ONNX bytes and the validation set under it and registers
  the model. The control plane sees ciphertext and metadata only.

- Calls that find the service unreachable, answered 429 / 503, or lost with
  the replica serving them (`ReplicaUnavailable`) are tried
  again (`RetryPolicy`: jittered backoff, at least ``Retry-After``, each
  inference attempt sealed anew under a new request id) within the call's
  deadline (`timeout_s`); `infer_many` cuts a large batch into chunks every
  candidate variant accepts and runs them concurrently. `AsyncClient` does the
  same over asyncio.

Errors come back as the same `infaas.errors` types the server raised (the
problem body's `code`, through `error_from_problem`). Credentials (API token,
key-service token, request key) save to and load from a 0600 JSON file.

=================  ===========================================================
module             concept
=================  ===========================================================
``base``           what both clients share: credentials, sealing and opening
                   without I/O, a call's deadline, `infer_many`'s chunks
``client``         `Client` (sync): principals, the key service, models,
                   inference (the user-facing calls)
``aio``            `AsyncClient`: inference, tasks and models over asyncio
``retry``          which failures are tried again, how long to wait (tenacity)
``credentials``    `KeyServiceTrust` and the 0600 credentials file
``enrolment``      joining: the administrator's enrolment file, the party's own
                   `login` (its token and request key made on its machine)
``sealing``        one inference's request sealing and answer checking
``transport``      HTTP to the service (sync and async) and typed errors
                   (`problem_error`, `Timeout`, `Unreachable`)
=================  ===========================================================
"""

from infaas.client.aio import AsyncClient as AsyncClient
from infaas.client.base import DEFAULT_URL as DEFAULT_URL
from infaas.client.base import Role as Role
from infaas.client.client import Client as Client
from infaas.client.credentials import KeyServiceTrust as KeyServiceTrust
from infaas.client.retry import RetryPolicy as RetryPolicy
from infaas.client.sealing import InferManyResult as InferManyResult
from infaas.client.sealing import InferResult as InferResult
from infaas.client.transport import problem_error as problem_error

__all__ = [
    "DEFAULT_URL",
    "AsyncClient",
    "Client",
    "InferManyResult",
    "InferResult",
    "KeyServiceTrust",
    "RetryPolicy",
    "Role",
    "problem_error",
]
