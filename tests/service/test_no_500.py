"""Malformed input of every kind gets a problem document, never a 500."""

from __future__ import annotations

import pytest

from tests.conftest import csv_text, pets_rows
from tests.helpers import mlp, train

GARBAGE = [None, 0, -1, 1e308, "x", "", [], {}, [[]], [None], {"a": None}, True, [1, [2, [3]]],
           {"layers": None}, 10**400]


def _keys() -> list[str]:
    return ["dataset_id", "network", "network_id", "training", "device", "inputs", "records", "columns",
            "data", "target", "task", "name", "layers", "nodes", "output"]


@pytest.fixture
def model_id(client, app, upload_csv) -> str:
    dataset = upload_csv(csv_text(["weight", "color", "pet"], pets_rows(40))).get_json()
    return train(client, app, dataset["id"], mlp(hidden=()), epochs=1)


def test_garbage_bodies_never_get_500(client, model_id):
    paths = ["/v1/datasets", "/v1/networks", "/v1/networks/validate", "/v1/jobs",
             f"/v1/models/{model_id}/predict", "/v1/jobs/job_x/cancel"]
    for path in paths:
        for value in GARBAGE:
            for body in ({key: value for key in _keys()}, *({key: value} for key in _keys()), value):
                response = client.post(path, json=body)
                assert response.status_code < 500, (path, body, response.get_data(as_text=True))
        for raw in (b"", b"{", b"\xff\xfe", b"[1,2", b'{"a": NaN}'):
            response = client.post(path, data=raw, content_type="application/json")
            assert response.status_code < 500, (path, raw)


def test_garbage_predict_rows_never_get_500(client, model_id):
    for value in GARBAGE:
        for body in ({"inputs": [value]}, {"inputs": [[value, value]]}, {"inputs": [[1.0, value]]},
                     {"records": [value]}, {"records": [{"weight": value, "color": value}]},
                     {"inputs": value}, {"records": value}):
            response = client.post(f"/v1/models/{model_id}/predict", json=body)
            assert response.status_code in (200, 422), (body, response.get_data(as_text=True))


def test_garbage_networks_never_get_500(client, upload_csv):
    dataset = upload_csv(csv_text(["weight", "color", "pet"], pets_rows(20))).get_json()
    for node in GARBAGE + [{"type": "dense", "units": value} for value in GARBAGE] + [
            {"type": value} for value in GARBAGE] + [{"type": "dense", "units": 2, "inputs": value}
                                                     for value in GARBAGE]:
        for network in ({"layers": [node]}, {"nodes": [node]}, {"nodes": [node], "output": node}):
            for path in ("/v1/networks/validate?input_dim=3", "/v1/networks"):
                assert client.post(path, json=network).status_code < 500, (path, network)
            response = client.post("/v1/jobs", json={"dataset_id": dataset["id"], "network": network})
            assert response.status_code < 500, network


def test_garbage_query_strings_never_get_500(client):
    for query in ("limit=abc", "limit=99999999999999999999", "cursor=%00", "status=%ff", "limit=-5",
                  "input_dim=0", "input_dim=1e9", "dataset_id="):
        for path in ("/v1/datasets", "/v1/jobs", "/v1/models", "/v1/networks", "/v1/networks/net_x"):
            assert client.get(f"{path}?{query}").status_code < 500, (path, query)
