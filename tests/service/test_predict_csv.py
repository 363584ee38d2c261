"""/predict with text/csv bodies and CSV answers, and the all-numeric fast path's guards."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest

from tests.conftest import blobs_rows, csv_text, pets_rows
from tests.helpers import mlp, problem, train

pytestmark = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)

MLP = mlp(activation="tanh")


def trained(client, app, upload_csv, header, rows, network=MLP) -> str:
    dataset = upload_csv(csv_text(header, rows)).get_json()
    return train(client, app, dataset["id"], network, epochs=3, batch_size=16)


def post_csv(client, model_id, text, accept="application/json"):
    return client.post(f"/v1/models/{model_id}/predict", data=text.encode() if isinstance(text, str) else text,
                       content_type="text/csv", headers={"Accept": accept})


def test_csv_body_answers_like_json_inputs(client, blobs_model):
    rows = blobs_rows(25, seed=3)
    expected = client.post(f"/v1/models/{blobs_model}/predict", json={"inputs": [r[:4] for r in rows]}).get_json()
    # Columns in another order, the target column present (ignored), CRLF and a BOM.
    text = "\ufeff" + csv_text(["d", "label", "b", "a", "c"], [[r[3], r[4], r[1], r[0], r[2]] for r in rows],
                               newline="\r\n")
    body = post_csv(client, blobs_model, text).get_json()
    assert body["predictions"] == expected["predictions"] and body["model_id"] == blobs_model
    np.testing.assert_allclose(body["probabilities"], expected["probabilities"], rtol=1e-6)

    answer = post_csv(client, blobs_model, text, accept="text/csv")
    assert answer.status_code == 200 and answer.mimetype == "text/csv"
    table = list(csv.reader(io.StringIO(answer.get_data(as_text=True))))
    assert table[0] == ["prediction", "probability_0", "probability_1"]
    assert [int(r[0]) for r in table[1:]] == expected["predictions"]
    np.testing.assert_allclose([[float(v) for v in r[1:]] for r in table[1:]], expected["probabilities"],
                               rtol=1e-6)


def test_json_request_can_ask_for_a_csv_answer(client, blobs_model):
    answer = client.post(f"/v1/models/{blobs_model}/predict", json={"inputs": [[0, 0, 0, 0]]},
                         headers={"Accept": "text/csv"})
    assert answer.mimetype == "text/csv" and answer.get_data(as_text=True).startswith("prediction,")


def test_csv_with_odd_cells_takes_the_careful_path(client, blobs_model):
    text = 'a,b,c,d\n"1.5", 2 ,3,4\n\n0,0,0,0\n'
    slow = post_csv(client, blobs_model, text).get_json()
    fast = client.post(f"/v1/models/{blobs_model}/predict", json={"inputs": [[1.5, 2, 3, 4], [0, 0, 0, 0]]}).get_json()
    assert slow["predictions"] == fast["predictions"]


@pytest.mark.parametrize("text, field, words", [
    ("a,b,c,d,e\n1,2,3,4,5\n", "csv", "unknown column 'e'"),
    ("a,b,c\n1,2,3\n", "csv", "missing column 'd'"),
    ("", "csv", "header row"),
    ("a,b,c,d\n", "csv", "at least one row"),
    ("a,b,c,d\n1,2,3,4\n1,2,3\n", "csv[1]", "expected 4 fields"),
    ("a,b,c,d\n1,2,3,4\n1,x,3,4\n", "csv[1].b", "numeric"),
    # Empty cells and NA tokens are missing values (tests/service/test_preprocessing_missing.py); inf is not.
    ("a,b,c,d\n1,2,3,inf\n", "csv[0].d", "numeric"),
    ("a,b,c,d\n1,2,3,-\n", "csv[0].d", "numeric"),
    ("a,b,c,d\n1,2,3,1e39\n", "csv[0].d", "float32"),
    (b"a,b,c,d\n1,2,3,\xff\n", "csv", "UTF-8"),
])
def test_bad_csv_bodies_are_422s_naming_row_and_column(client, blobs_model, text, field, words):
    body = problem(post_csv(client, blobs_model, text), 422)
    assert body["errors"][0]["field"] == field and words in body["errors"][0]["message"], body


def test_csv_rows_are_limited(client, blobs_model, monkeypatch):
    from service.api import models

    monkeypatch.setattr(models, "MAX_PREDICT_ROWS", 3)
    text = csv_text(["a", "b", "c", "d"], [[1, 2, 3, 4]] * 4)
    assert "at most 3 rows" in problem(post_csv(client, blobs_model, text), 422)["errors"][0]["message"]
    assert "at most 3 rows" in problem(post_csv(client, blobs_model, text.replace("1,", "1 ,")), 422)["detail"]


def test_booleans_are_still_refused_in_numeric_inputs(client, blobs_model):
    body = problem(client.post(f"/v1/models/{blobs_model}/predict", json={"inputs": [[1, True, 0, 0]]}), 422)
    assert body["errors"][0]["field"] == "inputs[0][1]"
    # The word in a string does not change the answer, only which check runs.
    body = problem(client.post(f"/v1/models/{blobs_model}/predict", json={"inputs": [[1, "true", 0, 0]]}), 422)
    assert body["errors"][0]["field"] == "inputs[0][1]"


def test_csv_with_string_features(client, app, upload_csv):
    model_id = trained(client, app, upload_csv, ["weight", "color", "pet"], pets_rows(80))
    records = [{"weight": 26.0, "color": "brown"}, {"weight": 3.5, "color": "grey"}, {"weight": 4, "color": "pink"}]
    expected = client.post(f"/v1/models/{model_id}/predict", json={"records": records}).get_json()
    body = post_csv(client, model_id, 'color,weight\nbrown,26.0\n"grey",3.5\npink,4\n').get_json()
    assert body["predictions"] == expected["predictions"]
    bad = problem(post_csv(client, model_id, "color,weight\nbrown,heavy\n"), 422)
    assert bad["errors"][0]["field"] == "csv[0].weight"


def test_regression_csv_answer_names_the_targets(client, app):
    rows = [[i / 10, (i % 7) / 3, i / 5 + 10, 100 - i / 2] for i in range(60)]
    dataset = client.post("/v1/datasets", json={"columns": ["x", "z", "y1", "y2"], "data": rows,
                                                "target": ["y1", "y2"]}).get_json()
    model_id = train(client, app, dataset["id"], MLP, epochs=2)
    answer = post_csv(client, model_id, "x,z\n1,1\n2,0\n", accept="text/csv").get_data(as_text=True)
    lines = answer.splitlines()
    assert lines[0] == "y1,y2" and len(lines) == 3 and len(lines[1].split(",")) == 2


def test_csv_answer_quotes_labels_and_keeps_every_float_exact(backend):
    from service.api.models import _csv_answer

    classes = ["a,b", 'say "hi"', 3]
    probabilities = [[0.1, 1e-05, 0.89999], [1 / 3, 2 / 3, 2.5e-300], [0.0, 1e16, -0.0]]
    text = _csv_answer({"predictions": ['say "hi"', "a,b", 3], "probabilities": probabilities,
                        "classes": classes})
    table = list(csv.reader(io.StringIO(text)))
    assert table[0] == ["prediction", "probability_a,b", 'probability_say "hi"', "probability_3"]
    assert [r[0] for r in table[1:]] == ['say "hi"', "a,b", "3"]
    assert [[float(v) for v in r[1:]] for r in table[1:]] == probabilities

    one_target = _csv_answer({"predictions": [1.5, -2e-7], "targets": ["y"]})
    assert one_target == "y\n1.5\n-2e-7\n" and [float(v) for v in one_target.split()[1:]] == [1.5, -2e-7]
    two_targets = _csv_answer({"predictions": [[1.0, 2.0]], "targets": ["y1", "y 2"]})
    assert two_targets == "y1,y 2\n1.0,2.0\n"
    assert _csv_answer({"predictions": [], "targets": ["y"]}) == "y\n"
