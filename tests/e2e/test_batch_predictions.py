"""A batch prediction through the real API, a real Celery worker and a streamed download, on both backends."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.e2e.conftest import write_csv

pytestmark = pytest.mark.slow


def test_downloaded_predictions_equal_predict_for_the_same_rows(stack, pets: dict[str, Any],
                                                                tmp_path: Path) -> None:
    dataset = stack.upload_csv(pets["csv"], name="pets", target="animal")
    job = stack.train({"dataset_id": dataset["id"],
                       "network": {"layers": [{"type": "dense", "units": 16, "activation": "tanh"},
                                              {"type": "dense", "units": 2}]},
                       "training": {"epochs": 5, "learning_rate": 0.01, "seed": 0}})
    model_id = job["model_id"]
    # The held-out rows, every seventh weight missing, as a dataset of their own.
    rows = [["" if i % 7 == 0 else row[0], *row[1:]] for i, row in enumerate(pets["test"])]
    scored = stack.upload_csv(write_csv(tmp_path / "held_out.csv", [*pets["columns"], "animal"], rows),
                              target="animal")
    client = stack.api_client()
    files = {}
    for fmt in ("csv", "parquet"):
        state = client.create_batch_prediction(model_id, scored["id"], fmt)
        assert state["id"].startswith("bp_") and state["status"] == "queued"
        state = client.wait_batch_prediction(state["id"], poll_s=stack.poll_s, timeout=120)
        assert state["status"] == "succeeded", state
        path = tmp_path / f"scored.{fmt}"
        assert client.download_batch_prediction(state["id"], path) == state["size_bytes"]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == state["sha256"]
        assert state["n_rows"] == len(rows)
        files[fmt] = path

    with files["csv"].open(newline="") as handle:
        written = list(csv.reader(handle))
    header, written = written[0], written[1:]
    assert header == [*pets["columns"], "animal", "prediction", "probability_cat", "probability_dog"]
    # The numeric columns hold the uploaded values, each in its own column (a shifted or swapped
    # column cannot pass): the shortest form of the stored float32 reads back as the uploaded decimal.
    uploaded = {"weight_kg": [None if row[0] == "" else float(row[0]) for row in rows],
                "height_cm": [float(row[1]) for row in rows]}
    for name, values in uploaded.items():
        column = header.index(name)
        assert [float(r[column]) if r[column] else None for r in written] == values, name
    records = [{"weight_kg": float(r[0]) if r[0] else None, "height_cm": float(r[1]), "colour": r[2]}
               for r in written]
    assert [r["colour"] for r in records] == [row[2] for row in rows]
    result = stack.predict(model_id, {"records": records})
    assert [r[4] for r in written] == result["predictions"]
    np.testing.assert_array_equal(np.array([[float(r[5]), float(r[6])] for r in written], dtype=np.float32),
                                  np.array(result["probabilities"], dtype=np.float32))

    table = pq.read_table(files["parquet"]).to_pydict()
    assert table["prediction"] == result["predictions"]
    for name, values in uploaded.items():  # float32 columns: the uploaded values at that precision
        assert table[name] == [None if v is None else float(np.float32(v)) for v in values], name
    assert [w is None for w in table["weight_kg"]] == [row[0] == "" for row in rows]
    np.testing.assert_array_equal(np.array(table["probability_dog"], dtype=np.float32),
                                  np.array(result["probabilities"], dtype=np.float32)[:, 1])
