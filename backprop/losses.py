"""Losses over logits, each returning the loss and its gradient.

Every function takes the output node's values ``Z`` of shape (n, k) (logits
for the classification losses), targets ``y`` and the array module, and
returns ``(loss, dZ)`` with ``dZ`` of shape (n, k), the gradient of the
mean loss. ``FUSED_ACTIVATION`` names the output activation whose work a loss
already does: when the output node ends in it, the network hands the loss its
pre-activation instead, which keeps large logits exact.

Class weights: the two classification losses take an optional fourth argument
``weights``, an array (n_classes,) on ``xp`` (classes 0 and 1 for
``binary_cross_entropy``). With it the loss is the weighted mean
``sum_i w[y_i] l_i / sum_i w[y_i]`` (PyTorch's ``CrossEntropyLoss(weight=w)``
with ``reduction="mean"``; integer weights equal duplicating rows) and ``dZ``
its gradient. For ``binary_cross_entropy`` each element is weighted by its
target's class, and the sum is over elements; this differs from PyTorch's
``BCEWithLogitsLoss(weight=...)``, whose mean divides by the element count.
``None`` (the default, and what the ``LOSSES`` table's three-argument calls
pass) runs the unweighted code unchanged. :func:`class_weight_total` is the
denominator, for callers that combine the weighted means of several batches.
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


def _labels(y: Any) -> Any:
    return y if y.ndim == 1 and y.dtype == np.int64 else y.reshape(-1).astype(np.int64)


def cross_entropy(Z: Any, y: Any, xp: Any, weights: Any = None) -> tuple[float, Any]:
    """Mean of -log softmax(Z)[i, y_i]; ``y`` holds integer classes (n,).

    With ``weights`` (n_classes,), the mean weighted by ``weights[y_i]``.
    """
    n = Z.shape[0]
    rows = xp.arange(n)
    labels = y if y.ndim == 1 and y.dtype == np.int64 else y.reshape(-1).astype(np.int64)
    shifted = Z - Z.max(axis=1, keepdims=True)
    dZ = xp.exp(shifted)
    totals = dZ.sum(axis=1)
    # -log softmax(z)[y] = log(sum(exp(shifted))) - shifted[y], exact for large logits.
    per_row = xp.log(totals) - shifted[rows, labels]
    dZ /= totals[:, None]  # softmax probabilities
    dZ[rows, labels] -= 1.0
    if weights is None:
        loss = float(per_row.sum()) / n
        dZ /= n
        return loss, dZ
    w = weights.astype(Z.dtype, copy=False)[labels]
    total = w.sum()
    loss = float(xp.vdot(w, per_row) / total)
    w /= total
    dZ *= w[:, None]
    return loss, dZ


def binary_cross_entropy(Z: Any, y: Any, xp: Any, weights: Any = None) -> tuple[float, Any]:
    """Mean logistic loss of logits ``Z`` against 0/1 targets of Z's shape.

    With ``weights`` (2,), the mean over elements weighted by their target's
    class: ``weights[0]`` where the target is 0, ``weights[1]`` where it is 1.
    """
    t = y.reshape(Z.shape).astype(Z.dtype, copy=False)
    # log(1 + exp(-|z|)) + max(z, 0) - z t  is  -t log σ(z) - (1-t) log(1-σ(z)).
    per_element = xp.log1p(xp.exp(-xp.abs(Z))) + xp.maximum(Z, 0) - Z * t
    dZ = _sigmoid(Z, xp)
    dZ -= t
    if weights is None:
        loss = float(per_element.sum()) / Z.size
        dZ /= Z.size
        return loss, dZ
    w = _bce_element_weights(t, weights)
    total = w.sum()
    loss = float(xp.vdot(w, per_element) / total)
    w /= total
    dZ *= w
    return loss, dZ


def _bce_element_weights(t: Any, weights: Any) -> Any:
    """Per-element weights of 0/1 targets ``t``: w[0] at a 0, w[1] at a 1 (a new array of t's dtype)."""
    w = weights.astype(t.dtype, copy=False)
    return w[0] + (w[1] - w[0]) * t


def class_weight_total(loss: str, y: Any, weights: Any) -> float:
    """Return the sum of the weights that a weighted ``loss`` on targets ``y`` divides by.

    ``sum_i weights[y_i]`` for ``cross_entropy``; the sum over elements for
    ``binary_cross_entropy``. ``n * loss_value`` summed over batches and
    divided by the summed ``n`` is the unweighted mean of a whole split; with
    weights, this total plays the part of ``n``.
    """
    if loss == "cross_entropy":
        return float(weights[_labels(y)].sum())
    if loss == "binary_cross_entropy":
        return float(_bce_element_weights(y.astype(weights.dtype, copy=False), weights).sum())
    raise ValueError(f"{loss!r} takes no class weights")


def _sigmoid(Z: Any, xp: Any) -> Any:
    return 1.0 / (1.0 + xp.exp(-xp.clip(Z, -88.0, 88.0)))


def softmax(Z: Any, xp: Any) -> Any:
    """Return softmax(Z) along axis 1 as a new array."""
    return xp.exp(log_softmax(Z, xp))


# Called as LOSSES[name](Z, y, xp); the names in CLASS_WEIGHTED_LOSSES also take weights as a fourth argument.
LOSSES: dict[str, Callable[..., tuple[float, Any]]] = {
    "mse": mse,
    "cross_entropy": cross_entropy,
    "binary_cross_entropy": binary_cross_entropy,
}

CLASS_WEIGHTED_LOSSES: tuple[str, ...] = ("cross_entropy", "binary_cross_entropy")

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
