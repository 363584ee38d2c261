"""Batch predictions: the API, the worker (workers/batch_prediction.py) and the file it writes.

Each test trains a small model, starts a batch prediction through the API, runs the
worker as a Celery task would, and downloads the file: its dataset columns must hold
the uploaded values, and its predictions must equal /predict's for records built from
those values.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.conftest import BLOBS_COLUMNS, blobs_rows, csv_text, linear_rows
from tests.helpers import job_row, job_settings, make_stale, mlp, problem, train


def run_batch(app: Any, job_id: str, owner: str = "test-worker", **kwargs: Any) -> str:
    """Run a batch prediction the way a worker does; return its status."""
    from workers.batch_prediction import run_batch_prediction

    return run_batch_prediction(job_id, sessions=app.extensions["backprop.sessions"], owner=owner, **kwargs)


def start(client: Any, model_id: str, dataset_id: str, fmt: str = "csv") -> dict[str, Any]:
    response = client.post(f"/v1/models/{model_id}/batch-predictions", json={"dataset_id": dataset_id,
                                                                             "format": fmt})
    assert response.status_code == 202, response.get_json()
    body = response.get_json()
    assert response.headers["Location"].endswith(f"/v1/batch-predictions/{body['id']}")
    assert body["id"].startswith("bp_") and body["status"] == "queued" and body["download"] is None
    assert body["model_id"] == model_id and body["dataset_id"] == dataset_id and body["format"] == fmt
    return body


def predict_batch(client: Any, app: Any, model_id: str, dataset_id: str, fmt: str = "csv",
                  **kwargs: Any) -> tuple[dict[str, Any], bytes, Any]:
    """Start, run and download a batch prediction; return (its answer, the file's bytes, the response)."""
    job_id = start(client, model_id, dataset_id, fmt)["id"]
    assert run_batch(app, job_id, **kwargs) == "succeeded", client.get(f"/v1/batch-predictions/{job_id}").get_json()
    state = client.get(f"/v1/batch-predictions/{job_id}").get_json()
    response = client.get(state["download"])
    assert response.status_code == 200
    data = response.get_data()
    assert state["size_bytes"] == len(data) and response.headers["Content-Length"] == str(len(data))
    assert response.headers["Content-Disposition"] == f'attachment; filename="{job_id}.{fmt}"'
    return state, data, response


def read_csv(data: bytes) -> tuple[list[str], list[list[str]]]:
    rows = list(csv.reader(io.StringIO(data.decode())))
    return rows[0], rows[1:]


def records_from(header: list[str], rows: list[list[str]], kinds: dict[str, str]) -> list[dict[str, Any]]:
    """Build /predict records from the file's dataset columns: numbers, strings, ISO text, null when empty."""
    records = []
    for row in rows:
        record: dict[str, Any] = {}
        for name, cell in zip(header, row):
            if name not in kinds:
                continue
            record[name] = None if cell == "" else float(cell) if kinds[name] == "numeric" else cell
        records.append(record)
    return records


def dataset_kinds(client: Any, dataset_id: str) -> dict[str, str]:
    return {c["name"]: c["kind"] for c in client.get(f"/v1/datasets/{dataset_id}").get_json()["columns"]}


def check_against_predict(client: Any, model_id: str, header: list[str], rows: list[list[str]],
                          kinds: dict[str, str]) -> None:
    """The file's prediction columns equal /predict's for records of the file's dataset values."""
    answer = client.post(f"/v1/models/{model_id}/predict", json={"records": records_from(header, rows, kinds)})
    assert answer.status_code == 200, answer.get_json()
    result = answer.get_json()
    first = len(kinds)
    if "probabilities" in result:
        assert header[first:] == ["prediction"] + [f"probability_{c}" for c in result["classes"]]
        assert [row[first] for row in rows] == [str(p) for p in result["predictions"]]
        # Written at the network's precision: the same float32 as /predict's.
        written = np.array([[float(v) for v in row[first + 1:]] for row in rows], dtype=np.float32)
        np.testing.assert_array_equal(written, np.array(result["probabilities"], dtype=np.float32))
    else:
        targets = result["targets"]
        assert header[first:] == (["prediction"] if len(targets) == 1 else [f"prediction_{t}" for t in targets])
        written = np.array([[float(v) for v in row[first:]] for row in rows])
        expected = np.array(result["predictions"], dtype=np.float64).reshape(len(rows), -1)
        np.testing.assert_array_equal(written, expected)  # float64, in the shortest form that reads back


# A classification with string labels, missing cells, a datetime and a date column, and an
# identifier column the model does not use (written all the same).
MIXED_COLUMNS = ["name", "weight", "color", "seen", "day", "label"]


def mixed_rows(n: int = 80) -> list[list[Any]]:
    rng = np.random.default_rng(1)
    rows = []
    for i in range(n):
        dog = i % 2 == 1
        weight = "" if i % 9 == 4 else round(float(rng.normal(25.0 if dog else 4.0, 2.0)), 2)
        color = "" if i % 7 == 3 else ("brown" if dog else "grey") if rng.random() < 0.8 else "black, white"
        seen = "" if i % 11 == 5 else f"2024-0{1 + i % 9}-{10 + i % 18}T{i % 24:02d}:{(7 * i) % 60:02d}:{i % 60:02d}"
        day = "" if i % 13 == 6 else f"2023-{1 + i % 12:02d}-{1 + i % 28:02d}"
        rows.append([f"pet{i}", weight, f'"{color}"' if "," in color else color, seen, day,
                     "dog" if dog else "cat"])
    return rows


@pytest.fixture
def mixed(client: Any, app: Any, upload_csv: Any) -> tuple[dict[str, Any], str, list[list[Any]]]:
    rows = mixed_rows()
    dataset = upload_csv(csv_text(MIXED_COLUMNS, rows), target="label").get_json()
    assert dataset["features"] == ["weight", "color", "seen", "day"], dataset
    model_id = train(client, app, dataset["id"], mlp(), epochs=3, batch_size=16)
    return dataset, model_id, rows


def test_csv_of_a_classification_with_string_labels_missing_cells_and_datetimes(client, app, mixed):
    dataset, model_id, rows = mixed
    state, data, response = predict_batch(client, app, model_id, dataset["id"])
    assert response.mimetype == "text/csv"
    assert state["status"] == "succeeded" and state["n_rows"] == len(rows) and state["format"] == "csv"
    assert state["media_type"] == "text/csv" and state["error"] is None and state["finished_at"]
    assert state["sha256"] == hashlib.sha256(data).hexdigest()
    header, written = read_csv(data)
    assert header[:len(MIXED_COLUMNS)] == MIXED_COLUMNS
    assert len(written) == len(rows)
    for row, source in zip(written, rows):
        name, weight, color, seen, day, label = row[:6]
        assert name == source[0]  # an identifier column the model does not use
        assert (weight == "") == (source[1] == "") and (weight == "" or float(weight) == pytest.approx(source[1]))
        assert color == source[2].strip('"')
        assert seen == source[3] and day == source[4] and label == source[5]
    check_against_predict(client, model_id, header, written, dataset_kinds(client, dataset["id"]))


def test_parquet_of_the_same_rows_is_typed_and_equal_to_the_csv(client, app, mixed):
    dataset, model_id, rows = mixed
    _, csv_data, _ = predict_batch(client, app, model_id, dataset["id"])
    state, data, response = predict_batch(client, app, model_id, dataset["id"], "parquet")
    assert response.mimetype == "application/vnd.apache.parquet" and data[:4] == b"PAR1"
    assert state["format"] == "parquet" and state["n_rows"] == len(rows)
    table = pq.read_table(io.BytesIO(data))
    types = {field.name: str(field.type) for field in table.schema}
    assert types == {"name": "string", "weight": "float", "color": "string", "seen": "timestamp[us]",
                     "day": "date32[day]", "label": "string", "prediction": "string",
                     "probability_cat": "float", "probability_dog": "float"}
    header, written = read_csv(csv_data)
    columns = table.to_pydict()
    assert columns["prediction"] == [row[6] for row in written]
    np.testing.assert_array_equal(np.array(columns["probability_dog"], dtype=np.float32),
                                  np.array([float(row[8]) for row in written], dtype=np.float32))
    assert [None if v is None else v.isoformat() for v in columns["seen"]] == [r[3] or None for r in rows]
    assert [None if v is None else v.isoformat() for v in columns["day"]] == [r[4] or None for r in rows]
    assert [v is None for v in columns["weight"]] == [r[1] == "" for r in rows]
    assert columns["color"] == [r[2].strip('"') or None for r in rows]


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_integer_labels(client, app, blobs_model, upload_csv, fmt):
    dataset = upload_csv(csv_text(BLOBS_COLUMNS, blobs_rows(30, seed=4))).get_json()
    _, data, _ = predict_batch(client, app, blobs_model, dataset["id"], fmt)
    if fmt == "parquet":
        table = pq.read_table(io.BytesIO(data))
        assert str(table.schema.field("prediction").type) == "int64"
        assert set(table.column("prediction").to_pylist()) <= {0, 1}
        header = table.column_names
        written = [["" if v is None else str(v) for v in row.values()] for row in table.to_pylist()]
    else:
        header, written = read_csv(data)
    assert header == BLOBS_COLUMNS + ["prediction", "probability_0", "probability_1"]
    check_against_predict(client, blobs_model, header, written, dataset_kinds(client, dataset["id"]))


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_regression_with_one_and_two_targets(client, app, upload_csv, fmt):
    one = upload_csv(csv_text(["a", "b", "price"], linear_rows(60))).get_json()
    model_one = train(client, app, one["id"], mlp(outputs=1), epochs=3, batch_size=16)
    rng = np.random.default_rng(2)
    rows = [[round(float(x), 3), "" if i % 5 == 0 else round(float(rng.normal()), 3), round(2 * float(x), 3),
             round(float(-x) + 100, 3)] for i, x in enumerate(rng.normal(size=60))]
    two = upload_csv(csv_text(["x", "z", "y1", "y2"], rows), target="y1,y2").get_json()
    model_two = train(client, app, two["id"], mlp(outputs=2), epochs=3, batch_size=16)
    for dataset, model_id, outputs in ((one, model_one, ["prediction"]),
                                       (two, model_two, ["prediction_y1", "prediction_y2"])):
        _, data, _ = predict_batch(client, app, model_id, dataset["id"], fmt)
        if fmt == "parquet":
            table = pq.read_table(io.BytesIO(data))
            assert [str(table.schema.field(o).type) for o in outputs] == ["double"] * len(outputs)
            header = table.column_names
            written = [["" if v is None else repr(float(v)) for v in row.values()] for row in table.to_pylist()]
        else:
            header, written = read_csv(data)
        assert header[len(dataset["columns"]):] == outputs
        check_against_predict(client, model_id, header, written, dataset_kinds(client, dataset["id"]))


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_small_chunks_write_the_same_file(client, app, mixed, monkeypatch, fmt):
    """Chunks of a few rows (a small activation budget) give the file one chunk gives."""
    import workers.batch_prediction as module

    dataset, model_id, rows = mixed
    _, whole, _ = predict_batch(client, app, model_id, dataset["id"], fmt)
    seen: list[int] = []
    original = module.chunk_rows

    def spy(scoring: Any) -> int:
        seen.append(original(scoring))
        return seen[-1]

    monkeypatch.setattr(module, "chunk_rows", spy)
    _, chunked, _ = predict_batch(client, app, model_id, dataset["id"], fmt,
                                  settings=job_settings(max_activation_floats=200))
    assert len(seen) == 1 and 1 < seen[0] < len(rows) / 3  # the budget made the chunks
    if fmt == "csv":
        assert chunked == whole
    else:  # a row group per chunk; the same rows
        assert pq.read_table(io.BytesIO(chunked)).equals(pq.read_table(io.BytesIO(whole)))
        assert pq.ParquetFile(io.BytesIO(chunked)).num_row_groups == math.ceil(len(rows) / seen[0])


def test_a_retry_after_a_lost_lease_writes_one_file(client, app, blobs_model, blobs, monkeypatch):
    """A worker that loses its lease while it writes stores nothing; the next attempt stores the file once."""
    from sqlalchemy import func, insert, select

    import workers.batch_prediction as module
    from service.core.db.tables import JobOutputChunk
    from tests.helpers import set_row

    monkeypatch.setattr(module, "PIECE_BYTES", 256)  # several pieces
    job_id = start(client, blobs_model, blobs["id"])["id"]
    original = module.write_predictions

    def then_lose(scoring: Any, *args: Any, **kwargs: Any) -> int:
        n = original(scoring, *args, **kwargs)
        set_row(app, job_id, owner="another-worker")  # the reaper gave the job to another worker meanwhile
        return n

    monkeypatch.setattr(module, "write_predictions", then_lose)
    assert run_batch(app, job_id, owner="first") == "lost"
    sessions = app.extensions["backprop.sessions"]
    with sessions() as session:
        assert session.scalar(select(func.count()).where(JobOutputChunk.job_id == job_id)) == 0
    monkeypatch.setattr(module, "write_predictions", original)
    assert problem(client.get(f"/v1/batch-predictions/{job_id}/download"), 409)["detail"].startswith(
        f"batch prediction {job_id} is running")
    with sessions() as session:  # left over, as from an attempt that could not have committed it: replaced
        session.execute(insert(JobOutputChunk).values(job_id=job_id, seq=99, data=b"stale"))
        session.commit()
    make_stale(app, job_id)
    assert run_batch(app, job_id, owner="second", settings=job_settings()) == "succeeded"
    state = client.get(f"/v1/batch-predictions/{job_id}").get_json()
    assert state["status"] == "succeeded" and state["attempt"] == job_row(app, job_id).attempt
    with sessions() as session:
        seqs = session.scalars(select(JobOutputChunk.seq).where(JobOutputChunk.job_id == job_id)
                               .order_by(JobOutputChunk.seq)).all()
    assert seqs == list(range(math.ceil(state["size_bytes"] / 256))) and len(seqs) > 1
    data = client.get(state["download"]).get_data()
    header, written = read_csv(data)
    assert len(data) == state["size_bytes"] and len(written) == 40 and header[-1] == "probability_1"


def test_not_found_invalid_and_not_ready(client, bob_client, app, blobs_model, blobs, upload_csv):
    assert problem(client.post("/v1/models/mdl_missing/batch-predictions", json={"dataset_id": blobs["id"]}),
                   404)["detail"]
    for body, field in (({}, "dataset_id"), ({"dataset_id": blobs["id"], "format": "xlsx"}, "format"),
                        ({"dataset_id": blobs["id"], "rows": 3}, "rows"), ({"dataset_id": "ds_missing"},
                                                                          "dataset_id")):
        errors = problem(client.post(f"/v1/models/{blobs_model}/batch-predictions", json=body), 422)["errors"]
        assert errors[0]["field"] == field, errors
    other = upload_csv(csv_text(["p", "q", "label"], [[1, 2, 0], [2, 3, 1], [3, 1, 0], [4, 4, 1]])).get_json()
    errors = problem(client.post(f"/v1/models/{blobs_model}/batch-predictions", json={"dataset_id": other["id"]}),
                     422)["errors"]
    assert errors[0]["field"] == "dataset_id" and "'a'" in errors[0]["message"]
    # Bob sees neither alice's model nor her batch prediction.
    assert problem(bob_client.post(f"/v1/models/{blobs_model}/batch-predictions",
                                   json={"dataset_id": blobs["id"]}), 404)
    job_id = start(client, blobs_model, blobs["id"])["id"]
    assert problem(bob_client.get(f"/v1/batch-predictions/{job_id}"), 404)
    assert problem(bob_client.get(f"/v1/batch-predictions/{job_id}/download"), 404)
    assert problem(client.get("/v1/batch-predictions/bp_missing/download"), 404)
    # Another kind's path does not see it, nor this path a training job.
    assert problem(client.get(f"/v1/jobs/{job_id}"), 404)
    training_job = client.get(f"/v1/models/{blobs_model}").get_json()["job_id"]
    assert problem(client.get(f"/v1/batch-predictions/{training_job}"), 404)
    body = problem(client.get(f"/v1/batch-predictions/{job_id}/download"), 409)
    assert body["type"].endswith("batch-prediction-not-ready") and "queued" in body["detail"]


def test_a_failed_batch_prediction_says_why_and_has_no_file(client, app, blobs_model, blobs, monkeypatch):
    import workers.batch_prediction as module

    job_id = start(client, blobs_model, blobs["id"])["id"]

    def broken(*args: Any, **kwargs: Any) -> int:
        raise MemoryError

    monkeypatch.setattr(module, "write_predictions", broken)
    assert run_batch(app, job_id) == "failed"
    state = client.get(f"/v1/batch-predictions/{job_id}").get_json()
    assert state["status"] == "failed" and "out of memory" in state["error"] and state["download"] is None
    assert state["n_rows"] is None and state["size_bytes"] is None
    body = problem(client.get(f"/v1/batch-predictions/{job_id}/download"), 409)
    assert "failed" in body["detail"] and "out of memory" in body["detail"]
    assert not list((Path(app.config["DATA_DIR"]) / "tmp").glob(f"{job_id}-*"))  # its file removed


def test_an_output_column_named_like_a_dataset_column_is_renamed(client, app, upload_csv):
    rows = [[*row[:4], row[4], row[4]] for row in blobs_rows(40)]
    dataset = upload_csv(csv_text(["a", "b", "c", "prediction", "probability_0", "label"], rows),
                         target="label").get_json()
    model_id = train(client, app, dataset["id"], mlp(), epochs=1)
    for fmt in ("csv", "parquet"):
        _, data, _ = predict_batch(client, app, model_id, dataset["id"], fmt)
        header = read_csv(data)[0] if fmt == "csv" else pq.read_table(io.BytesIO(data)).column_names
        assert header == ["a", "b", "c", "prediction", "probability_0", "label", "_prediction", "_probability_0",
                          "probability_1"]
