"""Where sealed model artifacts live: ciphertext only (see `infaas.envelope.seal_artifact`).

A directory of files by default (``data_dir/artifacts``); on several nodes it
must be a shared path.

Names are opaque: `artifact_name` derives each from the owner, the model id and
the part (the model, its validation set, one variant) as a digest, and the
store refuses anything else. No caller-chosen string becomes a file name, so
one owner's model id (say ``resnet.fp32.onnxruntime``) can never name another
owner's artifact, and cleaning up after a failed registration can only touch
the registering owner's own names. What each blob *is* stays bound inside it:
the sealing label (model or variant id) is the AEAD's associated data.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path

from infaas.errors import InvalidInput, NotFound

_NAME = re.compile(r"^[0-9a-f]{64}$")

MODEL_PART = "model"
VALIDATION_PART = "validation"


def variant_part(variant_id: str) -> str:
    """The `artifact_name` part of one variant of a model."""
    return f"variant:{variant_id}"


def artifact_name(owner: str, model_id: str, part: str) -> str:
    """The opaque storage name of one artifact of `owner`'s `model_id`: `MODEL_PART`,
    `VALIDATION_PART` or `variant_part(variant_id)`."""
    fields = ("infaas-artifact/v1", owner, model_id, part)
    if any("\x1f" in f for f in fields):
        raise InvalidInput("artifact name fields cannot contain a unit separator")
    return hashlib.sha256("\x1f".join(fields).encode()).hexdigest()


class ArtifactStore:
    """Sealed blobs by opaque name (`artifact_name`), written atomically."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def _path(self, name: str) -> Path:
        if not _NAME.match(name):
            raise InvalidInput(f"bad artifact name {name!r}: names come from artifact_name")
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
