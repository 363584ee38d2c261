"""Dataset upload (CSV and JSON), parsing rules, errors, listing and deletion."""

from __future__ import annotations

import pytest

from tests.conftest import BLOBS_COLUMNS, blobs_rows, csv_text, pets_rows
from tests.helpers import problem

# The store runs on SQLite everywhere and on PostgreSQL where it is reachable.
pytestmark = pytest.mark.parametrize("backend", ["sqlite", "postgres"], indirect=True)


def test_csv_upload_detects_kinds_target_and_task(upload_csv):
    response = upload_csv(csv_text(BLOBS_COLUMNS, blobs_rows(40)), name="blobs")
    assert response.status_code == 201, response.get_json()
    body = response.get_json()
    assert response.headers["Location"] == f"/v1/datasets/{body['id']}"
    assert body["name"] == "blobs"
    assert body["n_rows"] == 40 and body["n_columns"] == 5
    assert [c["kind"] for c in body["columns"]] == ["numeric"] * 5
    assert body["targets"] == ["label"] and body["features"] == ["a", "b", "c", "d"]
    assert body["task"] == "classification" and body["classes"] == [0, 1]
    assert body["input_width"] == 4


def test_string_columns_become_categories_and_string_target_classification(upload_csv):
    body = upload_csv(csv_text(["weight", "color", "pet"], pets_rows(20))).get_json()
    kinds = {c["name"]: c for c in body["columns"]}
    assert kinds["color"]["kind"] == "string"
    assert kinds["color"]["categories"] == sorted(set(kinds["color"]["categories"]))
    assert body["task"] == "classification" and body["classes"] == ["cat", "dog"]
    assert body["input_width"] == 1 + len(kinds["color"]["categories"])


def test_float_target_is_regression_and_task_can_be_given(upload_csv):
    rows = [[i, i * 0.5 + 0.25] for i in range(30)]
    assert upload_csv(csv_text(["x", "y"], rows)).get_json()["task"] == "regression"
    int_rows = [[i, i % 3] for i in range(30)]
    assert upload_csv(csv_text(["x", "y"], int_rows)).get_json()["task"] == "classification"
    given = upload_csv(csv_text(["x", "y"], int_rows), task="regression").get_json()
    assert given["task"] == "regression" and given["classes"] is None


def test_many_distinct_integers_are_regression(upload_csv):
    rows = [[i, i * 7] for i in range(50)]
    assert upload_csv(csv_text(["x", "y"], rows)).get_json()["task"] == "regression"


def test_multi_output_regression_target(upload_csv):
    rows = [[i, i * 0.5, i * 1.5 + 0.1] for i in range(20)]
    body = upload_csv(csv_text(["x", "y1", "y2"], rows), target="y1, y2").get_json()
    assert body["targets"] == ["y1", "y2"] and body["features"] == ["x"]
    assert body["task"] == "regression"


def test_target_can_be_any_column(upload_csv):
    body = upload_csv(csv_text(["label", "x"], [[i % 2, i * 0.1] for i in range(10)]), target="label").get_json()
    assert body["targets"] == ["label"] and body["features"] == ["x"]


def test_quotes_bom_crlf_and_blank_trailing_lines_parse(upload_csv):
    text = ('\ufeff"name, full",x,"label"\r\n"Smith, J",1.5,"yes"\r\n"O""Brien",2.5,no\r\n'
            '"multi\nline",3,yes\r\n\r\n\r\n')
    response = upload_csv(text.encode("utf-8"))
    assert response.status_code == 201, response.get_json()
    body = response.get_json()
    assert [c["name"] for c in body["columns"]] == ["name, full", "x", "label"]
    assert body["n_rows"] == 3
    assert body["columns"][0]["categories"] == ['O"Brien', "Smith, J", "multi\nline"]
    assert body["classes"] == ["no", "yes"]


def test_same_table_twice_stores_one_payload(app, upload_csv):
    from sqlalchemy import func, select

    from service.core.db.tables import DatasetPayload

    text = csv_text(BLOBS_COLUMNS, blobs_rows(30))
    first = upload_csv(text).get_json()
    second = upload_csv(text, name="again", target="a").get_json()
    assert first["id"] != second["id"] and first["sha256"] == second["sha256"]
    with app.extensions["backprop.sessions"]() as session:
        assert session.scalar(select(func.count()).select_from(DatasetPayload)) == 1


def test_json_upload(client):
    response = client.post("/v1/datasets", json={
        "name": "tiny", "columns": ["x", "color", "y"],
        "data": [[1, "red", "a"], [2.5, "blue", "b"], [3, "red", "a"], [4, "blue", "b"]]})
    assert response.status_code == 201, response.get_json()
    body = response.get_json()
    assert body["source"] == "json" and body["classes"] == ["a", "b"]
    assert body["columns"][1]["categories"] == ["blue", "red"]


@pytest.mark.parametrize("text, expected", [
    ("", "empty"),
    ("\n\n", "empty"),
    ("a,b,c\n", "no data rows"),
    ("a,b,c\r\n\r\n", "no data rows"),
])
def test_empty_and_header_only_files_are_422(upload_csv, text, expected):
    body = problem(upload_csv(text), 422)
    assert expected in body["detail"]


def test_ragged_row_names_the_row(upload_csv):
    body = problem(upload_csv("a,b,label\n1,2,0\n3,4\n5,6,1\n"), 422)
    assert "row 2 (line 3)" in body["detail"] and "expected 3 fields, got 2" in body["detail"]
    assert body["errors"][0]["row"] == 2


def test_non_numeric_cell_in_numeric_column_names_row_and_column(upload_csv):
    rows = "\n".join(f"{i},{i * 2},{i % 2}" for i in range(1, 8))
    text = "a,b,label\n" + rows.replace("5,10,1", "5,oops,1") + "\n"
    body = problem(upload_csv(text), 422)
    assert "row 5 (line 6), column 'b'" in body["detail"] and "'oops' is not a number" in body["detail"]
    assert body["errors"][0]["column"] == "b"


def test_missing_cells_are_counted_per_column(upload_csv):
    body = upload_csv("a,b,label\n1,2,0\n3,,1\n5,NA,1\n,6,0\n").get_json()
    by_name = {c["name"]: c for c in body["columns"]}
    assert (by_name["a"]["missing"], by_name["b"]["missing"], by_name["label"]["missing"]) == (1, 2, 0)
    assert by_name["a"]["kind"] == by_name["b"]["kind"] == "numeric"
    assert body["n_rows"] == 4 and body["n_rows_without_target"] == 0 and body["warnings"] == []


def test_every_bad_cell_is_reported_at_once(upload_csv):
    body = problem(upload_csv("a,b,label\n1,inf,0\nx,2,1\n5,6,1\n7,8,0\n"), 422)
    messages = " | ".join(e["message"] for e in body["errors"])
    assert "column 'b': 'inf' is not a finite number" in messages and "column 'a': 'x'" in messages


def test_non_finite_number_is_rejected(upload_csv):
    body = problem(upload_csv("a,label\n1,0\ninf,1\n2,1\n3,0\n"), 422)
    assert "row 2 (line 3), column 'a': 'inf' is not a finite number" in body["detail"]
    assert "column 'a'" in problem(upload_csv("a,label\n1,0\n-Infinity,1\n2,1\n"), 422)["detail"]


def test_unknown_target_column_is_422(upload_csv):
    body = problem(upload_csv("a,b\n1,2\n3,4\n", target="price"), 422)
    assert body["errors"][0]["field"] == "target" and "'price'" in body["detail"]


def test_duplicate_column_names_are_422(upload_csv):
    assert "appears twice" in problem(upload_csv("a,a,b\n1,2,3\n"), 422)["detail"]


def test_not_utf8_is_422(upload_csv):
    assert "UTF-8" in problem(upload_csv(b"a,b\n\xff\xfe,1\n"), 422)["detail"]


def test_bad_task_values_are_422(upload_csv):
    assert problem(upload_csv("a,b\n1,2\n", task="clustering"), 422)["errors"][0]["field"] == "task"
    body = problem(upload_csv("a,b\n1,x\n2,y\n", task="regression"), 422)
    assert "regression needs numeric targets" in body["detail"]
    body = problem(upload_csv("a,b\n1,0.5\n2,1.5\n", task="classification"), 422)
    assert "non-integer" in body["detail"]


def test_single_class_target_is_422(upload_csv):
    assert "single class" in problem(upload_csv("a,b\n1,x\n2,x\n"), 422)["detail"]


def test_upload_over_max_upload_mb_is_413(upload_csv):
    big = "a,b\n" + "1234567890,1\n" * 200_000  # ~2.6 MB against MAX_UPLOAD_MB=2 in tests
    body = problem(upload_csv(big), 413)
    assert "MAX_UPLOAD_MB" in body["detail"]


def test_upload_goes_to_disk_under_data_dir(app, upload_csv, monkeypatch):
    from service.api.app import UploadRequest

    seen = []
    original = UploadRequest._get_file_stream

    def spy(self, *args, **kwargs):
        stream = original(self, *args, **kwargs)
        seen.append(stream.name)
        return stream

    monkeypatch.setattr(UploadRequest, "_get_file_stream", spy)
    assert upload_csv("a,b\n1,0\n2,1\n").status_code == 201
    assert seen and seen[0].startswith(app.config["DATA_DIR"])


def test_missing_file_field_and_wrong_content_type(client):
    body = problem(client.post("/v1/datasets", data={"name": "x"}, content_type="multipart/form-data"), 422)
    assert body["errors"][0]["field"] == "file"
    problem(client.post("/v1/datasets", data="a,b", content_type="text/plain"), 415)


@pytest.mark.parametrize("payload, field", [
    ({"columns": ["a"], "data": [[1]], "extra": 1}, "extra"),
    ({"columns": [], "data": []}, "columns"),
    ({"columns": ["a", "b"], "data": [[1, {"x": 1}]]}, "data[0][1]"),
    ({"columns": ["a", "b"], "data": [[1, 2]], "task": "other"}, "task"),
])
def test_json_upload_schema_errors_name_the_field(client, payload, field):
    body = problem(client.post("/v1/datasets", json=payload), 422)
    assert field in [e["field"] for e in body["errors"]]


def test_json_upload_bad_cells_name_row_and_column(client):
    body = problem(client.post("/v1/datasets", json={
        "columns": ["a", "b", "y"], "data": [[1, 2, 0], [3, None, 1], [4], [5, "x", 1], [6, 7, 0]]}), 422)
    fields = [e["field"] for e in body["errors"]]
    assert fields == ["data[2]", "data[3][1]"]  # a null is a missing cell, not an error


def test_malformed_json_is_400(client):
    problem(client.post("/v1/datasets", data="{nope", content_type="application/json"), 400)


def test_list_paginates_newest_first(client, upload_csv):
    ids = [upload_csv(f"a,b\n{i},0\n{i + 1},1\n").get_json()["id"] for i in range(5)]
    first = client.get("/v1/datasets?limit=2").get_json()
    assert [d["id"] for d in first["items"]] == ids[::-1][:2]
    second = client.get(f"/v1/datasets?limit=2&cursor={first['next_cursor']}").get_json()
    third = client.get(f"/v1/datasets?limit=2&cursor={second['next_cursor']}").get_json()
    assert [d["id"] for d in second["items"] + third["items"]] == ids[::-1][2:]
    assert third["next_cursor"] is None
    assert problem(client.get("/v1/datasets?limit=0"), 422)["errors"][0]["field"] == "limit"
    assert problem(client.get("/v1/datasets?limit=x"), 422)["errors"][0]["field"] == "limit"


def test_get_and_delete(client, upload_csv, app):
    from sqlalchemy import func, select

    from service.core.db.tables import DatasetPayload

    text = "a,b\n1,0\n2,1\n"
    one = upload_csv(text).get_json()
    two = upload_csv(text).get_json()
    fetched = client.get(f"/v1/datasets/{one['id']}").get_json()
    assert fetched["id"] == one["id"] and fetched["size_bytes"] > 0
    assert client.delete(f"/v1/datasets/{one['id']}").status_code == 204
    problem(client.get(f"/v1/datasets/{one['id']}"), 404)
    problem(client.delete(f"/v1/datasets/{one['id']}"), 404)
    with app.extensions["backprop.sessions"]() as session:
        assert session.scalar(select(func.count()).select_from(DatasetPayload)) == 1  # still shared
    assert client.delete(f"/v1/datasets/{two['id']}").status_code == 204
    with app.extensions["backprop.sessions"]() as session:
        assert session.scalar(select(func.count()).select_from(DatasetPayload)) == 0
