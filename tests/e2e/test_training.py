"""Train and predict through the real API and a real Celery worker, on both backends."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from tests.helpers import mlp

pytestmark = pytest.mark.slow


def test_digits_reach_95_percent_on_held_out_rows(stack, digits: dict[str, Any]) -> None:
    dataset = stack.upload_csv(digits["csv"], name="digits", target="digit", task="classification")
    job = stack.train({
        "dataset_id": dataset["id"],
        "network": mlp((64,), outputs=10),
        "training": {"epochs": 60, "batch_size": 32, "optimizer": "adam", "learning_rate": 0.003,
                     "validation_split": 0.1, "early_stopping_patience": 10, "seed": 0},
        "device": "cpu",
    })

    # Pixels that are blank in every training image are constant columns, left out of the
    # features; records may still carry them (dataset columns the model does not use).
    constant = [c["name"] for c in dataset["columns"] if c["role"] == "constant"]
    assert constant and not set(constant) & set(dataset["features"])
    records = [{f"px{i}": float(v) for i, v in enumerate(row)} for row in digits["X_test"]]
    result = stack.predict(job["model_id"], {"records": records})

    predicted = np.array([float(label) for label in result["predictions"]])
    accuracy = float(np.mean(predicted == digits["y_test"]))
    print(f"digits ({stack.backend}): held-out accuracy {accuracy:.3f}, {job['progress']}")
    assert accuracy >= 0.95, f"held-out accuracy {accuracy:.3f}"
    probabilities = np.array(result["probabilities"])
    assert probabilities.shape == (len(digits["y_test"]), 10)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-4)
    assert len(result["classes"]) == 10


def test_string_target_and_categorical_feature_predict_strings(stack, pets: dict[str, Any]) -> None:
    dataset = stack.upload_csv(pets["csv"], name="pets", target="animal")
    network = stack.request("POST", "/v1/networks", 201, json={
        "name": "pets",
        "layers": [{"type": "dense", "units": 16, "activation": "tanh"}, {"type": "dense", "units": 2}],
    })
    job = stack.train({
        "dataset_id": dataset["id"],
        "network_id": network["id"],
        "training": {"epochs": 40, "learning_rate": 0.01, "seed": 0},
    })

    columns = pets["columns"]
    records = [dict(zip(columns, row[:-1])) for row in pets["test"]]
    result = stack.predict(job["model_id"], {"records": records})

    truth = [row[-1] for row in pets["test"]]
    assert set(result["predictions"]) <= {"cat", "dog"}
    assert sorted(result["classes"]) == ["cat", "dog"]
    accuracy = float(np.mean([p == t for p, t in zip(result["predictions"], truth)]))
    print(f"pets ({stack.backend}): held-out accuracy {accuracy:.3f}, {job['progress']}")
    assert accuracy >= 0.85, f"held-out accuracy {accuracy:.3f}"


def test_regression_predicts_in_the_targets_scale(stack, waves: dict[str, Any]) -> None:
    dataset = stack.upload_csv(waves["csv"], name="waves", target="y", task="regression")
    job = stack.train({
        "dataset_id": dataset["id"],
        "network": mlp((64, 64), "tanh", 1),
        "training": {"epochs": 150, "batch_size": 32, "learning_rate": 0.003, "loss": "mse",
                     "validation_split": 0.1, "early_stopping_patience": 20, "seed": 0},
    })

    result = stack.predict(job["model_id"], {"inputs": waves["X_test"].tolist()})

    predicted = np.asarray(result["predictions"], dtype=float).reshape(-1)
    y = waves["y_test"]
    mae = float(np.mean(np.abs(predicted - y)))
    r2 = 1 - float(np.sum((predicted - y) ** 2) / np.sum((y - y.mean()) ** 2))
    print(f"waves ({stack.backend}): held-out R^2 {r2:.3f}, MAE {mae:.1f}, target std {y.std():.0f}, {job['progress']}")
    assert abs(float(predicted.mean()) - float(y.mean())) < 25, "predictions are not in the target's scale"
    assert r2 >= 0.97 and mae < 20, f"held-out R^2 {r2:.3f}, MAE {mae:.1f} (target std {y.std():.0f})"


def test_cancelling_a_running_job_ends_cancelled(stack, digits: dict[str, Any]) -> None:
    dataset = stack.upload_csv(digits["csv"], name="digits-long", target="digit", task="classification")
    job = stack.start_job({
        "dataset_id": dataset["id"],
        "network": mlp((64,), outputs=10),
        # Far more epochs than the test waits for, and no early stop.
        "training": {"epochs": 100000, "early_stopping_patience": 0, "seed": 0},
    })
    stack.wait_job(job["id"], until=("running",), timeout=120)

    stack.request("POST", f"/v1/jobs/{job['id']}/cancel", 202)
    ended = stack.wait_job(job["id"], timeout=60)

    assert ended["status"] == "cancelled", ended
    assert not ended.get("model_id")
