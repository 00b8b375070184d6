"""The flusher: a daemon thread writing a `Recorder`'s snapshots to the store."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from infaas.logs import get_logger
from infaas.store import MetadataStore
from infaas.telemetry.recorder import Recorder
from infaas.telemetry.records import interval_key

log = get_logger(__name__)

FLUSH_S = 1.0
"""How often the flusher looks for changes."""
HEARTBEAT_S = 5.0
"""The longest a live replica goes without writing its record."""


class Flusher:
    """Writes a `Recorder`'s snapshots to the store from a daemon thread.

    `status` (e.g. ``WorkerRuntime.status``) is read at each flush, in this
    thread; a status that fails once (a dict changing under iteration) is
    retried at the next flush.
    """

    def __init__(
        self,
        store: MetadataStore,
        recorder: Recorder,
        *,
        status: Callable[[], Mapping[str, Any]] | None = None,
        interval_s: float = FLUSH_S,
        heartbeat_s: float = HEARTBEAT_S,
    ) -> None:
        self.store = store
        self.recorder = recorder
        self._status = status
        self._interval_s = interval_s
        self._heartbeat_s = heartbeat_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_status: Mapping[str, Any] = {}
        self._last_write = -math.inf
        self._written_windows: set[float] = set()

    def start(self) -> Flusher:
        self._thread = threading.Thread(
            target=self._run, name=f"infaas-telemetry-{self.recorder.kind}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self, *, flush: bool = True) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if flush:
            self.flush()

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                due = time.monotonic() - self._last_write >= self._heartbeat_s
                if self.recorder.changed or due:
                    self.flush()
            except Exception as e:  # a store hiccup must never stop telemetry for good
                log.warning("telemetry flush failed: %s", type(e).__name__)

    def flush(self) -> None:
        """Write the replica record and the changed windows now (blocking)."""
        if self._status is not None:
            try:
                self._last_status = dict(self._status())
            except Exception as e:
                log.debug("replica status unavailable this time: %s", type(e).__name__)
        record, windows, expired = self.recorder.snapshot(self._last_status)
        for w in windows:
            self.store.put_telemetry(interval_key(w.replica, w.start), w)
            self._written_windows.add(w.start)
        for t in expired:
            if t in self._written_windows:
                self._written_windows.discard(t)
                self.store.delete_telemetry(interval_key(record.replica, t))
        self.store.put_telemetry(record.replica, record)
        self._last_write = time.monotonic()
