"""The zoo's tasks and its on-disk form: the manifest, the entries, and their loaders.

Files under the zoo directory: ``<model_id>.onnx``, ``<task>.val.npz`` (``x``, and
``y`` labels where there are labels), ``<task>.calib.npz`` (``x``) and
``manifest.json``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from infaas.errors import InvalidInput
from infaas.types import ModelRecord, Task, TensorSpec
from infaas.zoo.images import FULL_RESOLUTION, IMAGE_CLASSES, SMALL_RESOLUTION

MANIFEST = "manifest.json"


def tasks(small: bool = False) -> dict[str, Task]:
    """The zoo's tasks; the image task's input resolution depends on `small`."""
    res = SMALL_RESOLUTION if small else FULL_RESOLUTION
    return {
        "digits": Task(
            name="digits",
            description="8x8 handwritten digits (scikit-learn), 64 features scaled to 0..1",
            input=TensorSpec(name="x", shape=(64,)),
            num_classes=10,
        ),
        "images": Task(
            name="images",
            description=f"{res}x{res} RGB images, normalised, 1000 classes (ImageNet-style)",
            input=TensorSpec(name="x", shape=(3, res, res)),
            num_classes=IMAGE_CLASSES,
        ),
    }


class ZooEntry(BaseModel):
    """One model of the zoo as the manifest describes it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model_id: str
    task: str
    architecture: str
    input: TensorSpec
    output_name: str = "logits"
    num_classes: int
    declared_accuracy: float | None = Field(
        None, description="owner-declared top-1 (untrained image models)"
    )
    accuracy_source: str
    heldout_accuracy: float | None = Field(
        None, description="accuracy measured on the labelled held-out split at build time"
    )
    file: str
    validation_file: str
    calibration_file: str
    sha256: str
    size_bytes: int
    num_parameters: int
    small: bool = False

    def to_model_record(self) -> ModelRecord:
        """The metadata the store holds for this model."""
        return ModelRecord(
            model_id=self.model_id,
            task=self.task,
            architecture=self.architecture,
            declared_accuracy=self.declared_accuracy,
            artifact_sha256=self.sha256,
            size_bytes=self.size_bytes,
            num_parameters=self.num_parameters,
        )


class Manifest(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    tasks: dict[str, Task]
    models: tuple[ZooEntry, ...]


def sha256(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def load_manifest(zoo_dir: Path) -> Manifest:
    """The manifest of a built zoo (FileNotFoundError with a hint if not built)."""
    path = Path(zoo_dir) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(
            f"no zoo manifest at {path}: build the zoo first with `infaas zoo build`"
        )
    return Manifest.model_validate_json(path.read_text())


def load_model_bytes(zoo_dir: Path, entry: ZooEntry) -> bytes:
    """The FP32 ONNX bytes of a zoo model, checked against the manifest's digest."""
    data = (Path(zoo_dir) / entry.file).read_bytes()
    if sha256(data) != entry.sha256:
        raise InvalidInput(f"{entry.file} does not match the manifest's sha256")
    return data


def load_validation(zoo_dir: Path, entry: ZooEntry) -> tuple[np.ndarray, np.ndarray | None]:
    """The owner's validation set: inputs and labels (None where it has no labels)."""
    with np.load(Path(zoo_dir) / entry.validation_file) as z:
        x = np.asarray(z["x"], dtype=np.float32)
        y = np.asarray(z["y"], dtype=np.int64) if "y" in z.files else None
    return x, y


def load_calibration(zoo_dir: Path, entry: ZooEntry) -> np.ndarray:
    with np.load(Path(zoo_dir) / entry.calibration_file) as z:
        return np.asarray(z["x"], dtype=np.float32)
