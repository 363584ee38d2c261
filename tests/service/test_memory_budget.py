"""Memory bounded by budgets, not by luck: the activation budget (MAX_ACTIVATION_FLOATS) at creation,
/predict and validation in row chunks within it, MAX_PREDICT_VALUES, and MemoryError as a problem.

A network's parameters do not bound its activations: a 1,000,000-unit layer has few parameters
but holds 4 MB a row. The wide predicts run in a child process under RLIMIT_AS
(benchmarks/wide_predict.py), so a regression fails there instead of taking the machine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from backprop.network import Network
from benchmarks import wide_predict
from tests.conftest import BLOBS_COLUMNS, blobs_rows, csv_text
from tests.helpers import both_databases, job_row, job_settings, mlp, problem, run_job, submit

# mlp((100,)) on the four blobs features: 4 + 100 + 2 values a row.
WIDTH = 106
BUDGET = 1_000  # 9 rows of it at a time


def _forward_rows(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record the rows of every forward pass from now on."""
    rows: list[int] = []
    original = Network.forward

    def spy(self: Network, X: Any, training: bool = False) -> Any:
        rows.append(len(X))
        return original(self, X, training)

    monkeypatch.setattr(Network, "forward", spy)
    return rows


@both_databases
def test_a_job_whose_batch_exceeds_the_activation_budget_is_422(app, client, blobs, queue):
    app.config["MAX_ACTIVATION_FLOATS"] = BUDGET
    response = client.post("/v1/jobs", json={"dataset_id": blobs["id"], "network": mlp((100,)),
                                             "training": {"batch_size": 16}})
    body = problem(response, 422)
    assert [e["field"] for e in body["errors"]] == ["training.batch_size"]
    message = body["errors"][0]["message"]
    assert "16 rows holds 1,696 values" in message and "1,000 (MAX_ACTIVATION_FLOATS)" in message
    assert "batch_size of at most 9" in message, message
    assert queue.published == []
    # A batch within it is accepted; so is one larger than the dataset, which holds fewer rows.
    submit(client, blobs["id"], mlp((100,)), batch_size=9)
    app.config["MAX_ACTIVATION_FLOATS"] = WIDTH * 40  # blobs has 40 rows
    submit(client, blobs["id"], mlp((100,)), batch_size=1_000)


@both_databases
def test_a_network_is_refused_only_when_one_row_exceeds_the_budget(app, client):
    app.config["MAX_ACTIVATION_FLOATS"] = BUDGET
    # 106 values a row: one row fits, although the default batch (32) would not.
    assert client.post("/v1/networks?input_dim=4", json=mlp((100,))).status_code == 201
    body = problem(client.post("/v1/networks?input_dim=4", json=mlp((2_000,))), 422)
    assert [e["field"] for e in body["errors"]] == ["layers[0].units"]
    assert "2,006 values" in body["errors"][0]["message"]
    assert "1,000 (MAX_ACTIVATION_FLOATS)" in body["errors"][0]["message"]
    # Without the input width, a one-column input is the lower bound.
    body = client.post("/v1/networks/validate", json=mlp((2_000,))).get_json()
    assert not body["valid"] and "at least 2,003 values" in body["problems"][0]["message"]


def test_predict_runs_in_chunks_within_the_budget(app, client, blobs_model, monkeypatch):
    inputs = [[0.1 * i, 0.2, -0.3, 0.4 * (i % 3)] for i in range(50)]
    records = [dict(zip(BLOBS_COLUMNS, row)) for row in inputs]
    whole = client.post(f"/v1/models/{blobs_model}/predict", json={"inputs": inputs}).get_json()
    # blobs_model is mlp(activation="tanh"): 4 + 8 + 2 values a row; 7 rows a pass.
    app.config["MAX_ACTIVATION_FLOATS"] = 14 * 7
    rows = _forward_rows(monkeypatch)
    for body in ({"inputs": inputs}, {"records": records}):  # the fast lane, then the view
        answer = client.post(f"/v1/models/{blobs_model}/predict", json=body)
        assert answer.status_code == 200
        assert answer.get_json()["predictions"] == whole["predictions"]
        np.testing.assert_allclose(answer.get_json()["probabilities"], whole["probabilities"], rtol=1e-5)
    assert rows == ([7] * 7 + [1]) * 2
    # A request within one chunk is one pass, as before.
    app.config["MAX_ACTIVATION_FLOATS"] = 14 * 50
    rows.clear()
    assert client.post(f"/v1/models/{blobs_model}/predict", json={"inputs": inputs}).status_code == 200
    assert rows == [50]


def test_predict_past_max_predict_values_is_413_naming_the_rows(app, client, blobs_model):
    app.config["MAX_PREDICT_VALUES"] = 14 * 5  # 5 rows of blobs_model
    inputs = [[0.1, 0.2, 0.3, 0.4]] * 6
    records = [dict(zip(BLOBS_COLUMNS, row)) for row in inputs]
    csv_body = csv_text(BLOBS_COLUMNS[:4], inputs)
    for field, response in (
            ("inputs", client.post(f"/v1/models/{blobs_model}/predict", json={"inputs": inputs})),
            ("records", client.post(f"/v1/models/{blobs_model}/predict", json={"records": records})),
            ("csv", client.post(f"/v1/models/{blobs_model}/predict", data=csv_body, content_type="text/csv"))):
        body = problem(response, 413)
        assert body["errors"][0]["field"] == field
        assert "MAX_PREDICT_VALUES (70)" in body["detail"] and "at most 5 rows per request" in body["detail"]
    assert client.post(f"/v1/models/{blobs_model}/predict", json={"inputs": inputs[:5]}).status_code == 200


def test_memory_error_in_a_request_is_a_503_problem(app, client, blobs_model, monkeypatch):
    from service.core.models import cache

    def out_of_memory(*args: Any, **kwargs: Any) -> Any:
        raise MemoryError

    monkeypatch.setattr(cache.Predictor, "predict", out_of_memory)
    for body in ({"inputs": [[0.1, 0.2, 0.3, 0.4]]}, {"records": [dict(zip(BLOBS_COLUMNS, [0.1, 0.2, 0.3, 0.4]))]}):
        answer = client.post(f"/v1/models/{blobs_model}/predict", json=body)
        assert problem(answer, 503)["type"] == "urn:backprop:problem:out-of-memory"
        assert answer.headers["Retry-After"]


def test_validation_runs_in_chunks_within_the_budget(app, client, upload_csv, monkeypatch):
    dataset = upload_csv(csv_text(BLOBS_COLUMNS, blobs_rows(100))).get_json()
    app.config["MAX_ACTIVATION_FLOATS"] = WIDTH * 10
    job_id = submit(client, dataset["id"], mlp((100,)), epochs=1, batch_size=10, validation_split=0.25)
    rows = _forward_rows(monkeypatch)
    assert run_job(app, job_id, settings=job_settings(max_activation_floats=WIDTH * 10)) == "succeeded"
    assert max(rows) == 10 and sum(rows) == 75 + 25  # the batches, then the validation split 10 at a time
    assert rows[-3:] == [10, 10, 5]


def test_memory_error_in_a_worker_fails_the_job_saying_so(app, client, blobs, monkeypatch):
    import backprop

    def out_of_memory(*args: Any, **kwargs: Any) -> Any:
        raise MemoryError

    job_id = submit(client, blobs["id"], mlp())
    monkeypatch.setattr(backprop, "train", out_of_memory)
    assert run_job(app, job_id) == "failed"
    assert "ran out of memory" in job_row(app, job_id).error


@pytest.fixture(scope="module")
def wide_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A SQLite store with a model of a 100,000-unit layer, trained by the worker in a child process."""
    data_dir = tmp_path_factory.mktemp("wide")
    return data_dir, wide_predict.make_model(data_dir, units=100_000)


def test_a_wide_predict_is_chunked_under_an_address_space_limit(wide_model):
    data_dir, model_id = wide_model
    # 9,000 rows of 100,006 values: 3.4 GiB at once, past the child's 3 GiB; in chunks of 500 rows.
    answer = wide_predict.serve_predict(data_dir, model_id, 9_000, limit_gib=3)
    assert answer["status"] == 200, answer
    assert answer["predictions"] == 9_000
    # The chunks hold MAX_ACTIVATION_FLOATS (200 MB of float32) above what the process held before.
    assert answer["peak_mib"] - answer["peak_before_mib"] < 200 + 150, answer


def test_a_wide_predict_past_max_predict_values_is_413_not_500(wide_model):
    data_dir, model_id = wide_model
    answer = wide_predict.serve_predict(data_dir, model_id, 100_000, limit_gib=3)
    assert answer["status"] == 413, answer
    assert "MAX_PREDICT_VALUES" in answer["problem"]["detail"]
