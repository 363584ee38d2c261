"""`training.test_split`: rows held out before the validation split, never trained on, scored into metrics.test."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import backprop
from service.core.schemas import PERMUTATION_REPEATS_DEFAULT
from tests.helpers import both_databases, create_job, job_row, job_settings, mlp, problem, run_job, set_row
from workers import training as worker

N_ROWS, N_MINORITY = 400, 20


def _upload(client: Any, columns: list[str], data: list[list[Any]], **fields: Any) -> dict[str, Any]:
    response = client.post("/v1/datasets", json={"columns": columns, "data": data, **fields})
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def _imbalanced(extreme_rows: set[int] | None = None) -> list[list[Any]]:
    """Rows [rid, x, y]: N_MINORITY rows of class 1 among N_ROWS; x of the `extreme_rows` (by rid) 1e6."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(N_ROWS):
        x = round(float(rng.normal(1.5 if i < N_MINORITY else 0.0, 1.0)), 4)
        rows.append([i, 1e6 if extreme_rows and i in extreme_rows else x, int(i < N_MINORITY)])
    return rows


@pytest.fixture
def imbalanced(client: Any) -> dict[str, Any]:
    return _upload(client, ["rid", "x", "y"], _imbalanced())


def _job(client: Any, dataset: dict[str, Any], network: dict[str, Any] | None = None, **training: Any) -> Any:
    return client.post("/v1/jobs", json={"dataset_id": dataset["id"], "network": network or mlp(),
                                         "features": ["x"], "training": {"epochs": 2, "batch_size": 32, **training}})


@pytest.fixture
def engine_calls(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """What the worker hands backprop.train (X, y, validation_data) and each split (n, stratify, its result)."""
    calls: list[dict[str, Any]] = []
    real_train, real_split = backprop.train, backprop.train_validation_split

    def train(network: Any, X: Any, y: Any, **kwargs: Any) -> Any:
        calls.append({"X": np.asarray(X), "y": np.asarray(y), **kwargs})
        return real_train(network, X, y, **kwargs)

    def split(n: int, fraction: float, seed: int = 0, stratify: Any = None) -> Any:
        kept, held = real_split(n, fraction, seed, stratify=stratify)
        calls.append({"split_n": n, "seed": seed, "stratify": stratify, "kept": kept, "held": held})
        return kept, held

    monkeypatch.setattr(backprop, "train", train)
    monkeypatch.setattr(backprop, "train_validation_split", split)
    return calls


@pytest.fixture
def test_tables(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The test tables the worker scores (the report itself is replaced by a marker)."""
    tables: list[Any] = []

    def report(job: Any, recorder: Any, network: Any, preprocessor: Any, test: Any) -> dict[str, Any]:
        tables.append(test)
        return {"marker": True}

    monkeypatch.setattr(worker, "_test_report", report)
    return tables


# --- creation --------------------------------------------------------------------------------

@pytest.mark.parametrize(("training", "field"), [
    ({"test_split": 1}, "training.test_split"), ({"test_split": -0.1}, "training.test_split"),
    ({"test_split": "0.2"}, "training.test_split"), ({"test_split": True}, "training.test_split"),
    ({"test_split": None}, "training.test_split"),
    ({"test_permutation_repeats": -1}, "training.test_permutation_repeats"),
    ({"test_permutation_repeats": 101}, "training.test_permutation_repeats"),
    ({"test_permutation_repeats": 2.5}, "training.test_permutation_repeats")])
def test_a_bad_test_field_is_a_422_naming_it(client: Any, imbalanced: dict[str, Any], training: dict[str, Any],
                                            field: str) -> None:
    assert [e["field"] for e in problem(_job(client, imbalanced, **training), 422)["errors"]] == [field]


def test_a_non_finite_test_split_is_a_422(client: Any, imbalanced: dict[str, Any]) -> None:
    body = f'{{"dataset_id": "{imbalanced["id"]}", "network": {{"layers": [{{"type": "dense", "units": 2}}]}}, ' \
           '"training": {"test_split": NaN}}'
    response = client.post("/v1/jobs", data=body, content_type="application/json")
    assert [e["field"] for e in problem(response, 422)["errors"]] == ["training.test_split"]


@pytest.mark.parametrize(("test_split", "validation_split"), [(0.5, 0.5), (0.8, 0.2), (0.9, 0.5), (0.3, 0.75)])
def test_splits_that_leave_no_training_rows_are_a_422(client: Any, imbalanced: dict[str, Any], test_split: float,
                                                     validation_split: float) -> None:
    [error] = problem(_job(client, imbalanced, test_split=test_split, validation_split=validation_split),
                      422)["errors"]
    assert error["field"] == "training.test_split"
    assert "validation_split" in error["message"] and "under 1" in error["message"]


@pytest.mark.parametrize(("n_rows", "missing", "test_split", "held"), [
    (40, 0, 0.01, "0 of the dataset's 40 rows"),  # round(0.4) is 0
    (60, 20, 0.012, "0 of the dataset's 40 rows"),  # 60 rows, 20 without a target: round(0.48) of 40
    (100, 0, 0.004, "0 of the dataset's 100 rows")])
def test_a_test_split_of_no_row_is_a_422_saying_so(client: Any, n_rows: int, missing: int, test_split: float,
                                                   held: str) -> None:
    rows = [[float(i), None if i < missing else i % 2] for i in range(n_rows)]
    dataset = _upload(client, ["x", "y"], rows)
    assert dataset["n_rows_without_target"] == missing
    [error] = problem(_job(client, dataset, test_split=test_split), 422)["errors"]
    assert error["field"] == "training.test_split"
    assert held in error["message"] and "or 0 for no test split" in error["message"]
    # The least fraction it suggests holds out a row, and is accepted.
    suggested = float(error["message"].split("at least ")[1].split(",")[0])
    assert _job(client, dataset, test_split=suggested).status_code == 202


def test_the_least_test_split_that_rounds_to_a_row_is_accepted_and_holds_it_out(
        client: Any, app: Any, test_tables: list[Any]) -> None:
    dataset = _upload(client, ["x", "y"], [[float(i), i % 2] for i in range(40)])
    assert _job(client, dataset, test_split=0.0125).status_code == 422  # round(0.5) is 0, as the worker rounds
    response = _job(client, dataset, test_split=0.013)  # round(0.52) is 1
    assert response.status_code == 202
    job_id = response.get_json()["id"]
    assert run_job(app, job_id) == "succeeded", job_row(app, job_id).error
    metrics = client.get(f"/v1/jobs/{job_id}").get_json()["metrics"]
    assert metrics["n_test_rows"] == 1 and metrics["test"] == {"marker": True} and test_tables[0].n_rows == 1


def test_splits_whose_rows_leave_none_to_train_are_a_422(client: Any) -> None:
    """Fractions under 1 together may still round to every row: 3 rows, 0.5 -> 2 and 0.4 -> 1."""
    dataset = _upload(client, ["x", "y"], [[0.0, 0], [1.0, 1], [2.0, 0]])
    [error] = problem(_job(client, dataset, test_split=0.5, validation_split=0.4, batch_size=1), 422)["errors"]
    assert error["field"] == "training.test_split"
    assert "hold out 2" in error["message"] and "(0.4) 1 of the dataset's 3 rows" in error["message"]
    assert "no row to train on" in error["message"]
    assert _job(client, dataset, test_split=0.34, validation_split=0.1, batch_size=1).status_code == 202


def test_the_job_keeps_the_test_fields(client: Any, imbalanced: dict[str, Any]) -> None:
    job = _job(client, imbalanced, test_split=0.25, validation_split=0.7).get_json()
    assert (job["training"]["test_split"], job["training"]["test_permutation_repeats"]) == \
        (0.25, PERMUTATION_REPEATS_DEFAULT)
    default = _job(client, imbalanced).get_json()["training"]
    assert (default["test_split"], default["test_permutation_repeats"]) == (0, PERMUTATION_REPEATS_DEFAULT)
    assert _job(client, imbalanced, test_permutation_repeats=0).get_json()["training"]["test_permutation_repeats"] == 0


# --- the split -------------------------------------------------------------------------------

@both_databases
def test_the_test_rows_are_held_out_first_and_stratified(client: Any, app: Any, imbalanced: dict[str, Any],
                                                         engine_calls: list[dict[str, Any]],
                                                         test_tables: list[Any]) -> None:
    job_id = create_job(client, dataset_id=imbalanced["id"], network=mlp(), features=["x"],
                        training={"epochs": 2, "test_split": 0.25, "validation_split": 0.2, "seed": 3})
    assert run_job(app, job_id) == "succeeded", job_row(app, job_id).error
    test_split, validation_split, call = engine_calls
    # 100 test rows of 400 (each class its quarter: 95 and 5), on a seed stream of their own.
    assert test_split["split_n"] == N_ROWS and test_split["seed"] == 3 + worker.TEST_SEED_OFFSET
    np.testing.assert_array_equal(np.bincount(test_split["stratify"][test_split["held"]]), [95, 5])
    # Then 80 validation rows (a fifth of the 400) from the 300 left, stratified too: 76 and 4.
    assert validation_split["split_n"] == 300 and validation_split["seed"] == 3
    np.testing.assert_array_equal(np.bincount(validation_split["stratify"][validation_split["held"]]), [76, 4])
    np.testing.assert_array_equal(np.bincount(call["validation_data"][1], minlength=2), [76, 4])
    np.testing.assert_array_equal(np.bincount(call["y"], minlength=2), [209, 11])
    [table] = test_tables
    assert table.n_rows == 100
    np.testing.assert_array_equal(np.bincount(table.values[:, 2].astype(int)), [95, 5])
    metrics = client.get(f"/v1/jobs/{job_id}").get_json()["metrics"]
    assert (metrics["n_training_rows"], metrics["n_validation_rows"], metrics["n_test_rows"]) == (220, 80, 100)
    assert metrics["test"] == {"marker": True}
    model = client.get(f"/v1/models/{job_row(app, job_id).model_id}").get_json()
    assert model["metrics"]["test"] == {"marker": True} and model["metrics"]["n_test_rows"] == 100


def test_a_regression_split_is_not_stratified(client: Any, app: Any, engine_calls: list[dict[str, Any]],
                                              test_tables: list[Any]) -> None:
    prices = _upload(client, ["a", "price"], [[float(i), 2.5 * i + 0.1] for i in range(50)], task="regression")
    job_id = create_job(client, dataset_id=prices["id"], network=mlp(outputs=1),
                        training={"epochs": 1, "test_split": 0.3, "validation_split": 0.1})
    assert run_job(app, job_id) == "succeeded", job_row(app, job_id).error
    test_split, validation_split, call = engine_calls
    assert test_split["stratify"] is None and validation_split["stratify"] is None
    assert (len(test_split["held"]), len(validation_split["held"]), len(call["y"])) == (15, 5, 30)
    assert test_tables[0].n_rows == 15


def test_rows_without_a_target_are_in_no_split(client: Any, app: Any, engine_calls: list[dict[str, Any]],
                                               test_tables: list[Any]) -> None:
    rows = [[float(i % 10), i % 2 if i % 5 else None] for i in range(100)]  # 20 rows without a label
    dataset = _upload(client, ["x", "label"], rows)
    job_id = create_job(client, dataset_id=dataset["id"], network=mlp(),
                        training={"epochs": 1, "test_split": 0.25, "validation_split": 0.25})
    assert run_job(app, job_id) == "succeeded", job_row(app, job_id).error
    metrics = client.get(f"/v1/jobs/{job_id}").get_json()["metrics"]
    assert (metrics["n_training_rows"], metrics["n_validation_rows"], metrics["n_test_rows"]) == (40, 20, 20)
    assert not np.isnan(test_tables[0].values[:, 1]).any()


def test_test_rows_never_reach_training_nor_the_preprocessing(client: Any, app: Any, imbalanced: dict[str, Any],
                                                              engine_calls: list[dict[str, Any]],
                                                              test_tables: list[Any]) -> None:
    """The same table with the test rows' x made extreme: the same split, the same fit, no extreme input trained on."""
    training = {"epochs": 1, "test_split": 0.2, "validation_split": 0.2, "seed": 5}
    plain = create_job(client, dataset_id=imbalanced["id"], network=mlp(), features=["x"], training=training)
    assert run_job(app, plain) == "succeeded"
    [first] = test_tables
    extreme = {int(rid) for rid in first.values[:, 0]}
    assert len(extreme) == first.n_rows == 80
    shifted = _upload(client, ["rid", "x", "y"], _imbalanced(extreme))
    job_id = create_job(client, dataset_id=shifted["id"], network=mlp(), features=["x"], training=training)
    assert run_job(app, job_id) == "succeeded", job_row(app, job_id).error
    # The held-out rows are the extreme ones, and every one of them.
    np.testing.assert_array_equal(test_tables[1].values[:, 1], np.full(80, 1e6, dtype=np.float32))
    fitted = [client.get(f"/v1/models/{job_row(app, j).model_id}").get_json()["preprocessing"]["features"][0]
              for j in (plain, job_id)]
    assert fitted[0]["mean"] == fitted[1]["mean"] and fitted[0]["std"] == fitted[1]["std"]
    call = engine_calls[-1]
    assert np.abs(call["X"]).max() < 10 and np.abs(call["validation_data"][0]).max() < 10


def test_without_a_test_split_there_is_no_test_report(client: Any, app: Any, imbalanced: dict[str, Any],
                                                      test_tables: list[Any]) -> None:
    job_id = create_job(client, dataset_id=imbalanced["id"], network=mlp(), features=["x"], training={"epochs": 1})
    assert run_job(app, job_id) == "succeeded"
    metrics = client.get(f"/v1/jobs/{job_id}").get_json()["metrics"]
    assert "test" not in metrics and metrics["n_test_rows"] == 0 and not test_tables
    assert "test" not in client.get(f"/v1/models/{job_row(app, job_id).model_id}").get_json()["metrics"]


def test_a_job_stored_before_the_test_split_trains_without_one(client: Any, app: Any, imbalanced: dict[str, Any],
                                                              engine_calls: list[dict[str, Any]],
                                                              test_tables: list[Any]) -> None:
    job_id = create_job(client, dataset_id=imbalanced["id"], network=mlp(), features=["x"], training={"epochs": 1})
    training = dict(job_row(app, job_id).training)
    del training["test_split"], training["test_permutation_repeats"]
    set_row(app, job_id, training=training)
    assert run_job(app, job_id) == "succeeded", job_row(app, job_id).error
    [split, call] = engine_calls
    assert split["split_n"] == N_ROWS and len(split["held"]) == 80 and not test_tables
    assert "test_split" not in call and "test_permutation_repeats" not in call


def test_a_warm_start_may_hold_out_test_rows(client: Any, app: Any, imbalanced: dict[str, Any],
                                             test_tables: list[Any]) -> None:
    first = create_job(client, dataset_id=imbalanced["id"], network=mlp(), features=["x"], training={"epochs": 1})
    assert run_job(app, first) == "succeeded"
    job_id = create_job(client, dataset_id=imbalanced["id"], init_from_model=job_row(app, first).model_id,
                        training={"epochs": 1, "test_split": 0.1})
    assert run_job(app, job_id) == "succeeded", job_row(app, job_id).error
    metrics = client.get(f"/v1/jobs/{job_id}").get_json()["metrics"]
    assert metrics["n_test_rows"] == 40 and metrics["test"] == {"marker": True}


# --- the report ------------------------------------------------------------------------------

@both_databases
def test_metrics_test_is_the_classification_report_on_the_test_rows(client: Any, app: Any,
                                                                    imbalanced: dict[str, Any],
                                                                    engine_calls: list[dict[str, Any]]) -> None:
    job_id = create_job(client, dataset_id=imbalanced["id"], network=mlp(), features=["x"],
                        training={"epochs": 3, "test_split": 0.25, "test_permutation_repeats": 2})
    assert run_job(app, job_id) == "succeeded", job_row(app, job_id).error
    job = client.get(f"/v1/jobs/{job_id}").get_json()
    model = client.get(f"/v1/models/{job['model_id']}").get_json()
    report = job["metrics"]["test"]
    assert model["metrics"]["test"] == report
    assert (report["task"], report["n_rows"], report["n_rows_without_target"]) == ("classification", 100, 0)
    assert {"accuracy", "balanced_accuracy", "log_loss", "ece", "roc_auc", "pr_auc"} <= set(report["metrics"])
    assert report["confusion_matrix"]["labels"] == [0, 1]
    assert [sum(row) for row in report["confusion_matrix"]["matrix"]] == [95, 5]
    assert [c["support"] for c in report["per_class"]] == [95, 5]
    assert [p["feature"] for p in report["permutation_importance"]] == ["x"]
    # It scores the held-out rows (the first split's), as /predict answers for them.
    rows = _imbalanced()
    held = engine_calls[0]["held"]
    answer = client.post(f"/v1/models/{job['model_id']}/predict", json={"inputs": [[rows[k][1]] for k in held]})
    predicted = np.array(answer.get_json()["predictions"])
    accuracy = float(np.mean(predicted == np.array([rows[k][2] for k in held])))
    assert report["metrics"]["accuracy"] == pytest.approx(accuracy)
    # Lists carry the report's figures only; GET by id has the whole report.
    summary = {"task": "classification", "n_rows": 100, "metrics": report["metrics"]}
    (listed_model,) = [m for m in client.get("/v1/models").get_json()["items"] if m["id"] == job["model_id"]]
    (listed_job,) = [j for j in client.get("/v1/jobs").get_json()["items"] if j["id"] == job_id]
    assert listed_model["metrics"]["test"] == summary and listed_job["metrics"]["test"] == summary


def test_metrics_test_is_the_regression_report(client: Any, app: Any) -> None:
    rng = np.random.default_rng(1)
    prices = _upload(client, ["a", "b", "price"],
                     [[float(a), float(b), 2.5 * a - b + 0.1] for a, b in rng.normal(size=(60, 2))],
                     task="regression")
    job_id = create_job(client, dataset_id=prices["id"], network=mlp(outputs=1),
                        training={"epochs": 2, "test_split": 0.2, "test_permutation_repeats": 0})
    assert run_job(app, job_id) == "succeeded", job_row(app, job_id).error
    report = client.get(f"/v1/jobs/{job_id}").get_json()["metrics"]["test"]
    assert (report["task"], report["n_rows"], report["targets"]) == ("regression", 12, ["price"])
    assert {"rmse", "mae", "r2"} <= set(report["metrics"])
    assert [t["target"] for t in report["per_target"]] == ["price"]
    assert report["permutation_importance"] is None


@pytest.mark.parametrize(("change", "status"), [({"owner": "another-worker"}, "lost"),
                                                ({"cancel_requested": True}, "cancelled")])
def test_the_report_is_made_while_the_lease_is_held(client: Any, app: Any, imbalanced: dict[str, Any],
                                                    monkeypatch: pytest.MonkeyPatch, change: dict[str, Any],
                                                    status: str) -> None:
    """Between its passes the report renews the heartbeat and reads the cancel flag: no model past either."""
    from service.core.evaluation import report as evaluation

    real = evaluation.evaluate_table
    progress: list[int] = []

    def evaluate_table(*args: Any, on_progress: Any = None, **kwargs: Any) -> Any:
        def changed() -> None:
            if not progress:
                set_row(app, job_id, **change)
            progress.append(1)
            on_progress()
        return real(*args, on_progress=changed, **kwargs)

    monkeypatch.setattr(evaluation, "evaluate_table", evaluate_table)
    job_id = create_job(client, dataset_id=imbalanced["id"], network=mlp(), features=["x"],
                        training={"epochs": 1, "test_split": 0.2})
    settings = job_settings(lease_timeout_s=0.004, progress_interval_s=0.0)
    assert run_job(app, job_id, settings=settings) == status
    assert progress == [1] and job_row(app, job_id).model_id is None
    assert client.get("/v1/models").get_json()["items"] == []
