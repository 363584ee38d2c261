"""Plain helpers shared by the test suite: import them (`from tests.helpers import problem`).

Fixtures live in tests/conftest.py; what is here takes its inputs as arguments, so a test
or a fixture of any folder can call it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

T = TypeVar("T")

# The columns of tests.conftest.blobs_rows: four numeric features and a 0/1 label.
BLOBS_COLUMNS = ["a", "b", "c", "d", "label"]


def problem(response: Any, status: int) -> dict[str, Any]:
    """Assert that a Flask test-client response is a problem+json document of `status`; return it.

    Parameters
    ----------
    response
        The test client's response.
    status
        The HTTP status expected, also the document's ``status`` field.
    """
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/problem+json"
    body = response.get_json()
    assert body["status"] == status and body["title"] and body["detail"]
    return body


def mlp(hidden: Sequence[int] = (8,), activation: str | None = "relu", outputs: int = 2,
        output_activation: str | None = None, **dense: Any) -> dict[str, Any]:
    """Return a layer-stack network definition: dense hidden layers, then a dense output layer.

    Parameters
    ----------
    hidden
        The units of each hidden layer, in order (empty: the output layer alone).
    activation
        The hidden layers' activation (None: the key is left out, the engine's default).
    outputs
        The output layer's units.
    output_activation
        The output layer's activation (None: the key is left out).
    **dense
        More keys for every dense layer, output included (``init="normal"``, ``use_bias=False``).

    Examples
    --------
    >>> mlp()
    {'layers': [{'type': 'dense', 'units': 8, 'activation': 'relu'}, {'type': 'dense', 'units': 2}]}
    """
    def layer(units: int, layer_activation: str | None) -> dict[str, Any]:
        spec: dict[str, Any] = {"type": "dense", "units": units}
        if layer_activation is not None:
            spec["activation"] = layer_activation
        return {**spec, **dense}

    return {"layers": [*(layer(units, activation) for units in hidden), layer(outputs, output_activation)]}


def submit(client: Any, dataset_id: str, network: dict[str, Any], **training: Any) -> str:
    """Create a job through the Flask test client (asserting 202); return its id.

    ``training`` is the job's ``training`` object (empty: the defaults).
    """
    response = client.post("/v1/jobs", json={"dataset_id": dataset_id, "network": network,
                                             "training": training})
    assert response.status_code == 202, response.get_json()
    return response.get_json()["id"]


def run_job(app: Any, job_id: str, owner: str = "test-worker", **kwargs: Any) -> str:
    """Run a job the way a worker does (workers.training.run_job) on the app's database; return its status."""
    from workers.training import run_job as worker_run_job

    return worker_run_job(job_id, sessions=app.extensions["backprop.sessions"], owner=owner, **kwargs)


def train(client: Any, app: Any, dataset_id: str, network: dict[str, Any], **training: Any) -> str:
    """Create a job, run it to success (asserted) as a worker would, and return its model's id."""
    job_id = submit(client, dataset_id, network, **training)
    assert run_job(app, job_id) == "succeeded", client.get(f"/v1/jobs/{job_id}").get_json()
    return client.get(f"/v1/jobs/{job_id}").get_json()["model_id"]


def on_each_epoch(monkeypatch: Any, action: Callable[[Any, Any], None], before: bool = False) -> None:
    """Call action(recorder, record) when the worker has handled each epoch's record (or just before)."""
    from workers import training

    original = training.JobRecorder.on_epoch_end

    def wrapped(self: Any, record: Any) -> None:
        if before:
            action(self, record)
        original(self, record)
        if not before:
            action(self, record)

    monkeypatch.setattr(training.JobRecorder, "on_epoch_end", wrapped)


def wait_for(condition: Callable[[], T], timeout: float = 10.0, interval: float = 0.05,
             message: str | Callable[[], str] = "the condition") -> T:
    """Call `condition` until it returns something truthy; return that, or fail after `timeout` seconds.

    Parameters
    ----------
    condition
        Called with no arguments; may raise AssertionError (say, to stop early on a dead process).
    timeout, interval
        Seconds to wait in all, and between two calls.
    message
        What was awaited (or a function that says it, called once at the timeout), for the failure.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            import pytest

            what = message() if callable(message) else message
            pytest.fail(f"{what} did not come true within {timeout} s")
        time.sleep(interval)
