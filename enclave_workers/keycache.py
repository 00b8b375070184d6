"""Keys a worker holds in memory: model data keys, model profile keys and tenant request
keys, fetched once.

Every miss is a release from the key service over fresh attestation evidence
(`WorkerKeyClient`: ephemeral X25519 key, service nonce, quote), signed by the
attested key service. Hits cost a dict lookup. A tenant's key comes with the
models it may serve (granted by their owner and accepted by the tenant:
`TenantAccess`) under a *lease* the key service signed (1 s by default),
counted on this worker's clock from the moment it asked. It is served only
while the lease runs (fail-closed): a background thread (`start_renewal`, off
the request path) renews the leases of keys in use a little before they end,
in one release for many tenants. A revoked grant, a withdrawn acceptance or a
retired key id is refused at the next renewal, and a host that drops or
delays renewals only makes the lease run out: no tenant key outlives its
lease by more than this worker's clock error.

A tenant chooses the key id its requests name, so a flood of random key ids
must not cost a release each nor grow this worker's memory:

* entries are bounded: at most `keys_per_tenant` key ids per tenant and
  `max_tenants` tenants (least recently used go first);
* an unknown key id is remembered for `refusal_ttl_s` in the same bounded
  table, so repeating it costs a lookup;
* releases for one tenant are rate limited (a token bucket of
  `release_burst`, refilled at `releases_per_s`): beyond it the tenant gets
  `Overloaded` (503, Retry-After) without a release, and other tenants are
  served as before;
* concurrent misses share a lock from a fixed set (striped by key), never a
  lock per key id.

Key material lives only in this process's memory and never appears in a repr,
a log line or an exception.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from infaas.envelope import Keyring
from infaas.errors import InfaasError, Overloaded, UnknownKey
from infaas.keyservice import KeyRequest, ReleasedKey, WorkerKeyClient
from infaas.logs import get_logger

log = get_logger(__name__)

_ModelKeyId = tuple[str, str]  # (model id, key id)
_STRIPES = 64


@dataclass(frozen=True)
class TenantAccess:
    """A tenant's request key (a one-key keyring) and the models it may serve."""

    keyring: Keyring
    models: frozenset[str]


@dataclass(frozen=True)
class _Refusal:
    """A refusal to repeat: raised anew each time (re-raising one instance would grow
    its traceback with every request)."""

    kind: type[InfaasError]
    message: str
    detail: dict[str, object]

    def error(self) -> InfaasError:
        return self.kind(self.message, **self.detail)


@dataclass
class _Cached:
    value: TenantAccess | _Refusal
    expires_at: float
    used_at: float


@dataclass
class _Bucket:
    tokens: float
    at: float


def _refused(e: InfaasError) -> bool:
    """The key service said no (worth a minute's pause), rather than could not answer (its
    replica died or was busy: asked again at the next need)."""
    return e.status_code < 500


class KeyCache:
    """Model and tenant keys released to this worker, cached in memory."""

    def __init__(
        self,
        client: WorkerKeyClient,
        *,
        tenant_ttl_s: float = 60.0,
        refusal_ttl_s: float = 2.0,
        max_tenants: int = 4096,
        keys_per_tenant: int = 4,
        release_burst: float = 8.0,
        releases_per_s: float = 1.0,
        renew_ahead_s: float = 0.5,
        renew_idle_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._ttl = tenant_ttl_s
        self._refusal_ttl = refusal_ttl_s
        self._max_tenants = max_tenants
        self._keys_per_tenant = keys_per_tenant
        self._burst = release_burst
        self._rate = releases_per_s
        self._clock = clock
        self._renew_ahead = renew_ahead_s
        self._renew_idle = renew_idle_s
        self._renewal: threading.Thread | None = None
        self._stop = threading.Event()
        self._models: dict[_ModelKeyId, bytes] = {}
        self._current_model_key: dict[str, str] = {}
        self._profile_keys: dict[str, bytes] = {}
        # tenant -> key id (None: current) -> access or refusal; both levels LRU-bounded
        self._tenants: OrderedDict[str, OrderedDict[str | None, _Cached]] = OrderedDict()
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self._stripes = tuple(threading.Lock() for _ in range(_STRIPES))
        self._guard = threading.Lock()
        self._retry_at: dict[str, float] = {}
        self.releases = 0
        """Releases that succeeded."""
        self.release_requests = 0
        self.renewals = 0
        """Releases asked for, refused ones included: each costs fresh evidence."""
        self.last_release_at: float | None = None

    def __repr__(self) -> str:
        return (
            f"KeyCache(model_keys={len(self._models)}, tenants={len(self._tenants)}, "
            f"releases={self.releases})"
        )

    def _lock_for(self, what: object) -> threading.Lock:
        return self._stripes[hash(what) % _STRIPES]

    def _fetch(self, requests: list[KeyRequest]) -> list[ReleasedKey]:
        self.release_requests += 1
        released = self._client.fetch(requests)
        self.releases += 1
        self.last_release_at = time.time()
        return released

    def _renew_release(self, requests: list[KeyRequest]) -> list[ReleasedKey]:
        """A release that renews leases (background: not a request's miss)."""
        released = self._client.fetch(requests)
        self.renewals += 1
        self.releases += 1
        self.last_release_at = time.time()
        return released

    # --- model data keys ----------------------------------------------------------------

    def _remember_model(self, rk: ReleasedKey, current: bool) -> None:
        assert rk.model_id is not None  # a model key always names its model
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

    def profile_key(self, model_id: str) -> bytes:
        """The model's profile key (MACs the profiles and specs workers measure). Blocking.

        A model whose key was refused is not asked for again for a minute
        (`UnknownKey` meanwhile): the candidate refresh asks every few seconds.
        """
        if (hit := self._profile_keys.get(model_id)) is not None:
            return hit
        with self._lock_for(("profile", model_id)):
            if (hit := self._profile_keys.get(model_id)) is not None:
                return hit
            if self._retry_at.get(model_id, 0.0) > self._clock():
                raise UnknownKey(f"no profile key released for model {model_id!r} lately")
            try:
                (rk,) = self._fetch([KeyRequest(kind="profile", model_id=model_id)])
            except InfaasError as e:
                if _refused(e):
                    self._retry_at[model_id] = self._clock() + 60.0
                raise
            self._profile_keys[model_id] = rk.key
            return rk.key

    @staticmethod
    def _wanted_for(model_id: str) -> list[KeyRequest]:
        return [
            KeyRequest(kind="model", model_id=model_id),
            KeyRequest(kind="profile", model_id=model_id),
        ]

    def _remember_released(self, rk: ReleasedKey) -> None:
        if rk.kind == "profile" and rk.model_id is not None:
            self._profile_keys[rk.model_id] = rk.key
        else:
            self._remember_model(rk, current=True)

    def prefetch_models(self, model_ids: list[str]) -> int:
        """Fetch the current data keys and the profile keys of these models, in one release
        where possible.

        A release is all or nothing: if the batch is refused, each model is
        tried alone, and one that fails is not asked for again for a minute.
        Returns how many keys were released.
        """
        now = self._clock()
        wanted = [
            m
            for m in dict.fromkeys(model_ids)
            if (m not in self._current_model_key or m not in self._profile_keys)
            and self._retry_at.get(m, 0.0) <= now
        ]
        released = 0
        for start in range(0, len(wanted), 32):  # a release carries at most 64 keys
            chunk = wanted[start : start + 32]
            try:
                keys = self._fetch([r for m in chunk for r in self._wanted_for(m)])
            except InfaasError as e:
                if len(chunk) == 1:
                    if _refused(e):
                        self._retry_at[chunk[0]] = now + 60.0
                    raise
                keys = []
                for m in chunk:
                    try:
                        keys += self._fetch(self._wanted_for(m))
                    except InfaasError as e:
                        if _refused(e):
                            self._retry_at[m] = now + 60.0
                        log.warning("no keys released for model %s: %s", m, e.message)
            for rk in keys:
                self._remember_released(rk)
                released += 1
        return released

    # --- tenant request keys ------------------------------------------------------------

    def _lookup(self, tenant: str, key_id: str | None) -> TenantAccess | None:
        """A live cached access (or the cached refusal, raised); None on a miss."""
        with self._guard:
            keys = self._tenants.get(tenant)
            hit = keys.get(key_id) if keys is not None else None
            now = self._clock()
            if hit is None or hit.expires_at <= now:
                return None
            hit.used_at = now
            self._tenants.move_to_end(tenant)
            value = hit.value
        if isinstance(value, _Refusal):
            raise value.error()
        return value

    def _admit(self, tenant: str, key_id: str | None) -> None:
        """Take one release from the tenant's bucket, or refuse (503) without a release.

        The bucket is for unknown or new key ids: a key the key service released to this
        worker, whose lease lapsed, is asked again without it (at most `keys_per_tenant`
        of them per tenant, so no flood hides there)."""
        now = self._clock()
        with self._guard:
            keys = self._tenants.get(tenant)
            held = keys.get(key_id) if keys is not None else None
            if held is not None and isinstance(held.value, TenantAccess):
                return
            b = self._buckets.pop(tenant, None) or _Bucket(self._burst, now)
            b.tokens = min(self._burst, b.tokens + (now - b.at) * self._rate)
            b.at = now
            self._buckets[tenant] = b
            while len(self._buckets) > self._max_tenants:
                self._buckets.popitem(last=False)
            if b.tokens < 1.0:
                wait_s = (1.0 - b.tokens) / self._rate
                raise Overloaded(
                    f"too many key releases for tenant {tenant!r} (unknown or new key ids); "
                    f"retry in {wait_s:.1f} s",
                    retry_after_s=wait_s,
                    tenant=tenant,
                )
            b.tokens -= 1.0

    def _remember(
        self,
        tenant: str,
        key_id: str | None,
        value: TenantAccess | _Refusal,
        valid_until: float = math.inf,
    ) -> None:
        now = self._clock()
        ttl = self._ttl if isinstance(value, TenantAccess) else self._refusal_ttl
        with self._guard:
            keys = self._tenants.pop(tenant, None) or OrderedDict()
            old = keys.pop(key_id, None)
            used_at = old.used_at if old is not None else now
            keys[key_id] = _Cached(value, min(now + ttl, valid_until), used_at)
            while len(keys) > self._keys_per_tenant:
                # a flood of unknown ids evicts its own refusals first, never a released key
                refused = next((k for k, c in keys.items() if isinstance(c.value, _Refusal)), None)
                if refused is not None:
                    del keys[refused]
                else:
                    keys.popitem(last=False)
            self._tenants[tenant] = keys
            while len(self._tenants) > self._max_tenants:
                self._tenants.popitem(last=False)

    def _release_tenant(self, tenant: str, key_id: str | None) -> TenantAccess:
        with self._lock_for((tenant, key_id)):
            if (hit := self._lookup(tenant, key_id)) is not None:
                return hit
            req = KeyRequest(kind="tenant", tenant=tenant, model_id=None, key_id=key_id)
            try:
                (rk,) = self._fetch([req])
            except UnknownKey as e:
                # not a refusal for lack of grant or consent: that one is asked again, so
                # a tenant that just accepted an owner is served at once
                self._remember(tenant, key_id, _Refusal(type(e), e.message, dict(e.detail)))
                raise
            access = TenantAccess(Keyring({rk.key_id: rk.key}), frozenset(rk.models or ()))
            self._remember(tenant, key_id, access, rk.valid_until)
            return access

    def tenant_access(self, tenant: str, key_id: str | None) -> TenantAccess:
        """The tenant's request key `key_id` (its AES context built once) with the models
        it may serve; released only if there is one. Blocking on a miss."""
        if (hit := self._lookup(tenant, key_id)) is not None:
            return hit
        self._admit(tenant, key_id)
        return self._release_tenant(tenant, key_id)

    async def tenant_access_async(self, tenant: str, key_id: str | None) -> TenantAccess:
        """`tenant_access` without blocking the event loop on a miss (a refused or
        rate-limited miss never leaves the loop)."""
        if (hit := self._lookup(tenant, key_id)) is not None:
            return hit
        self._admit(tenant, key_id)
        return await asyncio.to_thread(self._release_tenant, tenant, key_id)

    # --- leases -------------------------------------------------------------------------

    def _due(self) -> list[tuple[str, str | None]]:
        """Tenant keys in use (within `renew_idle_s`) whose lease ends within `renew_ahead_s`."""
        now = self._clock()
        with self._guard:
            return [
                (tenant, key_id)
                for tenant, keys in self._tenants.items()
                for key_id, c in keys.items()
                if isinstance(c.value, TenantAccess)
                and now - c.used_at <= self._renew_idle
                and c.expires_at - now <= self._renew_ahead
            ]

    def renew(self) -> int:
        """Renew the leases of tenant keys in use that end soon, in as few releases as the
        key service allows (one per 64 keys; a refused batch is asked key by key). A key the
        key service refuses now (revoked, withdrawn, retired) is dropped at once; one it
        cannot be asked for (unreachable, dropped by the host) runs out with its lease.
        Returns how many leases were renewed."""
        due = self._due()
        renewed = 0
        for start in range(0, len(due), 64):
            chunk = due[start : start + 64]
            reqs = [KeyRequest(kind="tenant", tenant=t, key_id=k) for t, k in chunk]
            try:
                released = list(zip(chunk, self._renew_release(reqs), strict=True))
            except InfaasError as e:
                if e.status_code >= 500:  # unreachable or busy: the leases run out meanwhile
                    log.warning("leases not renewed: %s", e.code)
                    continue
                released = []
                for (tenant, key_id), req in zip(chunk, reqs, strict=True):
                    try:
                        released += [((tenant, key_id), self._renew_release([req])[0])]
                    except InfaasError as e:
                        if e.status_code < 500:  # refused: stop serving it now
                            self._drop(tenant, key_id)
                            log.info("tenant %s key no longer released: %s", tenant, e.code)
                        else:
                            log.warning("lease of tenant %s not renewed: %s", tenant, e.code)
            except OSError as e:  # the key service unreachable, or the host dropped the call
                log.warning("leases not renewed: %s", type(e).__name__)
                continue
            for (tenant, key_id), rk in released:
                access = TenantAccess(Keyring({rk.key_id: rk.key}), frozenset(rk.models or ()))
                self._remember(tenant, key_id, access, rk.valid_until)
                renewed += 1
        return renewed

    def _drop(self, tenant: str, key_id: str | None) -> None:
        with self._guard:
            keys = self._tenants.get(tenant)
            if keys is not None:
                keys.pop(key_id, None)

    def start_renewal(self, period_s: float = 0.25) -> None:
        """Renew leases every `period_s` on a daemon thread until `close`."""
        if self._renewal is not None:
            return

        def loop() -> None:
            while not self._stop.wait(period_s):
                try:
                    self.renew()
                except Exception:  # the next round tries again; leases fail closed meanwhile
                    log.exception("lease renewal failed")

        self._renewal = threading.Thread(target=loop, name="key-lease-renewal", daemon=True)
        self._renewal.start()

    def close(self) -> None:
        self._stop.set()
        if self._renewal is not None:
            self._renewal.join(timeout=5.0)
            self._renewal = None

    def forget_tenant(self, tenant: str) -> None:
        with self._guard:
            self._tenants.pop(tenant, None)

    def stats(self) -> dict[str, int]:
        with self._guard:
            entries = sum(len(k) for k in self._tenants.values())
        return {
            "model_keys": len(self._models),
            "profile_keys": len(self._profile_keys),
            "tenant_keys": entries,
            "tenants": len(self._tenants),
            "rate_limited_tenants": len(self._buckets),
            "releases": self.releases,
            "release_requests": self.release_requests,
            "lease_renewals": self.renewals,
        }
