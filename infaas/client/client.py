"""`Client`: the user-facing client (see the package docstring for what it guarantees)."""

from __future__ import annotations

import base64
import io
import os
import secrets
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

import httpx
import numpy as np
from pydantic import BaseModel, TypeAdapter

from infaas.attestation.policy import AttestationPolicy
from infaas.attestation.verifier import AttestationVerifier
from infaas.attestation.verify import load_roots
from infaas.client.credentials import KeyServiceTrust, read_credentials, write_credentials
from infaas.client.sealing import (
    InferResult,
    named_inputs,
    open_infer_response,
    seal_infer_request,
)
from infaas.client.transport import send
from infaas.envelope import new_key, seal_artifact
from infaas.errors import (
    AttestationFailed,
    AuthenticationFailed,
    Conflict,
    InfaasError,
    InvalidInput,
    ModelNotFound,
)
from infaas.keyservice.client import KeyServiceClient, KeyServiceHttpClient
from infaas.keyservice.models import ConsentKind, ConsentPolicy
from infaas.protocol import DTYPES, encode_request
from infaas.types import Task, TensorSpec
from infaas.wire import (
    CreateTenantRequest,
    Credentials,
    InferRequest,
    InferResponse,
    JobStatus,
    ModelInfo,
    RegisterModelRequest,
)

_M = TypeVar("_M", bound=BaseModel)
Role = Literal["tenant", "owner", "admin"]

DEFAULT_URL = "http://127.0.0.1:8000"


class Client:
    """A synchronous infaas client (httpx). Use as a context manager or call `close()`."""

    infer_path = "/v1/infer"

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        *,
        api_token: str | None = None,
        ks_token: str | None = None,
        principal: str | None = None,
        role: Role | None = None,
        request_key: bytes | None = None,
        key_id: str | None = None,
        keyservice: KeyServiceTrust | None = None,
        timeout_s: float = 120.0,
        http: httpx.Client | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_token = api_token
        self.ks_token = ks_token
        self.principal = principal or (api_token.rpartition(".")[0] if api_token else None)
        self.role = role
        self.key_id = key_id
        self._request_key = request_key
        self.keyservice = keyservice
        self._http = http or httpx.Client(base_url=self.base_url, timeout=timeout_s)
        self._owns_http = http is None
        self._ks: KeyServiceClient | None = None
        self._tasks: dict[str, Task] = {}

    def __repr__(self) -> str:  # never show tokens or keys
        return f"Client({self.base_url!r}, principal={self.principal!r}, role={self.role!r})"

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    # -- credentials ------------------------------------------------------------------------

    def credentials(self) -> dict[str, Any]:
        """What `save_credentials` writes (secrets included: keep it private)."""
        return {
            "base_url": self.base_url,
            "principal": self.principal,
            "role": self.role,
            "api_token": self.api_token,
            "ks_token": self.ks_token,
            "key_id": self.key_id,
            "request_key": base64.b64encode(self._request_key).decode()
            if self._request_key
            else None,
            "keyservice": self.keyservice.to_json() if self.keyservice else None,
        }

    def save_credentials(self, path: str | os.PathLike[str]) -> Path:
        """Write the credentials to `path` with mode 0600 (atomically, never world-readable)."""
        return write_credentials(path, self.credentials())

    @classmethod
    def from_credentials(
        cls, path: str | os.PathLike[str], *, base_url: str | None = None, **kwargs: Any
    ) -> Client:
        """A client from a credentials file (refused if others can read it)."""
        data = read_credentials(path)
        key = data.get("request_key")
        ks = data.get("keyservice")
        return cls(
            base_url or data.get("base_url") or DEFAULT_URL,
            api_token=data.get("api_token"),
            ks_token=data.get("ks_token"),
            principal=data.get("principal"),
            role=data.get("role"),
            request_key=base64.b64decode(key) if key else None,
            key_id=data.get("key_id"),
            keyservice=KeyServiceTrust.from_json(ks) if ks else None,
            **kwargs,
        )

    # -- HTTP -------------------------------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        content: bytes | None = None,
        params: Mapping[str, str] | None = None,
        auth: bool = True,
    ) -> httpx.Response:
        return send(
            self._http,
            method,
            path,
            token=self.api_token if auth else None,
            base_url=self.base_url,
            json_body=json_body,
            content=content,
            params=params,
        )

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

    def create_owner(self, owner_id: str, name: str = "") -> Credentials:
        """Admin: a new model owner and its API token (shown once)."""
        r = self._request("POST", "/v1/owners", json_body={"owner_id": owner_id, "name": name})
        return Credentials.model_validate_json(r.content)

    def with_credentials(self, creds: Credentials) -> Client:
        """A client on the same server and key-service trust, acting as `creds`' principal."""
        return Client(
            self.base_url,
            api_token=creds.token,
            principal=creds.principal,
            role=creds.role,
            keyservice=self.keyservice,
            timeout_s=self._http.timeout.read or 120.0,
        )

    # -- the key service --------------------------------------------------------------------

    def attest_keyservice(
        self,
        trust: KeyServiceTrust | None = None,
        *,
        policy: AttestationPolicy | None = None,
        measurement: str | bytes | None = None,
        roots_pem: bytes | None = None,
        allow_simulated: bool = False,
    ) -> str:
        """Verify the key service's evidence; returns its measurement (hex).

        Give a `KeyServiceTrust`, or an expected `measurement` and trusted
        `roots_pem`, or a full attestation `policy` (its roots, plus
        `roots_pem` if given). Nothing is sent to the service before this passes.
        """
        if trust is None and policy is None and measurement is not None and roots_pem:
            m = measurement.hex() if isinstance(measurement, bytes) else measurement
            trust = KeyServiceTrust(m, roots_pem, allow_simulated)
        trust = trust or (self.keyservice if policy is None else None)
        if trust is not None:
            policy = trust.policy()
            roots = load_roots(trust.roots_pem)
            self.keyservice = trust
        elif policy is not None:
            roots = load_roots(roots_pem) if roots_pem else []
        else:
            raise AttestationFailed(
                "no expectation for the key service: give its measurement and trusted root "
                "(or a policy) before sending it keys"
            )
        verifier = AttestationVerifier(policy, extra_roots=roots)
        ks = KeyServiceClient(KeyServiceHttpClient(self._http), verifier)
        ks.attest()
        self._ks = ks
        assert ks.verified is not None
        return ks.verified.measurement.hex()

    def _keyservice(self) -> KeyServiceClient:
        if self._ks is None:
            self.attest_keyservice()
        assert self._ks is not None
        return self._ks

    def register_tenant(self, tenant_id: str | None = None, *, key_id: str | None = None) -> None:
        """Register with the attested key service and establish a fresh request key.

        The request key is generated here and leaves this process only sealed to
        the attested key service (and, in `save_credentials`, to the 0600 file).
        """
        tenant = tenant_id or self.principal
        if not tenant:
            raise InvalidInput("which tenant? give tenant_id or an API token")
        ks = self._keyservice()
        if self.ks_token is None:
            self.ks_token = ks.register(tenant, "tenant")
        self.principal = tenant
        self.rotate_request_key(key_id=key_id)

    def rotate_request_key(self, *, key_id: str | None = None) -> str:
        """Upload a new request key to the key service; new requests use it."""
        if self.ks_token is None:
            raise AuthenticationFailed("no key service token: call register_tenant first")
        kid = key_id or f"rk-{int(time.time())}-{secrets.token_hex(3)}"
        key = new_key()
        self._keyservice().upload_tenant_key(self.ks_token, kid, key)
        self._request_key, self.key_id = key, kid
        return kid

    def register_owner(self, owner_id: str | None = None) -> None:
        """Register as a model owner with the attested key service."""
        owner = owner_id or self.principal
        if not owner:
            raise InvalidInput("which owner? give owner_id or an API token")
        if self.ks_token is None:
            self.ks_token = self._keyservice().register(owner, "owner")
        self.principal = owner

    def _owner_ks_token(self) -> str:
        if self.ks_token is None:
            raise AuthenticationFailed("no key service token: call register_owner first")
        return self.ks_token

    def grant(self, model_id: str, tenant: str) -> None:
        """Let `tenant` use `model_id` (the key service then releases its key for it)."""
        self._keyservice().grant(self._owner_ks_token(), model_id, tenant)

    def revoke(self, model_id: str, tenant: str) -> None:
        self._keyservice().revoke(self._owner_ks_token(), model_id, tenant)

    # -- consent (tenant) -------------------------------------------------------------------

    def _tenant_ks_token(self) -> str:
        if self.ks_token is None:
            raise AuthenticationFailed("no key service token: call register_tenant first")
        return self.ks_token

    def accept(self, owner_or_model: str, *, kind: ConsentKind = "owner") -> ConsentPolicy:
        """Let this tenant's requests reach the models of owner `owner_or_model` (or, with
        ``kind="model"``, that one model) once their owner grants them; the policy after.

        An owner's grant alone never sends a request to a model: the key service
        releases this tenant's key for a model only when both hold, and model-less
        selection happens inside that set.
        """
        return self._keyservice().accept(self._tenant_ks_token(), kind, owner_or_model)

    def unaccept(self, owner_or_model: str, *, kind: ConsentKind = "owner") -> ConsentPolicy:
        """Withdraw an acceptance (workers stop within their key cache's lifetime)."""
        return self._keyservice().unaccept(self._tenant_ks_token(), kind, owner_or_model)

    def accepted(self) -> ConsentPolicy:
        """The owners and models this tenant accepted."""
        return self._keyservice().consent(self._tenant_ks_token())

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
        np.savez(buf, **arrays)  # type: ignore[arg-type]
        data_key = new_key()
        key_id = f"dk-{int(time.time())}-{secrets.token_hex(3)}"
        self._keyservice().upload_model_key(self._owner_ks_token(), model_id, key_id, data_key)
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
        progress: bool = True,
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
                    raise InfaasError(
                        f"preparing model {model_id!r} failed: {job.message}", model_id=model_id
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
        try:
            return self._tasks[name]
        except KeyError:
            raise InvalidInput(
                f"unknown task {name!r}; known: {sorted(self._tasks)}", task=name
            ) from None

    def seal_infer(
        self,
        *,
        task: str,
        inputs: np.ndarray | Mapping[str, np.ndarray],
        latency_ms: float,
        min_accuracy: float = 0.0,
        architecture: str | None = None,
        variant_id: str | None = None,
        request_id: str | None = None,
        cast: bool = True,
        binary: bool = True,
        plaintext: bytes | None = None,
    ) -> InferRequest:
        """The sealed request `infer` would send (tests use it to tamper or replay)."""
        if self._request_key is None or self.key_id is None or self.principal is None:
            raise AuthenticationFailed("no request key: call register_tenant or load credentials")
        rid = request_id or str(uuid.uuid4())
        if plaintext is None:
            spec = None if isinstance(inputs, Mapping) else self._task(task).input
            plaintext = encode_request(named_inputs(inputs, spec, cast=cast), rid, binary=binary)
        return seal_infer_request(
            plaintext,
            key_id=self.key_id,
            key=self._request_key,
            tenant=self.principal,
            task=task,
            latency_ms=latency_ms,
            min_accuracy=min_accuracy,
            request_id=rid,
            architecture=architecture,
            variant_id=variant_id,
        )

    def send_infer(self, request: InferRequest | bytes) -> InferResponse:
        """POST a sealed request (or raw body bytes) to /v1/infer; the sealed answer."""
        raw = request if isinstance(request, bytes) else request.model_dump_json().encode()
        r = self._request("POST", self.infer_path, content=raw)
        return InferResponse.model_validate_json(r.content)

    def open_infer(self, request: InferRequest, response: InferResponse) -> InferResult:
        """Decrypt an answer and check it answers `request` (same id, tenant, task, SLO)."""
        if self._request_key is None or self.key_id is None:
            raise AuthenticationFailed("no request key")
        return open_infer_response(
            request,
            response,
            key_id=self.key_id,
            key=self._request_key,
            task=self._tasks.get(request.envelope.task),
        )

    def infer(
        self,
        *,
        task: str,
        inputs: np.ndarray | Mapping[str, np.ndarray],
        latency_ms: float,
        min_accuracy: float = 0.0,
        architecture: str | None = None,
        variant_id: str | None = None,
    ) -> InferResult:
        """Run `inputs` (a batch, ``(n, *task input shape)``) under an SLO, confidentially."""
        request = self.seal_infer(
            task=task,
            inputs=inputs,
            latency_ms=latency_ms,
            min_accuracy=min_accuracy,
            architecture=architecture,
            variant_id=variant_id,
        )
        return self.open_infer(request, self.send_infer(request))
