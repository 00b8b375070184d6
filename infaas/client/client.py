"""`Client`: the user-facing client (see the package docstring for what it guarantees)."""

from __future__ import annotations

import io
import secrets
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import httpx
import numpy as np
from pydantic import BaseModel, TypeAdapter
from tenacity import Retrying

from infaas.client.base import DEFAULT_URL, ClientBase, Inputs, merged
from infaas.client.credentials import KeyServiceTrust
from infaas.client.retry import RetryPolicy, retrying
from infaas.client.sealing import Ask, InferManyResult, InferResult
from infaas.client.transport import problem_error, send, transport_error
from infaas.envelope import new_key, seal_artifact
from infaas.errors import (
    AttestationFailed,
    AuthenticationFailed,
    Conflict,
    InfaasError,
    InvalidInput,
    ModelNotFound,
    NotFound,
    error_from_code,
)
from infaas.keyservice.client import KeyServiceClient, KeyServiceHttpClient
from infaas.keyservice.enrolment import statement_subject
from infaas.keyservice.models import ConsentKind, ConsentPolicy
from infaas.protocol import DTYPES
from infaas.transparency.witness import LogWitness
from infaas.types import Task, Tenant, TensorSpec
from infaas.wire import (
    CreateTenantRequest,
    Credentials,
    Health,
    InferRequest,
    InferResponse,
    JobStatus,
    ModelInfo,
    RegisterModelRequest,
)

_M = TypeVar("_M", bound=BaseModel)


class Client(ClientBase):
    """A synchronous infaas client (httpx). Use as a context manager or call `close()`.

    Calls that fail because the service is unreachable, answers 429 / 503 or loses
    the replica serving them (`ReplicaUnavailable`) are tried again under `retry`
    (`infaas.client.retry`); `timeout_s` is a call's default deadline, all its
    attempts together.
    """

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        *,
        http: httpx.Client | None = None,
        sleep: Callable[[float], None] = time.sleep,
        **kwargs: Any,
    ) -> None:
        super().__init__(base_url, **kwargs)
        self._http = http or httpx.Client(base_url=self.base_url, timeout=self.timeout_s)
        self._owns_http = http is None
        self._sleep = sleep
        self._ks: KeyServiceClient | None = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    # -- HTTP -------------------------------------------------------------------------------

    def _request(self, method: str, path: str, *, auth: bool = True, **kw: Any) -> httpx.Response:
        """One call (keywords of `transport.request_options`), retried when it is a GET."""
        deadline = self._deadline(kw.pop("timeout_s", None))
        token = self.api_token if auth else None
        for attempt in self._attempts(self._retry_for(method), deadline):
            with attempt:
                timeout_s = self._remaining(deadline)
                return send(self._http, method, path, token=token, timeout_s=timeout_s, **kw)
        raise AssertionError("tenacity re-raises the last error")

    def _attempts(self, policy: RetryPolicy, deadline: float) -> Retrying:
        return retrying(policy, deadline=deadline, clock=self._clock, sleep=self._sleep)

    def _get(self, path: str, cls: type[_M], **params: str) -> _M:
        return cls.model_validate_json(self._request("GET", path, params=params or None).content)

    # -- health and metadata ----------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        out: dict[str, Any] = self._request("GET", "/healthz", auth=False).json()
        return out

    def ready(self) -> bool:
        """True when the control plane and the worker deployment answer."""
        try:
            self._request("GET", "/readyz", auth=False)
        except InfaasError:
            return False
        return True

    def status(self) -> Health:
        """Readiness of the service, its worker deployment's status in `detail` (one try:
        a degraded service answers too)."""
        try:
            r = self._http.get("/readyz", timeout=self.timeout_s)
        except httpx.TransportError as e:
            raise transport_error(e, self.base_url) from e
        if r.status_code not in (200, 503) or "status" not in r.text:
            raise problem_error(r)
        return Health.model_validate_json(r.content)

    def tasks(self) -> list[Task]:
        tasks = TypeAdapter(list[Task]).validate_json(self._request("GET", "/v1/tasks").content)
        self._tasks = {t.name: t for t in tasks}
        return tasks

    def models(self, task: str | None = None) -> list[ModelInfo]:
        params = {"task": task} if task else None
        r = self._request("GET", "/v1/models", params=params)
        return TypeAdapter(list[ModelInfo]).validate_json(r.content)

    def model(self, model_id: str) -> ModelInfo:
        return self._get(f"/v1/models/{model_id}", ModelInfo)

    def job(self, model_id: str) -> JobStatus:
        return self._get(f"/v1/jobs/{model_id}", JobStatus)

    # -- principals (admin) -----------------------------------------------------------------

    def create_tenant(self, tenant_id: str, name: str = "") -> Credentials:
        """Admin: a new tenant and its API token (shown once)."""
        body = CreateTenantRequest(tenant_id=tenant_id, name=name).model_dump_json()
        r = self._request("POST", "/v1/tenants", content=body.encode())
        return Credentials.model_validate_json(r.content)

    def tenants(self) -> list[Tenant]:
        """Admin: every tenant."""
        return TypeAdapter(list[Tenant]).validate_json(self._request("GET", "/v1/tenants").content)

    def create_owner(self, owner_id: str, name: str = "") -> Credentials:
        """Admin: a new model owner and its API token (shown once)."""
        r = self._request("POST", "/v1/owners", json_body={"owner_id": owner_id, "name": name})
        return Credentials.model_validate_json(r.content)

    def revoke_api_token(self, principal: str) -> bool:
        """Admin: revoke `principal`'s API token (False: it had none)."""
        try:
            self._request("DELETE", f"/v1/tokens/{principal}")
        except NotFound:
            return False
        return True

    def revoke_keyservice_token(self, revocation: str) -> None:
        """Admin: hand the key service a signed revocation (`infaas.keyservice.enrolment`)."""
        self._keyservice().revoke_token(revocation=revocation)

    def with_credentials(self, creds: Credentials) -> Client:
        """A client on the same server and key-service trust, acting as `creds`' principal."""
        return Client(
            self.base_url,
            api_token=creds.token,
            principal=creds.principal,
            role=creds.role,
            keyservice=self.keyservice,
            timeout_s=self.timeout_s,
            retry=self.retry,
            seen_heads=self.seen_heads,
        )

    # -- the key service --------------------------------------------------------------------

    def attest_keyservice(self, trust: KeyServiceTrust | None = None) -> str:
        """Verify the key service's evidence against `trust` (the deployment's published
        bundle: code measurement, release policy hash, roots; default: this client's);
        returns its measurement (hex). Nothing is sent to the service before this passes."""
        trust = trust or self.keyservice
        if trust is None:
            raise AttestationFailed(
                "no expectation for the key service: give the deployment's trust bundle "
                "(infaas trust export) before sending it keys"
            )
        ks = KeyServiceClient(
            KeyServiceHttpClient(self._http),
            trust.verifier(),
            policy_sha256=trust.policy_sha256,
            log=self._log_witness(trust),
        )
        ks.attest()
        self.keyservice = trust
        self._ks = ks
        assert ks.verified is not None
        return ks.verified.measurement.hex()

    def _log_witness(self, trust: KeyServiceTrust) -> LogWitness | None:
        """The check of the trust bundle's transparency log, one per pinned log key, keeping
        the heads seen in `seen_heads` (a file next to the credentials) when set."""
        if self._witness is None or self._witness.public_key.hex() != trust.log_public_key:
            self._witness = trust.witness(self.seen_heads)
        return self._witness

    def _keyservice(self) -> KeyServiceClient:
        if self._ks is None:
            self.attest_keyservice()
        assert self._ks is not None
        return self._ks

    def register_tenant(self, enrolment: str, *, key_id: str | None = None) -> None:
        """Register with the attested key service with an administrator's one-time
        `enrolment`, and establish a fresh request key.

        The key-service token and the request key are made here: the token leaves this
        process only hashed, the key only sealed to the attested key service (and, in
        `save_credentials`, to the 0600 file). Nobody else, the administrator included,
        ever holds them.
        """
        self._enrol(enrolment)
        self.rotate_request_key(key_id=key_id)

    def _enrol(self, enrolment: str) -> None:
        subject = statement_subject(enrolment)
        if self.principal not in (None, subject):
            raise InvalidInput(
                f"the enrolment is for {subject!r}, these credentials are {self.principal!r}"
            )
        if self.ks_token is None:
            self.ks_token = self._keyservice().register(enrolment)
        self.principal = subject

    def rotate_request_key(self, *, key_id: str | None = None) -> str:
        """Upload a new request key to the key service; new requests use it."""
        token = self._ks_token()
        kid = key_id or f"rk-{int(time.time())}-{secrets.token_hex(3)}"
        key = new_key()
        self._keyservice().upload_tenant_key(token, kid, key)
        self._request_key, self.key_id = key, kid
        return kid

    def register_owner(self, enrolment: str) -> None:
        """Register as a model owner with the attested key service with an administrator's
        one-time `enrolment` (the token is made here, as for a tenant)."""
        self._enrol(enrolment)

    def revoke_ks_token(self) -> None:
        """Revoke this principal's own key-service token (a leaked one): the key service
        refuses it at once and stops releasing this principal's keys; only a new enrolment
        from the administrator lets it back."""
        self._keyservice().revoke_token(self._ks_token())
        self.ks_token = None

    def _ks_token(self) -> str:
        if self.ks_token is None:
            raise AuthenticationFailed("no key service token: register first (infaas login)")
        return self.ks_token

    def retire_model_key(self, model_id: str, key_id: str) -> None:
        """Owner: never release data key `key_id` of `model_id` again (if it is the current
        one, workers stop serving the model within a second)."""
        self._keyservice().retire_model_key(self._ks_token(), model_id, key_id)

    def grant(self, model_id: str, tenant: str) -> None:
        """Let `tenant` use `model_id` (the key service then releases its key for it)."""
        self._keyservice().grant(self._ks_token(), model_id, tenant)

    def revoke(self, model_id: str, tenant: str) -> None:
        self._keyservice().revoke(self._ks_token(), model_id, tenant)

    # -- consent (tenant) -------------------------------------------------------------------

    def accept(self, owner_or_model: str, *, kind: ConsentKind = "owner") -> ConsentPolicy:
        """Let this tenant's requests reach the models of owner `owner_or_model` (or, with
        ``kind="model"``, that one model) once their owner grants them; the policy after.

        An owner's grant alone never sends a request to a model: the key service
        releases this tenant's key for a model only when both hold, and model-less
        selection happens inside that set.
        """
        return self._keyservice().accept(self._ks_token(), kind, owner_or_model)

    def unaccept(self, owner_or_model: str, *, kind: ConsentKind = "owner") -> ConsentPolicy:
        """Withdraw an acceptance (workers stop within their key cache's lifetime)."""
        return self._keyservice().unaccept(self._ks_token(), kind, owner_or_model)

    def accepted(self) -> ConsentPolicy:
        """The owners and models this tenant accepted."""
        return self._keyservice().consent(self._ks_token())

    def audit(self) -> list[dict[str, Any]]:
        """This principal's own audit trail at the key service (grants, consent, key ids,
        releases and the worker measurements they went to), oldest first."""
        if self.ks_token is None:
            raise AuthenticationFailed("no key service token: register first")
        return self._keyservice().audit(self.ks_token)

    # -- models (owner) ---------------------------------------------------------------------

    def upload_model(
        self,
        model_id: str,
        task: str,
        architecture: str,
        onnx_bytes: bytes,
        validation_x: np.ndarray,
        validation_y: np.ndarray | None = None,
        *,
        num_classes: int,
        input_spec: TensorSpec | None = None,
        input_name: str = "x",
        declared_accuracy: float | None = None,
    ) -> JobStatus:
        """Seal and register an FP32 ONNX model; returns the queued preparation job.

        A fresh data key goes to the attested key service only; the ONNX bytes and
        the validation set (``x``, and ``y`` labels if given, as .npz) are sealed
        under it with their names (`model_id`, ``model_id + ".validation"``) bound.
        """
        x = np.asarray(validation_x)
        spec = input_spec or TensorSpec(name=input_name, shape=tuple(int(d) for d in x.shape[1:]))
        if tuple(x.shape[1:]) != spec.shape:
            raise InvalidInput(
                f"validation inputs have per-sample shape {list(x.shape[1:])}, "
                f"the input spec says {list(spec.shape)}"
            )
        if validation_y is not None and len(validation_y) != len(x):
            raise InvalidInput(f"{len(x)} validation inputs but {len(validation_y)} labels")
        try:
            self.model(model_id)
        except ModelNotFound:
            pass
        else:  # say so before a data key goes to the key service for nothing
            raise Conflict(f"model {model_id!r} is already registered", model_id=model_id)
        buf = io.BytesIO()
        arrays = {"x": x.astype(DTYPES[spec.datatype], copy=False)}
        if validation_y is not None:
            arrays["y"] = np.asarray(validation_y, dtype=np.int64)
        if declared_accuracy is not None:  # sealed: the store's record is not believed
            arrays["declared_accuracy"] = np.asarray(declared_accuracy, dtype=np.float64)
        np.savez(buf, **arrays)  # type: ignore[arg-type]
        data_key = new_key()
        key_id = f"dk-{int(time.time())}-{secrets.token_hex(3)}"
        self._keyservice().upload_model_key(self._ks_token(), model_id, key_id, data_key)
        body = RegisterModelRequest(
            model_id=model_id,
            task=task,
            architecture=architecture,
            input=spec,
            num_classes=num_classes,
            declared_accuracy=declared_accuracy,
            key_id=key_id,
            artifact=bytes(seal_artifact(data_key, key_id, model_id, onnx_bytes)),
            validation=bytes(
                seal_artifact(data_key, key_id, f"{model_id}.validation", buf.getvalue())
            ),
        )
        del data_key
        r = self._request("POST", "/v1/models", content=body.model_dump_json().encode())
        return JobStatus.model_validate_json(r.content)

    def wait_ready(
        self,
        model_id: str,
        *,
        timeout_s: float = 1800.0,
        poll_s: float = 0.5,
        progress: bool = False,
    ) -> JobStatus:
        """Poll the model's job until ready; raise the failure if it fails or times out."""
        deadline = time.monotonic() + timeout_s
        bar: Any = None
        task_id: Any = None
        if progress:
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            bar = Progress(
                TextColumn("[bold]{task.fields[model]}[/bold] {task.description}"),
                BarColumn(),
                TextColumn("{task.completed}/{task.total}"),
                TimeElapsedColumn(),
            )
            bar.start()
            task_id = bar.add_task("queued", total=None, model=model_id)
        try:
            while True:
                job = self.job(model_id)
                if bar is not None:
                    bar.update(
                        task_id,
                        description=f"{job.state} {job.message}".strip()[:60],
                        completed=job.done,
                        total=job.total or None,
                    )
                if job.state == "ready":
                    return job
                if job.state == "failed":
                    raise error_from_code(
                        job.code or InfaasError.code,
                        f"preparing model {model_id!r} failed: {job.message}",
                        {"model_id": model_id},
                    )
                if time.monotonic() > deadline:
                    raise InfaasError(
                        f"model {model_id!r} not ready after {timeout_s:.0f} s "
                        f"({job.state}, {job.done}/{job.total})",
                        model_id=model_id,
                    )
                time.sleep(poll_s)
        finally:
            if bar is not None:
                bar.stop()

    # -- inference (tenant) -----------------------------------------------------------------

    def _task(self, name: str) -> Task:
        if name not in self._tasks:
            self.tasks()
        if name not in self._tasks:
            raise self._unknown_task(name)
        return self._tasks[name]

    def seal_infer(
        self,
        *,
        inputs: Inputs | None = None,
        request_id: str | None = None,
        cast: bool = True,
        binary: bool = True,
        plaintext: bytes | None = None,
        header_length: int | None = None,
        **ask: Any,
    ) -> InferRequest:
        """The sealed request `infer` would send (tests use it to tamper or replay).

        `ask` as `infer`'s keywords; `plaintext` is an encoded body sealed as it is
        (`header_length`: its ``Inference-Header-Content-Length``).
        """
        a = Ask(**ask)
        spec = self._task(a.task) if self._needs_task(inputs, plaintext) else None
        return self._seal(
            spec, a, inputs, request_id=request_id, cast=cast, binary=binary,
            plaintext=plaintext, header_length=header_length,
        )  # fmt: skip

    def send_infer(
        self, request: InferRequest | bytes, *, timeout_s: float | None = None
    ) -> InferResponse:
        """POST a sealed request (or raw body bytes) to /v1/infer once; the sealed answer.

        A refusal after the worker decrypted an `InferRequest` carries its reason
        sealed: it is opened here and raised with its precise message.
        """
        call = self._infer_call(request)
        try:
            r = self._request("POST", self.infer_path, timeout_s=timeout_s, **call)
        except InfaasError as e:
            raise self._opened(request, e) from None
        return self._infer_answer(r.content, r.headers)

    def infer(
        self,
        *,
        task: str,
        inputs: Inputs,
        latency_ms: float,
        min_accuracy: float = 0.0,
        architecture: str | None = None,
        variant_id: str | None = None,
        timeout_s: float | None = None,
    ) -> InferResult:
        """Run `inputs` (a batch, ``(n, *task input shape)``) under an SLO, confidentially.

        Unreachable, 429, 503 and a dead replica are tried again under the retry
        policy, each attempt sealed anew (a new request id); `timeout_s` bounds the whole call.
        """
        ask = Ask(task, latency_ms, min_accuracy, architecture, variant_id)
        return self._infer(ask, inputs, timeout_s)

    def _infer(self, ask: Ask, inputs: Inputs, timeout_s: float | None) -> InferResult:
        deadline = self._deadline(timeout_s)
        spec = self._task(ask.task) if self._needs_task(inputs, None) else None
        for attempt in self._attempts(self.retry, deadline):
            with attempt:
                request = self._seal(spec, ask, inputs)
                response = self.send_infer(request, timeout_s=self._remaining(deadline))
        return self.open_infer(request, response)

    def infer_body(
        self,
        body: bytes,
        *,
        header_length: int | None = None,
        body_id: str | None = None,
        timeout_s: float | None = None,
        **ask: Any,
    ) -> InferResult:
        """Run an Open Inference Protocol v2 request body encoded elsewhere (by tritonclient,
        through `infaas proxy`) as it is; the answer's body is `InferResult.body`.

        `ask` as `infer`'s keywords; `body_id` is the body's own ``id``. Retried as
        `infer` is, each attempt sealed anew.
        """
        a = Ask(**ask)
        deadline = self._deadline(timeout_s)
        for attempt in self._attempts(self.retry, deadline):
            with attempt:
                request = self._seal(None, a, None, plaintext=body, header_length=header_length)
                response = self.send_infer(request, timeout_s=self._remaining(deadline))
        return self.open_infer(request, response, body_id=body_id)

    def infer_many(
        self,
        *,
        task: str,
        inputs: np.ndarray,
        latency_ms: float,
        min_accuracy: float = 0.0,
        architecture: str | None = None,
        variant_id: str | None = None,
        concurrency: int = 4,
        progress: bool = False,
        timeout_s: float | None = None,
    ) -> InferManyResult:
        """`infer` for a batch of any size: cut into chunks every candidate variant of the
        task accepts (`chunk_rows`), run `concurrency` at a time, outputs in input order."""
        ask = Ask(task, latency_ms, min_accuracy, architecture, variant_id)
        pieces = self.chunks(inputs, self.chunk_rows(self.models(task=task), ask))
        with (
            self._progress(len(pieces), progress, task) as step,
            ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool,
        ):
            return merged(list(pool.map(lambda x: step(self._infer(ask, x, timeout_s)), pieces)))
