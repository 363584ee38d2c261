"""Weight initializers, keyed by their JSON names.

Each takes a numpy Generator, ``fan_in``, ``fan_out`` and a dtype and returns
a (fan_in, fan_out) host array; weights are drawn on the host so that a seed
gives the same network on every device.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing


def glorot_uniform(rng: np.random.Generator, fan_in: int, fan_out: int, dtype: np.typing.DTypeLike) -> np.ndarray:
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, (fan_in, fan_out)).astype(dtype)


def glorot_normal(rng: np.random.Generator, fan_in: int, fan_out: int, dtype: np.typing.DTypeLike) -> np.ndarray:
    return (rng.standard_normal((fan_in, fan_out)) * np.sqrt(2.0 / (fan_in + fan_out))).astype(dtype)


def he_normal(rng: np.random.Generator, fan_in: int, fan_out: int, dtype: np.typing.DTypeLike) -> np.ndarray:
    return (rng.standard_normal((fan_in, fan_out)) * np.sqrt(2.0 / fan_in)).astype(dtype)


def he_uniform(rng: np.random.Generator, fan_in: int, fan_out: int, dtype: np.typing.DTypeLike) -> np.ndarray:
    limit = np.sqrt(6.0 / fan_in)
    return rng.uniform(-limit, limit, (fan_in, fan_out)).astype(dtype)


def normal(rng: np.random.Generator, fan_in: int, fan_out: int, dtype: np.typing.DTypeLike) -> np.ndarray:
    """Standard normal (std 1): the practice Glorot & Bengio (2010) showed saturating."""
    return rng.standard_normal((fan_in, fan_out)).astype(dtype)


def zeros(rng: np.random.Generator, fan_in: int, fan_out: int, dtype: np.typing.DTypeLike) -> np.ndarray:
    return np.zeros((fan_in, fan_out), dtype=dtype)


INITIALIZERS: dict[str, Callable[..., np.ndarray]] = {
    "glorot_uniform": glorot_uniform,
    "glorot_normal": glorot_normal,
    "he_normal": he_normal,
    "he_uniform": he_uniform,
    "normal": normal,
    "zeros": zeros,
}


def default_init(activation: str) -> str:
    """He for the rectifier family, Glorot otherwise."""
    return "he_normal" if activation in ("relu", "leaky_relu", "elu") else "glorot_uniform"
