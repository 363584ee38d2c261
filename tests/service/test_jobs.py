"""Job creation (validation before queuing, commit then publish), reading, listing, cancelling."""

from __future__ import annotations

import pytest

from tests.conftest import csv_text, linear_rows, pets_rows
from tests.helpers import mlp, problem, set_row, submit

# The store runs on SQLite everywhere and on PostgreSQL where it is reachable.
pytestmark = pytest.mark.parametrize("backend", ["sqlite", "postgres"], indirect=True)

MLP = mlp()


def test_create_job_commits_then_publishes(client, app, queue, blobs):
    from service.core.db.tables import Job

    response = client.post("/v1/jobs", json={"dataset_id": blobs["id"], "network": MLP,
                                             "training": {"epochs": 3, "batch_size": 8}})
    assert response.status_code == 202, response.get_json()
    job = response.get_json()
    assert response.headers["Location"] == f"/v1/jobs/{job['id']}"
    assert job["status"] == "queued" and job["progress"] == {"epoch": 0, "epochs": 3}
    assert job["training"]["loss"] == "cross_entropy" and job["training"]["learning_rate"] == 0.001
    assert job["model_id"] is None and job["error"] is None
    assert queue.published == [(job["id"], "cpu")]
    with app.extensions["backprop.sessions"]() as session:
        assert session.get(Job, job["id"]).status == "queued"
    assert client.get(job["id"].join(["/v1/jobs/", ""])).get_json()["id"] == job["id"]


def test_gpu_jobs_go_to_the_gpu_queue(client, queue, blobs):
    response = client.post("/v1/jobs", json={"dataset_id": blobs["id"], "network": MLP, "device": "gpu"})
    assert response.status_code == 202
    assert queue.published[-1][1] == "gpu"


def test_regression_dataset_defaults_to_mse(client, upload_csv):
    dataset = upload_csv(csv_text(["a", "b", "price"], linear_rows(20))).get_json()
    network = mlp((4,), "tanh", 1)
    job = client.post("/v1/jobs", json={"dataset_id": dataset["id"], "network": network}).get_json()
    assert job["training"]["loss"] == "mse"


def test_job_by_network_id(client, blobs):
    network = client.post("/v1/networks", json=MLP).get_json()
    response = client.post("/v1/jobs", json={"dataset_id": blobs["id"], "network_id": network["id"]})
    assert response.status_code == 202
    assert response.get_json()["network_id"] == network["id"]


@pytest.mark.parametrize("training, field", [
    ({"batch_size": 0}, "training.batch_size"),
    ({"learning_rate": -1}, "training.learning_rate"),
    ({"epochs": 1_000_000_000}, "training.epochs"),
    ({"validation_split": 1.0}, "training.validation_split"),
    ({"optimizer": "lbfgs"}, "training.optimizer"),
    ({"loss": "mse"}, "training.loss"),
    ({"loss": "hinge"}, "training.loss"),
    ({"bogus": 1}, "training.bogus"),
    ({"epochs": "many"}, "training.epochs"),
])
def test_bad_training_fields_are_422(client, queue, blobs, training, field):
    body = problem(client.post("/v1/jobs", json={"dataset_id": blobs["id"], "network": MLP,
                                                 "training": training}), 422)
    assert field in [e["field"] for e in body["errors"]], body
    assert queue.published == []


def test_every_bad_field_at_once(client, blobs):
    body = problem(client.post("/v1/jobs", json={"dataset_id": blobs["id"], "network": MLP, "training": {
        "batch_size": 0, "learning_rate": 0, "seed": -1}}), 422)
    assert {"training.batch_size", "training.learning_rate", "training.seed"} <= {e["field"] for e in body["errors"]}


def test_network_that_does_not_fit_the_dataset_names_the_node(client, queue, blobs):
    wrong_output = mlp(activation=None, outputs=3)
    body = problem(client.post("/v1/jobs", json={"dataset_id": blobs["id"], "network": wrong_output}), 422)
    assert body["errors"][0]["field"] == "network.layers[1].units"
    assert body["errors"][0]["node"] == "dense_1"
    graph = {"nodes": [{"name": "a", "type": "dense", "units": 8, "inputs": ["input"]},
                       {"name": "b", "type": "add", "inputs": ["a", "input"]},
                       {"name": "c", "type": "dense", "units": 2, "inputs": ["b"]}]}
    body = problem(client.post("/v1/jobs", json={"dataset_id": blobs["id"], "network": graph}), 422)
    assert body["errors"][0]["field"] == "network.nodes[1].inputs"
    assert queue.published == []


def test_binary_cross_entropy_needs_one_output_and_two_classes(client, blobs, upload_csv):
    one = mlp((4,), outputs=1)
    ok = client.post("/v1/jobs", json={"dataset_id": blobs["id"], "network": one,
                                       "training": {"loss": "binary_cross_entropy"}})
    assert ok.status_code == 202
    three = upload_csv(csv_text(["x", "y"], [[i, i % 3] for i in range(12)])).get_json()
    body = problem(client.post("/v1/jobs", json={"dataset_id": three["id"], "network": one,
                                                 "training": {"loss": "binary_cross_entropy"}}), 422)
    assert body["errors"][0]["field"] == "training.loss"


def test_string_features_widen_the_input(client, upload_csv):
    pets = upload_csv(csv_text(["weight", "color", "pet"], pets_rows(20))).get_json()
    concat_input = {"nodes": [{"name": "h", "type": "dense", "units": 4, "inputs": ["input"]},
                              {"name": "s", "type": "add", "inputs": ["h", "input"]},
                              {"name": "o", "type": "dense", "units": 2, "inputs": ["s"]}]}
    width = pets["input_width"]
    assert width == 4  # weight + three colours
    response = client.post("/v1/jobs", json={"dataset_id": pets["id"], "network": concat_input})
    assert response.status_code == 202, response.get_json()


@pytest.mark.parametrize("payload, field", [
    ({"network": MLP}, "dataset_id"),
    ({"dataset_id": "ds_missing", "network": MLP}, "dataset_id"),
    ({"dataset_id": "DATASET"}, ""),
    ({"dataset_id": "DATASET", "network": MLP, "network_id": "net_x"}, ""),
    ({"dataset_id": "DATASET", "network_id": "net_missing"}, "network_id"),
    ({"dataset_id": "DATASET", "network": MLP, "device": "tpu"}, "device"),
    ({"dataset_id": "DATASET", "network": {"layers": 5}}, "network.layers"),
])
def test_bad_job_requests_are_422(client, blobs, payload, field):
    payload = {k: (blobs["id"] if v == "DATASET" else v) for k, v in payload.items()}
    body = problem(client.post("/v1/jobs", json=payload), 422)
    assert field in [e["field"] for e in body["errors"]]


def test_broker_down_is_503_and_the_job_fails_with_a_reason(client, queue, blobs):
    queue.down = True
    body = problem(client.post("/v1/jobs", json={"dataset_id": blobs["id"], "network": MLP}), 503)
    job_id = body["detail"].split()[1]
    job = client.get(f"/v1/jobs/{job_id}").get_json()
    assert job["status"] == "failed" and "queue could not be reached" in job["error"]


def test_list_filters_by_status_and_cancel_a_queued_job(client, blobs):
    ids = [submit(client, blobs["id"], MLP) for _ in range(3)]
    response = client.post(f"/v1/jobs/{ids[0]}/cancel")
    assert response.status_code == 202 and response.get_json()["status"] == "cancelled"
    assert client.post(f"/v1/jobs/{ids[0]}/cancel").status_code == 202  # twice is harmless
    queued = client.get("/v1/jobs?status=queued").get_json()["items"]
    assert sorted(j["id"] for j in queued) == sorted(ids[1:])
    cancelled = client.get("/v1/jobs?status=cancelled").get_json()["items"]
    assert [j["id"] for j in cancelled] == [ids[0]]
    assert len(client.get("/v1/jobs").get_json()["items"]) == 3
    problem(client.get("/v1/jobs?status=done"), 422)
    problem(client.get("/v1/jobs/job_missing"), 404)
    problem(client.get("/v1/jobs/job_missing/metrics"), 404)
    problem(client.post("/v1/jobs/job_missing/cancel"), 404)
    assert client.get(f"/v1/jobs/{ids[1]}/metrics").get_json()["epochs"] == []


def test_cancel_a_running_job_sets_the_flag_and_a_finished_one_is_409(client, app, blobs):
    job_id = submit(client, blobs["id"], MLP)
    set_row(app, job_id, status="running")
    body = client.post(f"/v1/jobs/{job_id}/cancel").get_json()
    assert body["status"] == "running" and body["cancel_requested"] is True
    set_row(app, job_id, status="succeeded")
    problem(client.post(f"/v1/jobs/{job_id}/cancel"), 409)


def test_dataset_in_use_cannot_be_deleted(client, blobs):
    submit(client, blobs["id"], MLP)
    problem(client.delete(f"/v1/datasets/{blobs['id']}"), 409)


def test_training_and_network_problems_come_together(client, blobs):
    wrong_output = mlp(activation=None, outputs=3)
    body = problem(client.post("/v1/jobs", json={"dataset_id": blobs["id"], "network": wrong_output,
                                                 "training": {"loss": "mse"}}), 422)
    assert [e["field"] for e in body["errors"]] == ["training.loss"]  # output width unknown without a loss
    bad_units = {"layers": [{"type": "dense", "units": 0}, {"type": "dense", "units": 2}]}
    body = problem(client.post("/v1/jobs", json={"dataset_id": blobs["id"], "network": bad_units,
                                                 "training": {"loss": "mse"}}), 422)
    assert {"training.loss", "network.layers[0].units"} <= {e["field"] for e in body["errors"]}
