"""The ``digits`` task's models: scikit-learn classifiers on the bundled 8x8 digits.

Three architectures of different size are trained on a fixed split and
converted to ONNX by hand from their weights (MatMul + Add + Relu, logits out).
Their accuracy is real: measured on the held-out split, which is also the
owner's labelled validation set.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from infaas.zoo.graph import Graph

DIGITS_SEED = 0


def mlp_onnx(
    name: str, layers: Sequence[tuple[np.ndarray, np.ndarray]], num_features: int
) -> tuple[bytes, int]:
    """Dense layers (weights in x @ W form) with Relu between them, logits out.

    MatMul + Add rather than Gemm, as converters emit: onnxruntime's dynamic
    quantization handles MatMul but not Gemm.
    """
    g = Graph()
    h = "x"
    for i, (w, b) in enumerate(layers):
        h = g.op("Add", [g.op("MatMul", [h, g.const("W", w)]), g.const("B", b)])
        if i < len(layers) - 1:
            h = g.op("Relu", [h])
    return g.finish(name, "x", (num_features,), h), g.num_parameters


def digits_data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x = (data.data / 16.0).astype(np.float32)
    y = data.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=0.3, random_state=DIGITS_SEED, stratify=y
    )
    return x_tr, x_te, y_tr, y_te


def digits_models(
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
