"""service.core.jobs.creation without Flask: a session on a migrated SQLite copy, a recording queue."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from service.core.data.parsing import describe_target, parse_json_rows
from service.core.db.engine import make_engine, make_session_factory
from service.core.db.store import save_dataset
from service.core.db.tables import Dataset, Job, Network
from service.core.ids import new_id
from service.core.jobs.creation import create_job, training_fields
from service.core.problems import ApiError
from service.core.schemas import JobCreate
from service.core.settings import load_config
from service.core.statuses import JobStatus
from tests.conftest import BLOBS_COLUMNS, RecordingQueue, blobs_rows
from tests.helpers import mlp

TENANT = "alice"


@pytest.fixture
def sessions(sqlite_template: Path, tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    """A session factory on a fresh copy of the migrated SQLite template."""
    shutil.copy(sqlite_template, tmp_path / "backprop.db")
    engine = make_engine(f"sqlite:///{tmp_path / 'backprop.db'}")
    yield make_session_factory(engine)
    engine.dispose()


@pytest.fixture
def config() -> dict[str, Any]:
    """The default settings, as the app's config holds them."""
    return load_config({})


@pytest.fixture
def dataset(sessions: sessionmaker[Session]) -> Dataset:
    """Alice's blobs dataset: four numeric features, a 0/1 label (classification)."""
    return _dataset(sessions, TENANT)


def _dataset(sessions: sessionmaker[Session], tenant: str) -> Dataset:
    table = parse_json_rows(BLOBS_COLUMNS, blobs_rows(40))
    return save_dataset(sessions, table, describe_target(table, None, None), "blobs", "json", tenant_id=tenant)


def _create(sessions: sessionmaker[Session], config: dict[str, Any], queue: RecordingQueue,
            body: dict[str, Any], tenant: str = TENANT) -> Job:
    with sessions() as session:
        return create_job(session, tenant, JobCreate.model_validate(body), config, queue,
                          sent_network=body.get("network"))


def _refusal(sessions: sessionmaker[Session], config: dict[str, Any], queue: RecordingQueue,
             body: dict[str, Any], tenant: str = TENANT) -> ApiError:
    with pytest.raises(ApiError) as caught:
        _create(sessions, config, queue, body, tenant)
    return caught.value


def _job_count(sessions: sessionmaker[Session]) -> int:
    with sessions() as session:
        return session.scalar(select(func.count()).select_from(Job)) or 0


def test_a_valid_job_is_committed_then_published(sessions, config, dataset):
    queue = RecordingQueue()
    network = {"name": "ignored", **mlp()}
    job = _create(sessions, config, queue, {"dataset_id": dataset.id, "network": network,
                                            "training": {"epochs": 3}})
    assert queue.published == [(job.id, "cpu")]
    with sessions() as session:
        row = session.get(Job, job.id)
        assert row is not None
        assert row.status == JobStatus.QUEUED and row.tenant_id == TENANT and row.epochs == 3
        assert row.network == mlp()  # as sent, less its name
        # The full config, the loss following the dataset's task.
        assert row.training["loss"] == "cross_entropy" and row.training["batch_size"] == 32
        assert row.published_at is not None and row.attempt == 0


def test_the_network_defaults_to_the_fields_set_on_the_request(sessions, config, dataset):
    queue = RecordingQueue()
    with sessions() as session:
        job = create_job(session, TENANT, JobCreate.model_validate(
            {"dataset_id": dataset.id, "network": {"name": "n", **mlp()}}), config, queue)
    assert job.network == mlp()


def test_a_stored_network_is_copied_into_the_job(sessions, config, dataset):
    with sessions() as session:
        network = Network(id=new_id("net"), tenant_id=TENANT, name=None, definition=mlp())
        session.add(network)
        session.commit()
    job = _create(sessions, config, RecordingQueue(), {"dataset_id": dataset.id, "network_id": network.id})
    assert job.network == mlp() and job.network_id == network.id


@pytest.mark.parametrize(("field", "kind"), [("dataset_id", "dataset"), ("network_id", "network"),
                                             ("init_from_model", "model")])
def test_an_unknown_id_is_a_422_on_its_field(sessions, config, dataset, field, kind):
    body: dict[str, Any] = {"dataset_id": dataset.id, "network": mlp()}
    if field == "network_id":
        del body["network"]
    body[field] = "nope_123"
    error = _refusal(sessions, config, RecordingQueue(), body)
    assert error.status == 422
    assert error.errors == [{"field": field, "message": f"no {kind} with id 'nope_123'"}]
    assert _job_count(sessions) == 0


def test_another_tenants_dataset_is_as_absent_as_a_missing_one(sessions, config):
    bobs = _dataset(sessions, "bob")
    error = _refusal(sessions, config, RecordingQueue(), {"dataset_id": bobs.id, "network": mlp()})
    assert error.status == 422 and error.errors == [
        {"field": "dataset_id", "message": f"no dataset with id {bobs.id!r}"}]


def test_every_problem_is_reported_at_once(sessions, config, dataset):
    queue = RecordingQueue()
    error = _refusal(sessions, config, queue, {"dataset_id": dataset.id,
                                               "network": mlp(activation="sparkle"),
                                               "training": {"loss": "mse"}})
    assert error.status == 422
    fields = [e["field"] for e in error.errors]
    assert fields[0] == "training.loss" and "mse does not fit a classification dataset" in error.errors[0]["message"]
    assert any(field.startswith("network.") for field in fields[1:])
    assert queue.published == [] and _job_count(sessions) == 0


def test_the_output_width_follows_the_dataset(sessions, config, dataset):
    error = _refusal(sessions, config, RecordingQueue(), {"dataset_id": dataset.id, "network": mlp(outputs=3)})
    assert error.status == 422 and all(e["field"].startswith("network") for e in error.errors)


def test_the_parameter_budget_comes_from_the_settings(sessions, config, dataset):
    config["MAX_PARAMETERS"] = 30  # 4*8+8 + 8*2+2 = 58 parameters
    error = _refusal(sessions, config, RecordingQueue(), {"dataset_id": dataset.id, "network": mlp()})
    assert error.status == 422
    assert "more than the budget of 30 (MAX_PARAMETERS)" in error.errors[0]["message"]


def test_training_fields_refuse_binary_cross_entropy_without_two_classes(sessions, dataset):
    with sessions() as session:
        row = session.get(Dataset, dataset.id)
        assert row is not None
        row.classes = [0, 1, 2]
        request = JobCreate.model_validate({"dataset_id": row.id, "network": mlp(),
                                            "training": {"loss": "binary_cross_entropy"}})
        training, errors = training_fields(request, row)
    assert training["loss"] == "binary_cross_entropy"
    assert errors == [{"field": "training.loss", "message": "binary_cross_entropy needs two classes; "
                                                            "the dataset has 3; use cross_entropy"}]


def test_the_tenant_job_limit_is_a_429(sessions, config, dataset):
    config["TENANT_MAX_CONCURRENT_JOBS"] = 1
    queue = RecordingQueue()
    first = _create(sessions, config, queue, {"dataset_id": dataset.id, "network": mlp()})
    error = _refusal(sessions, config, queue, {"dataset_id": dataset.id, "network": mlp()})
    assert error.status == 429 and error.slug == "tenant-job-limit"
    assert error.headers == {"Retry-After": "30"}
    assert queue.published == [(first.id, "cpu")] and _job_count(sessions) == 1


def test_a_tenant_out_of_room_gets_a_413(sessions, config, dataset):
    config["TENANT_MAX_STORED_MB"] = 0  # (the settings refuse 0; a test may go below the bound)
    error = _refusal(sessions, config, RecordingQueue(), {"dataset_id": dataset.id, "network": mlp()})
    assert error.status == 413 and error.slug == "tenant-storage-limit"
    assert _job_count(sessions) == 0


def test_a_queue_that_refuses_fails_the_committed_job_with_a_503(sessions, config, dataset):
    queue = RecordingQueue()
    queue.down = True
    error = _refusal(sessions, config, queue, {"dataset_id": dataset.id, "network": mlp(), "device": "gpu"})
    assert error.status == 503 and error.slug == "broker-unavailable"
    with sessions() as session:
        (job,) = session.scalars(select(Job)).all()
        assert job.status == JobStatus.FAILED and job.finished_at is not None
        assert job.error == ("the job queue could not be reached (ConnectionError); "
                             "check the broker and submit the job again")
    assert error.detail == f"job {job.id} could not be queued: the broker is unreachable"
