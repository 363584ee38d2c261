"""Activations and their derivatives, in flat tables keyed by their JSON names.

Each forward function computes ``f(Z)`` in place on ``Z`` and returns it. Each
derivative takes the forward *output* ``A`` and multiplies the incoming
gradient ``delta`` by ``f'`` in place, so no pre-activation has to be kept.
``xp`` is the array module (numpy or CuPy).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

LEAKY_RELU_SLOPE = 0.01
ELU_ALPHA = 1.0


def identity(Z: Any, xp: Any) -> Any:
    return Z


def sigmoid(Z: Any, xp: Any) -> Any:
    # 1 / (1 + exp(-z)) overflows harmlessly to 0 for very negative z; clip
    # keeps exp's argument finite so no warning escapes.
    xp.clip(Z, -88.0, 88.0, out=Z)
    xp.negative(Z, out=Z)
    xp.exp(Z, out=Z)
    Z += 1.0
    xp.reciprocal(Z, out=Z)
    return Z


def tanh(Z: Any, xp: Any) -> Any:
    return xp.tanh(Z, out=Z)


def relu(Z: Any, xp: Any) -> Any:
    return xp.maximum(Z, 0, out=Z)


def leaky_relu(Z: Any, xp: Any) -> Any:
    return xp.maximum(Z, LEAKY_RELU_SLOPE * Z, out=Z)


def elu(Z: Any, xp: Any) -> Any:
    negative = Z < 0
    Z[negative] = ELU_ALPHA * xp.expm1(Z[negative])
    return Z


def softplus(Z: Any, xp: Any) -> Any:
    # log(1 + exp(z)) = max(z, 0) + log1p(exp(-|z|)), exact for large |z|.
    tail = xp.log1p(xp.exp(-xp.abs(Z)))
    xp.maximum(Z, 0, out=Z)
    Z += tail
    return Z


def softmax(Z: Any, xp: Any) -> Any:
    Z -= Z.max(axis=1, keepdims=True)
    xp.exp(Z, out=Z)
    Z /= Z.sum(axis=1, keepdims=True)
    return Z


ACTIVATIONS: dict[str, Callable[[Any, Any], Any]] = {
    "identity": identity,
    "sigmoid": sigmoid,
    "tanh": tanh,
    "relu": relu,
    "leaky_relu": leaky_relu,
    "elu": elu,
    "softplus": softplus,
    "softmax": softmax,
}


def identity_derivative(A: Any, delta: Any, xp: Any) -> Any:
    return delta


def sigmoid_derivative(A: Any, delta: Any, xp: Any) -> Any:
    delta *= A
    delta *= 1 - A
    return delta


def tanh_derivative(A: Any, delta: Any, xp: Any) -> Any:
    delta *= 1 - A * A
    return delta


def relu_derivative(A: Any, delta: Any, xp: Any) -> Any:
    delta *= A > 0
    return delta


def leaky_relu_derivative(A: Any, delta: Any, xp: Any) -> Any:
    delta[A < 0] *= LEAKY_RELU_SLOPE
    return delta


def elu_derivative(A: Any, delta: Any, xp: Any) -> Any:
    # For z < 0, f(z) = alpha (e^z - 1), so f'(z) = f(z) + alpha.
    negative = A < 0
    delta[negative] *= A[negative] + ELU_ALPHA
    return delta


def softplus_derivative(A: Any, delta: Any, xp: Any) -> Any:
    # f'(z) = sigmoid(z) = 1 - exp(-f(z)).
    delta *= -xp.expm1(-A)
    return delta


def softmax_derivative(A: Any, delta: Any, xp: Any) -> Any:
    # Jacobian-vector product of softmax: A * (delta - sum(delta * A)).
    delta -= (delta * A).sum(axis=1, keepdims=True)
    delta *= A
    return delta


DERIVATIVES: dict[str, Callable[[Any, Any, Any], Any]] = {
    "identity": identity_derivative,
    "sigmoid": sigmoid_derivative,
    "tanh": tanh_derivative,
    "relu": relu_derivative,
    "leaky_relu": leaky_relu_derivative,
    "elu": elu_derivative,
    "softplus": softplus_derivative,
    "softmax": softmax_derivative,
}

# Where an activation's output counts as saturated (its gradient nearly 0),
# as (low, high) bounds: outputs <= low or >= high are saturated.
SATURATION_BOUNDS: dict[str, tuple[float, float]] = {
    "sigmoid": (0.01, 0.99),
    "tanh": (-0.98, 0.98),
}
