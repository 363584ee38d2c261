"""How good a model is on rows it never saw, through the real API and a real Celery worker, on both backends:
a job's test split (the model's metrics.test) and an evaluation of another upload of held-out rows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.e2e.conftest import JOB_TIMEOUT_S, Stack, write_csv
from tests.helpers import mlp

pytestmark = pytest.mark.slow

PETS_TRAINING = {"epochs": 20, "learning_rate": 0.01, "seed": 0}
PETS_NETWORK = mlp((16,), "tanh", 2)


def wait_evaluation(stack: Stack, evaluation_id: str, timeout: float = JOB_TIMEOUT_S) -> dict[str, Any]:
    """Poll an evaluation until it ends (failing early if a process of the stack dies); return it."""
    client = stack.api_client()
    try:
        return client.wait_evaluation(evaluation_id, poll_s=stack.poll_s, timeout=timeout,
                                      on_update=stack.check_processes)
    except TimeoutError as exc:
        pytest.fail(str(exc))


def test_a_test_split_job_gives_its_model_a_report_on_the_rows_it_held_out(stack: Stack,
                                                                            pets: dict[str, Any]) -> None:
    dataset = stack.upload_csv(pets["csv"], name="pets", target="animal")
    job = stack.train({"dataset_id": dataset["id"], "network": PETS_NETWORK,
                       "training": {**PETS_TRAINING, "test_split": 0.2, "validation_split": 0.1}})
    model = stack.request("GET", f"/v1/models/{job['model_id']}")

    test = model["metrics"]["test"]
    assert test == job["metrics"]["test"]
    n_rows = dataset["n_rows"]  # 600, each with a target
    assert job["metrics"]["n_test_rows"] == test["n_rows"] == round(0.2 * n_rows)
    assert job["metrics"]["n_training_rows"] + job["metrics"]["n_validation_rows"] == n_rows - test["n_rows"]
    assert test["task"] == "classification" and test["confusion_matrix"]["labels"] == dataset["classes"]
    assert sum(map(sum, test["confusion_matrix"]["matrix"])) == test["n_rows"]
    print(f"pets ({stack.backend}): test accuracy {test['metrics']['accuracy']:.3f}")
    assert test["metrics"]["accuracy"] >= 0.8


def test_an_evaluation_of_another_upload_runs_on_the_worker_and_agrees_with_predict(
        stack: Stack, pets: dict[str, Any], data_dir: Path) -> None:
    dataset = stack.upload_csv(pets["csv"], name="pets", target="animal")
    model_id = stack.train({"dataset_id": dataset["id"], "network": PETS_NETWORK,
                            "training": PETS_TRAINING})["model_id"]
    columns = pets["columns"]
    held_out_csv = write_csv(data_dir / f"pets-held-out-{stack.backend}.csv", [*columns, "animal"], pets["test"])
    held_out = stack.upload_csv(held_out_csv, name="pets held out", target="animal")

    created = stack.request("POST", f"/v1/models/{model_id}/evaluations", 202,
                            json={"dataset_id": held_out["id"], "permutation_repeats": 3, "seed": 1})
    assert created["status"] == "queued" and created["report"] is None
    done = wait_evaluation(stack, created["id"])
    assert done["status"] == "succeeded" and done["attempt"] == 1, done
    report = done["report"]

    # The worker's report agrees with /predict on the same rows.
    records = [dict(zip(columns, row[:-1])) for row in pets["test"]]
    predicted = stack.predict(model_id, {"records": records})["predictions"]
    truth = [row[-1] for row in pets["test"]]
    assert report["n_rows"] == len(truth) and report["n_rows_without_target"] == 0
    assert report["metrics"]["accuracy"] == float(np.mean([p == t for p, t in zip(predicted, truth)]))
    labels = report["confusion_matrix"]["labels"]
    assert labels == held_out["classes"]
    expected = [[sum(1 for p, t in zip(predicted, truth) if (t, p) == (true, guess)) for guess in labels]
                for true in labels]
    assert report["confusion_matrix"]["matrix"] == expected
    assert sorted(f["feature"] for f in report["permutation_importance"]) == sorted(columns)

    listed = stack.request("GET", f"/v1/models/{model_id}/evaluations")["items"]
    assert [e["id"] for e in listed] == [created["id"]] and listed[0]["metrics"] == report["metrics"]
    jobs = stack.request("GET", "/v1/jobs", params={"limit": 1000})["items"]
    assert created["id"] not in {j["id"] for j in jobs}


def test_an_evaluation_that_cannot_score_its_dataset_fails_saying_why(stack: Stack, pets: dict[str, Any],
                                                                      data_dir: Path) -> None:
    dataset = stack.upload_csv(pets["csv"], name="pets", target="animal")
    model_id = stack.train({"dataset_id": dataset["id"], "network": PETS_NETWORK,
                            "training": {**PETS_TRAINING, "epochs": 1}})["model_id"]
    # Labels the model never saw: the columns fit, so it is queued, but no row can be scored.
    rows = [[*row[:-1], "bird" if k % 2 else "fish"] for k, row in enumerate(pets["test"][:20])]
    other = stack.upload_csv(write_csv(data_dir / f"birds-{stack.backend}.csv", [*pets["columns"], "animal"],
                                       rows), name="birds", target="animal")
    created = stack.request("POST", f"/v1/models/{model_id}/evaluations", 202, json={"dataset_id": other["id"]})
    done = wait_evaluation(stack, created["id"])
    assert done["status"] == "failed" and done["report"] is None
    assert "label the model does not know" in done["error"], done["error"]
    stack.request("DELETE", f"/v1/models/{model_id}", 204)  # the model is free again once it ended
