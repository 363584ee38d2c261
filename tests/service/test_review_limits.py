"""Limits a review of the hardening found missing.

A text/csv `/predict` body is held to the JSON bodies' limit (the smaller of MAX_JSON_MB and
MAX_UPLOAD_MB), its header to MAX_COLUMNS fields, and its 422 lists at most MAX_ERRORS problems;
the model list answers summaries (n_features, not the columns); an upload keeps at most
MAX_DISTINCT_STRINGS distinct strings across its columns while it is surveyed.
"""

from __future__ import annotations

from typing import Any

from service.core.data.parsing import MAX_ERRORS
from service.core.settings import setting_default
from service.core.tenancy.limits import MB
from tests.conftest import csv_text
from tests.helpers import CountingStream, both_databases, mlp, problem


def csv_body(size: int) -> bytes:
    """A CSV body of the blobs model's columns, about `size` bytes long."""
    line = b"0.5,0.25,0.125,1\n"
    return b"a,b,c,d\n" + line * (size // len(line))


def predict_csv(client: Any, model_id: str, body: bytes, **options: Any) -> Any:
    return client.post(f"/v1/models/{model_id}/predict", data=body, content_type="text/csv", **options)


# -- 1. a CSV /predict within the JSON bodies' limit, its header within MAX_COLUMNS ---------------

def test_a_csv_predict_past_max_json_mb_is_a_413_before_it_is_read(app, client, blobs_model):
    app.config["MAX_JSON_MB"] = 1  # the fixture's MAX_UPLOAD_MB is 2
    stream = CountingStream(csv_body(MB + MB // 2))
    response = client.post(f"/v1/models/{blobs_model}/predict", input_stream=stream, content_type="text/csv",
                           headers={"Content-Length": str(len(stream.getvalue()))})
    assert "MAX_JSON_MB (1 MB)" in problem(response, 413)["detail"]
    assert stream.bytes_read == 0


def test_a_chunked_csv_predict_is_read_no_further_than_the_limit(app, client, blobs_model):
    app.config["MAX_JSON_MB"] = 1
    stream = CountingStream(csv_body(2 * MB - 100))
    response = client.post(f"/v1/models/{blobs_model}/predict", input_stream=stream, content_type="text/csv",
                           headers={"Transfer-Encoding": "chunked"},
                           environ_overrides={"wsgi.input_terminated": True})
    assert "MAX_JSON_MB (1 MB)" in problem(response, 413)["detail"]
    assert stream.bytes_read <= MB + 64 * 1024, stream.bytes_read


def test_a_csv_predict_within_the_limit_is_scored(app, client, blobs_model):
    app.config["MAX_JSON_MB"] = 1
    response = predict_csv(client, blobs_model, csv_body(MB - 1000))
    assert response.status_code == 200, response.get_json()


def test_a_csv_predict_header_wider_than_max_columns_is_a_422(app, client, blobs_model):
    app.config["MAX_COLUMNS"] = 10
    header = ["a", "b", "c", "d"] + [f"extra{i}" for i in range(7)]  # 11 fields
    body = problem(predict_csv(client, blobs_model, csv_text(header, [[0] * 11]).encode()), 422)
    assert body["errors"] == [{"field": "csv", "message": "the header has more than 10 fields; MAX_COLUMNS is 10"}]
    # A header of millions of fields is refused as quickly.
    problem(predict_csv(client, blobs_model, b"a,b,c,d" + b",x" * 500_000 + b"\n1,2,3,4\n"), 422)


def test_a_csv_predict_header_lists_at_most_max_errors_problems(client, blobs_model):
    header = ["a", "b", "c", "d"] + [f"unknown{i}" for i in range(500)]
    body = problem(predict_csv(client, blobs_model, csv_text(header, [[0] * 504]).encode()), 422)
    (error,) = body["errors"]
    assert error["field"] == "csv"
    assert error["message"].count("unknown column") == MAX_ERRORS
    assert f"and {500 - MAX_ERRORS} more" in error["message"]
    assert error["message"].endswith("the header row must name the columns a, b, c, d")
    assert len(body["detail"]) < 2000


# -- 2. the model list answers summaries -----------------------------------------------------------

@both_databases
def test_the_model_list_answers_counts_not_columns(client, blobs_model):
    (item,) = client.get("/v1/models").get_json()["items"]
    assert item["id"] == blobs_model and item["n_features"] == 4
    assert "features" not in item and "preprocessing" not in item
    whole = client.get(f"/v1/models/{blobs_model}").get_json()
    assert whole["features"] == ["a", "b", "c", "d"] and "n_features" not in whole
    assert whole["preprocessing"]["features"][0]["name"] == "a"
    assert {key: whole[key] for key in item if key != "n_features"} == {
        key: value for key, value in item.items() if key != "n_features"}


def test_the_openapi_model_list_is_of_summaries(client):
    document = client.get("/openapi.json").get_json()
    schemas = document["components"]["schemas"]
    assert schemas["ModelPage"]["properties"]["items"]["items"] == {"$ref": "#/components/schemas/ModelSummary"}
    summary = schemas["ModelSummary"]["properties"]
    assert "n_features" in summary and "features" not in summary and "preprocessing" not in summary


# -- 3. an upload's distinct strings are bounded across its columns --------------------------------

def test_max_distinct_strings_has_its_default():
    assert setting_default("MAX_DISTINCT_STRINGS") == 1_000_000


def string_table(columns: int, distinct: int) -> tuple[list[str], list[list[Any]]]:
    """`columns` string columns of `distinct` values each, and a numeric label."""
    header = [f"s{j}" for j in range(columns)] + ["label"]
    rows = [[f"v{j}_{i}" for j in range(columns)] + [i % 2] for i in range(distinct)]
    return header, rows


def given_up(body: dict[str, Any]) -> list[str]:
    """The columns an upload stopped counting (MAX_DISTINCT_STRINGS)."""
    return [c["name"] for c in body["columns"] if c.get("encoded") is False]


@both_databases
def test_a_csv_upload_past_max_distinct_strings_gives_up_on_the_column_where_it_passed(app, client, upload_csv):
    app.config["MAX_DISTINCT_STRINGS"] = 50
    header, rows = string_table(3, 20)  # 60 distinct strings in all, 20 a column
    response = upload_csv(csv_text(header, rows), target="label")
    assert response.status_code == 201, response.get_json()
    body = response.get_json()
    assert given_up(body) == ["s2"]  # the other two columns' 40 strings stay within the 50
    (s2,) = [c for c in body["columns"] if c["name"] == "s2"]
    assert s2["role"] == "identifier" and s2["categories"] == [] and s2["distinct"] == 17
    assert body["features"] == ["s0", "s1"]
    assert any("'s2' has more than 17 distinct values" in w and "which no job can use" in w
               for w in body["warnings"])
    # A job may not name it: it holds no values to encode.
    job = client.post("/v1/jobs", json={"dataset_id": body["id"], "network": mlp(), "features": ["s0", "s2"]})
    error = problem(job, 422)["errors"][0]
    assert error["field"] == "features[1]" and "MAX_DISTINCT_STRINGS" in error["message"]


@both_databases
def test_a_json_upload_past_max_distinct_strings_gives_up_on_a_column(app, client):
    app.config["MAX_DISTINCT_STRINGS"] = 50
    header, rows = string_table(3, 20)
    response = client.post("/v1/datasets", json={"columns": header, "data": rows, "target": "label"})
    assert response.status_code == 201, response.get_json()
    assert given_up(response.get_json()) == ["s2"]


@both_databases
def test_an_upload_within_max_distinct_strings_is_stored(app, upload_csv):
    app.config["MAX_DISTINCT_STRINGS"] = 60
    header, rows = string_table(3, 20)
    response = upload_csv(csv_text(header, rows), target="label")
    assert response.status_code == 201, response.get_json()
