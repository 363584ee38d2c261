"""The worker's run_job, called directly against the test database (no broker)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import BLOBS_COLUMNS, blobs_rows, csv_text, linear_rows, pets_rows
from tests.helpers import create_job, mlp, on_each_epoch, problem, run_job, set_row, submit

# Workers read and write the store on SQLite, and on PostgreSQL where it is reachable.
pytestmark = pytest.mark.parametrize("backend", ["sqlite", "postgres"], indirect=True)

MLP = mlp()


def test_classification_job_succeeds_with_metrics_model_and_predict(client, app, upload_csv):
    dataset = upload_csv(csv_text(BLOBS_COLUMNS, blobs_rows(120))).get_json()
    job_id = submit(client, dataset["id"], MLP, epochs=15, batch_size=16, learning_rate=0.01)
    assert run_job(app, job_id) == "succeeded"

    job = client.get(f"/v1/jobs/{job_id}").get_json()
    assert job["status"] == "succeeded" and job["error"] is None and job["attempt"] == 1
    assert job["progress"]["epoch"] >= 1 and job["model_id"]
    assert job["started_at"] and job["finished_at"]
    assert job["metrics"]["val_accuracy"] >= 0.9

    history = client.get(f"/v1/jobs/{job_id}/metrics").get_json()["epochs"]
    assert [r["epoch"] for r in history] == list(range(1, len(history) + 1))
    assert {"loss", "val_loss", "accuracy", "layers", "flags"} <= set(history[0])
    assert set(history[0]["layers"]) == {"dense_0", "dense_1"}
    assert "grad_norm" in history[0]["layers"]["dense_0"]

    model = client.get(f"/v1/models/{job['model_id']}").get_json()
    assert model["job_id"] == job_id and model["classes"] == [0, 1]
    assert model["features"] == ["a", "b", "c", "d"] and model["parameter_count"] == 4 * 8 + 8 + 8 * 2 + 2
    assert [m["id"] for m in client.get("/v1/models").get_json()["items"]] == [model["id"]]

    rows = blobs_rows(40, seed=1)
    prediction = client.post(f"/v1/models/{model['id']}/predict",
                             json={"inputs": [r[:4] for r in rows]}).get_json()
    assert prediction["classes"] == [0, 1]
    accuracy = np.mean([p == r[4] for p, r in zip(prediction["predictions"], rows)])
    assert accuracy >= 0.9
    assert np.allclose(np.sum(prediction["probabilities"], axis=1), 1.0, atol=1e-5)
    by_record = client.post(f"/v1/models/{model['id']}/predict", json={"records": [
        {"a": r[0], "b": r[1], "c": r[2], "d": r[3]} for r in rows[:5]]}).get_json()
    assert by_record["predictions"] == prediction["predictions"][:5]


def test_string_target_and_categorical_feature_predict_strings(client, app, upload_csv):
    dataset = upload_csv(csv_text(["weight", "color", "pet"], pets_rows(200))).get_json()
    network = mlp(activation="tanh")
    job_id = submit(client, dataset["id"], network, epochs=20, batch_size=16, learning_rate=0.02)
    assert run_job(app, job_id) == "succeeded"
    model_id = client.get(f"/v1/jobs/{job_id}").get_json()["model_id"]
    model = client.get(f"/v1/models/{model_id}").get_json()
    colours = model["preprocessing"]["features"][1]
    assert colours["kind"] == "string" and set(colours["categories"]) <= {"black", "brown", "grey"}
    body = client.post(f"/v1/models/{model_id}/predict", json={"inputs": [
        [26.0, "brown"], [3.5, "grey"], ["24.5", "black"], [4.0, "purple"]]}).get_json()
    assert body["classes"] == ["cat", "dog"]
    assert body["predictions"][:3] == ["dog", "cat", "dog"]
    assert body["predictions"][3] in ("cat", "dog")  # an unseen category encodes as zeros
    records = client.post(f"/v1/models/{model_id}/predict", json={"records": [
        {"weight": 26.0, "color": "brown", "pet": "ignored"}]}).get_json()
    assert records["predictions"] == ["dog"]

    # Wrong width, unknown column, wrong type: 422 naming row and field.
    bad = problem(client.post(f"/v1/models/{model_id}/predict", json={"inputs": [[1.0, "brown"], [1.0]]}), 422)
    assert bad["errors"][0]["field"] == "inputs[1]" and "expected 2 values" in bad["errors"][0]["message"]
    bad = problem(client.post(f"/v1/models/{model_id}/predict",
                              json={"inputs": [[1.0, "brown"], ["heavy", "grey"]]}), 422)
    assert bad["errors"][0]["field"] == "inputs[1][0]" and "numeric" in bad["errors"][0]["message"]
    bad = problem(client.post(f"/v1/models/{model_id}/predict",
                              json={"records": [{"weight": 1, "color": "grey", "size": 3}]}), 422)
    assert bad["errors"][0]["field"] == "records[0].size"
    # An absent key and a null are missing values (imputed), not errors.
    missing = client.post(f"/v1/models/{model_id}/predict", json={"records": [{"weight": 1}]})
    assert missing.status_code == 200 and missing.get_json()["predictions"][0] in ("cat", "dog")
    missing = client.post(f"/v1/models/{model_id}/predict", json={"inputs": [[None, "grey"]]})
    assert missing.status_code == 200 and missing.get_json()["predictions"][0] in ("cat", "dog")
    bad = problem(client.post(f"/v1/models/{model_id}/predict", json={"inputs": [[True, "grey"]]}), 422)
    assert bad["errors"][0]["field"] == "inputs[0][0]"
    problem(client.post(f"/v1/models/{model_id}/predict", json={}), 422)
    problem(client.post(f"/v1/models/{model_id}/predict", json={"inputs": []}), 422)
    problem(client.post(f"/v1/models/{model_id}/predict", json={"inputs": [[1, "a"]], "records": []}), 422)
    problem(client.post(f"/v1/models/{model_id}/predict", json={"inputs": "x"}), 422)
    problem(client.post("/v1/models/mdl_missing/predict", json={"inputs": [[1, "a"]]}), 404)


def test_regression_predicts_in_the_targets_scale(client, app, upload_csv):
    dataset = upload_csv(csv_text(["a", "b", "price"], linear_rows(300))).get_json()
    assert dataset["task"] == "regression"
    network = mlp((16,), "tanh", 1)
    job_id = submit(client, dataset["id"], network, epochs=60, batch_size=16, learning_rate=0.01)
    assert run_job(app, job_id) == "succeeded"
    job = client.get(f"/v1/jobs/{job_id}").get_json()
    assert "val_r2" in job["metrics"] and job["metrics"]["val_r2"] > 0.9
    body = client.post(f"/v1/models/{job['model_id']}/predict",
                       json={"inputs": [[0.0, 0.0], [1.0, -1.0], [-1.0, 0.5]]}).get_json()
    assert body["targets"] == ["price"]
    expected = [1000, 1500, 600]
    assert all(abs(p - e) < 60 for p, e in zip(body["predictions"], expected)), body["predictions"]


def test_multi_output_regression(client, app):
    rows = [[i / 10, (i % 7) / 3, i / 5 + 10, 100 - i / 2] for i in range(80)]
    dataset = client.post("/v1/datasets", json={"columns": ["x", "z", "y1", "y2"], "data": rows,
                                                "target": ["y1", "y2"]}).get_json()
    network = mlp(activation="tanh")
    job_id = submit(client, dataset["id"], network, epochs=5)
    assert run_job(app, job_id) == "succeeded"
    model_id = client.get(f"/v1/jobs/{job_id}").get_json()["model_id"]
    body = client.post(f"/v1/models/{model_id}/predict", json={"inputs": [[1.0, 1.0]]}).get_json()
    assert body["targets"] == ["y1", "y2"] and len(body["predictions"][0]) == 2


def test_divergence_fails_the_job_with_an_actionable_message(client, app, upload_csv):
    dataset = upload_csv(csv_text(["a", "b", "price"], linear_rows(100))).get_json()
    network = mlp((64, 64), outputs=1, output={"init": "normal"}, init="normal")
    job_id = submit(client, dataset["id"], network, epochs=50, optimizer="sgd", learning_rate=10.0)
    assert run_job(app, job_id) == "failed"
    job = client.get(f"/v1/jobs/{job_id}").get_json()
    assert job["status"] == "failed" and job["model_id"] is None
    assert "non-finite" in job["error"] and "learning" in job["error"]


def test_cancellation_between_batches(client, app, upload_csv, monkeypatch):
    from workers.lease import JobSettings

    dataset = upload_csv(csv_text(BLOBS_COLUMNS, blobs_rows(120))).get_json()
    job_id = submit(client, dataset["id"], MLP, epochs=1000, batch_size=4)

    def cancel_after_second_epoch(self, record):
        if record["epoch"] == 2:
            # What POST /cancel does to a running job: set the flag on the row.
            set_row(app, self.job_id, cancel_requested=True)

    on_each_epoch(monkeypatch, cancel_after_second_epoch)
    # No write of its own within the epoch: the flag is read between batches.
    assert run_job(app, job_id, settings=JobSettings(progress_interval_s=0.0)) == "cancelled"
    job = client.get(f"/v1/jobs/{job_id}").get_json()
    assert job["status"] == "cancelled" and job["model_id"] is None
    assert job["progress"]["epoch"] == 2


def test_the_progress_write_reads_the_cancel_flag(client, app, upload_csv, monkeypatch):
    # No other query for an hour: the first epoch's progress transaction must see the flag.
    from workers.lease import JobSettings

    dataset = upload_csv(csv_text(BLOBS_COLUMNS, blobs_rows(120))).get_json()
    job_id = submit(client, dataset["id"], MLP, epochs=1000, batch_size=4)
    def cancel_during_the_first_epoch(self, record):
        if record["epoch"] == 1:
            assert client.post(f"/v1/jobs/{job_id}/cancel").status_code == 202

    on_each_epoch(monkeypatch, cancel_during_the_first_epoch, before=True)
    assert run_job(app, job_id, settings=JobSettings(progress_interval_s=3600.0)) == "cancelled"
    assert client.get(f"/v1/jobs/{job_id}").get_json()["progress"]["epoch"] == 1


def test_progress_is_written_every_progress_interval_and_in_full_at_the_end(client, app, upload_csv, monkeypatch):
    from workers.lease import JobSettings

    dataset = upload_csv(csv_text(BLOBS_COLUMNS, blobs_rows(120))).get_json()
    job_id = submit(client, dataset["id"], MLP, epochs=6, batch_size=16)
    stored = []
    on_each_epoch(monkeypatch, lambda recorder, record: stored.append(
        client.get(f"/v1/jobs/{job_id}").get_json()["progress"]["epoch"]))
    assert run_job(app, job_id, settings=JobSettings(progress_interval_s=3600.0)) == "succeeded"
    assert stored == [1] * 6  # the first epoch at once, the rest kept until the job ends
    history = client.get(f"/v1/jobs/{job_id}/metrics").get_json()["epochs"]
    assert [r["epoch"] for r in history] == list(range(1, 7))
    assert client.get(f"/v1/jobs/{job_id}").get_json()["progress"]["epoch"] == 6


@pytest.mark.parametrize("ending", ["time limit", "diverged"])
def test_a_failed_job_keeps_the_records_of_the_epochs_it_finished(client, app, upload_csv, monkeypatch, ending):
    import backprop
    from workers.lease import JobSettings

    dataset = upload_csv(csv_text(BLOBS_COLUMNS, blobs_rows(120))).get_json()
    job_id = submit(client, dataset["id"], MLP, epochs=1000, batch_size=16)
    def fail_after_the_third_epoch(self, record):
        if record["epoch"] == 3:
            if ending == "time limit":
                self.set_time_left(0.0, "ran past its time limit")
            else:
                raise backprop.TrainingDiverged("loss became non-finite at epoch 4", 4)

    on_each_epoch(monkeypatch, fail_after_the_third_epoch)
    assert run_job(app, job_id, settings=JobSettings(progress_interval_s=3600.0)) == "failed"
    job = client.get(f"/v1/jobs/{job_id}").get_json()
    assert job["status"] == "failed" and job["progress"]["epoch"] == 3
    history = client.get(f"/v1/jobs/{job_id}/metrics").get_json()["epochs"]
    assert [r["epoch"] for r in history] == [1, 2, 3]


def test_a_job_whose_records_cannot_be_written_still_fails_with_the_error(client, app, upload_csv, monkeypatch):
    from sqlalchemy.exc import DataError

    from workers import training

    dataset = upload_csv(csv_text(BLOBS_COLUMNS, blobs_rows(120))).get_json()
    job_id = submit(client, dataset["id"], MLP, epochs=5, batch_size=16)
    original = training.JobRecorder.write_progress

    def reject_records(self, session):
        if self.pending:
            raise DataError("INSERT INTO job_epochs", {}, ValueError("the database rejects the record"))
        return original(self, session)

    monkeypatch.setattr(training.JobRecorder, "write_progress", reject_records)
    assert run_job(app, job_id) == "failed"
    job = client.get(f"/v1/jobs/{job_id}").get_json()
    assert job["status"] == "failed" and job["finished_at"]
    assert job["error"].startswith("internal error in the worker: DataError")
    assert client.get(f"/v1/jobs/{job_id}/metrics").get_json()["epochs"] == []


def test_progress_only_transactions_skip_the_wal_flush_wait_on_postgresql(app):
    from sqlalchemy import text

    from workers.training import _progress_only

    with app.extensions["backprop.sessions"]() as session:
        if session.get_bind().dialect.name != "postgresql":
            pytest.skip("synchronous_commit is PostgreSQL's; on SQLite _progress_only does nothing")
        _progress_only(session)
        assert session.scalar(text("SHOW synchronous_commit")) == "off"
        session.commit()
        # SET LOCAL: the next transaction on the pooled connection waits for the disk again.
        assert session.scalar(text("SHOW synchronous_commit")) == "on"


def test_cancel_endpoint_on_a_running_job_stops_it(client, app, upload_csv, monkeypatch):
    from workers.lease import JobSettings

    dataset = upload_csv(csv_text(BLOBS_COLUMNS, blobs_rows(120))).get_json()
    job_id = submit(client, dataset["id"], MLP, epochs=1000, batch_size=4)
    def cancel_through_the_api(self, record):
        if record["epoch"] == 1:
            assert client.post(f"/v1/jobs/{job_id}/cancel").status_code == 202

    on_each_epoch(monkeypatch, cancel_through_the_api)
    assert run_job(app, job_id, settings=JobSettings(progress_interval_s=0.0)) == "cancelled"


def test_a_job_is_claimed_once(client, app, upload_csv):
    from workers.training import claim

    dataset = upload_csv(csv_text(BLOBS_COLUMNS, blobs_rows(40))).get_json()
    job_id = submit(client, dataset["id"], MLP, epochs=2)
    sessions = app.extensions["backprop.sessions"]
    assert claim(sessions, job_id, "first") is True
    assert claim(sessions, job_id, "second") is False
    assert run_job(app, job_id, owner="third") == "running"  # a second delivery does not train


def test_cancelled_queued_job_is_not_trained(client, app, upload_csv):
    dataset = upload_csv(csv_text(BLOBS_COLUMNS, blobs_rows(40))).get_json()
    job_id = submit(client, dataset["id"], MLP, epochs=2)
    client.post(f"/v1/jobs/{job_id}/cancel")
    assert run_job(app, job_id) == "cancelled"
    assert client.get("/v1/models").get_json()["items"] == []


def test_deleted_dataset_fails_the_job(client, app, upload_csv):
    from sqlalchemy import delete

    from service.core.db.tables import Dataset

    dataset = upload_csv(csv_text(BLOBS_COLUMNS, blobs_rows(40))).get_json()
    job_id = submit(client, dataset["id"], MLP, epochs=2)
    with app.extensions["backprop.sessions"]() as session:
        session.execute(delete(Dataset).where(Dataset.id == dataset["id"]))
        session.commit()
    assert run_job(app, job_id) == "failed"
    assert "was deleted" in client.get(f"/v1/jobs/{job_id}").get_json()["error"]


def test_model_delete_evicts_the_cache(client, app, upload_csv):
    dataset = upload_csv(csv_text(BLOBS_COLUMNS, blobs_rows(40))).get_json()
    job_id = submit(client, dataset["id"], MLP, epochs=2)
    run_job(app, job_id)
    model_id = client.get(f"/v1/jobs/{job_id}").get_json()["model_id"]
    assert client.post(f"/v1/models/{model_id}/predict", json={"inputs": [[0, 0, 0, 0]]}).status_code == 200
    assert client.delete(f"/v1/models/{model_id}").status_code == 204
    problem(client.post(f"/v1/models/{model_id}/predict", json={"inputs": [[0, 0, 0, 0]]}), 404)
    problem(client.get(f"/v1/models/{model_id}"), 404)
    problem(client.delete(f"/v1/models/{model_id}"), 404)


def test_binary_cross_entropy_job_predicts_two_class_probabilities(client, app, upload_csv):
    dataset = upload_csv(csv_text(BLOBS_COLUMNS, blobs_rows(80))).get_json()
    network = mlp((4,), outputs=1, output={"activation": "sigmoid"})
    job_id = submit(client, dataset["id"], network, epochs=40, loss="binary_cross_entropy", learning_rate=0.05)
    assert run_job(app, job_id) == "succeeded"
    model_id = client.get(f"/v1/jobs/{job_id}").get_json()["model_id"]
    body = client.post(f"/v1/models/{model_id}/predict", json={"inputs": [[0, 0, 0, 0], [3, 3, 3, 3]]}).get_json()
    assert body["predictions"] == [0, 1] and len(body["probabilities"][0]) == 2


def test_an_orphaned_pool_process_abandons_the_job_without_writing(client, app, upload_csv, monkeypatch):
    import os

    from workers import training

    dataset = upload_csv(csv_text(BLOBS_COLUMNS, blobs_rows(40))).get_json()
    job_id = submit(client, dataset["id"], MLP, epochs=1000, batch_size=4)
    parent = os.getppid()

    def parent_dies(recorder, record):
        monkeypatch.setattr(training.os, "getppid", lambda: parent + 1 if parent != 1 else 2)

    on_each_epoch(monkeypatch, parent_dies)
    assert run_job(app, job_id) == "abandoned"
    job = client.get(f"/v1/jobs/{job_id}").get_json()
    assert job["status"] == "running" and job["progress"]["epoch"] == 1


def test_gpu_job_on_a_host_without_cupy_fails_with_what_to_do(client, app, upload_csv):
    try:
        import cupy  # noqa: F401
        pytest.skip("CuPy is installed here: the GPU path would run")
    except ImportError:
        pass
    dataset = upload_csv(csv_text(BLOBS_COLUMNS, blobs_rows(40))).get_json()
    job_id = create_job(client, dataset_id=dataset["id"], network=MLP, device="gpu", training={"epochs": 1})
    assert run_job(app, job_id) == "failed"
    error = client.get(f"/v1/jobs/{job_id}").get_json()["error"]
    assert "device" in error and "gpu" in error


def test_heartbeat_between_batches_and_a_lost_lease_stops_the_worker(client, app, upload_csv, monkeypatch):
    from workers.lease import JobSettings

    dataset = upload_csv(csv_text(BLOBS_COLUMNS, blobs_rows(40))).get_json()
    job_id = submit(client, dataset["id"], MLP, epochs=1000, batch_size=4)

    def another_worker_takes_over(recorder, record):
        set_row(app, recorder.job_id, owner="someone-else")

    on_each_epoch(monkeypatch, another_worker_takes_over)
    # A lease of a millisecond: the heartbeat is renewed between every two batches.
    assert run_job(app, job_id, settings=JobSettings(lease_timeout_s=0.001)) == "lost"
    job = client.get(f"/v1/jobs/{job_id}").get_json()
    assert job["status"] == "running" and job["progress"]["epoch"] == 1  # nothing written after the loss
