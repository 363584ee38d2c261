"""`backprop train --init-from-model / --time-limit` against the Flask test app (no processes).

requests is routed into Flask's test client by a transport adapter, so the real
Client and the real command build and send the request.
"""

from __future__ import annotations

import json

import pytest

from tests.cli_harness import cli_runner
from tests.conftest import BLOBS_COLUMNS, blobs_rows, csv_text
from tests.helpers import mlp

MLP = mlp()


@pytest.fixture
def backprop_cli(client, monkeypatch):
    """Run `backprop ARGS...` against the test app; return (exit code, output)."""
    return cli_runner(client, monkeypatch)


def test_train_sends_init_from_model_and_time_limit(client, app, upload_csv, tmp_path, backprop_cli):
    from workers.training import run_job

    dataset = upload_csv(csv_text(BLOBS_COLUMNS, blobs_rows(40))).get_json()
    network = tmp_path / "mlp.json"
    network.write_text(json.dumps(MLP))
    code, output = backprop_cli("train", "--dataset", dataset["id"], "--network", str(network),
                                "--epochs", "2", "--time-limit", "120")
    assert code == 0, output
    job_id = output.split()[1]
    job = client.get(f"/v1/jobs/{job_id}").get_json()
    assert job["time_limit_s"] == 120 and job["init_from_model"] is None
    assert run_job(job_id, sessions=app.extensions["backprop.sessions"], owner="t") == "succeeded"
    model_id = client.get(f"/v1/jobs/{job_id}").get_json()["model_id"]

    # No --network: the model's own network.
    code, output = backprop_cli("train", "--dataset", dataset["id"], "--init-from-model", model_id)
    assert code == 0, output
    warm = client.get(f"/v1/jobs/{output.split()[1]}").get_json()
    assert warm["init_from_model"] == model_id and warm["network"] == MLP and warm["time_limit_s"] is None

    code, output = backprop_cli("train", "--dataset", dataset["id"], "--init-from-model", "mdl_missing")
    assert code == 1 and "422" in output and "init_from_model" in output and "mdl_missing" in output
    code, output = backprop_cli("train", "--dataset", dataset["id"])
    assert code == 2 and "--init-from-model" in output
    code, output = backprop_cli("train", "--dataset", dataset["id"], "--network", str(network),
                                "--time-limit", "0")
    assert code == 2 and "--time-limit" in output


def test_upload_takes_format_and_na_values_and_train_takes_columns_and_class_weight(client, tmp_path,
                                                                                  backprop_cli):
    # JSON Lines told by --format (the name says nothing), with a null and an identifier column.
    lines = [json.dumps({"name": f"n{i}", "x": None if i == 3 else i % 7, "z": i % 3, "label": i % 2})
             for i in range(120)]
    path = tmp_path / "rows.txt"
    path.write_text("\n".join(lines) + "\n")
    code, output = backprop_cli("datasets", "upload", str(path), "--format", "jsonl")
    assert code == 0, output
    dataset = client.get(f"/v1/datasets/{output.split()[0]}").get_json()
    assert dataset["source"] == "jsonl" and dataset["features"] == ["x", "z"]
    assert "note: column 'name' has 120 distinct values" in output

    # "?" means missing; "NA" is then a value of a string column.
    csv_path = tmp_path / "table.csv"
    csv_path.write_text("a,b,label\n1,?,0\n2,NA,1\n3,x,0\n4,x,1\n")
    code, output = backprop_cli("datasets", "upload", str(csv_path), "--na-values", "?")
    assert code == 0, output
    columns = {c["name"]: c for c in client.get(f"/v1/datasets/{output.split()[0]}").get_json()["columns"]}
    assert columns["b"]["missing"] == 1 and columns["b"]["categories"] == ["NA", "x"]

    network = tmp_path / "mlp.json"
    network.write_text(json.dumps(MLP))
    code, output = backprop_cli("train", "--dataset", dataset["id"], "--network", str(network), "--epochs", "1",
                                "--features", "name,z", "--class-weight", '{"1": 2.5}')
    assert code == 0, output
    job = client.get(f"/v1/jobs/{output.split()[1]}").get_json()
    assert job["features"] == ["name", "z"] and job["training"]["class_weight"] == {"1": 2.5}
    code, output = backprop_cli("train", "--dataset", dataset["id"], "--network", str(network),
                                "--ignored-columns", "x", "--class-weight", "balanced", "--test-split", "0.25",
                                "--test-permutation-repeats", "0")
    assert code == 0, output
    job = client.get(f"/v1/jobs/{output.split()[1]}").get_json()
    assert job["features"] == ["z"] and job["training"]["class_weight"] == "balanced"
    assert job["training"]["test_split"] == 0.25 and job["training"]["test_permutation_repeats"] == 0
    code, output = backprop_cli("train", "--dataset", dataset["id"], "--network", str(network),
                                "--features", "nope")
    assert code == 1 and "422" in output and "'nope'" in output
    code, output = backprop_cli("train", "--dataset", dataset["id"], "--network", str(network),
                                "--class-weight", "{oops")
    assert code == 2 and "--class-weight" in output
