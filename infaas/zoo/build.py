"""Building the zoo: train or construct every model, write its files and the manifest."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from infaas.zoo.digits import digits_data, digits_models, mlp_onnx
from infaas.zoo.images import (
    FULL_RESOLUTION,
    RESNETS,
    SMALL_RESOLUTION,
    TORCHVISION_SOURCE,
    TORCHVISION_TOP1,
    image_model_id,
    image_sets,
    resnet_onnx,
)
from infaas.zoo.manifest import MANIFEST, Manifest, ZooEntry, load_manifest, sha256, tasks


def _top1(logits: np.ndarray) -> np.ndarray:
    return np.asarray(np.argmax(logits, axis=1))


def build_zoo(
    zoo_dir: Path,
    small: bool = False,
    force: bool = False,
    progress: Callable[[str], None] | None = None,
) -> list[ZooEntry]:
    """Build (or reuse) every zoo model under `zoo_dir`; writes the manifest.

    `progress` is called with a description before each model is built.
    """
    zoo_dir = Path(zoo_dir)
    zoo_dir.mkdir(parents=True, exist_ok=True)
    task_defs = tasks(small)
    previous: dict[str, ZooEntry] = {}
    if not force and (zoo_dir / MANIFEST).is_file():
        try:
            previous = {e.model_id: e for e in load_manifest(zoo_dir).models}
        except ValueError:
            previous = {}

    def reusable(model_id: str) -> ZooEntry | None:
        e = previous.get(model_id)
        if e is None or e.small != small:
            return None
        files = [zoo_dir / e.file, zoo_dir / e.validation_file, zoo_dir / e.calibration_file]
        if not all(f.is_file() for f in files):
            return None
        return e if sha256((zoo_dir / e.file).read_bytes()) == e.sha256 else None

    entries: list[ZooEntry] = []

    def reused(model_id: str) -> bool:
        """Announce `model_id`; True when its built files are kept (listed as they are)."""
        if progress:
            progress(model_id)
        e = reusable(model_id)
        if e is not None:
            entries.append(e)
        return e is not None

    def write(
        model_id: str, task: str, arch: str, onnx_bytes: bytes, n_params: int, **extra: Any
    ) -> None:
        (zoo_dir / f"{model_id}.onnx").write_bytes(onnx_bytes)
        entries.append(
            ZooEntry(
                model_id=model_id,
                task=task,
                architecture=arch,
                input=task_defs[task].input,
                num_classes=task_defs[task].num_classes,
                file=f"{model_id}.onnx",
                validation_file=f"{task}.val.npz",
                calibration_file=f"{task}.calib.npz",
                sha256=sha256(onnx_bytes),
                size_bytes=len(onnx_bytes),
                num_parameters=n_params,
                small=small,
                **extra,
            )
        )

    # digits
    x_tr, x_te, y_tr, y_te = digits_data()
    np.savez(zoo_dir / "digits.val.npz", x=x_te, y=y_te)
    np.savez(zoo_dir / "digits.calib.npz", x=x_tr[:64])
    for arch, train in digits_models(x_tr, y_tr):
        model_id = f"digits-{arch}"
        if reused(model_id):
            continue
        layers = train()
        onnx_bytes, n_params = mlp_onnx(model_id, layers, 64)
        h = x_te
        for i, (w, b) in enumerate(layers):
            h = h @ w + b
            if i < len(layers) - 1:
                h = np.maximum(h, 0)
        acc = float(np.mean(_top1(h) == y_te))
        write(
            model_id,
            "digits",
            arch,
            onnx_bytes,
            n_params,
            heldout_accuracy=acc,
            accuracy_source="measured on the labelled held-out split (30 %, seed 0)",
        )

    # images
    res = SMALL_RESOLUTION if small else FULL_RESOLUTION
    n_val = 256 if small else 128
    n_cal = 32
    templates, calib, val = image_sets(n_cal, n_val, res)
    np.savez(zoo_dir / "images.val.npz", x=val)
    np.savez(zoo_dir / "images.calib.npz", x=calib)
    for arch in RESNETS:
        model_id = image_model_id(arch, small)
        if reused(model_id):
            continue
        onnx_bytes, n_params = resnet_onnx(arch, small, res, templates)
        write(
            model_id,
            "images",
            arch,
            onnx_bytes,
            n_params,
            declared_accuracy=TORCHVISION_TOP1[arch],
            accuracy_source=f"declared: {TORCHVISION_SOURCE}; variants measured as "
            "declared x top-1 agreement with the FP32 parent on synthetic seeded images",
        )

    manifest = Manifest(tasks=task_defs, models=tuple(entries))
    (zoo_dir / MANIFEST).write_text(json.dumps(manifest.model_dump(mode="json"), indent=2))
    return entries
