"""A private audit trail per principal: what the key service did that concerns it.

Each tenant and model owner has its own trail, readable only with its own
key-service token (`KeyService.audit`, over the sealed management channel;
``infaas audit`` shows it). Kept apart from any public log, which would tell
everyone who uses which model. Entries (each with the key service's time):

- ``registered`` (role);
- ``tenant_key_added`` / ``tenant_key_retired`` (key id): the tenant's;
- ``model_key_added`` (model, key id): the owner's;
- ``granted`` / ``revoked`` (model, tenant, owner): the owner's and the tenant's;
- ``accepted`` / ``withdrew`` (owner or model): the tenant's;
- ``released`` (kind, key id, model, the models a tenant key serves, the worker
  measurement it went to): a tenant key in the tenant's trail, a model data key
  in its owner's. Recorded once per key, worker measurement and model set: a
  lease renewal or another worker of the same code is not an event.

The trail is records of the key service's state (`infaas.keyservice.state`),
so it is sealed, versioned and rollback-protected like the rest. It grows with
deployment events: per principal, one entry per event above, and one per
distinct (key, worker measurement, model set) released; never per request.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from infaas.envelope import canonical_json
from infaas.keyservice.state import SealedRecords
from infaas.store import SealedTable

RELEASED = "released"


class AuditTrail:
    """Per-principal entries, numbered, in the key service's sealed records."""

    def __init__(self, records: SealedRecords, clock: Callable[[], float] = time.time) -> None:
        self._records = records
        self._clock = clock
        self._lock = threading.Lock()
        self._count: dict[str, int] = {}
        self._released: dict[str, set[bytes]] = {}

    def record(self, principal: str, event: str, **fields: Any) -> None:
        with self._lock:
            self._append(principal, event, fields)

    def released(self, principal: str, **fields: Any) -> None:
        """A key went to a worker: recorded the first time for these fields (renewals are not)."""
        with self._lock:
            seen = self._released.get(principal)
            if seen is None:
                seen = {canonical_json(_fields(e)) for e in self._read(principal)}
                self._released[principal] = seen
            mark = canonical_json(fields)
            if mark not in seen:
                self._append(principal, RELEASED, fields)
                seen.add(mark)

    def read(self, principal: str) -> list[dict[str, Any]]:
        """The principal's trail, oldest first."""
        with self._lock:
            return self._read(principal)

    def _keys(self, principal: str) -> list[str]:
        prefix = f"{principal}/"
        return [k for k in self._records.keys(SealedTable.AUDIT) if k.startswith(prefix)]

    def _read(self, principal: str) -> list[dict[str, Any]]:
        out = []
        for key in self._keys(principal):
            entry = self._records.get(SealedTable.AUDIT, key)
            if entry is not None:
                out.append(entry)
        return out

    def _append(self, principal: str, event: str, fields: dict[str, Any]) -> None:
        n = self._count.get(principal)
        if n is None:
            n = len(self._keys(principal))
        n += 1
        entry = {"seq": n, "event": event, "at": self._clock(), **fields}
        self._records.put(SealedTable.AUDIT, f"{principal}/{n:09d}", entry)
        self._count[principal] = n


def _fields(entry: dict[str, Any]) -> dict[str, Any]:
    """What makes a release event the same event again (not its number or time)."""
    if entry.get("event") != RELEASED:
        return {}
    return {k: v for k, v in entry.items() if k not in ("seq", "event", "at")}
