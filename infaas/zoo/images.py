"""The ``images`` task's models: ResNet-18/34/50-style CNNs built from seeded weights.

Basic and bottleneck blocks as ONNX graphs from seeded numpy weights (He init,
batch norm folded into each convolution, its statistics taken from seeded
calibration images). They are untrained, so the owner *declares* an accuracy:
torchvision's published ImageNet top-1 of the same architectures. The
validation set is synthetic (deterministic seeded images, no labels); a
variant's accuracy is measured as declared x top-1 agreement with its FP32
parent. To make agreement meaningful the classifier head is standardised on the
features of seeded calibration images (data-dependent init), so logits are well
spread instead of dominated by one class.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from infaas.zoo.graph import Graph

# torchvision's published ImageNet-1k top-1 accuracy of the IMAGENET1K_V1 weights
# (https://pytorch.org/vision/stable/models.html, "Table of all available
# classification weights"): ResNet-18 69.758 %, ResNet-34 73.314 %, ResNet-50 76.130 %.
TORCHVISION_TOP1 = {"resnet18": 0.69758, "resnet34": 0.73314, "resnet50": 0.76130}
TORCHVISION_SOURCE = "torchvision IMAGENET1K_V1 published top-1 (pytorch.org/vision)"

IMAGES_SEED = 1234
IMAGE_CLASSES = 1000
FULL_RESOLUTION = 224
SMALL_RESOLUTION = 32


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


def image_model_id(arch: str, small: bool) -> str:
    """The zoo's id of an image model: the small zoo's say their resolution, so a data dir
    never mistakes a 32x32 model for the 224x224 one of the same architecture."""
    return f"images-{arch}-{SMALL_RESOLUTION}px" if small else f"images-{arch}"


RESNETS = {
    "resnet18": _ResNetShape((2, 2, 2, 2), False),
    "resnet34": _ResNetShape((3, 4, 6, 3), False),
    "resnet50": _ResNetShape((3, 4, 6, 3), True),
}


def _conv_bn(
    g: Graph,
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


def resnet_onnx(
    arch: str, small: bool, resolution: int, calibration: np.ndarray
) -> tuple[bytes, int]:
    """A ResNet-style CNN whose normalisation statistics and head come from templates."""
    shape = RESNETS[arch]
    rng = np.random.default_rng(IMAGES_SEED + sorted(RESNETS).index(arch))
    g = Graph(acts={"x": calibration})
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
