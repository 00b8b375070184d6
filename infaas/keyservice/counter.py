"""The key service's monotonic counter: the one piece of state the host cannot roll back.

The key service keeps its records in the untrusted store as a hash-chained log
(`infaas.keyservice.state`); the counter holds how many entries the log has.
An older copy of the store has fewer entries than the counter says, so a
restored store is refused rather than served. Beside the number the counter keeps
the SHA-256 of the log entry it was advanced to (its *head*): a write that failed
after its entry reached the store leaves the host a second, genuine entry of the
same number, and only the head tells that history from the one committed.

`MonotonicCounter` is the interface. Backends:

- `SimulatedCounter` (SIMULATED, this machine): a file under
  ``DATA_DIR/simulated-tee/``, the directory that stands for TEE hardware state.
  A real host can roll that file back too; here it stands for what it cannot.
- `MemoryCounter`: the value lives as long as the object (one process; tests).
- Production (not built here): a TPM 2.0 NV index of type counter
  (``TPMA_NV_COUNTER``: ``TPM2_NV_Increment`` only ever goes up, ``TPM2_NV_Read``
  over a session salted to the TPM's endorsement key so the host cannot answer
  for it) with the head in an ordinary NV index written under the same policy,
  or a replicated ledger: a quorum of attested key-service replicas (ROTE / CCF
  style) that each acknowledge a value and head before it counts.

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

    def read(self) -> int:
        return self.read_head()[0]

    @abstractmethod
    def read_head(self) -> tuple[int, str]:
        """The value and the head recorded with it ("" when none was)."""

    @abstractmethod
    def advance(self, seen: int, head: str = "") -> int:
        """Go from `seen` to `seen + 1` (the new value), recording `head` with it;
        `CounterMoved` when it is not at `seen`."""


class MemoryCounter(MonotonicCounter):
    """A counter in this process's memory: a restart over the same store must pass it again."""

    name = "memory"

    def __init__(self, value: int = 0, head: str = "") -> None:
        self._value = value
        self._head = head
        self._lock = threading.Lock()

    def read_head(self) -> tuple[int, str]:
        with self._lock:
            return self._value, self._head

    def advance(self, seen: int, head: str = "") -> int:
        with self._lock:
            if self._value != seen:
                raise CounterMoved(f"counter is at {self._value}, not {seen}")
            self._value, self._head = self._value + 1, head
            return self._value


class SimulatedCounter(MonotonicCounter):
    """SIMULATED hardware counter: ``DATA_DIR/simulated-tee/counter`` (a decimal number and
    the head, hex; a file from before heads holds the number alone).

    Advances are atomic across processes (an exclusive lock on the file, a write to a
    temporary file, fsync, rename)."""

    name = "simulated"

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / SIMULATED_TEE_DIR / "counter"
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock_path = self.path.with_name("counter.lock")
        self._lock = threading.Lock()

    def read_head(self) -> tuple[int, str]:
        try:
            fields = self.path.read_text().split()
        except FileNotFoundError:
            return 0, ""
        return int(fields[0]) if fields else 0, fields[1] if len(fields) > 1 else ""

    def advance(self, seen: int, head: str = "") -> int:
        with self._lock, open(self._lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            value = self.read()
            if value != seen:
                raise CounterMoved(f"counter is at {value}, not {seen}")
            tmp = self.path.with_name("counter.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(f"{value + 1} {head}".strip() + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
            return value + 1
