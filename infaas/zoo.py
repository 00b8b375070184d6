"""The example model zoo, built locally with no downloads: `infaas zoo build`.

Two tasks:

* ``digits``: scikit-learn's bundled 8x8 digits (64 features, 10 classes). Three
  architectures of different size are trained with scikit-learn on a fixed split
  and converted to ONNX by hand from their weights (Gemm + Relu, output logits).
  Their accuracy is real: measured on the held-out split, which is also the
  owner's labelled validation set.
* ``images``: ResNet-18/34/50-style CNNs (basic and bottleneck blocks) built as
  ONNX graphs from seeded numpy weights (He init, batch norm in its initial state
  folded into each convolution). They are untrained, so the owner *declares* an
  accuracy: torchvision's published ImageNet top-1 of the same architectures.
  The validation set is synthetic (deterministic seeded images, no labels); a
  variant's accuracy is measured as declared x top-1 agreement with its FP32
  parent. To make agreement meaningful the classifier head is standardised on
  the features of seeded calibration images (data-dependent init), so logits are
  well spread instead of dominated by one class.

Files under the zoo directory: ``<model_id>.onnx``, ``<task>.val.npz`` (``x``, and
``y`` labels where there are labels), ``<task>.calib.npz`` (``x``) and
``manifest.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from infaas.errors import InvalidInput
from infaas.settings import Settings
from infaas.types import ModelRecord, Task, TensorSpec

log = logging.getLogger("infaas.zoo")

MANIFEST = "manifest.json"
OPSET = 17
# onnx 1.23 writes IR version 14 by default; onnxruntime 1.31 reads at most 13.
IR_VERSION = 9

# torchvision's published ImageNet-1k top-1 accuracy of the IMAGENET1K_V1 weights
# (https://pytorch.org/vision/stable/models.html, "Table of all available
# classification weights"): ResNet-18 69.758 %, ResNet-34 73.314 %, ResNet-50 76.130 %.
TORCHVISION_TOP1 = {"resnet18": 0.69758, "resnet34": 0.73314, "resnet50": 0.76130}
TORCHVISION_SOURCE = "torchvision IMAGENET1K_V1 published top-1 (pytorch.org/vision)"

DIGITS_SEED = 0
IMAGES_SEED = 1234
IMAGE_CLASSES = 1000
FULL_RESOLUTION = 224
SMALL_RESOLUTION = 32


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


# --------------------------------------------------------------------------- ONNX


class _Graph:
    """A tiny ONNX graph builder over numpy initializers."""

    def __init__(self, acts: dict[str, np.ndarray] | None = None) -> None:
        # numpy values of the tensors, computed as the graph is built, on a batch of
        # calibration inputs (only where `acts` is given)
        self.acts: dict[str, np.ndarray] = dict(acts or {})
        self.nodes: list[Any] = []
        self.inits: dict[str, np.ndarray] = {}
        self._n = 0

    def name(self, prefix: str) -> str:
        self._n += 1
        return f"{prefix}_{self._n}"

    def const(self, prefix: str, value: np.ndarray) -> str:
        n = self.name(prefix)
        self.inits[n] = np.ascontiguousarray(value, dtype=np.float32)
        return n

    def op(
        self, op_type: str, inputs: Sequence[str], value: np.ndarray | None = None, **attrs: Any
    ) -> str:
        from onnx import helper

        out = self.name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=out, **attrs))
        if value is not None:
            self.acts[out] = value
        elif self.acts and all(i in self.acts or i in self.inits for i in inputs):
            self.acts[out] = _np_eval(
                op_type, [self.acts.get(i, self.inits.get(i)) for i in inputs]
            )
        return out

    def keep_only(self, *names: str) -> None:
        self.acts = {n: self.acts[n] for n in names}

    def finish(
        self, graph_name: str, input_name: str, input_shape: Sequence[int], output: str
    ) -> bytes:
        from onnx import TensorProto, checker, helper, numpy_helper

        self.nodes.append(helper.make_node("Identity", [output], ["logits"], name="logits"))
        x = helper.make_tensor_value_info(
            input_name, TensorProto.FLOAT, ["batch", *[int(d) for d in input_shape]]
        )
        y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", None])
        graph = helper.make_graph(
            self.nodes,
            graph_name,
            [x],
            [y],
            initializer=[numpy_helper.from_array(v, k) for k, v in self.inits.items()],
        )
        model = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", OPSET)],
            producer_name="infaas-zoo",
            producer_version="1",
        )
        model.ir_version = IR_VERSION
        checker.check_model(model)
        return bytes(model.SerializeToString())

    @property
    def num_parameters(self) -> int:
        return int(sum(v.size for v in self.inits.values()))


def _mlp_onnx(
    name: str, layers: Sequence[tuple[np.ndarray, np.ndarray]], num_features: int
) -> tuple[bytes, int]:
    """Dense layers (weights in x @ W form) with Relu between them, logits out.

    MatMul + Add rather than Gemm, as converters emit: onnxruntime's dynamic
    quantization handles MatMul but not Gemm.
    """
    g = _Graph()
    h = "x"
    for i, (w, b) in enumerate(layers):
        h = g.op("Add", [g.op("MatMul", [h, g.const("W", w)]), g.const("B", b)])
        if i < len(layers) - 1:
            h = g.op("Relu", [h])
    return g.finish(name, "x", (num_features,), h), g.num_parameters


def _np_eval(op_type: str, ins: list[Any]) -> np.ndarray:
    """numpy values of the few ops the image builder emits (besides Conv)."""
    x = ins[0]
    if op_type == "Relu":
        out = np.maximum(x, 0)
    elif op_type == "Add":
        out = x + ins[1]
    elif op_type == "MaxPool":  # 3x3, stride 2, pad 1
        p = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
        win = np.lib.stride_tricks.sliding_window_view(p, (3, 3), axis=(2, 3))
        out = win[:, :, ::2, ::2].max(axis=(4, 5))
    elif op_type == "GlobalAveragePool":
        out = x.mean(axis=(2, 3), keepdims=True)
    elif op_type == "Flatten":
        out = x.reshape(x.shape[0], -1)
    elif op_type == "Gemm":
        out = x @ ins[1] + ins[2]
    else:  # pragma: no cover - the builder emits only the ops above
        raise NotImplementedError(op_type)
    return np.asarray(out, dtype=np.float32)


# --------------------------------------------------------------------------- digits


@dataclass(frozen=True)
class _Built:
    entry_fields: dict[str, Any]
    onnx_bytes: bytes
    num_parameters: int


def _digits_data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x = (data.data / 16.0).astype(np.float32)
    y = data.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=0.3, random_state=DIGITS_SEED, stratify=y
    )
    return x_tr, x_te, y_tr, y_te


def _digits_models(
    x_tr: np.ndarray, y_tr: np.ndarray
) -> list[tuple[str, Callable[[], list[tuple[np.ndarray, np.ndarray]]]]]:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier

    def fit(clf: Any) -> Any:
        # A capped iteration budget keeps the build fast; sklearn then warns that
        # it did not fully converge, which is expected and not an error here.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            return clf.fit(x_tr, y_tr)

    def logreg() -> list[tuple[np.ndarray, np.ndarray]]:
        clf = fit(LogisticRegression(C=0.05, max_iter=200))
        return [(clf.coef_.T, clf.intercept_)]

    def mlp(hidden: tuple[int, ...], max_iter: int) -> list[tuple[np.ndarray, np.ndarray]]:
        clf = fit(
            MLPClassifier(
                hidden_layer_sizes=hidden,
                max_iter=max_iter,
                random_state=DIGITS_SEED,
                alpha=1e-3,
            )
        )
        return list(zip(clf.coefs_, clf.intercepts_, strict=True))

    return [
        ("logreg", logreg),
        ("mlp-small", lambda: mlp((12,), 150)),
        ("mlp-large", lambda: mlp((256, 128), 200)),
    ]


# --------------------------------------------------------------------------- images


def synthetic_images(n: int, resolution: int, seed: int) -> np.ndarray:
    """Deterministic image-like inputs: smooth coloured fields plus texture, normalised."""
    rng = np.random.default_rng(seed)
    coarse = max(2, resolution // 16)
    base = rng.normal(size=(n, 3, coarse, coarse)).astype(np.float32)
    rep = -(-resolution // coarse)
    up = np.repeat(np.repeat(base, rep, axis=2), rep, axis=3)[:, :, :resolution, :resolution]
    # a 3x3 box blur softens the blocks into gradients
    pad = np.pad(up, ((0, 0), (0, 0), (1, 1), (1, 1)), mode="edge")
    smooth = sum(
        pad[:, :, i : i + resolution, j : j + resolution] for i in range(3) for j in range(3)
    ) / np.float32(9.0)
    texture = rng.normal(scale=0.35, size=(n, 3, resolution, resolution)).astype(np.float32)
    colour = rng.normal(scale=0.5, size=(n, 3, 1, 1)).astype(np.float32)
    out = np.asarray(smooth + texture + colour, dtype=np.float32)
    return np.asarray((out - out.mean()) / out.std(), dtype=np.float32)


def template_classes(n_templates: int) -> np.ndarray:
    """The (seeded) ImageNet-style class ids the image templates stand for."""
    return np.random.default_rng(IMAGES_SEED).choice(IMAGE_CLASSES, n_templates, replace=False)


def image_sets(
    n_templates: int, n_validation: int, resolution: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(templates, calibration, validation) synthetic image sets with class structure.

    The templates stand for classes (they set the networks' normalisation
    statistics and head); each validation image is one template mixed with a
    distractor image (weight 0.3), so the validation set is like a labelled
    dataset but harder than the templates. The calibration set is drawn the same
    way with other distractors (plus the templates): representative of serving
    inputs, disjoint from the validation set.
    """
    templates = synthetic_images(n_templates, resolution, IMAGES_SEED + 100)

    def mixed(n: int, seed: int) -> np.ndarray:
        distractors = synthetic_images(n, resolution, seed)
        which = np.arange(n) % n_templates
        out = (templates[which] + 0.3 * distractors) / np.float32(np.sqrt(1 + 0.3**2))
        return np.ascontiguousarray(out, dtype=np.float32)

    calibration = np.concatenate([templates, mixed(n_templates, IMAGES_SEED + 300)])
    return templates, calibration, mixed(n_validation, IMAGES_SEED + 200)


@dataclass(frozen=True)
class _ResNetShape:
    blocks: tuple[int, int, int, int]
    bottleneck: bool


RESNETS = {
    "resnet18": _ResNetShape((2, 2, 2, 2), False),
    "resnet34": _ResNetShape((3, 4, 6, 3), False),
    "resnet50": _ResNetShape((3, 4, 6, 3), True),
}


def _conv_bn(
    g: _Graph,
    rng: np.random.Generator,
    x: str,
    cin: int,
    cout: int,
    k: int,
    stride: int,
    relu: bool,
    gamma_scale: float = 1.0,
) -> str:
    """Conv + batch norm folded into it.

    gamma and beta are seeded; the running statistics are those of the
    calibration images flowing through the network as it is built (as a trained
    network's would be). Without data statistics every layer adds a common mode,
    deep features of all inputs become nearly identical, and the tiny signal left
    drowns in any quantization.
    """
    w = rng.normal(scale=np.sqrt(2.0 / (cin * k * k)), size=(cout, cin, k, k)).astype(np.float32)
    gamma = rng.uniform(0.8, 1.2, size=cout) * gamma_scale
    beta = rng.normal(scale=0.1, size=cout)
    pad = k // 2
    raw = _np_conv(g.acts[x], w, stride, pad)
    mean = raw.mean(axis=(0, 2, 3), dtype=np.float64)
    var = raw.var(axis=(0, 2, 3), dtype=np.float64)
    scale = gamma / np.sqrt(var + 1e-5)
    bias = beta - mean * scale
    y = g.op(
        "Conv",
        [x, g.const("W", w * scale[:, None, None, None]), g.const("B", bias)],
        value=raw * scale[None, :, None, None].astype(np.float32)
        + bias[None, :, None, None].astype(np.float32),
        kernel_shape=[k, k],
        strides=[stride, stride],
        pads=[pad, pad, pad, pad],
    )
    return g.op("Relu", [y]) if relu else y


def _np_conv(x: np.ndarray, w: np.ndarray, stride: int, pad: int) -> np.ndarray:
    """Convolution without bias, NCHW, square kernel, via sliding windows + tensordot."""
    k = w.shape[2]
    if pad:
        x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    win = np.lib.stride_tricks.sliding_window_view(x, (k, k), axis=(2, 3))[:, :, ::stride, ::stride]
    out = np.tensordot(win, w, axes=([1, 4, 5], [1, 2, 3]))  # n, h, w, o
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2), dtype=np.float32)


def _resnet_onnx(
    arch: str, small: bool, resolution: int, calibration: np.ndarray
) -> tuple[bytes, int]:
    """A ResNet-style CNN whose normalisation statistics and head come from templates."""
    shape = RESNETS[arch]
    rng = np.random.default_rng(IMAGES_SEED + sorted(RESNETS).index(arch))
    g = _Graph(acts={"x": calibration})
    widths = (16, 32, 64, 128) if small else (64, 128, 256, 512)
    stem = widths[0]
    if small:
        h = _conv_bn(g, rng, "x", 3, stem, 3, 1, relu=True)
    else:
        h = _conv_bn(g, rng, "x", 3, stem, 7, 2, relu=True)
        h = g.op("MaxPool", [h], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    cin = stem
    expansion = 4 if shape.bottleneck else 1
    for stage, (n_blocks, width) in enumerate(zip(shape.blocks, widths, strict=True)):
        for b in range(n_blocks):
            stride = 2 if (stage > 0 and b == 0) else 1
            cout = width * expansion
            # the last batch norm of a residual branch starts small (as
            # zero-init-residual does), so the identity path dominates at depth
            if shape.bottleneck:
                r = _conv_bn(g, rng, h, cin, width, 1, 1, relu=True)
                r = _conv_bn(g, rng, r, width, width, 3, stride, relu=True)
                r = _conv_bn(g, rng, r, width, cout, 1, 1, relu=False, gamma_scale=0.5)
            else:
                r = _conv_bn(g, rng, h, cin, width, 3, stride, relu=True)
                r = _conv_bn(g, rng, r, width, cout, 3, 1, relu=False, gamma_scale=0.5)
            if stride != 1 or cin != cout:
                sc = _conv_bn(g, rng, h, cin, cout, 1, stride, relu=False)
            else:
                sc = h
            h = g.op("Relu", [g.op("Add", [r, sc])])
            g.keep_only(h)
            cin = cout
    h = g.op("GlobalAveragePool", [h])
    feat = g.op("Flatten", [h], axis=1)
    # Head: a nearest-template classifier. The calibration images are class
    # templates (the validation images are perturbed copies of them, see
    # `image_sets`), so each template's class gets the standardised pooled
    # features of that template as its weight row; the other classes get small
    # seeded random rows. Trained networks have a clear top-1 margin; a purely
    # random head would not, and every bit of quantization noise would flip it.
    f = g.acts[feat].astype(np.float64)
    mu, sigma = f.mean(axis=0), f.std(axis=0) + 1e-3
    z = (f - mu) / sigma
    rows = rng.normal(scale=0.05, size=(IMAGE_CLASSES, cin))
    rows[template_classes(len(calibration))] = z / np.linalg.norm(z, axis=1, keepdims=True)
    proj = rows.T * (8.0 / np.sqrt(cin))
    w = proj / sigma[:, None]
    bias = -(mu / sigma) @ proj
    logits = g.op("Gemm", [feat, g.const("W", w), g.const("B", bias)])
    return g.finish(arch, "x", (3, resolution, resolution), logits), g.num_parameters


# --------------------------------------------------------------------------- build


def _sha256(b: bytes) -> str:
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
    if _sha256(data) != entry.sha256:
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
        return e if _sha256((zoo_dir / e.file).read_bytes()) == e.sha256 else None

    entries: list[ZooEntry] = []

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
                sha256=_sha256(onnx_bytes),
                size_bytes=len(onnx_bytes),
                num_parameters=n_params,
                small=small,
                **extra,
            )
        )

    # digits
    x_tr, x_te, y_tr, y_te = _digits_data()
    np.savez(zoo_dir / "digits.val.npz", x=x_te, y=y_te)
    np.savez(zoo_dir / "digits.calib.npz", x=x_tr[:64])
    for arch, train in _digits_models(x_tr, y_tr):
        model_id = f"digits-{arch}"
        if progress:
            progress(model_id)
        if (e := reusable(model_id)) is not None:
            entries.append(e)
            continue
        layers = train()
        onnx_bytes, n_params = _mlp_onnx(model_id, layers, 64)
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
        model_id = f"images-{arch}"
        if progress:
            progress(model_id)
        if (e := reusable(model_id)) is not None:
            entries.append(e)
            continue
        onnx_bytes, n_params = _resnet_onnx(arch, small, res, templates)
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


def zoo_build_command(args: argparse.Namespace, settings: Settings) -> int:
    """`infaas zoo build`: build the zoo under the settings' zoo dir with a progress bar."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    console = Console()
    if not console.is_terminal:
        console = Console(width=150)  # piped: rich would fold the table into 80 columns
    n_models = 6
    with Progress(
        TextColumn("[bold]zoo[/bold] {task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as bar:
        t = bar.add_task("starting", total=n_models)
        started = [False]

        def progress(desc: str) -> None:
            if started[0]:
                bar.advance(t)
            started[0] = True
            bar.update(t, description=desc)

        entries = build_zoo(
            settings.zoo_dir, small=bool(args.small), force=bool(args.force), progress=progress
        )
        bar.advance(t)
    table = Table(title=f"model zoo in {settings.zoo_dir}")
    for col in ("model", "task", "architecture", "input", "params", "size", "accuracy"):
        table.add_column(col)
    for e in entries:
        acc = (
            f"{e.heldout_accuracy:.3f} (held-out)"
            if e.heldout_accuracy is not None
            else f"{e.declared_accuracy:.3f} (declared)"
        )
        table.add_row(
            e.model_id,
            e.task,
            e.architecture,
            "x".join(map(str, e.input.shape)),
            f"{e.num_parameters:,}",
            f"{e.size_bytes / 1e6:.1f} MB",
            acc,
        )
    console.print(table)
    return 0
