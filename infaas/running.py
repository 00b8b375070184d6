"""The record a running `infaas serve` leaves in its data dir, so `infaas status` and
`infaas stop` find it without being told its URL or process id.

``DATA_DIR/serve.json`` holds the process id and the URL; `infaas serve` writes
it once it listens and removes it when it stops. Only metadata: no secret.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from infaas.errors import InfaasError, Unreachable

FILE_NAME = "serve.json"


@dataclass(frozen=True)
class Running:
    """A running `infaas serve`: its process and where it listens."""

    pid: int
    url: str

    @staticmethod
    def path(data_dir: Path) -> Path:
        return data_dir / FILE_NAME

    def write(self, data_dir: Path) -> Path:
        p = self.path(data_dir)
        tmp = p.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self)))
        os.replace(tmp, p)
        return p

    @classmethod
    def read(cls, data_dir: Path) -> Running | None:
        """The record in `data_dir`, or None when none is there or its process is gone."""
        try:
            data = json.loads(cls.path(data_dir).read_text())
            found = cls(pid=int(data["pid"]), url=str(data["url"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return found if found.alive() else None

    def alive(self) -> bool:
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def remove(self, data_dir: Path) -> None:
        p = self.path(data_dir)
        try:
            if json.loads(p.read_text()).get("pid") == self.pid:
                p.unlink()
        except (OSError, ValueError):
            pass

    def stop(
        self,
        timeout_s: float,
        *,
        poll_s: float = 0.2,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        """SIGTERM the service and wait for it to exit (an error if it has not by then)."""
        try:
            os.kill(self.pid, signal.SIGTERM)
        except ProcessLookupError:
            raise Unreachable(f"infaas serve (pid {self.pid}) is not running") from None
        deadline = clock() + timeout_s
        while self.alive():
            if clock() > deadline:
                raise InfaasError(f"infaas serve (pid {self.pid}) still runs after {timeout_s:g} s")
            sleep(poll_s)
