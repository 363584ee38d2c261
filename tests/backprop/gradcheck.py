"""Finite-difference gradient checks."""

from __future__ import annotations

import numpy as np

import backprop


def numerical_gradients(net: backprop.Network, X, y, loss: str, training: bool = False, h: float = 1e-6) -> dict:
    """Central finite differences of the mean loss for every parameter.

    With ``training`` the dropout stream is reset before every evaluation so
    that all of them see the same masks.
    """

    def loss_at() -> float:
        if training:
            net.rng = np.random.default_rng(123)
        return net.loss_and_gradients(X, y, loss, training=training)[0]

    result = {}
    for name, param in net.parameters().items():
        grad = np.zeros_like(param)
        for index in np.ndindex(param.shape):
            saved = param[index]
            param[index] = saved + h
            plus = loss_at()
            param[index] = saved - h
            minus = loss_at()
            param[index] = saved
            grad[index] = (plus - minus) / (2 * h)
        result[name] = grad
    return result


def relative_error(numeric: np.ndarray, analytic: np.ndarray) -> float:
    """||a - b|| / (||a|| + ||b||), 0 when both vanish."""
    scale = np.linalg.norm(numeric) + np.linalg.norm(analytic)
    return 0.0 if scale == 0 else float(np.linalg.norm(numeric - analytic) / scale)


def assert_gradients_match(net: backprop.Network, X, y, loss: str, training: bool = False,
                           tolerance: float = 1e-6) -> None:
    if training:
        net.rng = np.random.default_rng(123)
    _, analytic = net.loss_and_gradients(X, y, loss, training=training)
    numeric = numerical_gradients(net, X, y, loss, training=training)
    assert analytic.keys() == numeric.keys()
    for name in analytic:
        error = relative_error(numeric[name], analytic[name])
        assert error < tolerance, f"{name}: relative error {error:.2e}"


def targets_for(loss: str, n: int, width: int, rng: np.random.Generator):
    """Random targets of the shape each loss takes."""
    if loss == "cross_entropy":
        return rng.integers(0, width, n)
    if loss == "binary_cross_entropy":
        return rng.integers(0, 2, (n, width)).astype(float)
    return rng.normal(size=(n, width))
