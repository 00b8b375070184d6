"""Keys a worker holds in memory: model data keys and tenant request keys, fetched once.

Every miss is a release from the key service over fresh attestation evidence
(`WorkerKeyClient`: ephemeral X25519 key, service nonce, quote). Hits cost a
dict lookup. Tenant keys expire after `tenant_ttl_s`, so a revoked grant stops
serving that tenant within that time; a refusal (no grant) is never cached.
Concurrent misses for one key share one release (single flight).

Key material lives only in this process's memory and never appears in a repr,
a log line or an exception.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from infaas.envelope import Keyring
from infaas.errors import InfaasError
from infaas.keyservice import KeyRequest, ReleasedKey, WorkerKeyClient
from infaas.logs import get_logger

log = get_logger(__name__)

_ModelKeyId = tuple[str, str]  # (model id, key id)
_TenantKeyId = tuple[str, str, str | None]  # (tenant, model id, key id or current)


@dataclass
class _Cached:
    keyring: Keyring
    expires_at: float


class KeyCache:
    """Model and tenant keys released to this worker, cached in memory."""

    def __init__(
        self,
        client: WorkerKeyClient,
        *,
        tenant_ttl_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._ttl = tenant_ttl_s
        self._clock = clock
        self._models: dict[_ModelKeyId, bytes] = {}
        self._current_model_key: dict[str, str] = {}
        self._tenants: dict[_TenantKeyId, _Cached] = {}
        self._locks: dict[object, threading.Lock] = {}
        self._guard = threading.Lock()
        self._retry_at: dict[str, float] = {}
        self.releases = 0
        self.last_release_at: float | None = None

    def __repr__(self) -> str:
        return (
            f"KeyCache(model_keys={len(self._models)}, tenant_keys={len(self._tenants)}, "
            f"releases={self.releases})"
        )

    def _lock_for(self, what: object) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(what, threading.Lock())

    def _fetch(self, requests: list[KeyRequest]) -> list[ReleasedKey]:
        released = self._client.fetch(requests)
        self.releases += 1
        self.last_release_at = time.time()
        return released

    # --- model data keys ----------------------------------------------------------------

    def _remember_model(self, rk: ReleasedKey, current: bool) -> None:
        self._models[(rk.model_id, rk.key_id)] = rk.key
        if current:
            self._current_model_key[rk.model_id] = rk.key_id

    def model_key(self, model_id: str, key_id: str | None = None) -> tuple[str, bytes]:
        """(key id, data key) of a model: `key_id`, or the current one when None. Blocking."""
        kid = key_id or self._current_model_key.get(model_id)
        if kid is not None and (hit := self._models.get((model_id, kid))) is not None:
            return kid, hit
        with self._lock_for(("model", model_id, key_id)):
            kid = key_id or self._current_model_key.get(model_id)
            if kid is not None and (hit := self._models.get((model_id, kid))) is not None:
                return kid, hit
            (rk,) = self._fetch([KeyRequest(kind="model", model_id=model_id, key_id=key_id)])
            self._remember_model(rk, current=key_id is None)
            log.info("model key %s/%s released to this worker", model_id, rk.key_id)
            return rk.key_id, rk.key

    def prefetch_models(self, model_ids: list[str]) -> int:
        """Fetch the current data keys of these models, in one release where possible.

        A release is all or nothing: if the batch is refused, each model is
        tried alone, and one that fails is not asked for again for a minute.
        Returns how many keys were released.
        """
        now = self._clock()
        wanted = [
            m
            for m in dict.fromkeys(model_ids)
            if m not in self._current_model_key and self._retry_at.get(m, 0.0) <= now
        ]
        released = 0
        for start in range(0, len(wanted), 64):  # a release carries at most 64 keys
            chunk = wanted[start : start + 64]
            try:
                keys = self._fetch([KeyRequest(kind="model", model_id=m) for m in chunk])
            except InfaasError:
                if len(chunk) == 1:
                    self._retry_at[chunk[0]] = now + 60.0
                    raise
                keys = []
                for m in chunk:
                    try:
                        keys += self._fetch([KeyRequest(kind="model", model_id=m)])
                    except InfaasError as e:
                        self._retry_at[m] = now + 60.0
                        log.warning("no data key released for model %s: %s", m, e.message)
            for rk in keys:
                self._remember_model(rk, current=True)
                released += 1
        return released

    # --- tenant request keys ------------------------------------------------------------

    def _tenant_hit(self, ident: _TenantKeyId) -> Keyring | None:
        hit = self._tenants.get(ident)
        if hit is not None and hit.expires_at > self._clock():
            return hit.keyring
        return None

    def tenant_key(self, tenant: str, model_id: str, key_id: str | None) -> Keyring:
        """The tenant's request key `key_id` (as a one-key keyring, its AES context built
        once), released only if the tenant may use the model."""
        ident = (tenant, model_id, key_id)
        if (hit := self._tenant_hit(ident)) is not None:
            return hit
        with self._lock_for(("tenant", *ident)):
            if (hit := self._tenant_hit(ident)) is not None:
                return hit
            req = KeyRequest(kind="tenant", tenant=tenant, model_id=model_id, key_id=key_id)
            (rk,) = self._fetch([req])
            ring = Keyring({rk.key_id: rk.key})
            self._tenants[ident] = _Cached(ring, self._clock() + self._ttl)
            return ring

    async def tenant_key_async(self, tenant: str, model_id: str, key_id: str | None) -> Keyring:
        """`tenant_key` without blocking the event loop on a miss."""
        hit = self._tenant_hit((tenant, model_id, key_id))
        if hit is not None:
            return hit
        return await asyncio.to_thread(self.tenant_key, tenant, model_id, key_id)

    def forget_tenant(self, tenant: str) -> None:
        for ident in [i for i in self._tenants if i[0] == tenant]:
            self._tenants.pop(ident, None)

    def stats(self) -> dict[str, int]:
        return {
            "model_keys": len(self._models),
            "tenant_keys": len(self._tenants),
            "releases": self.releases,
        }
