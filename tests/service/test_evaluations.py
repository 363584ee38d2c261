"""Evaluations through the API (POST/GET/list), run in-process by the worker's function, on both databases.

The report is the one service.core.evaluation.report.evaluate_table makes on the same
rows (its metrics are checked against scikit-learn in tests/service/test_evaluation_metrics.py);
here: the job's life, what is refused and how, tenants, and that /v1/jobs keeps to training jobs.
"""

from __future__ import annotations

import io
import json
from typing import Any

import pytest

from tests.conftest import BLOBS_COLUMNS, blobs_rows, csv_text, linear_rows
from tests.helpers import mlp, problem, train

pytestmark = pytest.mark.parametrize("backend", ["sqlite", "postgres"], indirect=True)


def evaluate(client: Any, model_id: str, dataset_id: str, **options: Any) -> dict[str, Any]:
    """POST an evaluation (asserting 202 and its Location); return its answer."""
    response = client.post(f"/v1/models/{model_id}/evaluations", json={"dataset_id": dataset_id, **options})
    assert response.status_code == 202, response.get_json()
    body = response.get_json()
    assert response.headers["Location"] == f"/v1/evaluations/{body['id']}"
    return body


def run_evaluation(app: Any, evaluation_id: str) -> str:
    """Run an evaluation as a worker does, on the app's database; return its status."""
    from workers.evaluation import run_evaluation as worker_run_evaluation

    return worker_run_evaluation(evaluation_id, sessions=app.extensions["backprop.sessions"], owner="test-worker")


def expected_report(app: Any, model_id: str, dataset_id: str, **options: Any) -> dict[str, Any]:
    """evaluate_table on the stored model and dataset, as JSON would store it."""
    import backprop
    from service.core.data.preprocessing import Preprocessor
    from service.core.db.store import load_table
    from service.core.db.tables import Dataset, TrainedModel
    from service.core.evaluation.report import evaluate_table
    from workers.training import json_safe

    with app.extensions["backprop.sessions"]() as session:
        model = session.get(TrainedModel, model_id)
        dataset = session.get(Dataset, dataset_id)
        assert model is not None and dataset is not None
        table = load_table(session, dataset)
        network = backprop.load(model.definition, model.weights)
        report = evaluate_table(network, Preprocessor(model.preprocessing), model.loss, table, **options)
    return json.loads(json.dumps(json_safe(report)))


@pytest.fixture
def held_out(upload_csv: Any) -> dict[str, Any]:
    """Another upload of blobs rows (other draws), with the model's columns."""
    return upload_csv(csv_text(BLOBS_COLUMNS, blobs_rows(40, seed=7)), filename="held_out.csv").get_json()


def test_an_evaluation_is_queued_then_run_on_a_worker_and_its_report_is_evaluate_tables(
        client, app, queue, blobs_model, held_out):
    created = evaluate(client, blobs_model, held_out["id"], permutation_repeats=3, seed=11)
    assert created["id"].startswith("ev_")
    assert created["status"] == "queued" and created["report"] is None and created["attempt"] == 0
    assert (created["model_id"], created["dataset_id"]) == (blobs_model, held_out["id"])
    assert (created["permutation_repeats"], created["seed"]) == (3, 11)
    assert queue.published[-1] == (created["id"], "cpu")  # published once it was committed

    assert run_evaluation(app, created["id"]) == "succeeded"
    done = client.get(f"/v1/evaluations/{created['id']}").get_json()
    assert done["status"] == "succeeded" and done["error"] is None and done["attempt"] == 1
    assert done["started_at"] and done["finished_at"]
    report = done["report"]
    assert report == expected_report(app, blobs_model, held_out["id"], permutation_repeats=3, seed=11)
    assert report["task"] == "classification" and report["n_rows"] == 40
    assert report["confusion_matrix"]["labels"] == [0, 1]
    assert sum(map(sum, report["confusion_matrix"]["matrix"])) == 40
    assert [p["feature"] for p in report["permutation_importance"]] == ["a", "b", "c", "d"]

    # Run again (a duplicate message): the job is not claimed again, the report stays.
    assert run_evaluation(app, created["id"]) == "succeeded"
    assert client.get(f"/v1/evaluations/{created['id']}").get_json() == done


def test_defaults_and_no_permutation_importance(client, app, blobs_model, held_out):
    created = evaluate(client, blobs_model, held_out["id"])
    assert (created["permutation_repeats"], created["seed"]) == (5, 0)
    none = evaluate(client, blobs_model, held_out["id"], permutation_repeats=0)
    assert run_evaluation(app, none["id"]) == "succeeded"
    report = client.get(f"/v1/evaluations/{none['id']}").get_json()["report"]
    assert report["permutation_importance"] is None


def test_a_regression_report_is_in_the_targets_units(client, app, upload_csv):
    dataset = upload_csv(csv_text(["a", "b", "price"], linear_rows(120))).get_json()
    model_id = train(client, app, dataset["id"], mlp((8,), outputs=1), epochs=2, batch_size=16)
    other = upload_csv(csv_text(["a", "b", "price"], linear_rows(50, seed=3))).get_json()
    created = evaluate(client, model_id, other["id"], permutation_repeats=2)
    assert run_evaluation(app, created["id"]) == "succeeded"
    report = client.get(f"/v1/evaluations/{created['id']}").get_json()["report"]
    assert report == expected_report(app, model_id, other["id"], permutation_repeats=2)
    assert report["task"] == "regression" and report["targets"] == ["price"] and report["n_rows"] == 50


def test_rows_without_a_target_are_skipped_and_counted(client, app, blobs_model, upload_csv):
    rows = blobs_rows(30, seed=5)
    for row in rows[:7]:
        row[-1] = ""  # a missing label
    dataset = upload_csv(csv_text(BLOBS_COLUMNS, rows)).get_json()
    assert dataset["n_rows_without_target"] == 7
    created = evaluate(client, blobs_model, dataset["id"], permutation_repeats=1)
    assert run_evaluation(app, created["id"]) == "succeeded"
    report = client.get(f"/v1/evaluations/{created['id']}").get_json()["report"]
    assert report["n_rows"] == 23 and report["n_rows_without_target"] == 7
    assert sum(c["support"] for c in report["per_class"]) == 23


def test_a_dataset_without_a_row_to_score_fails_the_evaluation_saying_why(client, app, blobs_model, upload_csv):
    # Labels the model never saw (5 and 6): no row can be scored.
    rows = [[*row[:-1], 5 + row[-1]] for row in blobs_rows(20, seed=2)]
    dataset = upload_csv(csv_text(BLOBS_COLUMNS, rows)).get_json()
    created = evaluate(client, blobs_model, dataset["id"])
    assert run_evaluation(app, created["id"]) == "failed"
    failed = client.get(f"/v1/evaluations/{created['id']}").get_json()
    assert failed["status"] == "failed" and failed["report"] is None
    assert dataset["id"] in failed["error"] and "label the model does not know" in failed["error"]
    assert "internal error" not in failed["error"]


def test_unknown_model_is_404_and_bad_requests_are_422_naming_the_field(client, blobs_model, held_out,
                                                                         upload_csv, queue):
    published = len(queue.published)
    body = problem(client.post("/v1/models/mdl_missing/evaluations", json={"dataset_id": held_out["id"]}), 404)
    assert "mdl_missing" in body["detail"]
    problem(client.get("/v1/models/mdl_missing/evaluations"), 404)
    problem(client.get("/v1/evaluations/ev_missing"), 404)

    def refused(body: Any) -> list[dict[str, Any]]:
        errors = problem(client.post(f"/v1/models/{blobs_model}/evaluations", json=body), 422)["errors"]
        return errors

    assert [e["field"] for e in refused({"dataset_id": "ds_missing"})] == ["dataset_id"]
    assert [e["field"] for e in refused({})] == ["dataset_id"]
    for repeats in (-1, 101, "5", 1.5, True):
        assert [e["field"] for e in refused({"dataset_id": held_out["id"], "permutation_repeats": repeats})] == [
            "permutation_repeats"], repeats
    assert [e["field"] for e in refused({"dataset_id": held_out["id"], "seed": -1})] == ["seed"]
    assert [e["field"] for e in refused({"dataset_id": held_out["id"], "extra": 1})] == ["extra"]

    no_feature = upload_csv(csv_text(["a", "b", "c", "label"], [r[:3] + r[4:] for r in blobs_rows(20)])).get_json()
    errors = refused({"dataset_id": no_feature["id"]})
    assert [e["field"] for e in errors] == ["dataset_id"] and "'d'" in errors[0]["message"]
    no_target = upload_csv(csv_text(["a", "b", "c", "d", "other"], blobs_rows(20)), target="other").get_json()
    errors = refused({"dataset_id": no_target["id"]})
    assert [e["field"] for e in errors] == ["dataset_id"] and "'label'" in errors[0]["message"]
    assert len(queue.published) == published  # nothing refused was queued


def test_another_tenants_model_and_evaluation_are_404(client, bob_client, app, blobs_model, held_out,
                                                       upload_csv):
    created = evaluate(client, blobs_model, held_out["id"])
    table = io.BytesIO(csv_text(BLOBS_COLUMNS, blobs_rows(20)).encode())
    bobs = bob_client.post("/v1/datasets", data={"file": (table, "b.csv")}, content_type="multipart/form-data")
    assert bobs.status_code == 201
    problem(bob_client.post(f"/v1/models/{blobs_model}/evaluations", json={"dataset_id": bobs.get_json()["id"]}),
            404)
    problem(bob_client.get(f"/v1/models/{blobs_model}/evaluations"), 404)
    problem(bob_client.get(f"/v1/evaluations/{created['id']}"), 404)
    # Nor may alice score bob's dataset.
    errors = problem(client.post(f"/v1/models/{blobs_model}/evaluations",
                                 json={"dataset_id": bobs.get_json()["id"]}), 422)["errors"]
    assert [e["field"] for e in errors] == ["dataset_id"]


def test_jobs_endpoints_see_training_jobs_only(client, app, blobs_model, held_out):
    created = evaluate(client, blobs_model, held_out["id"])
    job_ids = [j["id"] for j in client.get("/v1/jobs").get_json()["items"]]
    assert job_ids and all(i.startswith("job_") for i in job_ids)
    problem(client.get(f"/v1/jobs/{created['id']}"), 404)
    problem(client.get(f"/v1/jobs/{created['id']}/metrics"), 404)
    problem(client.post(f"/v1/jobs/{created['id']}/cancel"), 404)
    problem(client.get(f"/v1/evaluations/{job_ids[0]}"), 404)  # nor a training job under this path


def test_a_models_evaluations_are_listed_newest_first_by_pages(client, app, blobs_model, held_out, upload_csv):
    other_model = train(client, app, held_out["id"], mlp(), epochs=1)
    created = [evaluate(client, blobs_model, held_out["id"], seed=s)["id"] for s in range(3)]
    evaluate(client, other_model, held_out["id"])
    assert run_evaluation(app, created[0]) == "succeeded"

    first = client.get(f"/v1/models/{blobs_model}/evaluations?limit=2").get_json()
    assert [e["id"] for e in first["items"]] == created[:0:-1] and first["next_cursor"]
    second = client.get(f"/v1/models/{blobs_model}/evaluations",
                        query_string={"limit": 2, "cursor": first["next_cursor"]}).get_json()
    assert [e["id"] for e in second["items"]] == created[:1] and second["next_cursor"] is None
    item = second["items"][0]
    assert "report" not in item and item["status"] == "succeeded"
    assert item["metrics"] == client.get(f"/v1/evaluations/{created[0]}").get_json()["report"]["metrics"]
    assert first["items"][0]["metrics"] is None  # still queued
    problem(client.get(f"/v1/models/{blobs_model}/evaluations?limit=0"), 422)


def test_a_model_with_a_queued_evaluation_cannot_be_deleted(client, app, blobs_model, held_out):
    created = evaluate(client, blobs_model, held_out["id"], permutation_repeats=0)
    body = problem(client.delete(f"/v1/models/{blobs_model}"), 409)
    assert body["type"].endswith(":model-in-use") and "evaluation" in body["detail"]
    assert client.get(f"/v1/models/{blobs_model}").status_code == 200
    assert run_evaluation(app, created["id"]) == "succeeded"
    assert client.delete(f"/v1/models/{blobs_model}").status_code == 204
    # The evaluation is still there to read; the model's list is gone with the model.
    assert client.get(f"/v1/evaluations/{created['id']}").get_json()["report"]["n_rows"] == 40
    problem(client.get(f"/v1/models/{blobs_model}/evaluations"), 404)


def test_an_evaluation_takes_a_job_slot(client, app, blobs_model, held_out):
    app.config["TENANT_MAX_CONCURRENT_JOBS"] = 1
    evaluate(client, blobs_model, held_out["id"])
    body = problem(client.post(f"/v1/models/{blobs_model}/evaluations", json={"dataset_id": held_out["id"]}), 429)
    assert body["errors"][0]["field"] == "TENANT_MAX_CONCURRENT_JOBS"


def test_the_worker_scores_in_passes_within_the_activation_budget_checking_its_lease_between(
        client, app, blobs_model, held_out, monkeypatch):
    import backprop
    from service.core.db.tables import TrainedModel
    from tests.helpers import job_settings
    from workers import scoring
    from workers.evaluation import run_evaluation as worker_run_evaluation

    with app.extensions["backprop.sessions"]() as session:
        model = session.get(TrainedModel, blobs_model)
        width = backprop.load(model.definition, model.weights).activation_width
    checks = []
    original = scoring.ScoringJob.check
    monkeypatch.setattr(scoring.ScoringJob, "check", lambda self: (checks.append(1), original(self))[1])
    sessions = app.extensions["backprop.sessions"]

    whole = evaluate(client, blobs_model, held_out["id"], permutation_repeats=0)
    assert worker_run_evaluation(whole["id"], sessions=sessions, owner="w") == "succeeded"
    assert len(checks) == 1  # 40 rows: one pass
    checks.clear()
    chunked = evaluate(client, blobs_model, held_out["id"], permutation_repeats=0)
    assert worker_run_evaluation(chunked["id"], sessions=sessions, owner="w",
                                 settings=job_settings(max_activation_floats=width * 7)) == "succeeded"
    assert len(checks) == 6  # 7 rows a pass
    # The pass size changes nothing in the report.
    reports = [client.get(f"/v1/evaluations/{e['id']}").get_json()["report"] for e in (whole, chunked)]
    assert reports[0] == reports[1]


def test_a_worker_that_lost_its_lease_mid_evaluation_writes_no_report(client, app, blobs_model, held_out,
                                                                     monkeypatch):
    from tests.helpers import job_settings, set_row
    from workers import scoring
    from workers.evaluation import run_evaluation as worker_run_evaluation

    created = evaluate(client, blobs_model, held_out["id"], permutation_repeats=2)
    original = scoring.ScoringJob.check

    def taken_over(self: Any) -> None:  # another worker reclaimed the job meanwhile
        set_row(app, created["id"], owner="another-worker")
        original(self)

    monkeypatch.setattr(scoring.ScoringJob, "check", taken_over)
    # A heartbeat due at every check, so the lost lease is seen at the first.
    status = worker_run_evaluation(created["id"], sessions=app.extensions["backprop.sessions"], owner="w",
                                   settings=job_settings(lease_timeout_s=0.001))
    assert status == "lost"
    evaluation = client.get(f"/v1/evaluations/{created['id']}").get_json()
    assert evaluation["status"] == "running" and evaluation["report"] is None
