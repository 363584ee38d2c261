"""A warm-started job (init_from_model) through workers.training.run_job, and per-job time limits."""

from __future__ import annotations

import time as real_time
from datetime import timedelta
from types import SimpleNamespace

import pytest

from tests.conftest import BLOBS_COLUMNS, blobs_rows, csv_text, pets_rows
from tests.helpers import (
    abandon_after,
    create_job,
    job_row,
    job_settings,
    make_stale,
    mlp,
    on_each_epoch,
    run_job,
    set_row,
)

# Workers read and write the store on SQLite, and on PostgreSQL where it is reachable.
BOTH = pytest.mark.parametrize("backend", ["sqlite", "postgres"], indirect=True)

TRAINING = {"epochs": 15, "batch_size": 8, "learning_rate": 0.01, "seed": 3}


def history(client, job_id: str) -> list[dict]:
    return client.get(f"/v1/jobs/{job_id}/metrics").get_json()["epochs"]


@pytest.fixture
def pets(upload_csv) -> dict:
    # A categorical feature and string classes: the preprocessing the warm start must keep.
    return upload_csv(csv_text(["weight", "color", "pet"], pets_rows(160))).get_json()


@pytest.fixture
def source(client, app, pets) -> dict:
    """A model trained for 15 epochs on the pets."""
    job_id = create_job(client, dataset_id=pets["id"], network=mlp(), training=TRAINING)
    assert run_job(app, job_id) == "succeeded"
    model_id = client.get(f"/v1/jobs/{job_id}").get_json()["model_id"]
    return client.get(f"/v1/models/{model_id}").get_json()


@BOTH
def test_a_warm_start_continues_where_the_model_stopped(client, app, pets, source):
    warm = create_job(client, dataset_id=pets["id"], init_from_model=source["id"], training={**TRAINING, "epochs": 3})
    cold = create_job(client, dataset_id=pets["id"], network=mlp(), training={**TRAINING, "epochs": 3})
    assert run_job(app, warm) == "succeeded" and run_job(app, cold) == "succeeded"
    final = source["metrics"]["loss"]
    warm_first, cold_first = history(client, warm)[0]["loss"], history(client, cold)[0]["loss"]
    # The source's final loss is far below a fresh network's first epoch; the warm job starts there.
    assert final < cold_first / 10
    assert warm_first <= 2 * final + 0.02
    assert warm_first < cold_first / 10
    model = client.get(f"/v1/models/{client.get(f'/v1/jobs/{warm}').get_json()['model_id']}").get_json()
    # The warm job kept the source model's preprocessing and classes rather than fitting its own.
    assert model["preprocessing"] == source["preprocessing"] and model["classes"] == source["classes"]


@BOTH
def test_a_resumed_warm_job_takes_its_checkpoint_not_the_models_weights(client, app, pets, source, monkeypatch):
    from workers import training

    body = {"dataset_id": pets["id"], "init_from_model": source["id"], "training": {**TRAINING, "epochs": 6}}
    loads: list[str] = []
    real_load = training.backprop.load

    def load(*args, **kwargs):
        loads.append("load")
        return real_load(*args, **kwargs)

    job_id = create_job(client, **body)
    trained = abandon_after(monkeypatch, 2)
    monkeypatch.setattr(training.backprop, "load", load)
    assert run_job(app, job_id, owner="first", settings=job_settings()) == "abandoned"
    assert trained == [1, 2] and loads == ["load"]
    monkeypatch.undo()
    trained = abandon_after(monkeypatch, 99)
    monkeypatch.setattr(training.backprop, "load", load)
    make_stale(app, job_id)
    assert run_job(app, job_id, owner="second", settings=job_settings()) == "succeeded"
    assert trained == [3, 4, 5, 6] and loads == ["load"]  # from the checkpoint; the model was not loaded again

    # The same result as an uninterrupted warm job.
    monkeypatch.undo()
    again = create_job(client, **body)
    assert run_job(app, again, settings=job_settings()) == "succeeded"
    assert [r["loss"] for r in history(client, again)] == [r["loss"] for r in history(client, job_id)]


@BOTH
def test_a_warm_job_whose_model_was_deleted_fails_with_the_reason(client, app, pets, source):
    job_id = create_job(client, dataset_id=pets["id"], init_from_model=source["id"])
    assert client.delete(f"/v1/models/{source['id']}").status_code == 204
    assert run_job(app, job_id) == "failed"
    assert "init_from_model" in job_row(app, job_id).error and "deleted" in job_row(app, job_id).error


class Clock:
    """workers.training's `time` with a monotonic clock that can jump ahead."""

    def __init__(self) -> None:
        self.offset = 0.0
        self.module = SimpleNamespace(monotonic=lambda: real_time.monotonic() + self.offset)


@BOTH
def test_a_job_past_its_own_time_limit_fails_naming_time_limit_s(client, app, monkeypatch):
    from workers import training

    dataset = client.post("/v1/datasets", json={"name": "blobs", "columns": BLOBS_COLUMNS,
                                                "data": blobs_rows(60)}).get_json()
    job_id = create_job(client, dataset_id=dataset["id"], network=mlp(), time_limit_s=5,
                        training={"epochs": 50, "batch_size": 8})
    clock = Clock()
    monkeypatch.setattr(training, "time", clock.module)

    def record(recorder, record):
        if record["epoch"] == 2:
            clock.offset = 6.0  # six seconds pass: past the job's 5 s, far from JOB_TIME_LIMIT_S

    on_each_epoch(monkeypatch, record)
    assert run_job(app, job_id, settings=job_settings(time_limit_s=3600)) == "failed"
    job = client.get(f"/v1/jobs/{job_id}").get_json()
    assert job["status"] == "failed" and job["progress"]["epoch"] == 2 and job["time_limit_s"] == 5
    assert "time limit" in job["error"] and "the job's time_limit_s of 5 s" in job["error"]
    assert "JOB_TIME_LIMIT_S" not in job["error"]


def test_the_smaller_limit_applies_and_is_named():
    from workers.lease import time_limit

    assert time_limit(None, job_settings(time_limit_s=0)) is None
    seconds, error = time_limit(5, job_settings(time_limit_s=0))
    assert seconds == 5 and "time_limit_s of 5 s" in error
    seconds, error = time_limit(5, job_settings(time_limit_s=3600))
    assert seconds == 5 and "time_limit_s of 5 s" in error and "JOB_TIME_LIMIT_S" not in error
    seconds, error = time_limit(7200, job_settings(time_limit_s=3600))
    assert seconds == 3600 and "3600 s (JOB_TIME_LIMIT_S" in error and "time_limit_s of 7200 s" in error
    seconds, error = time_limit(None, job_settings(time_limit_s=3600))
    assert seconds == 3600 and "JOB_TIME_LIMIT_S" in error and "time_limit_s of" not in error


@BOTH
def test_the_reaper_and_a_late_claim_apply_the_jobs_own_limit(client, app, upload_csv):
    from service.core.ids import utcnow
    from workers.lease import claim
    from workers.reaper import reap

    sessions = app.extensions["backprop.sessions"]
    dataset = upload_csv(csv_text(BLOBS_COLUMNS, blobs_rows(40))).get_json()
    lost, alive = (create_job(client, dataset_id=dataset["id"], network=mlp(), time_limit_s=60) for _ in range(2))
    for job in (lost, alive):
        assert claim(sessions, job, "dead-worker", job_settings())
        set_row(app, job, started_at=utcnow() - timedelta(minutes=2))
    make_stale(app, lost)
    assert reap(sessions, lambda *a: None, job_settings(time_limit_s=3600))["failed"] == 1
    assert "the job's time_limit_s of 60 s" in job_row(app, lost).error
    # A job that is found past its limit when (re)claimed fails before training.
    make_stale(app, alive)
    assert run_job(app, alive, settings=job_settings(time_limit_s=0)) == "failed"
    assert "the job's time_limit_s of 60 s" in job_row(app, alive).error
