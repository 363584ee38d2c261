"""The job lease, resuming from checkpoints, hand-back, time limits and the reaper (no broker)."""

from __future__ import annotations

import sys
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from tests.conftest import BLOBS_COLUMNS, blobs_rows, csv_text
from tests.helpers import abandon_after, job_row, job_settings, make_stale, mlp, on_each_epoch, run_job, set_row, submit

pytestmark = pytest.mark.parametrize("backend", ["sqlite", "postgres"], indirect=True)


@pytest.fixture
def job_id(client, upload_csv) -> str:
    dataset = upload_csv(csv_text(BLOBS_COLUMNS, blobs_rows(60))).get_json()
    return submit(client, dataset["id"], mlp(), epochs=8, batch_size=8, learning_rate=0.01)


def model_count(app, job_id) -> int:
    from service.core.db.tables import TrainedModel

    with app.extensions["backprop.sessions"]() as session:
        return session.scalar(select(func.count()).select_from(TrainedModel).where(TrainedModel.job_id == job_id))


def test_a_stale_lease_is_reclaimed_and_the_old_owner_can_no_longer_write(app, job_id):
    from workers.lease import claim
    from workers.training import JobRecorder, LeaseLost

    sessions = app.extensions["backprop.sessions"]
    assert claim(sessions, job_id, "a", job_settings())
    assert not claim(sessions, job_id, "b", job_settings())  # fresh heartbeat: held
    make_stale(app, job_id)
    assert claim(sessions, job_id, "b", job_settings())
    row = job_row(app, job_id)
    assert (row.owner, row.attempt, row.status) == ("b", 2, "running")
    with pytest.raises(LeaseLost):
        JobRecorder(sessions, job_id, "a").on_epoch_end({"epoch": 1, "loss": 0.5})
    make_stale(app, job_id)
    assert not claim(sessions, job_id, "c", job_settings(max_attempts=2))  # out of attempts


def test_a_reclaimed_job_resumes_from_its_checkpoint_and_trains_once(app, job_id, monkeypatch, client):
    trained = abandon_after(monkeypatch, 3)
    assert run_job(app, job_id, owner="first", settings=job_settings()) == "abandoned"
    assert trained == [1, 2, 3] and job_row(app, job_id).status == "running"
    monkeypatch.undo()
    trained = abandon_after(monkeypatch, 99)
    # A second delivery while the lease is fresh does not train.
    assert run_job(app, job_id, owner="second", settings=job_settings()) == "running" and trained == []
    make_stale(app, job_id)
    assert run_job(app, job_id, owner="second", settings=job_settings()) == "succeeded"
    assert trained == [4, 5, 6, 7, 8]  # from the epoch 3 checkpoint, not from epoch 0
    job = client.get(f"/v1/jobs/{job_id}").get_json()
    assert job["attempt"] == 2 and model_count(app, job_id) == 1
    assert [r["epoch"] for r in client.get(f"/v1/jobs/{job_id}/metrics").get_json()["epochs"]] == list(range(1, 9))

    # Bit for bit the run an uninterrupted job makes.
    monkeypatch.undo()
    again = client.post("/v1/jobs", json={"dataset_id": job["dataset_id"], "network": mlp(),
                                           "training": job["training"]}).get_json()["id"]
    assert run_job(app, again, settings=job_settings()) == "succeeded"
    timing = ("duration_s", "samples_per_second")

    def learned(metrics):
        return {k: v for k, v in metrics.items() if k not in timing}

    assert learned(client.get(f"/v1/jobs/{again}").get_json()["metrics"]) == learned(job["metrics"])


def test_checkpoint_writes_are_throttled(app, job_id, monkeypatch):
    trained = abandon_after(monkeypatch, 3)
    assert run_job(app, job_id, owner="first", settings=job_settings(checkpoint_interval_s=3600)) == "abandoned"
    monkeypatch.undo()
    trained = abandon_after(monkeypatch, 99)
    make_stale(app, job_id)
    assert run_job(app, job_id, owner="second", settings=job_settings()) == "succeeded"
    assert trained[0] == 1  # no checkpoint was stored within the interval: a fresh start


def test_a_shutting_down_worker_hands_the_job_back_with_a_checkpoint(app, job_id, monkeypatch):
    from service.core.db.tables import JobCheckpoint

    trained: list[int] = []
    on_each_epoch(monkeypatch, lambda recorder, record: trained.append(record["epoch"]))
    published = []
    # The checkpoint interval is long: the hand-back stores the latest one anyway.
    assert run_job(app, job_id, owner="first", settings=job_settings(checkpoint_interval_s=3600),
               shutdown=lambda: len(trained) >= 2, publish=lambda *a: published.append(a)) == "queued"
    row = job_row(app, job_id)
    assert (row.status, row.owner, row.attempt) == ("queued", None, 0)
    assert published == [(job_id, "cpu")]
    with app.extensions["backprop.sessions"]() as session:
        assert session.scalar(select(JobCheckpoint.epoch).where(JobCheckpoint.job_id == job_id)) == 2
    trained.clear()
    assert run_job(app, job_id, owner="second", settings=job_settings()) == "succeeded"
    assert trained[0] == 3 and job_row(app, job_id).attempt == 1


def test_the_time_limit_fails_the_job_with_the_reason(app, job_id):
    assert run_job(app, job_id, settings=job_settings(time_limit_s=1e-6)) == "failed"
    error = job_row(app, job_id).error
    assert "time limit" in error and "JOB_TIME_LIMIT_S" in error


def test_the_reaper_requeues_cancels_and_fails_lost_jobs(app, client, upload_csv):
    from service.core.ids import utcnow
    from workers.lease import claim
    from workers.reaper import reap

    sessions = app.extensions["backprop.sessions"]
    dataset = upload_csv(csv_text(BLOBS_COLUMNS, blobs_rows(40))).get_json()
    ids = [submit(client, dataset["id"], mlp(), epochs=2) for _ in range(5)]
    lost, cancelled, poison, too_long, alive = ids
    for job in ids:
        assert claim(sessions, job, "dead-worker", job_settings())
    for job in ids[:-1]:
        make_stale(app, job)
    set_row(app, cancelled, cancel_requested=True)
    set_row(app, poison, attempt=3)
    set_row(app, too_long, started_at=utcnow() - timedelta(days=2))
    published = []
    counts = reap(sessions, lambda *a: published.append(a), job_settings(time_limit_s=3600))
    assert counts == {"requeued": 1, "republished": 0, "cancelled": 1, "failed": 2}
    assert published == [(lost, "cpu")]
    statuses = {job: client.get(f"/v1/jobs/{job}").get_json() for job in ids}
    assert statuses[lost]["status"] == "queued" and statuses[alive]["status"] == "running"
    assert statuses[cancelled]["status"] == "cancelled"
    assert statuses[poison]["status"] == "failed" and "MAX_ATTEMPTS" in statuses[poison]["error"]
    assert statuses[too_long]["status"] == "failed" and "time limit" in statuses[too_long]["error"]
    # A second reaper at the same moment finds nothing left to do.
    assert not any(reap(sessions, lambda *a: published.append(a), job_settings(time_limit_s=3600)).values())


def test_the_reaper_republishes_forgotten_queued_jobs_once_and_fails_undeliverable_ones(app, job_id):
    from service.core.ids import utcnow
    from workers.reaper import reap

    sessions = app.extensions["backprop.sessions"]
    published = []
    quick = job_settings(requeue_queued_after_s=60)
    assert not any(reap(sessions, lambda *a: published.append(a), quick).values())  # just queued
    set_row(app, job_id, published_at=utcnow() - timedelta(minutes=5))
    later = utcnow()
    assert reap(sessions, lambda *a: published.append(a), quick, now=later)["republished"] == 1
    assert reap(sessions, lambda *a: published.append(a), quick, now=later)["republished"] == 0
    assert published == [(job_id, "cpu")]
    # Three deliveries that never got to the claim: a task failing before run_job.
    set_row(app, job_id, deliveries=3, published_at=utcnow() - timedelta(minutes=5))
    assert reap(sessions, lambda *a: published.append(a), quick)["failed"] == 1
    row = job_row(app, job_id)
    assert row.status == "failed" and "no worker could start" in row.error


def test_the_task_marks_the_job_failed_when_the_training_code_cannot_load(app, job_id, monkeypatch):
    from workers import tasks

    monkeypatch.setattr(tasks, "default_sessions", lambda: app.extensions["backprop.sessions"])
    monkeypatch.setitem(sys.modules, "workers.training", None)  # import raises ImportError
    assert tasks.train_job.run(job_id) == "failed"
    row = job_row(app, job_id)
    assert row.status == "failed" and "could not load its training code" in row.error
    assert row.deliveries == 1
