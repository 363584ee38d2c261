"""Losses over logits, each returning the loss and its gradient.

Every function takes the output node's values ``Z`` of shape (n, k) (logits
for the classification losses), targets ``y`` and the array module, and
returns ``(loss, dZ)`` with ``dZ`` of shape (n, k), the gradient of the
mean loss. ``FUSED_ACTIVATION`` names the output activation whose work a loss
already does: when the output node ends in it, the network hands the loss its
pre-activation instead, which keeps large logits exact.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np


def mse(Z: Any, y: Any, xp: Any) -> tuple[float, Any]:
    """½ · mean of (Z - y)² over all elements; ``y`` is (n, k) or (n,)."""
    diff = Z - y.reshape(Z.shape)
    loss = 0.5 * float(xp.vdot(diff, diff)) / diff.size
    diff /= diff.size
    return loss, diff


def log_softmax(Z: Any, xp: Any) -> Any:
    """Return log softmax(Z) along axis 1 (log-sum-exp, stable)."""
    shifted = Z - Z.max(axis=1, keepdims=True)
    shifted -= xp.log(xp.exp(shifted).sum(axis=1, keepdims=True))
    return shifted


def cross_entropy(Z: Any, y: Any, xp: Any) -> tuple[float, Any]:
    """Mean of -log softmax(Z)[i, y_i]; ``y`` holds integer classes (n,)."""
    n = Z.shape[0]
    rows = xp.arange(n)
    labels = y if y.ndim == 1 and y.dtype == np.int64 else y.reshape(-1).astype(np.int64)
    shifted = Z - Z.max(axis=1, keepdims=True)
    dZ = xp.exp(shifted)
    totals = dZ.sum(axis=1)
    # -log softmax(z)[y] = log(sum(exp(shifted))) - shifted[y], exact for large logits.
    loss = float((xp.log(totals) - shifted[rows, labels]).sum()) / n
    dZ /= totals[:, None]  # softmax probabilities
    dZ[rows, labels] -= 1.0
    dZ /= n
    return loss, dZ


def binary_cross_entropy(Z: Any, y: Any, xp: Any) -> tuple[float, Any]:
    """Mean logistic loss of logits ``Z`` against 0/1 targets of Z's shape."""
    t = y.reshape(Z.shape).astype(Z.dtype, copy=False)
    # log(1 + exp(-|z|)) + max(z, 0) - z t  is  -t log σ(z) - (1-t) log(1-σ(z)).
    per_element = xp.log1p(xp.exp(-xp.abs(Z))) + xp.maximum(Z, 0) - Z * t
    loss = float(per_element.sum()) / Z.size
    dZ = _sigmoid(Z, xp)
    dZ -= t
    dZ /= Z.size
    return loss, dZ


def _sigmoid(Z: Any, xp: Any) -> Any:
    return 1.0 / (1.0 + xp.exp(-xp.clip(Z, -88.0, 88.0)))


def softmax(Z: Any, xp: Any) -> Any:
    """Return softmax(Z) along axis 1 as a new array."""
    return xp.exp(log_softmax(Z, xp))


LOSSES: dict[str, Callable[[Any, Any, Any], tuple[float, Any]]] = {
    "mse": mse,
    "cross_entropy": cross_entropy,
    "binary_cross_entropy": binary_cross_entropy,
}

FUSED_ACTIVATION: dict[str, str] = {
    "cross_entropy": "softmax",
    "binary_cross_entropy": "sigmoid",
}

# What predict() applies to the logits, per loss.
OUTPUT_TRANSFORMS: dict[str, Callable[[Any, Any], Any]] = {
    "mse": lambda Z, xp: Z,
    "cross_entropy": softmax,
    "binary_cross_entropy": _sigmoid,
}

TASK_OF_LOSS: dict[str, str] = {
    "mse": "regression",
    "cross_entropy": "classification",
    "binary_cross_entropy": "classification",
}


def output_width(loss: str, n_classes: int | None = None, n_targets: int | None = None) -> int:
    """Return the output width that ``loss`` needs for the task.

    ``cross_entropy`` needs one unit per class, ``binary_cross_entropy`` one
    unit for two classes, ``mse`` one unit per target column.
    """
    if loss == "mse":
        return n_targets or 1
    if loss == "binary_cross_entropy":
        if n_classes not in (None, 2):
            raise ValueError("binary_cross_entropy needs exactly two classes")
        return 1
    if loss == "cross_entropy":
        if n_classes is None or n_classes < 2:
            raise ValueError("cross_entropy needs at least two classes")
        return n_classes
    raise ValueError(f"unknown loss {loss!r}")
