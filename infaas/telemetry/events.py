"""The autoscaler's decision log: one `AutoscalerEvent` (`infaas.types`) per decision.

Store autoscaler events: one event per key ``<time, 6 decimals, zero
padded>-<random>``, so keys sort by time. The autoscaler control loop writes
them with `record_autoscaler_event`; the dashboard reads them with
`read_autoscaler_events`.
"""

from __future__ import annotations

import secrets

from pydantic import ValidationError

from infaas.logs import get_logger
from infaas.store import MetadataStore
from infaas.types import AutoscalerEvent

log = get_logger(__name__)


def record_autoscaler_event(
    store: MetadataStore, event: AutoscalerEvent, *, keep: int = 5000
) -> str:
    """Append `event` to the store's autoscaler events (beyond `keep`, the oldest go); its key."""
    key = f"{event.ts:017.6f}-{secrets.token_hex(4)}"
    store.put_autoscaler_event(key, event)
    if keep and secrets.randbelow(50) == 0:  # pruning lists the namespace: not every time
        keys = sorted(store.autoscaler_event_records())
        for old in keys[: max(0, len(keys) - keep)]:
            store.delete_autoscaler_event(old)
    return key


def read_autoscaler_events(
    store: MetadataStore, *, since: float = 0.0, limit: int = 500
) -> list[AutoscalerEvent]:
    """The latest `limit` events at or after `since`, oldest first (malformed ones skipped).

    Keys sort by time, so only the records asked for are parsed.
    """
    floor = f"{max(since, 0.0):017.6f}"
    keys = sorted(store.autoscaler_event_records().items(), reverse=True)
    out: list[AutoscalerEvent] = []
    for key, raw in keys:
        if key < floor or (limit and len(out) >= limit):
            break
        try:
            out.append(AutoscalerEvent.model_validate_json(raw))
        except ValidationError:
            log.warning("skipping a malformed autoscaler event %s", key[:40])
    out.reverse()
    return [e for e in out if e.ts >= since]
