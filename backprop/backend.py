"""Array-module indirection: the same engine code runs on numpy and CuPy."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np

from .errors import DeviceUnavailable

DEVICES = ("cpu", "gpu")
DTYPES = ("float32", "float64")


def get_array_module(device: str = "cpu") -> ModuleType:
    """Return numpy for ``"cpu"`` and CuPy for ``"gpu"``.

    CuPy is imported only here, on first use, so that CPU hosts never need it.
    """
    if device == "cpu":
        return np
    if device != "gpu":
        raise DeviceUnavailable(f"unknown device {device!r}; use one of {', '.join(DEVICES)}")
    try:
        import cupy  # noqa: PLC0415 - optional, GPU hosts only
    except ImportError as exc:
        raise DeviceUnavailable(
            "device 'gpu' needs CuPy, which is not installed on this host; "
            "install backprop-service[gpu] on a host with an NVIDIA GPU or use device 'cpu'"
        ) from exc
    try:
        cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # noqa: BLE001 - CUDA reports many error types
        raise DeviceUnavailable(f"device 'gpu': CuPy found no usable CUDA device ({exc})") from exc
    return cupy


def to_numpy(array: Any) -> np.ndarray:
    """Return a host numpy copy (or the array itself when it already is one)."""
    if isinstance(array, np.ndarray):
        return array
    if hasattr(array, "get"):
        return array.get()
    return np.asarray(array)


def check_dtype(dtype: str) -> np.dtype:
    """Return the numpy dtype for ``dtype`` or raise ValueError."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")
    return np.dtype(dtype)
