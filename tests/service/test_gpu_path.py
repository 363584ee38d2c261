"""The CuPy code path, with numpy standing in for CuPy (no GPU on the test machines).

`cupy` is replaced by a module whose arrays are "on the device": numpy arrays of
a subclass that, like CuPy's, refuse to be combined with host arrays in one
operation. Training on device "gpu" must then give the CPU path's weights, and
the worker must route, build and save a job with `device: gpu` the same way.
"""

from __future__ import annotations

import sys
import types
from typing import Any

import numpy as np
import pytest

import backprop
import backprop.backend
import backprop.checkpoint
import backprop.network
import backprop.training
from tests.conftest import BLOBS_COLUMNS, blobs_rows, csv_text
from tests.helpers import create_job, mlp, run_job

NETWORK = {"nodes": [
    {"name": "h1", "type": "dense", "units": 16, "activation": "tanh", "inputs": ["input"]},
    {"name": "drop", "type": "dropout", "rate": 0.2, "inputs": ["h1"]},
    {"name": "h2", "type": "dense", "units": 16, "activation": "relu", "inputs": ["drop"]},
    {"name": "sum", "type": "add", "inputs": ["h1", "h2"]},
    {"name": "out", "type": "dense", "units": 3, "inputs": ["sum", "input"]},
], "output": "out"}

# What moves data between host and device (or makes new device arrays); anything
# else given a host array is a mix-up, as it is in CuPy.
TRANSFERS = {"asarray", "array", "ascontiguousarray"}


class DeviceArray(np.ndarray):
    """A numpy array standing for a CuPy array: host operands in its operations raise TypeError."""

    def __array_ufunc__(self, ufunc: Any, method: str, *inputs: Any, out: Any = None, **kwargs: Any) -> Any:
        _refuse_host(inputs + (out or ()), ufunc.__name__)
        args = [_host_view(x) for x in inputs]
        if out is not None:
            kwargs["out"] = tuple(_host_view(o) for o in out)
        result = getattr(ufunc, method)(*args, **kwargs)
        if out is not None:
            return out[0] if len(out) == 1 else out
        return _to_device(result)

    def __array_function__(self, func: Any, types_: Any, args: Any, kwargs: Any) -> Any:
        _refuse_host(_flatten(args) + _flatten(list(kwargs.values())), func.__name__)
        return _to_device(func(*_unwrap(args), **_unwrap(kwargs)))

    def get(self) -> np.ndarray:
        """Copy to the host, as cupy.ndarray.get does."""
        return np.array(self.view(np.ndarray))


def _flatten(values: Any) -> list[Any]:
    flat: list[Any] = []
    for value in values:
        if isinstance(value, (list, tuple)):
            flat.extend(_flatten(value))
        else:
            flat.append(value)
    return flat


def _refuse_host(values: Any, what: str) -> None:
    for value in _flatten(list(values)):
        if isinstance(value, np.ndarray) and not isinstance(value, DeviceArray) and value.ndim > 0:
            raise TypeError(f"{what}: a host (numpy) array mixed with device arrays")


def _host_view(value: Any) -> Any:
    return value.view(np.ndarray) if isinstance(value, DeviceArray) else value


def _unwrap(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return type(value)(_unwrap(v) for v in value)
    if isinstance(value, dict):
        return {k: _unwrap(v) for k, v in value.items()}
    return _host_view(value)


def _to_device(value: Any) -> Any:
    if isinstance(value, np.ndarray) and not isinstance(value, DeviceArray):
        return value.view(DeviceArray)
    if isinstance(value, tuple):
        return tuple(_to_device(v) for v in value)
    return value


def make_fake_cupy() -> types.ModuleType:
    """Return a module with CuPy's surface as the engine uses it, backed by numpy."""
    module = types.ModuleType("cupy")
    module.ndarray = DeviceArray  # type: ignore[attr-defined]
    module.transfers = 0  # type: ignore[attr-defined]
    runtime = types.SimpleNamespace(getDeviceCount=lambda: 1)
    module.cuda = types.SimpleNamespace(runtime=runtime)  # type: ignore[attr-defined]

    def wrap(name: str, function: Any) -> Any:
        def device_function(*args: Any, **kwargs: Any) -> Any:
            if name in TRANSFERS:
                if any(isinstance(a, np.ndarray) and not isinstance(a, DeviceArray) for a in args):
                    module.transfers += 1  # type: ignore[attr-defined]
            else:
                _refuse_host(list(args) + list(kwargs.values()), name)
            return _to_device(function(*_unwrap(args), **_unwrap(kwargs)))
        return device_function

    def getattr_(name: str) -> Any:
        value = getattr(np, name)
        if isinstance(value, type) or not callable(value):
            return value  # dtypes, constants
        return wrap(name, value)

    module.__getattr__ = getattr_  # type: ignore[attr-defined]
    return module


@pytest.fixture
def fake_cupy(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """Install the stand-in as `cupy` for backprop.get_array_module('gpu')."""
    module = make_fake_cupy()
    monkeypatch.setitem(sys.modules, "cupy", module)
    host_copy = backprop.backend.to_numpy

    def to_numpy(array: Any) -> np.ndarray:
        # A DeviceArray is an np.ndarray to isinstance (a CuPy array is not): copy it to the host
        # through .get(), the branch that to_numpy takes for CuPy.
        return array.get() if isinstance(array, DeviceArray) else host_copy(array)

    for where in (backprop, backprop.backend, backprop.checkpoint, backprop.network, backprop.training):
        if hasattr(where, "to_numpy"):
            monkeypatch.setattr(where, "to_numpy", to_numpy)
    return module


def data(n: int = 96, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 5)).astype(np.float32)
    y = (X[:, 0] + X[:, 1] > 0).astype(np.int64) + (X[:, 2] > 1)
    return X, y


def test_the_stand_in_refuses_host_device_mixing(fake_cupy):
    xp = backprop.get_array_module("gpu")
    assert xp is fake_cupy
    device = xp.asarray(np.ones((2, 2), dtype=np.float32))
    assert isinstance(device * 2 + device, DeviceArray)
    with pytest.raises(TypeError):
        device + np.ones((2, 2), dtype=np.float32)
    with pytest.raises(TypeError):
        device @ np.ones((2, 2), dtype=np.float32)
    with pytest.raises(TypeError):
        xp.exp(np.ones(3))
    with pytest.raises(TypeError):
        xp.concatenate([device, np.ones((2, 2))], axis=1)
    assert type(backprop.to_numpy(device.get())) is np.ndarray


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "adam", "rmsprop"])
def test_training_on_the_device_gives_the_cpu_weights(fake_cupy, optimizer):
    X, y = data()
    X_val, y_val = data(32, seed=1)
    settings = dict(epochs=4, batch_size=16, optimizer=optimizer, learning_rate=0.01, seed=3,
                    validation_data=(X_val, y_val), gradient_clip_norm=5.0, weight_decay=1e-4)
    networks = {}
    histories = {}
    for device in ("cpu", "gpu"):
        network = backprop.build(NETWORK, input_dim=5, seed=3, device=device)
        histories[device] = list(backprop.train(network, X, y, **settings))
        networks[device] = network
    gpu_params = networks["gpu"].parameters()
    assert all(isinstance(p, DeviceArray) for p in gpu_params.values())  # trained where it lives
    for key, value in networks["cpu"].parameters().items():
        np.testing.assert_allclose(np.asarray(gpu_params[key].get()), value, rtol=1e-6, atol=1e-7)
    for cpu_record, gpu_record in zip(histories["cpu"], histories["gpu"]):
        assert cpu_record["loss"] == pytest.approx(gpu_record["loss"], rel=1e-6)
    # Saved weights are host arrays that load on the CPU into the same predictions.
    definition, weights = backprop.save(networks["gpu"])
    reloaded = backprop.load(definition, weights)
    np.testing.assert_allclose(reloaded.predict(X_val), networks["cpu"].predict(X_val), rtol=1e-5, atol=1e-6)


def test_device_gpu_without_cupy_is_device_unavailable(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)  # import cupy raises ImportError
    with pytest.raises(backprop.DeviceUnavailable, match="CuPy"):
        backprop.build(NETWORK, input_dim=5, device="gpu")


MLP = mlp()


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_worker_trains_a_gpu_job_on_the_device_like_a_cpu_job(fake_cupy, client, app, queue, upload_csv):
    dataset = upload_csv(csv_text(BLOBS_COLUMNS, blobs_rows(80))).get_json()
    models = {}
    for device in ("cpu", "gpu"):
        job_id = create_job(client, dataset_id=dataset["id"], network=MLP, device=device,
                            training={"epochs": 5, "batch_size": 16, "learning_rate": 0.01, "seed": 1})
        assert queue.published[-1] == (job_id, device)  # gpu jobs reach the gpu workers' queue
        assert run_job(app, job_id, owner=f"w-{device}") == "succeeded"
        job = client.get(f"/v1/jobs/{job_id}").get_json()
        assert job["device"] == device
        models[device] = job["model_id"]
    assert fake_cupy.transfers > 0  # the data went to the "device"
    rows = [r[:4] for r in blobs_rows(10, seed=2)]
    answers = {device: client.post(f"/v1/models/{model_id}/predict", json={"inputs": rows}).get_json()
               for device, model_id in models.items()}
    assert answers["gpu"]["predictions"] == answers["cpu"]["predictions"]
    np.testing.assert_allclose(answers["gpu"]["probabilities"], answers["cpu"]["probabilities"],
                               rtol=1e-5, atol=1e-6)
