"""Network definitions: validate (every problem at once), store, read with parameter count."""

from __future__ import annotations

from tests.conftest import BLOBS_COLUMNS, blobs_rows, csv_text
from tests.helpers import mlp, problem

MLP = mlp()
GRAPH = {"nodes": [
    {"name": "h1", "type": "dense", "units": 4, "activation": "tanh", "inputs": ["input"]},
    {"name": "h2", "type": "dense", "units": 4, "activation": "tanh", "inputs": ["h1"]},
    {"name": "sum", "type": "add", "inputs": ["h1", "h2"]},
    {"name": "out", "type": "dense", "units": 2, "inputs": ["sum", "input"]}], "output": "out"}


def test_validate_reports_every_problem(client):
    bad = {"layers": [{"type": "dense", "units": 0}, {"type": "dense", "units": 3, "activation": "nope"},
                      {"type": "warp"}]}
    response = client.post("/v1/networks/validate", json=bad)
    assert response.status_code == 200
    body = response.get_json()
    assert body["valid"] is False
    fields = {p["field"] for p in body["problems"]}
    assert {"layers[0].units", "layers[1].activation", "layers[2].type"} <= fields


def test_validate_good_network_with_widths(client):
    body = client.post("/v1/networks/validate?input_dim=4&output_dim=2", json=MLP).get_json()
    assert body == {"valid": True, "problems": [], "input_dim": 4,
                    "parameter_count": 4 * 8 + 8 + 8 * 2 + 2}
    wrong = client.post("/v1/networks/validate?input_dim=4&output_dim=3", json=MLP).get_json()
    assert wrong["valid"] is False


def test_validate_graph_cycle_and_dangling_input(client):
    cyclic = {"nodes": [{"name": "a", "type": "dense", "units": 2, "inputs": ["b"]},
                        {"name": "b", "type": "dense", "units": 2, "inputs": ["a"]},
                        {"name": "c", "type": "dense", "units": 2, "inputs": ["ghost"]}]}
    body = client.post("/v1/networks/validate", json=cyclic).get_json()
    assert body["valid"] is False and len(body["problems"]) >= 1


def test_create_and_get_network_with_parameter_count(client, upload_csv):
    response = client.post("/v1/networks", json={"name": "skip", **GRAPH})
    assert response.status_code == 201, response.get_json()
    network = response.get_json()
    assert network["name"] == "skip" and "name" not in network["definition"]
    assert response.headers["Location"] == f"/v1/networks/{network['id']}"
    assert network["parameter_count"] is None
    fetched = client.get(f"/v1/networks/{network['id']}?input_dim=3").get_json()
    assert fetched["parameter_count"] == (3 * 4 + 4) + (4 * 4 + 4) + (7 * 2 + 2)
    dataset = upload_csv(csv_text(BLOBS_COLUMNS, blobs_rows(10))).get_json()
    by_dataset = client.get(f"/v1/networks/{network['id']}?dataset_id={dataset['id']}").get_json()
    assert by_dataset["input_dim"] == 4 and by_dataset["parameter_count"] == (4 * 4 + 4) + 20 + (8 * 2 + 2)
    listed = client.get("/v1/networks").get_json()
    assert [n["id"] for n in listed["items"]] == [network["id"]]
    assert client.delete(f"/v1/networks/{network['id']}").status_code == 204
    problem(client.get(f"/v1/networks/{network['id']}"), 404)


def test_create_invalid_network_is_422_with_fields(client):
    body = problem(client.post("/v1/networks", json={"layers": [{"type": "dense"}]}), 422)
    assert body["errors"][0]["field"] == "layers[0].units"
    body = problem(client.post("/v1/networks", json={"layers": "dense"}), 422)
    assert body["errors"][0]["field"].startswith("layers")
    problem(client.post("/v1/networks", json=[1, 2]), 422)
    problem(client.post("/v1/networks", data="x", content_type="text/plain"), 415)
    problem(client.get("/v1/networks/net_x?input_dim=-1"), 422)
    problem(client.get("/v1/networks/net_x?dataset_id=ds_missing"), 422)
