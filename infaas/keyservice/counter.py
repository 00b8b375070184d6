"""The key service's monotonic counter: the one piece of state the host cannot roll back.

The key service keeps its records in the untrusted store as a hash-chained log
(`infaas.keyservice.state`); the counter holds how many entries the log has.
An older copy of the store has fewer entries than the counter says, so a
restored store is refused rather than served.

`MonotonicCounter` is the interface. Backends:

- `SimulatedCounter` (SIMULATED, this machine): a file under
  ``DATA_DIR/simulated-tee/``, the directory that stands for TEE hardware state.
  A real host can roll that file back too; here it stands for what it cannot.
- `MemoryCounter`: the value lives as long as the object (one process; tests).
- Production (not built here): a TPM 2.0 NV index of type counter
  (``TPMA_NV_COUNTER``: ``TPM2_NV_Increment`` only ever goes up, ``TPM2_NV_Read``
  over a session salted to the TPM's endorsement key so the host cannot answer
  for it), or a replicated ledger: a quorum of attested key-service replicas
  (ROTE / CCF style) that each acknowledge a value before it counts.

Each advance is a compare-and-set from the value the caller last saw, so a
second, stale instance of the key service cannot advance the counter past a
state it has not seen.
"""

from __future__ import annotations

import fcntl
import os
import threading
from abc import ABC, abstractmethod
from pathlib import Path

from infaas.logs import get_logger

log = get_logger(__name__)

SIMULATED_TEE_DIR = "simulated-tee"
"""Under the data dir: what stands for TEE hardware state (sealing key, counter)."""


class CounterMoved(Exception):
    """The counter is not at the value the caller last saw (another writer advanced it)."""


class MonotonicCounter(ABC):
    """A counter that only goes up, held where the host cannot roll it back."""

    name: str

    @abstractmethod
    def read(self) -> int: ...

    @abstractmethod
    def advance(self, seen: int) -> int:
        """Go from `seen` to `seen + 1` (the new value); `CounterMoved` when it is not at `seen`."""


class MemoryCounter(MonotonicCounter):
    """A counter in this process's memory: a restart over the same store must pass it again."""

    name = "memory"

    def __init__(self, value: int = 0) -> None:
        self._value = value
        self._lock = threading.Lock()

    def read(self) -> int:
        return self._value

    def advance(self, seen: int) -> int:
        with self._lock:
            if self._value != seen:
                raise CounterMoved(f"counter is at {self._value}, not {seen}")
            self._value += 1
            return self._value


class SimulatedCounter(MonotonicCounter):
    """SIMULATED hardware counter: ``DATA_DIR/simulated-tee/counter`` (a decimal number).

    Advances are atomic across processes (an exclusive lock on the file, a write to a
    temporary file, fsync, rename)."""

    name = "simulated"

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / SIMULATED_TEE_DIR / "counter"
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock_path = self.path.with_name("counter.lock")
        self._lock = threading.Lock()

    def read(self) -> int:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return 0
        return int(text.strip() or "0")

    def advance(self, seen: int) -> int:
        with self._lock, open(self._lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            value = self.read()
            if value != seen:
                raise CounterMoved(f"counter is at {value}, not {seen}")
            tmp = self.path.with_name("counter.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(f"{value + 1}\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
            return value + 1
