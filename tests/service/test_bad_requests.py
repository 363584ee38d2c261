"""A catalogue of bad requests: each named case is a request and the answer it must get.

Every answer is an application/problem+json document (RFC 9457) with the status of
the case; `fields` are the exact `errors[].field` values it must name (none for a
problem about the request as a whole: its media type, its size, its JSON syntax, an
unknown id in the path). `{dataset}`, `{network}`, `{job}` and `{model}` in a path or
a body stand for the ids of real resources of those kinds, made for the cases that
use them: an id of the wrong kind must be told apart from a well-formed request.
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.conftest import BLOBS_COLUMNS, blobs_rows, csv_text, pets_rows
from tests.helpers import mlp, run_job, submit

PROBLEM_JSON = "application/problem+json"
NO_BODY = object()
MLP = mlp((4,))
GOOD_CSV = csv_text(["a", "b", "label"], [[i, i * 0.5, i % 2] for i in range(8)])


@dataclass(frozen=True)
class Bad:
    """One bad request and the problem it must get."""

    name: str
    method: str
    path: str
    status: int
    fields: tuple[str, ...] = ()
    json: Any = NO_BODY
    data: bytes | None = None
    content_type: str | None = None
    multipart: bool = False  # a multipart dataset upload of
    upload: bytes | None = None  # this file (none when None)
    form: dict[str, str] = field(default_factory=dict)  # and these fields


def post(name: str, path: str, body: Any, status: int, *fields: str) -> Bad:
    return Bad(name, "POST", path, status, fields, json=body)


def raw(name: str, path: str, data: bytes | str, content_type: str | None, status: int, *fields: str) -> Bad:
    return Bad(name, "POST", path, status, fields, data=data.encode() if isinstance(data, str) else data,
               content_type=content_type)


def get(name: str, path: str, status: int, *fields: str) -> Bad:
    return Bad(name, "GET", path, status, fields)


def delete(name: str, path: str, status: int, *fields: str) -> Bad:
    return Bad(name, "DELETE", path, status, fields)


def upload(name: str, text: bytes | str | None, status: int, *fields: str, **form: str) -> Bad:
    return Bad(name, "POST", "/v1/datasets", status, fields, multipart=True,
               upload=text.encode() if isinstance(text, str) else text, form=form)


def job(training: dict[str, Any] | None = None, **body: Any) -> dict[str, Any]:
    """A job request on the blobs dataset (four numeric features, two classes)."""
    return {"dataset_id": "{dataset}", "network": MLP, **({"training": training} if training else {}), **body}


def chain(n: int, units: int = 2) -> dict[str, Any]:
    """A graph of n dense nodes in a row."""
    return {"nodes": [{"name": f"n{i}", "type": "dense", "units": units,
                       "inputs": ["input" if i == 0 else f"n{i - 1}"]} for i in range(n)],
            "output": f"n{n - 1}"}


CYCLE = {"nodes": [{"name": "a", "type": "dense", "units": 2, "inputs": ["input", "c"]},
                   {"name": "b", "type": "dense", "units": 2, "inputs": ["a"]},
                   {"name": "c", "type": "dense", "units": 2, "inputs": ["b"]},
                   {"name": "out", "type": "dense", "units": 2, "inputs": ["c"]}], "output": "out"}
BILLION = {"layers": [{"type": "dense", "units": 1_000_000_000}, {"type": "dense", "units": 2}]}
# Two hidden layers within MAX_UNITS whose product is 10^12 weights: over the budget
# whatever the input width, so refused even where that width is not known.
WIDE = {"layers": [{"type": "dense", "units": 1_000_000}, {"type": "dense", "units": 1_000_000},
                   {"type": "dense", "units": 2}]}
PREDICT = "/v1/models/{model}/predict"  # the pets model: weight (numeric), color (string) -> cat/dog

CASES = [
    # -- the body as a whole --------------------------------------------------------
    raw("malformed JSON", "/v1/networks", '{"layers": [', "application/json", 400),
    raw("trailing comma", "/v1/jobs", '{"dataset_id": "x",}', "application/json", 400),
    raw("empty JSON body", "/v1/networks/validate", "", "application/json", 400),
    raw("JSON body not UTF-8", "/v1/networks", b'{"name": "\xff"}', "application/json", 400),
    post("JSON body is an array", "/v1/jobs", [1, 2], 422, ""),
    post("JSON body is null", "/v1/networks", None, 422, ""),
    raw("text/plain to a JSON route", "/v1/networks", "layers", "text/plain", 415),
    raw("form-encoded job", "/v1/jobs", "dataset_id=x", "application/x-www-form-urlencoded", 415),
    raw("no content type", "/v1/jobs", '{"dataset_id": "x"}', None, 415),
    raw("XML dataset", "/v1/datasets", "<rows/>", "application/xml", 415),
    raw("XML predict", PREDICT, "<rows/>", "application/xml", 415),
    raw("oversize JSON body", "/v1/networks", b'{"name": "' + b"x" * (3 << 20) + b'"}', "application/json", 413),
    upload("oversize upload", b"a,b\n" + b"1,2\n" * (1 << 20), 413),
    raw("oversize CSV to predict", PREDICT, b"weight,color\n" + b"1,grey\n" * (1 << 19), "text/csv", 413),
    # -- CSV uploads: every bad shape ----------------------------------------------
    upload("no file field", None, 422, "file", target="label"),
    upload("empty file", "", 422, "file"),
    upload("blank lines only", "\n\r\n\n", 422, "file"),
    upload("header only", "a,b,label\n", 422, "file"),
    upload("ragged rows", "a,b,label\n1,2,0\n3,4\n5,6,1,7\n", 422, "file"),
    upload("duplicate column names", "a,a,label\n1,2,0\n3,4,1\n", 422, "file"),
    upload("empty column name", "a,,label\n1,2,0\n3,4,1\n", 422, "file"),
    upload("unknown target", GOOD_CSV, 422, "target", target="price"),
    upload("target named twice", GOOD_CSV, 422, "target", target="label,label"),
    upload("target column only (no feature)", "label\n0\n1\n", 422, "target"),
    upload("every column a target", GOOD_CSV, 422, "target", target="a,b,label", task="regression"),
    upload("no row has a target", "a,label\n1,\n2,NA\n3,\n", 422, "target"),
    upload("a target of dates", "a,when\n1,2020-01-01\n2,2020-01-02\n", 422, "target"),
    upload("a single class", "a,label\n1,0\n2,0\n3,0\n", 422, "target"),
    upload("classification of fractions", "a,y\n1,0.5\n2,1.5\n", 422, "task", task="classification"),
    upload("regression of strings", "a,y\n1,cat\n2,dog\n", 422, "task", task="regression"),
    upload("unknown task", GOOD_CSV, 422, "task", task="clustering"),
    upload("several targets for classification", GOOD_CSV, 422, "target", target="b,label",
           task="classification"),
    upload("not UTF-8 (Latin-1)", "a,colour,label\n1,gr\xfcn,0\n2,rot,1\n".encode("latin-1"), 422, "file"),
    upload("UTF-16 with its BOM", "a,b,label\n1,2,0\n3,4,1\n".encode("utf-16"), 422, "file"),
    upload("NUL bytes (a binary file)", b"a,b,label\n1,2,0\n3,\x00\x00,1\n", 422, "file"),
    upload("a zip file", b"PK\x03\x04\x14\x00\x00\x00\x08\x00" + bytes(range(256)), 422, "file"),
    upload("quoted newline inside a number", 'a,b,label\n1,"2\n3",0\n4,5,1\n6,7,0\n', 422, "file"),
    upload("unterminated quote swallows the file", 'a,b,label\n1,"2,0\n3,4,1\n5,6,0\n', 422, "file"),
    upload("huge field", "a,b,label\n1," + "9" * 200_000 + ",0\n2,3,1\n", 422, "file"),
    upload("semicolons", "a;b;label\n1;2;0\n3;4;1\n", 422, "file"),
    upload("tabs", "a\tb\tlabel\n1\t2\t0\n3\t4\t1\n", 422, "file"),
    upload("inf in a numeric column", "a,b,label\n1,2,0\n3,inf,1\n5,6,0\n", 422, "file"),
    upload("-Infinity in a numeric column", "a,b,label\n1,2,0\n3,-Infinity,1\n5,6,0\n", 422, "file"),
    upload("overflow to infinity", "a,b,label\n1,2,0\n3,1e999,1\n5,6,0\n", 422, "file"),
    upload("NA tokens aside, text among numbers", "a,b,label\nnan,2,0\nNA,4,1\n5,x,0\n7,8,1\n", 422, "file"),
    upload("text in a numeric column", "a,b,label\n1,2,0\n3,four,1\n5,6,0\n7,8,1\n", 422, "file"),
    upload("a NA token not in na_values", "a,b,label\n1,2,0\n3,NA,1\n5,6,0\n7,8,1\n", 422, "file",
           na_values="?"),
    post("JSON rows: ragged", "/v1/datasets", {"columns": ["a", "label"], "data": [[1, 0], [2]]}, 422,
         "data[1]"),
    post("JSON rows: a string among numbers", "/v1/datasets",
         {"columns": ["a", "label"], "data": [[1, 0], [2, 1], ["x", 0]]}, 422, "data[2][0]"),
    post("JSON rows: a nested list", "/v1/datasets", {"columns": ["a", "label"], "data": [[[1], 0]]}, 422,
         "data[0][0]"),
    post("JSON rows: no rows", "/v1/datasets", {"columns": ["a", "label"], "data": []}, 422, "data"),
    post("JSON rows: no columns", "/v1/datasets", {"columns": [], "data": [[1]]}, 422, "columns"),
    post("JSON rows: unknown key", "/v1/datasets", {"columns": ["a"], "data": [[1]], "rows": 1}, 422, "rows"),
    raw("JSON rows: Infinity token", "/v1/datasets",
        '{"columns": ["a", "label"], "data": [[1, 0], [-Infinity, 1], [2, 1]]}', "application/json", 422,
        "data[1][0]"),
    # -- hyperparameters -----------------------------------------------------------
    post("a billion epochs", "/v1/jobs", job({"epochs": 1_000_000_000}), 422, "training.epochs"),
    post("negative epochs", "/v1/jobs", job({"epochs": -5}), 422, "training.epochs"),
    post("epochs 10^400", "/v1/jobs", job({"epochs": 10**400}), 422, "training.epochs"),
    post("batch size a trillion", "/v1/jobs", job({"batch_size": 10**12}), 422, "training.batch_size"),
    post("negative learning rate", "/v1/jobs", job({"learning_rate": -0.1}), 422, "training.learning_rate"),
    post("learning rate 1e308", "/v1/jobs", job({"learning_rate": 1e308}), 422, "training.learning_rate"),
    raw("learning rate NaN", "/v1/jobs",
        '{"dataset_id": "{dataset}", "network": NET, "training": {"learning_rate": NaN}}'.replace("NET",
                                                                                                  json.dumps(MLP)),
        "application/json", 422, "training.learning_rate"),
    raw("clip norm Infinity", "/v1/jobs",
        '{"dataset_id": "{dataset}", "network": NET, "training": {"gradient_clip_norm": Infinity}}'
        .replace("NET", json.dumps(MLP)), "application/json", 422, "training.gradient_clip_norm"),
    post("weight decay a billion", "/v1/jobs", job({"weight_decay": 1e9}), 422, "training.weight_decay"),
    post("negative seed", "/v1/jobs", job({"seed": -1}), 422, "training.seed"),
    post("seed 2^64", "/v1/jobs", job({"seed": 2**64}), 422, "training.seed"),
    post("negative patience", "/v1/jobs", job({"early_stopping_patience": -1}), 422,
         "training.early_stopping_patience"),
    post("momentum 1", "/v1/jobs", job({"momentum": 1}), 422, "training.momentum"),
    post("epochs as a string", "/v1/jobs", job({"epochs": "10"}), 422, "training.epochs"),
    post("epochs true", "/v1/jobs", job({"epochs": True}), 422, "training.epochs"),
    post("learning rate true", "/v1/jobs", job({"learning_rate": True}), 422, "training.learning_rate"),
    post("nesterov 1", "/v1/jobs", job({"nesterov": 1}), 422, "training.nesterov"),
    post("epochs 2.5", "/v1/jobs", job({"epochs": 2.5}), 422, "training.epochs"),
    post("training not an object", "/v1/jobs", job(training=[1]), 422, "training"),
    post("unknown device", "/v1/jobs", job(device="tpu"), 422, "device"),
    # -- networks ------------------------------------------------------------------
    post("a cycle", "/v1/networks", CYCLE, 422, "nodes[0].inputs", "nodes[1].inputs", "nodes[2].inputs"),
    post("a cycle, at job creation", "/v1/jobs", job(network=CYCLE), 422,
         "network.nodes[0].inputs", "network.nodes[1].inputs", "network.nodes[2].inputs"),
    post("a self loop", "/v1/networks", {"nodes": [{"name": "a", "type": "dense", "units": 2, "inputs": ["a"]}]},
         422, "nodes[0].inputs"),
    post("10,000 nodes", "/v1/networks", chain(10_000), 422, "nodes"),
    post("10,000 layers, at job creation", "/v1/jobs",
         job(network={"layers": [{"type": "dense", "units": 2}] * 10_000}), 422, "network.layers"),
    post("a billion units", "/v1/networks", BILLION, 422, "layers[0].units"),
    post("a billion units, at job creation", "/v1/jobs", job(network=BILLION), 422, "network.layers[0].units"),
    post("10^12 weights, width unknown", "/v1/networks", WIDE, 422, "layers[1].units"),
    post("over the budget for this input width", "/v1/networks?input_dim=100000",
         {"layers": [{"type": "dense", "units": 1000}]}, 422, "layers[0].units"),
    post("over the budget at job creation", "/v1/jobs", job(network={"layers": [
        {"type": "dense", "units": 8000}, {"type": "dense", "units": 8000}, {"type": "dense", "units": 2}]}),
        422, "network.layers[1].units"),
    post("output width does not fit the classes", "/v1/jobs",
         job(network={"layers": [{"type": "dense", "units": 3}]}), 422, "network.layers[0].units"),
    post("units a string", "/v1/networks", {"layers": [{"type": "dense", "units": "64"}]}, 422, "layers[0].units"),
    post("layers and nodes", "/v1/networks", {"layers": [], "nodes": []}, 422, ""),
    post("dangling input", "/v1/networks", {"nodes": [{"name": "a", "type": "dense", "units": 2,
                                                       "inputs": ["ghost"]}]}, 422, "nodes[0].inputs[0]"),
    post("network and network_id", "/v1/jobs", job(network_id="{network}"), 422, ""),
    # -- predict -------------------------------------------------------------------
    post("too few values", PREDICT, {"inputs": [[25.0]]}, 422, "inputs[0]"),
    post("too many values", PREDICT, {"inputs": [[25.0, "brown", 1]]}, 422, "inputs[0]"),
    post("a row that is not a list", PREDICT, {"inputs": [25.0]}, 422, "inputs[0]"),
    post("text in a numeric input", PREDICT, {"inputs": [[1.0, "brown"], ["heavy", "brown"]]}, 422,
         "inputs[1][0]"),
    post("a boolean for a number", PREDICT, {"inputs": [[True, "brown"]]}, 422, "inputs[0][0]"),
    # null cells and a record's absent keys are missing values (test_preprocessing_missing.py).
    post("a list for a number", PREDICT, {"inputs": [[[2024], "brown"]]}, 422, "inputs[0][0]"),
    post("an object for a category", PREDICT, {"inputs": [[1.0, {"c": 1}]]}, 422, "inputs[0][1]"),
    post("beyond float32", PREDICT, {"inputs": [[1e39, "brown"]]}, 422, "inputs[0][0]"),
    raw("NaN token in inputs", PREDICT, '{"inputs": [[NaN, "brown"]]}', "application/json", 422, "inputs[0][0]"),
    raw("Infinity token in records", PREDICT, '{"records": [{"weight": Infinity, "color": "grey"}]}',
        "application/json", 422, "records[0].weight"),
    post("no rows", PREDICT, {"inputs": []}, 422, "inputs"),
    post("inputs not a list", PREDICT, {"inputs": {"weight": 1}}, 422, "inputs"),
    post("inputs and records", PREDICT, {"inputs": [[1, "grey"]], "records": [{}]}, 422, ""),
    post("neither inputs nor records", PREDICT, {}, 422, ""),
    post("a record with an unknown column", PREDICT, {"records": [{"weight": 3, "color": "grey", "age": 2}]},
         422, "records[0].age"),
    post("a record that is not an object", PREDICT, {"records": [[3, "grey"]]}, 422, "records[0]"),
    raw("CSV without the model's columns", PREDICT, "height,colour\n3,grey\n", "text/csv", 422, "csv"),
    raw("CSV with text in a numeric column", PREDICT, "weight,color\nheavy,grey\n", "text/csv", 422,
        "csv[0].weight"),
    raw("CSV not UTF-8", PREDICT, b"weight,color\n3,gr\xfcn\n", "text/csv", 422, "csv"),
    # -- ids: unknown, or of the wrong kind ----------------------------------------
    get("unknown dataset", "/v1/datasets/ds_missing", 404),
    delete("unknown dataset, deleted", "/v1/datasets/ds_missing", 404),
    get("unknown network", "/v1/networks/net_missing", 404),
    delete("unknown network, deleted", "/v1/networks/net_missing", 404),
    get("unknown job", "/v1/jobs/job_missing", 404),
    get("unknown job's metrics", "/v1/jobs/job_missing/metrics", 404),
    get("unknown job's events", "/v1/jobs/job_missing/events", 404),
    Bad("unknown job cancelled", "POST", "/v1/jobs/job_missing/cancel", 404),
    get("unknown model", "/v1/models/mdl_missing", 404),
    delete("unknown model, deleted", "/v1/models/mdl_missing", 404),
    get("unknown model exported", "/v1/models/mdl_missing/export", 404),
    post("unknown model predicts", "/v1/models/mdl_missing/predict", {"inputs": [[1, "grey"]]}, 404),
    get("a dataset id as a network id", "/v1/networks/{dataset}", 404),
    get("a model id as a dataset id", "/v1/datasets/{model}", 404),
    get("a model id as a job id", "/v1/jobs/{model}", 404),
    post("a job id as a model id", "/v1/models/{job}/predict", {"inputs": [[1, "grey"]]}, 404),
    get("a network id as a model id", "/v1/models/{network}/export", 404),
    post("unknown dataset for a job", "/v1/jobs", job(dataset_id="ds_missing"), 422, "dataset_id"),
    post("a model id as the job's dataset", "/v1/jobs", job(dataset_id="{model}"), 422, "dataset_id"),
    post("a dataset id as the job's network", "/v1/jobs", {"dataset_id": "{dataset}", "network_id": "{dataset}"},
         422, "network_id"),
    post("unknown model to start from", "/v1/jobs", job(init_from_model="mdl_missing"), 422, "init_from_model"),
    post("a dataset id as the model to start from", "/v1/jobs", job(init_from_model="{dataset}"), 422,
         "init_from_model"),
    post("an empty dataset id", "/v1/jobs", job(dataset_id=""), 422, "dataset_id"),
    post("a number for an id", "/v1/jobs", job(dataset_id=7), 422, "dataset_id"),
    get("a dataset id for widths that is a job's", "/v1/networks/{network}?dataset_id={job}", 422, "dataset_id"),
    # -- query strings -------------------------------------------------------------
    get("limit 0", "/v1/datasets?limit=0", 422, "limit"),
    get("limit not a number", "/v1/jobs?limit=ten", 422, "limit"),
    get("limit 10^20", "/v1/models?limit=100000000000000000000", 422, "limit"),
    get("unknown job status", "/v1/jobs?status=exploded", 422, "status"),
    get("input_dim 0", "/v1/networks/{network}?input_dim=0", 422, "input_dim"),
    get("input_dim a float", "/v1/networks/{network}?input_dim=2.5", 422, "input_dim"),
    get("negative Last-Event-ID", "/v1/jobs/{job}/events?last_event_id=-1", 422, "last_event_id"),
    get("pickle export", "/v1/models/{model}/export?format=pickle", 422, "format"),
]


@pytest.fixture
def ids(request: pytest.FixtureRequest) -> dict[str, str]:
    """Real ids of each kind, made only for the cases that name them."""
    case: Bad = request.node.callspec.params["case"]
    text = repr(case)
    made: dict[str, str] = {}
    for kind in ("dataset", "network", "job", "model"):
        if "{" + kind + "}" in text:
            made[kind] = request.getfixturevalue(f"{kind}_id")
    return made


@pytest.fixture
def dataset_id(upload_csv) -> str:
    return upload_csv(csv_text(BLOBS_COLUMNS, blobs_rows(20))).get_json()["id"]


@pytest.fixture
def network_id(client) -> str:
    return client.post("/v1/networks", json=MLP).get_json()["id"]


@pytest.fixture
def trained_job(client, app, upload_csv) -> dict[str, Any]:
    """A finished job on the pets table, and its model."""
    dataset = upload_csv(csv_text(["weight", "color", "pet"], pets_rows(40))).get_json()
    job_id = submit(client, dataset["id"], mlp(hidden=()), epochs=1)
    assert run_job(app, job_id) == "succeeded"
    return client.get(f"/v1/jobs/{job_id}").get_json()


@pytest.fixture
def job_id(trained_job) -> str:
    return trained_job["id"]


@pytest.fixture
def model_id(trained_job) -> str:
    return trained_job["model_id"]


def fill(value: Any, ids: dict[str, str]) -> Any:
    """Put the real ids in place of {kind} in strings, however deep."""
    if isinstance(value, str):
        return re.sub(r"\{(dataset|network|job|model)\}", lambda m: ids[m.group(1)], value)
    if isinstance(value, list):
        return [fill(v, ids) for v in value]
    if isinstance(value, dict):
        return {k: fill(v, ids) for k, v in value.items()}
    return value


def send(client: Any, case: Bad, ids: dict[str, str]) -> Any:
    path = fill(case.path, ids)
    if case.multipart:
        form: dict[str, Any] = dict(case.form)
        if case.upload is not None:
            form["file"] = (io.BytesIO(case.upload), "data.csv")
        return client.post(path, data=form, content_type="multipart/form-data")
    if case.data is not None:
        data = fill(case.data.decode("utf-8", "surrogateescape"), ids).encode("utf-8", "surrogateescape")
        return client.open(path, method=case.method, data=data, content_type=case.content_type)
    if case.json is not NO_BODY:
        return client.open(path, method="POST", data=json.dumps(fill(case.json, ids)),
                           content_type="application/json")
    return client.open(path, method=case.method)


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_bad_request(client, ids, case: Bad):
    response = send(client, case, ids)
    text = response.get_data(as_text=True)
    assert response.status_code == case.status, text[:2000]
    assert response.mimetype == PROBLEM_JSON, text[:2000]
    body = response.get_json()
    assert body["status"] == case.status and body["title"] and body["detail"], body
    assert body["type"].startswith("urn:backprop:problem:") or body["type"] == "about:blank", body
    fields = [error["field"] for error in body.get("errors", [])]
    assert all(error.get("message") for error in body.get("errors", [])), body
    assert sorted(set(fields)) == sorted(set(case.fields)), body


def test_names_are_unique():
    names = [case.name for case in CASES]
    assert len(names) == len(set(names))


def test_the_parameter_budget_is_a_setting(app, client, dataset_id):
    from service.core.settings import load_config

    assert load_config({})["MAX_PARAMETERS"] == 50_000_000
    assert load_config({"MAX_PARAMETERS": "1_000"})["MAX_PARAMETERS"] == 1000
    for bad in ("many", "0", "-5"):
        with pytest.raises(ValueError, match="MAX_PARAMETERS"):
            load_config({"MAX_PARAMETERS": bad})
    # MLP on four inputs: 4*4+4 + 4*2+2 = 30 parameters.
    app.config["MAX_PARAMETERS"] = 30
    assert client.post("/v1/jobs", json={"dataset_id": dataset_id, "network": MLP}).status_code == 202
    app.config["MAX_PARAMETERS"] = 29
    response = client.post("/v1/jobs", json={"dataset_id": dataset_id, "network": MLP})
    assert response.status_code == 422
    error = response.get_json()["errors"][0]
    assert error["field"] == "network.layers[0].units" and error["node"] == "dense_0"
    assert "30 parameters" in error["message"] and "29" in error["message"]


def test_validate_reports_the_budget_as_a_problem(client):
    response = client.post("/v1/networks/validate?input_dim=100000&output_dim=2", json={"layers": [
        {"type": "dense", "units": 1000}, {"type": "dense", "units": 2}]})
    assert response.status_code == 200
    body = response.get_json()
    assert body["valid"] is False and body["parameter_count"] is None
    assert [p["field"] for p in body["problems"]] == ["layers[0].units"]
    assert "100,003,002 parameters" in body["problems"][0]["message"]
    assert "50,000,000 (MAX_PARAMETERS)" in body["problems"][0]["message"]
    # Stored without a width, a network is read with its count for any width, over the budget or not.
    network = client.post("/v1/networks", json={"layers": [{"type": "dense", "units": 1000}]}).get_json()
    assert client.get(f"/v1/networks/{network['id']}?input_dim=100000").get_json()["parameter_count"] \
        == 100_001_000


def test_cycles_among_many_nodes_are_named_exactly(monkeypatch):
    """The cycle check is linear: 10,000 nodes (with the node limit lifted) in milliseconds,
    naming only the nodes on the cycle, not the long chain downstream of it."""
    import backprop
    from backprop import spec

    monkeypatch.setattr(spec, "MAX_NODES", 20_000)
    graph = chain(10_000)
    graph["nodes"][0]["inputs"] = ["input", "n2"]  # n0 -> n1 -> n2 -> n0, then n3 ... n9999
    problems = backprop.validate(graph, input_dim=3)
    assert [p.node for p in problems] == ["n0", "n1", "n2"]
    assert backprop.validate(chain(10_000), input_dim=3) == []


def test_malformed_json_says_where_it_breaks(client):
    response = client.post("/v1/jobs", data='{"dataset_id": "x",\n "training": {"epochs": 3,}}',
                           content_type="application/json")
    assert response.status_code == 400 and response.mimetype == PROBLEM_JSON
    assert "line 2 column 27" in response.get_json()["detail"], response.get_json()
