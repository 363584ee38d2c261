"""`training.class_weight`, rows without a target and the stratified split: from the job request to the engine."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import backprop
from tests.helpers import both_databases, create_job, job_row, mlp, problem, run_job, set_row
from workers.training import class_weights

N_ROWS, N_MINORITY = 400, 20


def _upload(client: Any, columns: list[str], data: list[list[Any]], **fields: Any) -> dict[str, Any]:
    response = client.post("/v1/datasets", json={"columns": columns, "data": data, **fields})
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def _imbalanced(seed: int = 0) -> list[list[Any]]:
    """N_MINORITY rows of class 1 among N_ROWS, overlapping class 0 on one feature (x ~ N(1.5, 1) vs N(0, 1))."""
    rng = np.random.default_rng(seed)
    return [[round(float(rng.normal(1.5 if i < N_MINORITY else 0.0, 1.0)), 4), int(i < N_MINORITY)]
            for i in range(N_ROWS)]


@pytest.fixture
def imbalanced(client: Any) -> dict[str, Any]:
    return _upload(client, ["x", "y"], _imbalanced())


@pytest.fixture
def engine_calls(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """What the worker hands backprop.train (class_weight, y, validation_data) and the split (stratify)."""
    calls: list[dict[str, Any]] = []
    real_train, real_split = backprop.train, backprop.train_validation_split

    def train(network: Any, X: Any, y: Any, **kwargs: Any) -> Any:
        calls.append({"y": np.asarray(y), **kwargs})
        return real_train(network, X, y, **kwargs)

    def split(n: int, validation_split: float, seed: int = 0, stratify: Any = None) -> Any:
        calls.append({"split_n": n, "stratify": stratify})
        return real_split(n, validation_split, seed, stratify=stratify)

    monkeypatch.setattr(backprop, "train", train)
    monkeypatch.setattr(backprop, "train_validation_split", split)
    return calls


def _job(client: Any, dataset: dict[str, Any], network: dict[str, Any] | None = None, **training: Any) -> Any:
    return client.post("/v1/jobs", json={"dataset_id": dataset["id"], "network": network or mlp(),
                                         "training": {"epochs": 2, "batch_size": 32, **training}})


@pytest.mark.parametrize(("class_weight", "field"), [
    ("heavy", "training.class_weight"), (3, "training.class_weight"), ([1, 3], "training.class_weight"),
    ({"1": 0}, "training.class_weight.1"), ({"1": -2}, "training.class_weight.1"),
    ({"1": True}, "training.class_weight.1"), ({"1": "3"}, "training.class_weight.1"),
    ({"1": 1e7}, "training.class_weight.1")])
def test_a_bad_class_weight_is_a_422_naming_it(client: Any, imbalanced: dict[str, Any], class_weight: Any,
                                                 field: str) -> None:
    assert [e["field"] for e in problem(_job(client, imbalanced, class_weight=class_weight), 422)["errors"]] == [field]


def test_a_non_finite_weight_is_a_422(client: Any, imbalanced: dict[str, Any]) -> None:
    # Python's JSON reader takes the Infinity token: the schema must refuse the value.
    body = f'{{"dataset_id": "{imbalanced["id"]}", "network": {{"layers": [{{"type": "dense", "units": 2}}]}}, ' \
           '"training": {"class_weight": {"1": Infinity}}}'
    response = client.post("/v1/jobs", data=body, content_type="application/json")
    assert [e["field"] for e in problem(response, 422)["errors"]] == ["training.class_weight.1"]


@pytest.mark.parametrize("label", ["7", "1.0", " 1"])
def test_a_label_that_is_not_a_class_is_a_422_naming_it(client: Any, imbalanced: dict[str, Any], label: str) -> None:
    [error] = problem(_job(client, imbalanced, class_weight={"0": 1, label: 2}), 422)["errors"]
    assert error["field"] == "training.class_weight"
    assert repr(label) in error["message"] and "'0', '1'" in error["message"]


@pytest.mark.parametrize("class_weight", ["balanced", {}, {"1": 2}])
def test_class_weights_on_a_regression_dataset_are_a_422(client: Any, class_weight: Any) -> None:
    prices = _upload(client, ["a", "price"], [[float(i), 2.5 * i + 0.1] for i in range(20)], task="regression")
    [error] = problem(_job(client, prices, network=mlp(outputs=1), class_weight=class_weight), 422)["errors"]
    assert error["field"] == "training.class_weight" and "classification" in error["message"]


def test_the_job_keeps_the_class_weight_as_sent(client: Any, imbalanced: dict[str, Any]) -> None:
    job = _job(client, imbalanced, class_weight={"1": 3}).get_json()
    assert job["training"]["class_weight"] == {"1": 3}
    assert client.get(f"/v1/jobs/{job['id']}").get_json()["training"]["class_weight"] == {"1": 3}
    assert _job(client, imbalanced, class_weight="balanced").get_json()["training"]["class_weight"] == "balanced"
    assert _job(client, imbalanced).get_json()["training"]["class_weight"] is None


def test_string_classes_are_named_as_they_are(client: Any) -> None:
    pets = _upload(client, ["weight", "pet"], [[float(i), "dog" if i % 3 else "cat"] for i in range(30)])
    assert _job(client, pets, class_weight={"cat": 2}).status_code == 202
    [error] = problem(_job(client, pets, class_weight={"Cat": 2}), 422)["errors"]
    assert "'Cat'" in error["message"] and "'cat', 'dog'" in error["message"]


def test_class_weights_resolve_like_scikit_learn() -> None:
    from sklearn.utils.class_weight import compute_class_weight

    labels = np.array([0] * 30 + [1] * 5 + [2] * 15)
    expected = compute_class_weight("balanced", classes=np.arange(3), y=labels)
    np.testing.assert_allclose(class_weights("balanced", ["a", "b", "c"], labels), expected)
    # A class the training split lacks (a warm start's) weighs 1; the others balance the rows there are.
    np.testing.assert_allclose(class_weights("balanced", ["a", "b", "c"], np.array([0, 0, 0, 2])),
                               [4 / (2 * 3), 1.0, 4 / (2 * 1)])
    # A mapping names labels by their string form; a class it leaves out weighs 1.
    np.testing.assert_allclose(class_weights({"1": 3.0}, [0, 1, 2], labels), [1.0, 3.0, 1.0])
    assert class_weights(None, [0, 1], labels) is None


@both_databases
def test_balanced_weights_reach_the_engine_and_the_split_is_stratified(client: Any, app: Any,
                                                                        imbalanced: dict[str, Any],
                                                                        engine_calls: list[dict[str, Any]]) -> None:
    job_id = create_job(client, dataset_id=imbalanced["id"], network=mlp(),
                        training={"epochs": 2, "class_weight": "balanced", "validation_split": 0.25})
    assert run_job(app, job_id) == "succeeded"
    [split, call] = engine_calls
    # The split is stratified by class: each class holds out its quarter.
    assert split["split_n"] == N_ROWS and split["stratify"] is not None
    np.testing.assert_array_equal(np.bincount(split["stratify"]), [N_ROWS - N_MINORITY, N_MINORITY])
    validation_counts = np.bincount(call["validation_data"][1], minlength=2)
    np.testing.assert_array_equal(validation_counts, [(N_ROWS - N_MINORITY) // 4, N_MINORITY // 4])
    counts = np.bincount(call["y"], minlength=2)
    np.testing.assert_allclose(call["class_weight"], counts.sum() / (2 * counts))
    metrics = client.get(f"/v1/jobs/{job_id}").get_json()["metrics"]
    assert (metrics["n_training_rows"], metrics["n_validation_rows"]) == (counts.sum(), validation_counts.sum())


def test_a_mapping_reaches_the_engine_by_class_index(client: Any, app: Any, engine_calls: list[dict[str, Any]]) -> None:
    # String classes sort: bird, cat, dog; cat is left out and weighs 1.
    pets = _upload(client, ["weight", "pet"], [[float(i), ["dog", "cat", "bird"][i % 3]] for i in range(30)])
    job_id = create_job(client, dataset_id=pets["id"], network=mlp(outputs=3),
                        training={"epochs": 1, "class_weight": {"dog": 4, "bird": 0.5}})
    assert run_job(app, job_id) == "succeeded"
    np.testing.assert_allclose(engine_calls[-1]["class_weight"], [0.5, 1.0, 4.0])


def test_binary_cross_entropy_takes_the_weights_of_classes_0_and_1(client: Any, app: Any, imbalanced: dict[str, Any],
                                                                   engine_calls: list[dict[str, Any]]) -> None:
    job_id = create_job(client, dataset_id=imbalanced["id"], network=mlp(outputs=1, output={"activation": "sigmoid"}),
                        training={"epochs": 1, "loss": "binary_cross_entropy", "class_weight": {"1": 5}})
    assert run_job(app, job_id) == "succeeded", job_row(app, job_id).error
    np.testing.assert_allclose(engine_calls[-1]["class_weight"], [1.0, 5.0])


def test_without_class_weight_the_engine_gets_none(client: Any, app: Any, imbalanced: dict[str, Any],
                                                  engine_calls: list[dict[str, Any]]) -> None:
    job_id = create_job(client, dataset_id=imbalanced["id"], network=mlp(), training={"epochs": 1})
    # A job stored before class_weight existed has no such key: it trains unweighted too.
    training = dict(job_row(app, job_id).training)
    del training["class_weight"]
    set_row(app, job_id, training=training)
    assert run_job(app, job_id) == "succeeded"
    assert engine_calls[-1]["class_weight"] is None


def _minority_recall(client: Any, app: Any, dataset: dict[str, Any], class_weight: Any) -> float:
    job_id = create_job(client, dataset_id=dataset["id"], network={"layers": [{"type": "dense", "units": 2}]},
                        training={"epochs": 30, "batch_size": 32, "learning_rate": 0.01, "validation_split": 0,
                                  "class_weight": class_weight})
    assert run_job(app, job_id) == "succeeded"
    rows = [r for r in _imbalanced() if r[1] == 1]
    answer = client.post(f"/v1/models/{job_row(app, job_id).model_id}/predict",
                         json={"inputs": [[r[0]] for r in rows]}).get_json()
    return float(np.mean([p == 1 for p in answer["predictions"]]))


def test_balanced_weights_raise_the_minority_recall(client: Any, app: Any, imbalanced: dict[str, Any]) -> None:
    """One class in twenty, overlapping the other: unweighted, the model all but never predicts it."""
    plain = _minority_recall(client, app, imbalanced, None)
    balanced = _minority_recall(client, app, imbalanced, "balanced")
    assert plain <= 0.2 and balanced >= 0.6, (plain, balanced)


@both_databases
def test_rows_without_a_target_are_kept_out_of_both_splits(client: Any, app: Any,
                                                           engine_calls: list[dict[str, Any]]) -> None:
    rows = [[float(i % 10), i % 2 if i % 5 else None] for i in range(100)]  # 20 rows without a label
    dataset = _upload(client, ["x", "label"], rows)
    assert dataset["classes"] == [0, 1]
    job_id = create_job(client, dataset_id=dataset["id"], network=mlp(), training={"epochs": 2,
                                                                                   "validation_split": 0.25})
    assert run_job(app, job_id) == "succeeded", job_row(app, job_id).error
    split, call = engine_calls
    assert split["split_n"] == 80
    metrics = client.get(f"/v1/jobs/{job_id}").get_json()["metrics"]
    assert (metrics["n_training_rows"], metrics["n_validation_rows"]) == (60, 20)
    assert len(call["y"]) == 60 and len(call["validation_data"][1]) == 20
    model = client.get(f"/v1/models/{job_row(app, job_id).model_id}").get_json()
    assert model["metrics"]["n_training_rows"] == 60


def test_a_row_missing_any_target_is_kept_out_of_a_multi_target_regression(client: Any, app: Any,
                                                                           engine_calls: list[dict[str, Any]]) -> None:
    rows = [[float(i), None if i % 10 == 0 else 2.0 * i, None if i % 10 == 5 else -1.0 * i] for i in range(60)]
    dataset = _upload(client, ["x", "t1", "t2"], rows, target=["t1", "t2"])
    job_id = create_job(client, dataset_id=dataset["id"], network=mlp(outputs=2),
                        training={"epochs": 2, "validation_split": 0.2})
    assert run_job(app, job_id) == "succeeded", job_row(app, job_id).error
    split, call = engine_calls
    # A regression's split is not stratified.
    assert split == {"split_n": 48, "stratify": None}
    assert np.isfinite(call["y"]).all() and len(call["y"]) + len(call["validation_data"][1]) == 48
