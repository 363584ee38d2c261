"""`backprop models predict-batch` against the Flask test app (no processes).

The real Client and command send the requests (routed into Flask's test client by
tests/cli_harness.py); the worker runs when the command first waits to poll.
"""

from __future__ import annotations

import csv
import io
from typing import Any

import pyarrow.parquet as pq
import pytest

from tests.cli_harness import cli_runner
from tests.conftest import BLOBS_COLUMNS, blobs_rows, csv_text


@pytest.fixture
def backprop_cli(client, monkeypatch):
    """Run `backprop ARGS...` against the test app; return (exit code, output)."""
    return cli_runner(client, monkeypatch)


@pytest.fixture
def worker_on_poll(app, monkeypatch) -> list[str]:
    """Run every queued batch prediction when the client sleeps between polls; return the ids it ran."""
    from service.client import client as client_module
    from workers.batch_prediction import run_batch_prediction

    queue = app.extensions["backprop.queue"]
    ran: list[str] = []

    def sleep(seconds: float) -> None:
        for job_id, _ in queue.published:
            if job_id.startswith("bp_") and job_id not in ran:
                ran.append(job_id)
                run_batch_prediction(job_id, sessions=app.extensions["backprop.sessions"], owner="cli-test")

    monkeypatch.setattr(client_module.time, "sleep", sleep)
    return ran


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_predict_batch_writes_the_file(client, blobs_model, upload_csv, tmp_path, backprop_cli,
                                       worker_on_poll, fmt):
    dataset = upload_csv(csv_text(BLOBS_COLUMNS, blobs_rows(25, seed=3))).get_json()
    out = tmp_path / f"scored.{fmt}"
    code, output = backprop_cli("models", "predict-batch", blobs_model, "--dataset", dataset["id"],
                                "--format", fmt, "-o", str(out), "--poll", "0.05")
    assert code == 0, output
    assert len(worker_on_poll) == 1 and f"batch prediction {worker_on_poll[0]} queued" in output
    assert f"batch prediction {worker_on_poll[0]} succeeded" in output
    state = client.get(f"/v1/batch-predictions/{worker_on_poll[0]}").get_json()
    assert out.read_bytes() == client.get(state["download"]).get_data()
    assert f"wrote {out} (25 rows, {state['size_bytes']:,} bytes, {fmt})" in output
    assert not (tmp_path / f"scored.{fmt}.part").exists()
    if fmt == "csv":
        rows = list(csv.reader(io.StringIO(out.read_text())))
        assert rows[0] == BLOBS_COLUMNS + ["prediction", "probability_0", "probability_1"] and len(rows) == 26
    else:
        assert pq.read_table(out).num_rows == 25


def test_a_failed_batch_prediction_prints_its_error(blobs_model, blobs, tmp_path, backprop_cli,
                                                    worker_on_poll, monkeypatch):
    import workers.batch_prediction as module

    def broken(*args: Any, **kwargs: Any) -> int:
        raise MemoryError

    monkeypatch.setattr(module, "write_predictions", broken)
    out = tmp_path / "scored.csv"
    code, output = backprop_cli("models", "predict-batch", blobs_model, "--dataset", blobs["id"], "-o", str(out))
    assert code == 3, output  # the CLI's exit code for a job that failed
    assert f"error: batch prediction {worker_on_poll[0]} failed: the worker ran out of memory" in output
    assert not out.exists()


def test_an_unknown_dataset_is_the_api_error(blobs_model, tmp_path, backprop_cli):
    code, output = backprop_cli("models", "predict-batch", blobs_model, "--dataset", "ds_missing",
                                "-o", str(tmp_path / "x.csv"))
    assert code == 1 and "422" in output and "dataset_id" in output and "ds_missing" in output


@pytest.mark.parametrize(("name", "fmt"), [("scored.parquet", "parquet"), ("scored.PQ", "parquet"),
                                           ("scored.csv", "csv"), ("scored.txt", "csv"), ("scored", "csv")])
def test_without_format_the_extension_of_o_chooses_it(client, blobs_model, blobs, tmp_path, backprop_cli,
                                                      worker_on_poll, name, fmt):
    out = tmp_path / name
    code, output = backprop_cli("models", "predict-batch", blobs_model, "--dataset", blobs["id"], "-o", str(out),
                                "--poll", "0.05")
    assert code == 0, output
    assert client.get(f"/v1/batch-predictions/{worker_on_poll[0]}").get_json()["format"] == fmt
    assert output.rstrip().endswith(f"{fmt})")
    if fmt == "parquet":
        assert pq.read_table(out).num_rows == 40
    else:
        assert out.read_text().splitlines()[0] == ",".join(BLOBS_COLUMNS + ["prediction", "probability_0",
                                                                            "probability_1"])


@pytest.mark.parametrize(("fmt", "name"), [("csv", "out.parquet"), ("parquet", "out.csv"), ("csv", "out.pq")])
def test_a_format_the_extension_contradicts_is_a_usage_error_before_any_request(app, blobs_model, blobs, tmp_path,
                                                                                backprop_cli, fmt, name):
    queue = app.extensions["backprop.queue"]
    published = len(queue.published)
    code, output = backprop_cli("models", "predict-batch", blobs_model, "--dataset", blobs["id"],
                                "--format", fmt, "-o", str(tmp_path / name))
    assert code == 2, output
    assert f"--format {fmt} does not match the extension of" in output
    assert len(queue.published) == published and not (tmp_path / name).exists()


def test_a_format_given_for_an_unknown_extension_is_taken(client, blobs_model, blobs, tmp_path, backprop_cli,
                                                          worker_on_poll):
    out = tmp_path / "scored.bin"
    code, output = backprop_cli("models", "predict-batch", blobs_model, "--dataset", blobs["id"],
                                "--format", "parquet", "-o", str(out), "--poll", "0.05")
    assert code == 0, output
    assert pq.read_table(out).num_rows == 40
