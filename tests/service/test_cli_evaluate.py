"""`backprop models evaluate` against the Flask test app (no processes).

requests goes into Flask's test client (tests/cli_harness.py), so the real
Client and the real command send the requests; the command's wait between two polls
runs the queued evaluation with the worker's function, as a worker would meanwhile.
"""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

from tests.cli_harness import cli_runner
from tests.conftest import BLOBS_COLUMNS, blobs_rows, csv_text, linear_rows
from tests.helpers import mlp, train


@pytest.fixture
def backprop_cli(client, app, queue, monkeypatch):
    """Run `backprop ARGS...` against the test app, the evaluations it queues run while it waits;
    return (exit code, output)."""
    from service.client import client as client_module
    from workers.evaluation import run_evaluation

    ran: set[str] = set()

    def sleep(_seconds: float) -> None:  # a worker, between two of the command's polls
        for job_id, _queue in queue.published:
            if job_id.startswith("ev_") and job_id not in ran:
                ran.add(job_id)
                run_evaluation(job_id, sessions=app.extensions["backprop.sessions"], owner="cli-test")

    monkeypatch.setattr(client_module, "time", SimpleNamespace(monotonic=time.monotonic, sleep=sleep))
    return cli_runner(client, monkeypatch)


def lines_after(output: str, heading: str) -> list[list[str]]:
    """The rows of the table under `heading` (its header line), split on runs of two spaces or more."""
    import re

    lines = output.splitlines()
    start = next(k for k, line in enumerate(lines) if line.startswith(heading))
    rows = []
    for line in lines[start + 1:]:
        if not line.strip():
            break
        rows.append(re.split(r"\s{2,}", line.strip()))
    return rows


def test_evaluate_prints_a_classification_report_as_tables(client, app, blobs_model, upload_csv, backprop_cli):
    rows = blobs_rows(40, seed=4)
    rows[0][-1] = ""  # one row without a target
    dataset = upload_csv(csv_text(BLOBS_COLUMNS, rows)).get_json()
    code, output = backprop_cli("models", "evaluate", blobs_model, "--dataset", dataset["id"],
                                "--permutation-repeats", "2", "--seed", "3", "--poll", "0.05")
    assert code == 0, output
    evaluation_id = output.split()[1]
    evaluation = client.get(f"/v1/evaluations/{evaluation_id}").get_json()
    assert (evaluation["permutation_repeats"], evaluation["seed"]) == (2, 3)
    report = evaluation["report"]
    assert f"evaluation {evaluation_id} queued" in output and f"evaluation {evaluation_id} succeeded" in output
    assert "classification: 39 rows scored (1 without a target left out)" in output

    metrics = dict(lines_after(output, "METRIC"))
    assert set(metrics) == set(report["metrics"])
    assert float(metrics["accuracy"]) == pytest.approx(report["metrics"]["accuracy"], abs=1e-3)
    confusion = lines_after(output, "TRUE")
    assert confusion == [[str(label), *map(str, row)] for label, row in
                         zip(report["confusion_matrix"]["labels"], report["confusion_matrix"]["matrix"])]
    per_class = lines_after(output, "LABEL")
    assert [(r[0], r[-1]) for r in per_class] == [(str(c["label"]), str(c["support"])) for c in report["per_class"]]
    importance = lines_after(output, "FEATURE")
    means = [float(r[1]) for r in importance]
    assert sorted(r[0] for r in importance) == ["a", "b", "c", "d"] and means == sorted(means, reverse=True)
    assert "drop in accuracy" in output

    # Read it again later by id.
    code, again = backprop_cli("models", "evaluation", evaluation_id)
    assert code == 0 and f"on dataset {dataset['id']}: succeeded" in again
    assert lines_after(again, "TRUE") == confusion


def test_evaluate_prints_a_regression_report_per_target(client, app, upload_csv, backprop_cli):
    dataset = upload_csv(csv_text(["a", "b", "price"], linear_rows(80))).get_json()
    model_id = train(client, app, dataset["id"], mlp((8,), outputs=1), epochs=2, batch_size=16)
    code, output = backprop_cli("models", "evaluate", model_id, "--dataset", dataset["id"],
                                "--permutation-repeats", "0", "--poll", "0.05")
    assert code == 0, output
    report = client.get(f"/v1/evaluations/{output.split()[1]}").get_json()["report"]
    (row,) = lines_after(output, "TARGET")
    assert row[0] == "price" and float(row[1]) == pytest.approx(report["per_target"][0]["rmse"], rel=1e-3)
    assert "RESIDUAL 50%" in output
    assert "permutation importance" not in output  # none asked for


def test_a_failed_evaluation_prints_its_error_and_exits_non_zero(client, blobs_model, upload_csv, backprop_cli):
    rows = [[*row[:-1], 7 + row[-1]] for row in blobs_rows(10)]  # labels the model never saw
    dataset = upload_csv(csv_text(BLOBS_COLUMNS, rows)).get_json()
    code, output = backprop_cli("models", "evaluate", blobs_model, "--dataset", dataset["id"], "--poll", "0.05")
    assert code == 3, output
    assert "failed:" in output and "label the model does not know" in output

    # Refused at once: the API's problem, exit 1; a usage error, exit 2.
    code, output = backprop_cli("models", "evaluate", blobs_model, "--dataset", "ds_missing")
    assert code == 1 and "422" in output and "dataset_id" in output and "ds_missing" in output
    code, output = backprop_cli("models", "evaluate", "mdl_missing", "--dataset", dataset["id"])
    assert code == 1 and "404" in output
    code, output = backprop_cli("models", "evaluate", blobs_model, "--dataset", dataset["id"],
                                "--permutation-repeats", "-1")
    assert code == 2 and "--permutation-repeats" in output
