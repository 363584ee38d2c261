"""Evaluations and batch predictions end when a user says so: cancel (as a training job's) and,
for a batch prediction, delete with its file, which counts against the tenant's storage until then.

Also: a batch worker removes the temporary file an earlier, killed attempt left, a dataset in use
names the job to cancel, and a job whose worker kept dying says what its user can change.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from tests.conftest import BLOBS_COLUMNS, blobs_rows, csv_text
from tests.helpers import both_databases, give_model, job_row, job_settings, problem, set_row

# The cancel flag is read at each check, not once a second: a test cancels between two checks.
EVERY_CHECK = {"progress_interval_s": 0.0}


def start_evaluation(client: Any, model_id: str, dataset_id: str) -> dict[str, Any]:
    response = client.post(f"/v1/models/{model_id}/evaluations", json={"dataset_id": dataset_id,
                                                                       "permutation_repeats": 2})
    assert response.status_code == 202, response.get_json()
    return response.get_json()


def start_batch(client: Any, model_id: str, dataset_id: str, fmt: str = "csv") -> dict[str, Any]:
    response = client.post(f"/v1/models/{model_id}/batch-predictions", json={"dataset_id": dataset_id,
                                                                             "format": fmt})
    assert response.status_code == 202, response.get_json()
    return response.get_json()


def run_evaluation(app: Any, job_id: str, **kwargs: Any) -> str:
    from workers.evaluation import run_evaluation as worker_run

    return worker_run(job_id, sessions=app.extensions["backprop.sessions"], owner="test-worker", **kwargs)


def run_batch(app: Any, job_id: str, **kwargs: Any) -> str:
    from workers.batch_prediction import run_batch_prediction

    return run_batch_prediction(job_id, sessions=app.extensions["backprop.sessions"], owner="test-worker", **kwargs)


def chunk_count(app: Any, job_id: str) -> int:
    from service.core.db.tables import JobOutputChunk

    with app.extensions["backprop.sessions"]() as session:
        return session.scalar(select(func.count()).where(JobOutputChunk.job_id == job_id)) or 0


def stored(app: Any, tenant: str) -> int:
    from service.core.tenancy.limits import stored_bytes

    with app.extensions["backprop.sessions"]() as session:
        return stored_bytes(session, tenant)


def tmp_files(app: Any, job_id: str) -> list[Path]:
    return sorted((Path(app.config["DATA_DIR"]) / "tmp").glob(f"{job_id}-*"))


# --- cancel ---------------------------------------------------------------------------------------


KINDS = {"evaluation": ("/v1/evaluations", start_evaluation, run_evaluation),
         "batch prediction": ("/v1/batch-predictions", start_batch, run_batch)}


@pytest.mark.parametrize("kind", list(KINDS))
def test_a_queued_one_is_cancelled_at_once_and_no_worker_runs_it(client, app, blobs_model, blobs, kind):
    base, start, run = KINDS[kind]
    created = start(client, blobs_model, blobs["id"])
    assert created["cancel_requested"] is False
    response = client.post(f"{base}/{created['id']}/cancel")
    assert response.status_code == 202
    body = response.get_json()
    assert body["id"] == created["id"] and body["status"] == "cancelled" and body["cancel_requested"] is True
    assert body["finished_at"] is not None
    again = client.post(f"{base}/{created['id']}/cancel")  # twice is harmless
    assert again.status_code == 202 and again.get_json()["status"] == "cancelled"
    assert run(app, created["id"]) == "cancelled"  # its message still arrives: not claimed
    assert job_row(app, created["id"]).attempt == 0
    # The slot it took is free again.
    app.config["TENANT_MAX_CONCURRENT_JOBS"] = 1
    start(client, blobs_model, blobs["id"])


def test_a_running_evaluation_is_asked_to_stop_and_its_worker_ends_it_cancelled(client, app, blobs_model, blobs,
                                                                              monkeypatch):
    from workers import scoring

    created = start_evaluation(client, blobs_model, blobs["id"])
    answers: list[dict[str, Any]] = []
    original = scoring.ScoringJob.check

    def cancel_first(self: Any) -> None:  # the user cancels while the worker scores
        if not answers:
            response = client.post(f"/v1/evaluations/{created['id']}/cancel")
            assert response.status_code == 202
            answers.append(response.get_json())
        original(self)

    monkeypatch.setattr(scoring.ScoringJob, "check", cancel_first)
    assert run_evaluation(app, created["id"], settings=job_settings(**EVERY_CHECK)) == "cancelled"
    assert answers[0]["status"] == "running" and answers[0]["cancel_requested"] is True
    evaluation = client.get(f"/v1/evaluations/{created['id']}").get_json()
    assert evaluation["status"] == "cancelled" and evaluation["report"] is None
    assert evaluation["cancel_requested"] is True and evaluation["finished_at"] is not None


def test_a_running_batch_prediction_is_asked_to_stop_and_stores_no_file(client, app, blobs_model, blobs,
                                                                        monkeypatch):
    import workers.batch_prediction as module
    from workers import scoring

    monkeypatch.setattr(module, "CHUNK_ROWS", 8)  # 40 rows: five chunks, a check after each
    created = start_batch(client, blobs_model, blobs["id"])
    original = scoring.ScoringJob.check
    checks: list[int] = []

    def cancel_at_second(self: Any) -> None:
        checks.append(1)
        if len(checks) == 2:
            assert client.post(f"/v1/batch-predictions/{created['id']}/cancel").status_code == 202
        original(self)

    monkeypatch.setattr(scoring.ScoringJob, "check", cancel_at_second)
    assert run_batch(app, created["id"], settings=job_settings(**EVERY_CHECK)) == "cancelled"
    assert len(checks) == 2  # it stopped at the check that saw the flag, not at the end
    state = client.get(f"/v1/batch-predictions/{created['id']}").get_json()
    assert state["status"] == "cancelled" and state["download"] is None and state["n_rows"] is None
    assert chunk_count(app, created["id"]) == 0 and not tmp_files(app, created["id"])
    assert problem(client.get(f"/v1/batch-predictions/{created['id']}/download"), 409)["detail"].startswith(
        f"batch prediction {created['id']} is cancelled")


@pytest.mark.parametrize("kind", list(KINDS))
def test_an_ended_one_is_409_and_other_paths_and_tenants_are_404(client, bob_client, app, blobs_model, blobs,
                                                                  kind):
    base, start, run = KINDS[kind]
    created = start(client, blobs_model, blobs["id"])
    assert problem(bob_client.post(f"{base}/{created['id']}/cancel"), 404)  # not there for another tenant
    assert problem(client.post(f"/v1/jobs/{created['id']}/cancel"), 404)  # nor at another kind's path
    training_job = client.get(f"/v1/models/{blobs_model}").get_json()["job_id"]
    assert problem(client.post(f"{base}/{training_job}/cancel"), 404)
    assert problem(client.post(f"{base}/{created['id'][:3]}missing/cancel"), 404)
    assert run(app, created["id"]) == "succeeded"
    body = problem(client.post(f"{base}/{created['id']}/cancel"), 409)
    assert body["type"].endswith(":job-finished")
    assert body["detail"] == (f"{kind} {created['id']} has already succeeded; only queued or running {kind}s "
                              f"can be cancelled")
    set_row(app, created["id"], status="failed")
    assert "has already failed" in problem(client.post(f"{base}/{created['id']}/cancel"), 409)["detail"]


def test_a_training_jobs_cancel_is_unchanged(client, app, blobs):
    from tests.helpers import mlp, submit

    job_id = submit(client, blobs["id"], mlp(), epochs=1)
    body = client.post(f"/v1/jobs/{job_id}/cancel").get_json()
    assert body["status"] == "cancelled" and body["cancel_requested"] is True
    set_row(app, job_id, status="succeeded")
    assert problem(client.post(f"/v1/jobs/{job_id}/cancel"), 409)["detail"] == (
        f"job {job_id} has already succeeded; only queued or running jobs can be cancelled")


# --- delete, and the storage a file takes ---------------------------------------------------------


@both_databases
def test_a_batch_prediction_is_deleted_with_its_file_once_it_ended(client, bob_client, app, blobs_model, blobs,
                                                                   monkeypatch):
    import workers.batch_prediction as module

    monkeypatch.setattr(module, "PIECE_BYTES", 256)  # several pieces
    created = start_batch(client, blobs_model, blobs["id"])
    body = problem(client.delete(f"/v1/batch-predictions/{created['id']}"), 409)
    assert body["type"].endswith(":batch-prediction-active") and "queued" in body["detail"]
    assert f"POST /v1/batch-predictions/{created['id']}/cancel" in body["detail"]
    set_row(app, created["id"], status="running")
    assert "running" in problem(client.delete(f"/v1/batch-predictions/{created['id']}"), 409)["detail"]
    set_row(app, created["id"], status="queued")
    assert run_batch(app, created["id"]) == "succeeded"
    assert chunk_count(app, created["id"]) > 1
    assert problem(bob_client.delete(f"/v1/batch-predictions/{created['id']}"), 404)  # another tenant's
    training_job = client.get(f"/v1/models/{blobs_model}").get_json()["job_id"]
    assert problem(client.delete(f"/v1/batch-predictions/{training_job}"), 404)  # a training job is not one
    assert client.get(f"/v1/jobs/{training_job}").status_code == 200

    response = client.delete(f"/v1/batch-predictions/{created['id']}")
    assert response.status_code == 204 and response.get_data() == b""
    assert chunk_count(app, created["id"]) == 0 and job_row(app, created["id"]) is None
    assert problem(client.get(f"/v1/batch-predictions/{created['id']}"), 404)
    assert problem(client.get(f"/v1/batch-predictions/{created['id']}/download"), 404)
    assert problem(client.delete(f"/v1/batch-predictions/{created['id']}"), 404)
    # A cancelled one (no file) is deleted too.
    cancelled = start_batch(client, blobs_model, blobs["id"])
    client.post(f"/v1/batch-predictions/{cancelled['id']}/cancel")
    assert client.delete(f"/v1/batch-predictions/{cancelled['id']}").status_code == 204


@both_databases
def test_a_batch_predictions_file_counts_against_storage_until_it_is_deleted(client, app, blobs_model, blobs):
    from service.core.tenancy.limits import MB

    before = stored(app, "alice")
    created = start_batch(client, blobs_model, blobs["id"], "parquet")
    assert stored(app, "alice") == before  # nothing stored yet
    assert run_batch(app, created["id"]) == "succeeded"
    size = client.get(f"/v1/batch-predictions/{created['id']}").get_json()["size_bytes"]
    assert size > 0 and stored(app, "alice") == before + size
    assert stored(app, "bob") == 0
    # Exactly at the limit because of the file: a job (whose model would add more) is refused.
    app.config["TENANT_MAX_STORED_MB"] = 1
    give_model(app, "alice", MB - stored(app, "alice"))
    assert stored(app, "alice") == MB
    body = problem(client.post(f"/v1/models/{blobs_model}/batch-predictions", json={"dataset_id": blobs["id"]}),
                   413)
    assert body["errors"][0]["field"] == "TENANT_MAX_STORED_MB" and "batch predictions" in body["detail"]
    assert client.delete(f"/v1/batch-predictions/{created['id']}").status_code == 204
    assert stored(app, "alice") == MB - size
    start_batch(client, blobs_model, blobs["id"])  # room again


# --- the worker's temporary file ------------------------------------------------------------------


def test_a_retry_removes_the_file_a_killed_attempt_left(client, app, blobs_model, blobs):
    created = start_batch(client, blobs_model, blobs["id"])
    folder = Path(app.config["DATA_DIR"]) / "tmp"
    folder.mkdir(parents=True, exist_ok=True)
    # What a worker killed mid-write leaves: its own mkstemp name, and a partial file.
    left = [folder / f"{created['id']}-k3y8z1.csv", folder / f"{created['id']}-abc.parquet"]
    for path in left:
        path.write_bytes(b"a,b\n1,")
    others = [folder / "bp_another-x.csv", folder / f"x{created['id']}-y.csv"]  # other jobs' files stay
    for path in others:
        path.write_bytes(b"theirs")
    assert run_batch(app, created["id"]) == "succeeded"
    assert not tmp_files(app, created["id"]) and not any(path.exists() for path in left)
    assert all(path.read_bytes() == b"theirs" for path in others)


def test_the_stale_files_are_removed_before_this_attempt_writes(client, app, blobs_model, blobs, monkeypatch):
    """The cleanup runs first: the file being written is this attempt's only one."""
    import workers.batch_prediction as module

    created = start_batch(client, blobs_model, blobs["id"])
    folder = Path(app.config["DATA_DIR"]) / "tmp"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{created['id']}-old.csv").write_bytes(b"stale")
    seen: list[list[str]] = []
    original = module.write_predictions

    def look(scoring: Any, handle: Any, *args: Any, **kwargs: Any) -> int:
        seen.append([p.name for p in tmp_files(app, created["id"])])
        return original(scoring, handle, *args, **kwargs)

    monkeypatch.setattr(module, "write_predictions", look)
    assert run_batch(app, created["id"]) == "succeeded"
    assert len(seen) == 1 and len(seen[0]) == 1 and seen[0][0] != f"{created['id']}-old.csv"
    assert os.path.basename(seen[0][0]).startswith(f"{created['id']}-")


# --- messages -------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(KINDS))
def test_a_dataset_in_use_names_the_job_and_its_cancel(client, app, blobs_model, upload_csv, kind):
    base, start, _ = KINDS[kind]
    dataset = upload_csv(csv_text(BLOBS_COLUMNS, blobs_rows(40, seed=9)), filename="other.csv").get_json()
    created = start(client, blobs_model, dataset["id"])
    body = problem(client.delete(f"/v1/datasets/{dataset['id']}"), 409)
    assert body["type"].endswith(":dataset-in-use")
    assert f"{kind} {created['id']} (POST {base}/{created['id']}/cancel); cancel it first" in body["detail"]
    assert client.post(f"{base}/{created['id']}/cancel").status_code == 202
    assert client.delete(f"/v1/datasets/{dataset['id']}").status_code == 204


def test_a_lost_jobs_error_fits_its_kind():
    from service.core.statuses import JobKind
    from workers.lease import lost_error

    training = lost_error(3, JobKind.TRAIN)
    assert "3 times" in training and "smaller network, batch size or dataset" in training
    for kind in (JobKind.EVALUATE, JobKind.BATCH_PREDICT):
        message = lost_error(3, kind)
        assert "3 times" in message and "smaller dataset" in message
        assert "network" not in message and "batch size" not in message


def test_the_reaper_fails_a_scoring_job_out_of_attempts_with_its_kinds_advice(client, app, blobs_model, blobs):
    from workers.reaper import reap

    created = start_batch(client, blobs_model, blobs["id"])
    settings = job_settings()
    set_row(app, created["id"], status="running", owner="dead-worker", attempt=settings.max_attempts)
    from tests.helpers import make_stale

    make_stale(app, created["id"])
    reap(app.extensions["backprop.sessions"], lambda *args: None, settings)
    state = client.get(f"/v1/batch-predictions/{created['id']}").get_json()
    assert state["status"] == "failed" and "try a smaller dataset" in state["error"]
    assert "batch size" not in state["error"]
