"""Where sealed model artifacts live: ciphertext only (see `infaas.envelope.seal_artifact`).

A directory of files by default (``data_dir/artifacts``); on several nodes it
must be a shared path. Names are model or variant ids, so they are checked
before they become file names.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

from infaas.errors import InvalidInput, NotFound

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")


class ArtifactStore:
    """Sealed blobs by name, written atomically."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def _path(self, name: str) -> Path:
        if not _NAME.match(name) or ".." in name:
            raise InvalidInput(f"bad artifact name {name!r}")
        return self.root / f"{name}.sealed"

    def put(self, name: str, sealed: bytes | bytearray) -> None:
        path = self._path(name)
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(sealed)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def get(self, name: str) -> bytes:
        path = self._path(name)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise NotFound(f"no sealed artifact {name!r}", artifact=name) from None

    def exists(self, name: str) -> bool:
        return self._path(name).is_file()

    def delete(self, name: str) -> None:
        self._path(name).unlink(missing_ok=True)
