"""Bodies and tables within limits, and values the store cannot hold.

A JSON body has its own size limit (MAX_JSON_MB), checked before it is read; its rows are
counted before anything validates them (MAX_PREDICT_ROWS); a table's columns are counted
right after its header (MAX_COLUMNS); a body nested however deep is a 400; a number beyond
float32 is a 422 naming its cell, on the fast CSV path as on the slow one.
"""

from __future__ import annotations

import io
import tracemalloc
from typing import Any

import pytest

from service.api import models as models_api
from service.core.data.parsing import TableError, parse_csv
from service.core.settings import setting_default
from service.core.tenancy.limits import MB
from tests.conftest import BLOBS_COLUMNS, blobs_rows, csv_text
from tests.helpers import CountingStream, both_databases, problem


def big_network_body(size: int) -> bytes:
    """A network definition of `size` bytes (a long name): valid JSON, too large."""
    head = b'{"layers": [{"type": "dense", "units": 2}], "name": "'
    return head + b"x" * (size - len(head) - 2) + b'"}'


# -- 1. a JSON body within MAX_JSON_MB, its rows within MAX_PREDICT_ROWS, a table's columns within MAX_COLUMNS

def test_the_limits_have_their_defaults():
    assert setting_default("MAX_JSON_MB") == 16
    assert setting_default("MAX_COLUMNS") == 10_000


def test_a_json_body_past_max_json_mb_is_a_413_before_it_is_parsed(app, client, monkeypatch):
    app.config["MAX_JSON_MB"] = 1  # the fixture's MAX_UPLOAD_MB is 2
    parsed, loads = [], app.json.loads
    monkeypatch.setattr(app.json, "loads", lambda text, **k: parsed.append(len(text)) or loads(text, **k))
    for size in (MB + 1, 10 * MB):
        response = client.post("/v1/networks", data=big_network_body(size), content_type="application/json")
        assert "MAX_JSON_MB (1 MB)" in problem(response, 413)["detail"]
    assert max(parsed) < 1000  # the answers only


def test_a_chunked_json_body_is_read_no_further_than_the_limit(app, client, monkeypatch):
    app.config["MAX_JSON_MB"] = 1
    stream = CountingStream(big_network_body(2 * MB - 100))
    response = client.post("/v1/networks", input_stream=stream, content_type="application/json",
                           headers={"Transfer-Encoding": "chunked"},
                           environ_overrides={"wsgi.input_terminated": True})
    assert "MAX_JSON_MB (1 MB)" in problem(response, 413)["detail"]
    assert stream.bytes_read <= MB + 64 * 1024, stream.bytes_read


def test_a_json_body_within_max_json_mb_is_taken(app, client):
    app.config["MAX_JSON_MB"] = 1
    assert client.post("/v1/networks", data=big_network_body(MB - 1000),
                       content_type="application/json").status_code == 422  # the name is too long: read


def test_the_smaller_of_the_two_body_limits_is_named(app, client):
    app.config["MAX_JSON_MB"] = 16  # above the fixture's MAX_UPLOAD_MB of 2
    body = problem(client.post("/v1/networks", data=big_network_body(3 * MB), content_type="application/json"), 413)
    assert "MAX_UPLOAD_MB (2 MB)" in body["detail"], body


def test_predict_rows_are_counted_before_they_are_validated(client, blobs_model, monkeypatch):
    from service.core.schemas import PredictRequest

    monkeypatch.setattr(models_api, "MAX_PREDICT_ROWS", 3)
    validated = []
    original = PredictRequest.model_validate.__func__  # type: ignore[attr-defined]
    monkeypatch.setattr(PredictRequest, "model_validate",
                        classmethod(lambda cls, *a, **k: validated.append(1) or original(cls, *a, **k)))
    for field, rows in (("inputs", [[1, 2, 3, 4]] * 4), ("records", [dict(zip("abcd", [1, 2, 3, 4]))] * 4)):
        body = problem(client.post(f"/v1/models/{blobs_model}/predict", json={field: rows}), 422)
        assert body["errors"] == [{"field": field, "message": "at most 3 rows per request"}], body
    assert validated == []


@both_databases
def test_json_dataset_rows_are_limited_before_they_are_validated(client, monkeypatch):
    from service.api import datasets as datasets_api

    monkeypatch.setattr(datasets_api, "MAX_PREDICT_ROWS", 40)
    rows = blobs_rows(41)
    body = problem(client.post("/v1/datasets", json={"columns": BLOBS_COLUMNS, "data": rows}), 422)
    assert body["errors"] == [{"field": "data", "message": "at most 40 rows per request"}], body
    assert client.post("/v1/datasets", json={"columns": BLOBS_COLUMNS, "data": rows[:40]}).status_code == 201


def upload(client: Any, text: str | bytes, **fields: str) -> Any:
    data = text.encode() if isinstance(text, str) else text
    return client.post("/v1/datasets", data={"file": (io.BytesIO(data), "wide.csv"), **fields},
                       content_type="multipart/form-data")


@both_databases
@pytest.mark.parametrize("cell", ["1", "x"], ids=["fast path", "slow path"])
def test_csv_columns_are_limited_right_after_the_header(app, client, cell):
    app.config["MAX_COLUMNS"] = 5
    header = [f"c{j}" for j in range(6)]
    body = problem(upload(client, csv_text(header, [[cell] * 5 + [j % 2] for j in range(10)])), 422)
    assert body["errors"] == [{"field": "file", "message": "the file has more than 5 columns; MAX_COLUMNS is 5"}], body
    assert upload(client, csv_text(header[:5], [[cell] * 4 + [j % 2] for j in range(10)])).status_code == 201


@both_databases
def test_json_columns_are_limited(app, client):
    app.config["MAX_COLUMNS"] = 5
    body = problem(client.post("/v1/datasets", json={"columns": [*"abcde", "label"],
                                                     "data": [[1, 2, 3, 4, 5, j % 2] for j in range(10)]}), 422)
    assert body["errors"] == [{"field": "columns", "message": "6 columns; MAX_COLUMNS is 5"}], body


def test_a_huge_header_is_refused_without_reading_it_into_memory(tmp_path):
    path = tmp_path / "wide.csv"
    path.write_bytes(b"," * (4 * MB) + b"\n1\n")  # 4 million and one empty names
    tracemalloc.start()
    try:
        with pytest.raises(TableError) as caught:
            parse_csv(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert caught.value.errors == [{"field": "file",
                                    "message": "the file has more than 10,000 columns; MAX_COLUMNS is 10,000"}]
    assert peak < MB, peak  # the csv module would build a list of 4 million names: 32 MB and more


@pytest.mark.parametrize("header, width", [
    ("a,b,c", 3),
    ('"a,b",c', 2),
    ('"a\nb",c', 2),  # a quoted newline does not end the header
    ('"a""b",c', 2),
    ('a"b,c', 2),  # a quote inside an unquoted name is a character
    ('"a"b,c', 2),
    ("\n\r\na,b", 2),  # blank lines before the header
    ("\ufeffa,b", 2),
    ("a,b\r\n1,2,3", 2),
])
def test_the_header_count_is_the_csv_modules(tmp_path, header, width):
    path = tmp_path / "t.csv"
    path.write_text(header + "\n1,2\n", encoding="utf-8", newline="")
    with pytest.raises(TableError, match="MAX_COLUMNS"):
        parse_csv(path, max_columns=width - 1)
    try:
        parse_csv(path, max_columns=width)
    except TableError as error:
        assert "MAX_COLUMNS" not in str(error.errors)


# -- 2. a body nested however deep is a 400 on every JSON route

def json_routes(app: Any, client: Any) -> list[str]:
    """Return the path of every operation the OpenAPI document says takes application/json."""
    document = client.get("/openapi.json").get_json()
    return sorted(path.replace("{model_id}", "m").replace("{", "").replace("}", "")
                  for path, operations in document["paths"].items() for method, operation in operations.items()
                  if "application/json" in operation.get("requestBody", {}).get("content", {}))


@pytest.mark.parametrize("depth", [1_000, 1_100, 100_000])
@pytest.mark.parametrize("brackets", ["[]", "{}"])
def test_a_deeply_nested_body_is_a_400_on_every_json_route(app, client, depth, brackets):
    opening, closing = ("[", "]") if brackets == "[]" else ('{"a":', "}")
    nested = opening * depth + "1" + closing * depth
    routes = json_routes(app, client)
    assert {"/v1/datasets", "/v1/jobs", "/v1/networks", "/v1/networks/validate", "/v1/models/m/predict"} <= set(routes)
    for path in routes:
        for body in (nested, '{"name": ' + nested + "}", '{"x": NaN, "y": ' + nested + "}"):
            response = client.post(path, data=body, content_type="application/json")
            assert response.status_code < 500, (path, response.get_data(as_text=True)[:500])
            if depth > 1_024:
                assert "nested deeper than 1,024 levels" in problem(response, 400)["detail"], path


def test_every_route_taking_a_body_survives_deep_nesting(app, client):
    """Routes the OpenAPI document does not list as JSON never answer 500 to one either."""
    nested = "[" * 100_000 + "]" * 100_000
    rules = [rule for rule in app.url_map.iter_rules() if rule.methods & {"POST", "PUT", "PATCH"}]
    assert rules
    for rule in rules:
        path = rule.rule.replace("<", "").replace(">", "")
        for method in sorted(rule.methods & {"POST", "PUT", "PATCH"}):
            response = client.open(path, method=method, data=nested, content_type="application/json")
            assert response.status_code < 500, (method, path, response.get_data(as_text=True)[:300])


# -- 3. values the store cannot hold

@both_databases
@pytest.mark.parametrize("extra", ["", "x"], ids=["fast path", "slow path"])
@pytest.mark.parametrize("value", ["1e39", "-3.5e38", "1" + "0" * 40])
def test_a_number_beyond_float32_in_a_csv_is_a_422_naming_the_cell(client, extra, value):
    rows = [row + ([extra] if extra else []) for row in blobs_rows(20)]
    rows[6][1] = value
    body = problem(upload(client, csv_text(BLOBS_COLUMNS + (["s"] if extra else []), rows), target="label"), 422)
    assert body["errors"] == [{"field": "file", "row": 7, "column": "b",
                               "message": f"row 7 (line 8), column 'b': {value!r} is beyond the float32 "
                                          f"range (\u00b13.4e38)"}], body


@both_databases
def test_the_largest_float32_is_stored(client):
    rows = blobs_rows(20)
    rows[0][0] = 3.4e38
    dataset = client.post("/v1/datasets", json={"columns": BLOBS_COLUMNS, "data": rows})
    assert dataset.status_code == 201, dataset.get_json()
    assert upload(client, csv_text(BLOBS_COLUMNS, rows)).status_code == 201


@both_databases
@pytest.mark.parametrize("value", [1e39, -1e300, 10 ** 40])
def test_a_number_beyond_float32_in_json_rows_is_a_422_naming_the_cell(client, value):
    rows = blobs_rows(20)
    rows[3][2] = value
    body = problem(client.post("/v1/datasets", json={"columns": BLOBS_COLUMNS, "data": rows}), 422)
    assert [(e["field"], e["column"]) for e in body["errors"]] == [("data[3][2]", "c")], body
    assert "beyond the float32 range" in body["errors"][0]["message"]


@both_databases
def test_a_nul_in_a_column_name_is_refused_on_the_fast_path_too(client):
    text = csv_text(["a", "b\x00", "label"], [[1, 2, j % 2] for j in range(10)])
    body = problem(upload(client, text), 422)
    assert body["errors"] == [{"field": "file", "message": "column 2's name holds a NUL byte; "
                                                            "is this a binary file?"}], body


@pytest.mark.parametrize("field, rows, named", [
    ("inputs", [[1, 2, 3, 1e39]], "inputs[0][3]"),
    ("records", [{"a": 1, "b": 2, "c": -1e39, "d": 4}], "records[0].c"),
])
def test_predict_inputs_beyond_float32_are_422s_naming_the_cell(client, blobs_model, field, rows, named):
    body = problem(client.post(f"/v1/models/{blobs_model}/predict", json={field: rows}), 422)
    assert [e["field"] for e in body["errors"]] == [named], body
    assert "float32" in body["errors"][0]["message"]
