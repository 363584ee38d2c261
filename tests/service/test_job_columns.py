"""A job chooses its columns: `features` or `ignored_columns`, checked at creation, used by the worker."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from tests.helpers import both_databases, create_job, job_row, mlp, problem, run_job, set_row

pytestmark = both_databases

COLUMNS = ["a", "b", "c", "name", "const", "label"]
N_ROWS = 120


def _rows(n: int = N_ROWS) -> list[list[Any]]:
    """a and b separate the label, c is noise; name is unique per row (an identifier), const one value."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        label = i % 2
        a, b = rng.normal(3.0 * label, 0.5, size=2)
        rows.append([round(float(a), 4), round(float(b), 4), round(float(rng.normal()), 4), f"person {i}", 7, label])
    return rows


@pytest.fixture
def dataset(client: Any) -> dict[str, Any]:
    response = client.post("/v1/datasets", json={"name": "people", "columns": COLUMNS, "data": _rows()})
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def _job(client: Any, dataset: dict[str, Any], **body: Any) -> Any:
    return client.post("/v1/jobs", json={"dataset_id": dataset["id"], "network": mlp(),
                                         "training": {"epochs": 2, "batch_size": 16}, **body})


def _fields(response: Any) -> list[str]:
    return [e["field"] for e in problem(response, 422)["errors"]]


def test_by_default_identifier_and_constant_columns_are_left_out(client: Any, dataset: dict[str, Any]) -> None:
    assert dataset["features"] == ["a", "b", "c"]
    response = _job(client, dataset)
    assert response.status_code == 202, response.get_json()
    assert response.get_json()["features"] == ["a", "b", "c"]


def test_features_choose_the_columns_and_the_model_records_them(client: Any, app: Any,
                                                                 dataset: dict[str, Any]) -> None:
    # Named in another order: the job takes them in the dataset's column order.
    response = _job(client, dataset, features=["b", "a"])
    assert response.status_code == 202, response.get_json()
    job = response.get_json()
    assert job["features"] == ["a", "b"]
    assert client.get(f"/v1/jobs/{job['id']}").get_json()["features"] == ["a", "b"]
    assert run_job(app, job["id"]) == "succeeded"
    model_id = client.get(f"/v1/jobs/{job['id']}").get_json()["model_id"]
    model = client.get(f"/v1/models/{model_id}").get_json()
    assert model["features"] == ["a", "b"]
    assert [f["name"] for f in model["preprocessing"]["features"]] == ["a", "b"]
    assert client.get("/v1/models").get_json()["items"][0]["n_features"] == 2
    # The model takes rows of its two columns.
    predicted = client.post(f"/v1/models/{model_id}/predict", json={"inputs": [[0.0, 0.0], [3.0, 3.0]]})
    assert predicted.status_code == 200, predicted.get_json()


def test_features_may_name_identifier_and_constant_columns(client: Any, app: Any, dataset: dict[str, Any]) -> None:
    job = _job(client, dataset, features=["a", "const", "name"]).get_json()
    assert job["features"] == ["a", "name", "const"]
    assert run_job(app, job["id"]) == "succeeded"
    model = client.get(f"/v1/models/{job_row(app, job['id']).model_id}").get_json()
    assert model["features"] == ["a", "name", "const"]


def test_ignored_columns_leave_columns_out_of_the_default_set(client: Any, app: Any,
                                                              dataset: dict[str, Any]) -> None:
    # An identifier is not in the default set: ignoring it changes nothing.
    job = _job(client, dataset, ignored_columns=["c", "name"]).get_json()
    assert job["features"] == ["a", "b"]
    assert run_job(app, job["id"]) == "succeeded"
    model = client.get(f"/v1/models/{job_row(app, job['id']).model_id}").get_json()
    assert model["features"] == ["a", "b"]
    assert _job(client, dataset, ignored_columns=[]).get_json()["features"] == ["a", "b", "c"]


def test_features_and_ignored_columns_together_are_a_422(client: Any, dataset: dict[str, Any]) -> None:
    body = problem(_job(client, dataset, features=["a"], ignored_columns=["b"]), 422)
    assert body["errors"] == [{"field": "ignored_columns", "message": "give features or ignored_columns, not both"}]


@pytest.mark.parametrize("field", ["features", "ignored_columns"])
def test_an_unknown_column_is_a_422_naming_it_and_listing_the_columns(client: Any, dataset: dict[str, Any],
                                                                      field: str) -> None:
    body = problem(_job(client, dataset, **{field: ["a", "weight"]}), 422)
    [error] = body["errors"]
    assert error["field"] == f"{field}[1]"
    assert "'weight'" in error["message"]
    assert all(repr(name) in error["message"] for name in COLUMNS)


@pytest.mark.parametrize("field", ["features", "ignored_columns"])
def test_the_target_named_is_a_422(client: Any, dataset: dict[str, Any], field: str) -> None:
    body = problem(_job(client, dataset, **{field: ["label"]}), 422)
    [error] = body["errors"]
    assert error["field"] == f"{field}[0]" and "'label'" in error["message"] and "target" in error["message"]


def test_a_name_twice_is_a_422(client: Any, dataset: dict[str, Any]) -> None:
    assert _fields(_job(client, dataset, features=["a", "b", "a"])) == ["features[2]"]


def test_no_feature_left_is_a_422(client: Any, dataset: dict[str, Any]) -> None:
    assert _fields(_job(client, dataset, features=[])) == ["features"]
    body = problem(_job(client, dataset, ignored_columns=["a", "b", "c"]), 422)
    assert [e["field"] for e in body["errors"]] == ["ignored_columns"]
    assert "no feature column is left" in body["errors"][0]["message"]


def test_a_dataset_without_default_features_needs_features_named(client: Any) -> None:
    rows = [[f"person {i}", 7, i % 2] for i in range(N_ROWS)]
    response = client.post("/v1/datasets", json={"columns": ["name", "const", "label"], "data": rows})
    assert response.status_code == 201, response.get_json()
    dataset = response.get_json()
    assert dataset["features"] == []
    [error] = problem(_job(client, dataset), 422)["errors"]
    assert error["field"] == "features" and "no feature column" in error["message"]
    assert _job(client, dataset, features=["name"]).get_json()["features"] == ["name"]


def test_the_network_is_checked_against_the_chosen_columns_width(client: Any, dataset: dict[str, Any]) -> None:
    """The 120 names are 120 one-hot inputs: the budget follows the chosen columns, not the dataset's."""
    app_config = client.application.config
    wide = mlp((2000,))
    app_config["MAX_PARAMETERS"] = 100_000
    assert _job(client, dataset, network=wide, features=["a", "b"]).status_code == 202
    fields = _fields(_job(client, dataset, network=wide, features=["a", "b", "name"]))
    assert fields and all(f.startswith("network") for f in fields)


def test_a_job_without_features_trains_on_the_datasets(client: Any, app: Any, dataset: dict[str, Any]) -> None:
    """A job made before jobs chose columns has none stored: the worker takes the dataset's features."""
    job_id = _job(client, dataset).get_json()["id"]
    set_row(app, job_id, features=None)
    assert client.get(f"/v1/jobs/{job_id}").get_json()["features"] is None
    assert run_job(app, job_id) == "succeeded"
    model = client.get(f"/v1/models/{job_row(app, job_id).model_id}").get_json()
    assert model["features"] == dataset["features"]


def test_a_warm_start_uses_the_models_features(client: Any, app: Any, dataset: dict[str, Any]) -> None:
    job = _job(client, dataset, features=["a", "b"]).get_json()
    assert run_job(app, job["id"]) == "succeeded"
    model_id = job_row(app, job["id"]).model_id
    # No features named: the model's, although the dataset's are a, b and c.
    warm = create_job(client, dataset_id=dataset["id"], init_from_model=model_id, training={"epochs": 1})
    assert client.get(f"/v1/jobs/{warm}").get_json()["features"] == ["a", "b"]
    assert run_job(app, warm) == "succeeded"
    assert client.get(f"/v1/models/{job_row(app, warm).model_id}").get_json()["features"] == ["a", "b"]
    # The same ones named, in any order, or a column the model does not use ignored: accepted.
    assert client.post("/v1/jobs", json={"dataset_id": dataset["id"], "init_from_model": model_id,
                                         "features": ["b", "a"]}).status_code == 202
    assert client.post("/v1/jobs", json={"dataset_id": dataset["id"], "init_from_model": model_id,
                                         "ignored_columns": ["c"]}).status_code == 202
    # Others: a 422 naming the field and the model's features.
    for body in ({"features": ["a", "b", "c"]}, {"features": ["a"]}, {"ignored_columns": ["a"]}):
        response = client.post("/v1/jobs", json={"dataset_id": dataset["id"], "init_from_model": model_id, **body})
        [error] = problem(response, 422)["errors"]
        assert error["field"] == next(iter(body)) and "'a', 'b'" in error["message"]


def test_a_warm_start_needs_the_models_columns_not_the_same_default_set(client: Any, app: Any,
                                                                        dataset: dict[str, Any]) -> None:
    """A dataset with more columns than the model takes is fine; one lacking a model column is not."""
    job = _job(client, dataset, features=["a", "b"]).get_json()
    assert run_job(app, job["id"]) == "succeeded"
    model_id = job_row(app, job["id"]).model_id
    rows = _rows()
    narrow = client.post("/v1/datasets", json={"columns": ["a", "c", "label"],
                                               "data": [[r[0], r[2], r[5]] for r in rows]}).get_json()
    response = client.post("/v1/jobs", json={"dataset_id": narrow["id"], "init_from_model": model_id})
    [error] = problem(response, 422)["errors"]
    assert error["field"] == "init_from_model" and "'b'" in error["message"]


def test_openapi_describes_the_fields(client: Any) -> None:
    schemas = client.get("/openapi.json").get_json()["components"]["schemas"]
    assert {"features", "ignored_columns"} <= set(schemas["JobCreate"]["properties"])
    assert {"not": {"required": ["features", "ignored_columns"],
                    "properties": {"features": {"type": "array"}, "ignored_columns": {"type": "array"}}}} \
        in schemas["JobCreate"]["allOf"]
    assert "features" in schemas["Job"]["properties"]
