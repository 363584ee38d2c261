"""Plain helpers shared by the test suite: import them (`from tests.helpers import problem`).

Fixtures live in tests/conftest.py; what is here takes its inputs as arguments, so a test
or a fixture of any folder can call it.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import pytest

T = TypeVar("T")


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
        output: dict[str, Any] | None = None, **dense: Any) -> dict[str, Any]:
    """Return a layer-stack network definition: dense hidden layers, then a dense output layer.

    Parameters
    ----------
    hidden
        The units of each hidden layer, in order (empty: the output layer alone).
    activation
        The hidden layers' activation (None: the key is left out, the engine's default).
    outputs
        The output layer's units.
    output
        More keys for the output layer (``{"activation": "sigmoid"}``, ``{"init": "normal"}``).
    **dense
        More keys for every hidden layer (``init="normal"``, ``use_bias=False``).

    Examples
    --------
    >>> mlp()
    {'layers': [{'type': 'dense', 'units': 8, 'activation': 'relu'}, {'type': 'dense', 'units': 2}]}
    """
    active = {} if activation is None else {"activation": activation}
    layers = [{"type": "dense", "units": units, **active, **dense} for units in hidden]
    return {"layers": [*layers, {"type": "dense", "units": outputs, **(output or {})}]}


def create_job(client: Any, **body: Any) -> str:
    """POST a job body through the Flask test client (asserting 202); return the job's id."""
    response = client.post("/v1/jobs", json=body)
    assert response.status_code == 202, response.get_json()
    return response.get_json()["id"]


def submit(client: Any, dataset_id: str, network: dict[str, Any], **training: Any) -> str:
    """Create a job of a dataset and a network through the Flask test client (asserting 202); return its id.

    ``training`` is the job's ``training`` object (empty: the defaults).
    """
    return create_job(client, dataset_id=dataset_id, network=network, training=training)


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


# Worker tests: a lease that a test can let go stale at once, and the job's row as the worker sees it.
FAST_LEASE = {"lease_timeout_s": 30.0, "checkpoint_interval_s": 0.0}


def job_settings(**overrides: Any) -> Any:
    """Return the worker's JobSettings for tests: FAST_LEASE, then `overrides`."""
    from workers.lease import JobSettings

    return JobSettings(**{**FAST_LEASE, **overrides})


def job_row(app: Any, job_id: str) -> Any:
    """Return the job's database row (a detached tables.Job)."""
    from service.core.db.tables import Job

    with app.extensions["backprop.sessions"]() as session:
        return session.get(Job, job_id)


def set_row(app: Any, job_id: str, **values: Any) -> None:
    """Write columns of the job's row directly, as another worker or the reaper would."""
    from sqlalchemy import update

    from service.core.db.tables import Job

    with app.extensions["backprop.sessions"]() as session:
        session.execute(update(Job).where(Job.id == job_id).values(**values))
        session.commit()


def make_stale(app: Any, job_id: str, seconds: float = 3600) -> None:
    """Date the job's heartbeat `seconds` back: its lease looks expired to the reaper and to a claim."""
    from datetime import timedelta

    from service.core.ids import utcnow

    set_row(app, job_id, heartbeat_at=utcnow() - timedelta(seconds=seconds))


def abandon_after(monkeypatch: Any, epoch: int) -> list[int]:
    """Make the worker's parent 'die' after `epoch`; return the list of epochs trained."""
    from workers import training

    trained: list[int] = []
    parent = training.os.getppid()

    def record(recorder: Any, record: Any) -> None:
        trained.append(record["epoch"])
        if record["epoch"] == epoch:
            monkeypatch.setattr(training.os, "getppid", lambda: parent + 1)

    on_each_epoch(monkeypatch, record)
    return trained


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


def give_model(app: Any, tenant: str, size: int) -> None:
    """Give a tenant a model of `size` bytes of weights (what a finished job would store)."""
    from service.core.db.tables import TrainedModel
    from service.core.ids import new_id

    with app.extensions["backprop.sessions"]() as session:
        session.add(TrainedModel(id=new_id("mdl"), tenant_id=tenant, job_id="job_x", dataset_id="ds_x",
                                 task="classification", loss="cross_entropy", definition={},
                                 weights=b"\0" * size, preprocessing={}, classes=None, metrics=None,
                                 parameter_count=0))
        session.commit()


# A test marked so runs on SQLite and on PostgreSQL (the `backend` fixture of tests/conftest.py).
both_databases = pytest.mark.parametrize("backend", ["sqlite", "postgres"], indirect=True)


class CountingStream(io.BytesIO):
    """A request body that counts how many of its bytes were read."""

    bytes_read = 0

    def read(self, size: int | None = -1) -> bytes:
        chunk = super().read(size)
        self.bytes_read += len(chunk)
        return chunk

    def readinto(self, buffer: Any) -> int:
        count = super().readinto(buffer)
        self.bytes_read += count
        return count
