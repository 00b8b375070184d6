"""`AsyncClient`: a tenant's inference over asyncio (httpx.AsyncClient).

The same sealing, answer checks, retries and deadlines as `Client` (they live
in `infaas.client.base` and `infaas.client.retry`); only the HTTP is awaited.
Attesting the key service and registering keys stay with the sync `Client`:
a tenant does them once, then serves traffic from saved credentials::

    async with AsyncClient.from_credentials("data/credentials/demo.json") as client:
        result = await client.infer(task="digits", inputs=x, latency_ms=50)
        many = await client.infer_many(task="digits", inputs=big_batch, latency_ms=50)
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import numpy as np
from pydantic import TypeAdapter
from tenacity import AsyncRetrying

from infaas.client.base import DEFAULT_URL, ClientBase, Inputs, merged
from infaas.client.retry import RetryPolicy, async_retrying
from infaas.client.sealing import Ask, InferManyResult, InferResult
from infaas.client.transport import send_async
from infaas.errors import InfaasError
from infaas.types import Task
from infaas.wire import InferRequest, InferResponse, ModelInfo


class AsyncClient(ClientBase):
    """An asyncio infaas client for inference. ``async with`` it or await `aclose()`."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        *,
        http: httpx.AsyncClient | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        **kwargs: Any,
    ) -> None:
        super().__init__(base_url, **kwargs)
        self._http = http or httpx.AsyncClient(base_url=self.base_url, timeout=self.timeout_s)
        self._owns_http = http is None
        self._sleep = sleep

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def _request(
        self, method: str, path: str, *, auth: bool = True, **kw: Any
    ) -> httpx.Response:
        """One call (keywords of `transport.request_options`), retried when it is a GET."""
        deadline = self._deadline(kw.pop("timeout_s", None))
        token = self.api_token if auth else None
        async for attempt in self._attempts(self._retry_for(method), deadline):
            with attempt:
                timeout_s = self._remaining(deadline)
                return await send_async(
                    self._http, method, path, token=token, timeout_s=timeout_s, **kw
                )
        raise AssertionError("tenacity re-raises the last error")

    def _attempts(self, policy: RetryPolicy, deadline: float) -> AsyncRetrying:
        return async_retrying(policy, deadline=deadline, clock=self._clock, sleep=self._sleep)

    # -- health and metadata ----------------------------------------------------------------

    async def health(self) -> dict[str, Any]:
        out: dict[str, Any] = (await self._request("GET", "/healthz", auth=False)).json()
        return out

    async def ready(self) -> bool:
        """True when the control plane and the worker deployment answer."""
        try:
            await self._request("GET", "/readyz", auth=False)
        except InfaasError:
            return False
        return True

    async def tasks(self) -> list[Task]:
        r = await self._request("GET", "/v1/tasks")
        tasks = TypeAdapter(list[Task]).validate_json(r.content)
        self._tasks = {t.name: t for t in tasks}
        return tasks

    async def models(self, task: str | None = None) -> list[ModelInfo]:
        r = await self._request("GET", "/v1/models", params={"task": task} if task else None)
        return TypeAdapter(list[ModelInfo]).validate_json(r.content)

    # -- inference --------------------------------------------------------------------------

    async def _task(self, name: str) -> Task:
        if name not in self._tasks:
            await self.tasks()
        if name not in self._tasks:
            raise self._unknown_task(name)
        return self._tasks[name]

    async def send_infer(
        self, request: InferRequest | bytes, *, timeout_s: float | None = None
    ) -> InferResponse:
        """POST a sealed request (or raw body bytes) to /v1/infer once; the sealed answer.

        A refusal after the worker decrypted an `InferRequest` is raised with its
        precise, sealed reason (`Client.send_infer`).
        """
        call = self._infer_call(request)
        try:
            r = await self._request("POST", self.infer_path, timeout_s=timeout_s, **call)
        except InfaasError as e:
            raise self._opened(request, e) from None
        return self._infer_answer(r.content, r.headers)

    async def infer(
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
        """`Client.infer`, awaited: retried and re-sealed the same way, bounded by `timeout_s`."""
        ask = Ask(task, latency_ms, min_accuracy, architecture, variant_id)
        return await self._infer(ask, inputs, timeout_s)

    async def _infer(self, ask: Ask, inputs: Inputs, timeout_s: float | None) -> InferResult:
        deadline = self._deadline(timeout_s)
        spec = await self._task(ask.task) if self._needs_task(inputs, None) else None
        async for attempt in self._attempts(self.retry, deadline):
            with attempt:
                request = self._seal(spec, ask, inputs)
                response = await self.send_infer(request, timeout_s=self._remaining(deadline))
        return self.open_infer(request, response)

    async def infer_many(
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
        """`Client.infer_many`, awaited: chunks every candidate variant accepts, `concurrency`
        in flight at a time, outputs in input order."""
        ask = Ask(task, latency_ms, min_accuracy, architecture, variant_id)
        pieces = self.chunks(inputs, self.chunk_rows(await self.models(task=task), ask))
        gate = asyncio.Semaphore(max(1, concurrency))
        with self._progress(len(pieces), progress, task) as step:

            async def one(x: np.ndarray) -> InferResult:
                async with gate:
                    return step(await self._infer(ask, x, timeout_s))

            return merged(await asyncio.gather(*(one(x) for x in pieces)))
