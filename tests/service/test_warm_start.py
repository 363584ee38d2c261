"""Job creation with `init_from_model` (warm start) and `time_limit_s`: checked before queuing."""

from __future__ import annotations

import pytest

from tests.conftest import BLOBS_COLUMNS, blobs_rows, csv_text, linear_rows, pets_rows
from tests.helpers import mlp, problem, train

pytestmark = pytest.mark.parametrize("backend", ["sqlite", "postgres"], indirect=True)

MLP = mlp()


def train_model(client, app, dataset_id: str, network: dict, **training) -> dict:
    """Train a small model for real (workers.training.run_job) and return it."""
    model_id = train(client, app, dataset_id, network, **{"epochs": 2, "batch_size": 8, **training})
    return client.get(f"/v1/models/{model_id}").get_json()


@pytest.fixture
def model(client, app, blobs) -> dict:
    return train_model(client, app, blobs["id"], MLP)


def create(client, **body):
    return client.post("/v1/jobs", json=body)


def test_without_a_network_the_job_takes_the_models_network_and_shows_its_source(client, queue, blobs, model):
    response = create(client, dataset_id=blobs["id"], init_from_model=model["id"], training={"epochs": 3})
    assert response.status_code == 202, response.get_json()
    job = response.get_json()
    assert job["init_from_model"] == model["id"] and job["network_id"] is None
    assert job["network"] == model["network"]["spec"] == MLP
    assert job["training"]["loss"] == model["loss"] == "cross_entropy"
    assert job["time_limit_s"] is None
    assert client.get(f"/v1/jobs/{job['id']}").get_json()["init_from_model"] == model["id"]
    assert queue.published[-1] == (job["id"], "cpu")


def test_an_inline_network_with_the_same_shapes_is_accepted(client, blobs, model):
    renamed = {"layers": [{"type": "dense", "units": 8, "activation": "tanh"}, {"type": "dropout", "rate": 0.1},
                          {"type": "dense", "units": 2}]}
    # Dropout shifts the stack's automatic names (dense_2): not the model's parameters.
    bad = problem(create(client, dataset_id=blobs["id"], init_from_model=model["id"], network=renamed), 422)
    assert {e["field"] for e in bad["errors"]} == {"init_from_model"}
    assert {e.get("node") for e in bad["errors"]} == {"dense_2", "dense_1"}
    same = mlp(activation="tanh")
    assert create(client, dataset_id=blobs["id"], init_from_model=model["id"], network=same).status_code == 202


def test_an_unknown_model_is_a_422_on_init_from_model(client, blobs):
    """As an unknown dataset_id or network_id: the request names something that is not there."""
    body = problem(create(client, dataset_id=blobs["id"], init_from_model="mdl_missing", network=MLP), 422)
    assert body["errors"] == [{"field": "init_from_model", "message": "no model with id 'mdl_missing'"}]


def test_a_width_mismatch_is_a_422_naming_the_node(client, blobs, model):
    wider = mlp((16,))
    body = problem(create(client, dataset_id=blobs["id"], init_from_model=model["id"], network=wider), 422)
    errors = [e for e in body["errors"] if e["field"] == "init_from_model"]
    assert errors and errors[0]["node"] == "dense_0"
    assert "16 units" in errors[0]["message"] and "8 units" in errors[0]["message"]
    # dense_1 takes 16 inputs instead of 8: named too.
    assert {e["node"] for e in errors} == {"dense_0", "dense_1"}


def test_a_dataset_of_other_columns_or_task_is_a_422(client, app, upload_csv, model):
    pets = upload_csv(csv_text(["weight", "color", "pet"], pets_rows(60))).get_json()
    body = problem(create(client, dataset_id=pets["id"], init_from_model=model["id"]), 422)
    messages = " ".join(e["message"] for e in body["errors"] if e["field"] == "init_from_model")
    assert "'weight'" in messages and "'a'" in messages and "label" in messages
    prices = upload_csv(csv_text(["a", "b", "price"], linear_rows(60))).get_json()
    body = problem(create(client, dataset_id=prices["id"], init_from_model=model["id"]), 422)
    assert any(e["field"] == "init_from_model" and "classification" in e["message"] for e in body["errors"])


def test_a_class_or_category_the_model_does_not_know_is_a_422(client, app, upload_csv, model):
    three = blobs_rows(40) + [[0.0, 0.0, 0.0, 0.0, 2]]
    dataset = upload_csv(csv_text(BLOBS_COLUMNS, three)).get_json()
    body = problem(create(client, dataset_id=dataset["id"], init_from_model=model["id"]), 422)
    assert [e["field"] for e in body["errors"]] == ["init_from_model"]
    assert "classes the model does not know: 2" in body["errors"][0]["message"]

    pets = upload_csv(csv_text(["weight", "color", "pet"], pets_rows(80))).get_json()
    pet_model = train_model(client, app, pets["id"],
                            mlp((4,), activation=None))
    purple = upload_csv(csv_text(["weight", "color", "pet"], pets_rows(80) + [[3.0, "purple", "cat"]])).get_json()
    body = problem(create(client, dataset_id=purple["id"], init_from_model=pet_model["id"]), 422)
    assert [e["field"] for e in body["errors"]] == ["init_from_model"]
    assert "'color'" in body["errors"][0]["message"] and "'purple'" in body["errors"][0]["message"]
    # The same data again: accepted, and the job keeps the model's preprocessing (docs/jobs.md).
    assert create(client, dataset_id=pets["id"], init_from_model=pet_model["id"]).status_code == 202


def test_another_loss_is_a_422(client, blobs, model):
    body = problem(create(client, dataset_id=blobs["id"], init_from_model=model["id"],
                          network=mlp(activation=None, outputs=1),
                          training={"loss": "binary_cross_entropy"}), 422)
    assert any(e["field"] == "init_from_model" and "cross_entropy" in e["message"] for e in body["errors"])


@pytest.mark.parametrize("network", [{"network": MLP, "network_id": "net_x"}, {}])
def test_at_most_one_network_and_one_unless_warm_started(client, blobs, network):
    body = problem(create(client, dataset_id=blobs["id"], **network), 422)
    assert "network" in body["errors"][0]["message"]


@pytest.mark.parametrize("value", [0, -1, 7 * 24 * 3600 + 1, 1e12, "5", True, [5]])
def test_absurd_time_limits_are_422s_naming_the_field(client, blobs, value):
    body = problem(create(client, dataset_id=blobs["id"], network=MLP, time_limit_s=value), 422)
    assert [e["field"] for e in body["errors"]] == ["time_limit_s"]


def test_the_time_limit_is_stored_and_shown(client, app, blobs):
    from service.core.db.tables import Job

    job = create(client, dataset_id=blobs["id"], network=MLP, time_limit_s=90.5).get_json()
    assert job["time_limit_s"] == 90.5
    assert client.get(f"/v1/jobs/{job['id']}").get_json()["time_limit_s"] == 90.5
    with app.extensions["backprop.sessions"]() as session:
        assert session.get(Job, job["id"]).time_limit_s == 90.5


def test_openapi_describes_both_fields(client):
    schema = client.get("/openapi.json").get_json()["components"]["schemas"]["JobCreate"]["properties"]
    limit = next(s for s in schema["time_limit_s"]["anyOf"] if s.get("type") == "number")
    assert limit["exclusiveMinimum"] == 0 and limit["maximum"] == 7 * 24 * 3600
    assert "init_from_model" in schema
