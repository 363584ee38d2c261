"""Missing values and dates in the preprocessing: fit, encode, /predict, and the ONNX export."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from service.core.data.parsing import ParsedTable, parse_datetime
from service.core.data.preprocessing import InputError, Preprocessor, datetime_parts, fit
from tests.helpers import mlp, problem, train

NAN = np.nan


def seconds(text: str) -> float:
    parsed = parse_datetime(text)
    assert parsed is not None, text
    return parsed[0]


def table(columns: list[dict[str, Any]], rows: list[list[float]],
          datetimes: list[list[float]] | None = None) -> ParsedTable:
    return ParsedTable(columns=columns, values=np.array(rows, dtype=np.float32),
                       datetimes=None if datetimes is None else np.array(datetimes, dtype=np.float64))


NUMERIC = [{"name": "x", "kind": "numeric"}, {"name": "z", "kind": "numeric"}, {"name": "y", "kind": "numeric"}]


# -- fit and encode ---------------------------------------------------------------------------


def test_numeric_imputation_uses_the_training_mean_and_indicators_only_where_training_missed():
    # Row 4 is a validation row: its missing z must not give z an indicator, its x not count in the mean.
    rows = [[1.0, 5.0, 0.0], [NAN, 7.0, 1.0], [3.0, 9.0, 0.0], [8.0, 11.0, 1.0], [100.0, NAN, 0.0]]
    state = fit(table(NUMERIC, rows), ["x", "z"], ["y"], "regression", None, np.arange(4))
    x, z = state["features"]
    assert x["mean"] == pytest.approx(4.0) and x["std"] == pytest.approx(np.std([1.0, 3.0, 8.0]))
    assert x["indicator"] is True and z["indicator"] is False
    assert z["mean"] == pytest.approx(8.0)

    preprocessor = Preprocessor(state)
    assert preprocessor.input_width == 3  # x, z, then x's indicator
    encoded = preprocessor.encode_table(table(NUMERIC, rows))
    # The missing x is the training mean, which standardizes to 0; its indicator says so.
    assert encoded[1].tolist() == [0.0, pytest.approx((7.0 - 8.0) / z["std"]), 1.0]
    assert encoded[:, 2].tolist() == [0.0, 1.0, 0.0, 0.0, 0.0]
    # z had no missing training cell: a missing z is imputed too, without an indicator.
    assert encoded[4].tolist() == [pytest.approx((100.0 - 4.0) / x["std"]), 0.0, 0.0]
    records = preprocessor.encode_records([{"x": None, "z": 7.0}, {"z": None}, {}])
    np.testing.assert_array_equal(records[0], encoded[1])
    assert records[1].tolist() == records[2].tolist() == [0.0, 0.0, 1.0]


def test_regression_targets_leave_missing_values_out():
    rows = [[1.0, 0.0, 2.0], [2.0, 0.0, NAN], [3.0, 0.0, 6.0]]
    target = fit(table(NUMERIC, rows), ["x"], ["y"], "regression", None, np.arange(3))["target"]
    assert target["mean"] == [pytest.approx(4.0)] and target["std"] == [pytest.approx(2.0)]


STRINGS = [{"name": "c", "kind": "string", "categories": ["a", "b", "missing"]},
           {"name": "k", "kind": "string", "categories": ["p", "q"]},
           {"name": "y", "kind": "numeric"}]


def test_a_string_features_missing_value_is_a_slot_of_its_own():
    # c: "a", missing, "missing" (a real value of that name), "b" only in the validation row.
    # k: never missing in training.
    rows = [[0.0, 0.0, 0.0], [NAN, 1.0, 1.0], [2.0, 0.0, 0.0], [1.0, NAN, 1.0]]
    state = fit(table(STRINGS, rows), ["c", "k"], ["y"], "regression", None, np.arange(3))
    c, k = state["features"]
    assert c["categories"] == ["a", "missing"] and c["missing_category"] is True
    assert k["categories"] == ["p", "q"] and k["missing_category"] is False
    preprocessor = Preprocessor(state)
    assert preprocessor.input_width == 3 + 2  # a, missing, the missing slot; p, q

    encoded = preprocessor.encode_table(table(STRINGS, rows))
    assert encoded.tolist() == [[1, 0, 0, 1, 0], [0, 0, 1, 0, 1], [0, 1, 0, 1, 0],
                                # "b" was not seen in training, k has no missing slot: all zeros
                                [0, 0, 0, 0, 0]]
    records = preprocessor.encode_records([{"c": "missing", "k": "q"}, {"c": None, "k": None},
                                           {"c": "", "k": "unseen"}, {"k": "p"}])
    assert records.tolist() == [[0, 1, 0, 0, 1], [0, 0, 1, 0, 0], [0, 0, 1, 0, 0], [0, 0, 1, 1, 0]]


def test_datetime_parts_of_dates_and_date_times():
    given = np.array([seconds("2024-02-29T13:45:59"), NAN, seconds("1969-12-31"), seconds("2023-12-31T23:59")])
    parts = datetime_parts(given, has_time=True)
    # year, month, day, weekday (Monday 0), day of year, hour, minute
    assert parts[0].tolist() == [2024, 2, 29, 3, 60, 13, 45]
    assert np.isnan(parts[1]).all()
    assert parts[2].tolist() == [1969, 12, 31, 2, 365, 0, 0]
    assert parts[3].tolist() == [2023, 12, 31, 6, 365, 23, 59]
    assert datetime_parts(given, has_time=False).shape == (4, 5)


DATES = [{"name": "day", "kind": "datetime", "has_time": False, "slot": 1},
         {"name": "at", "kind": "datetime", "has_time": True, "slot": 0},
         {"name": "y", "kind": "numeric"}]


def test_datetime_features_are_imputed_and_standardized_parts():
    moments = [["2024-01-01T08:30", "2024-01-01"], ["2024-03-02T20:00", None], ["2023-07-15T00:15", "2023-07-15"]]
    datetimes = [[seconds(a), NAN if d is None else seconds(d)] for a, d in moments]
    rows = [[0.0, 0.0, 1.0], [0.0, NAN, 2.0], [0.0, 0.0, 3.0]]
    state = fit(table(DATES, rows, datetimes), ["day", "at"], ["y"], "regression", None, np.arange(3))
    day, at = state["features"]
    assert day["parts"] == ["year", "month", "day", "weekday", "yearday"] and day["indicator"] is True
    assert at["parts"] == ["year", "month", "day", "weekday", "yearday", "hour", "minute"]
    assert at["indicator"] is False
    assert day["mean"][0] == pytest.approx(2023.5) and at["mean"][5] == pytest.approx(28 / 3)

    preprocessor = Preprocessor(state)
    assert preprocessor.input_width == 5 + 7 + 1  # day's parts, at's parts, day's indicator
    encoded = preprocessor.encode_table(table(DATES, rows, datetimes))
    assert encoded[1, :5].tolist() == [0.0] * 5 and encoded[:, 12].tolist() == [0.0, 1.0, 0.0]
    expected = (datetime_parts(np.array([datetimes[2][1]]), False)[0] - day["mean"]) / day["std"]
    np.testing.assert_allclose(encoded[2, :5], expected, rtol=1e-6)
    # /predict takes ISO text, with or without a time or an offset, and null.
    raw = preprocessor.encode_records([{"day": "2023-07-15", "at": "2023-07-15T00:15:00"},
                                       {"day": None, "at": "2024-03-02T21:00+01:00"}])
    np.testing.assert_array_equal(raw, encoded[[2, 1]])
    with pytest.raises(InputError) as error:
        preprocessor.encode_inputs([["15/07/2023", "2024-01-01"], [3, "2024-01-01"]])
    assert [e["field"] for e in error.value.errors] == ["inputs[0][0]", "inputs[1][0]"]
    assert "ISO 8601" in error.value.errors[0]["message"]


def test_a_state_stored_before_missing_values_encodes_as_before():
    # The state of a model stored before this change: no indicator, missing slot or column list.
    state = {"features": [{"name": "w", "kind": "numeric", "mean": 10.0, "std": 4.0},
                          {"name": "c", "kind": "string", "categories": ["black", "brown"]}],
             "target": {"task": "classification", "names": ["animal"], "classes": ["cat", "dog"]}}
    preprocessor = Preprocessor(state)
    assert preprocessor.input_width == 3
    assert preprocessor.encode_inputs([[14.0, "brown"], [2.0, "pink"]]).tolist() == [[1, 0, 1], [-2, 0, 0]]
    # A null is now a missing value: the mean, no indicator; a string's missing value is all zeros.
    assert preprocessor.encode_records([{"w": None, "c": None}]).tolist() == [[0, 0, 0]]
    with pytest.raises(InputError) as error:
        preprocessor.encode_records([{"w": 1, "c": "black", "age": 3}])
    assert error.value.errors[0]["field"] == "records[0].age"
    # Its table rows (string codes of the dataset's categories) encode as before too.
    columns = [{"name": "w", "kind": "numeric"}, {"name": "c", "kind": "string", "categories": ["black", "brown"]},
               {"name": "animal", "kind": "string", "categories": ["cat", "dog"]}]
    assert preprocessor.encode_table(table(columns, [[6.0, 1.0, 0.0]])).tolist() == [[-1, 0, 1]]


def test_all_numeric_csv_takes_missing_cells_on_the_fast_and_the_careful_path():
    rows = [[1.0, NAN, 0.0], [3.0, 7.0, 1.0], [5.0, 9.0, 0.0]]
    preprocessor = Preprocessor(fit(table(NUMERIC, rows), ["x", "z"], ["y"], "regression", None, np.arange(3)))
    expected = preprocessor.encode_records([{"x": 1, "z": None}, {"x": None, "z": 9}, {"x": 3, "z": None}])
    fast = preprocessor.encode_csv(b"x,z\n1,\nNA,9\n3,n/a\n", 100)
    careful = preprocessor.encode_csv(b'x,z,y\n1,"NA",0\n" NA ",9,1\n3,,0\n', 100)
    np.testing.assert_array_equal(fast, expected)
    np.testing.assert_array_equal(careful, expected)
    assert preprocessor.encode_inputs([[1, None], [None, 9], [3, None]]).tolist() == expected.tolist()
    with pytest.raises(InputError) as error:
        preprocessor.encode_csv(b"x,z\n1,inf\n", 100)
    assert error.value.errors[0]["field"] == "csv[0].z"


# -- /predict and ONNX, through the API ------------------------------------------------------

on_sqlite = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)


def pets_with_gaps(n: int = 120, seed: int = 0) -> str:
    """Pets (weight, colour -> animal) with NA weights, empty colours and a name per row (an identifier)."""
    rng = np.random.default_rng(seed)
    lines = ["name,weight,colour,animal"]
    for i in range(n):
        dog = i % 2 == 1
        colour = ("brown" if rng.random() < 0.8 else "black") if dog else ("grey" if rng.random() < 0.8 else "black")
        weight = f"{rng.normal(25.0 if dog else 4.0, 2.0):.2f}"
        if i % 7 == 3:
            weight = "NA"
        if i % 9 == 4:
            colour = ""
        lines.append(f"pet{i},{weight},{colour},{'dog' if dog else 'cat'}")
    return "\n".join(lines) + "\n"


@pytest.fixture
def gaps_model(client: Any, app: Any, upload_csv: Any) -> str:
    dataset = upload_csv(pets_with_gaps()).get_json()
    assert dataset["features"] == ["weight", "colour"], dataset
    return train(client, app, dataset["id"], mlp(activation="tanh"), epochs=3, seed=0)


@on_sqlite
def test_predict_takes_nulls_absent_keys_and_ignores_unused_dataset_columns(client, gaps_model):
    model = client.get(f"/v1/models/{gaps_model}").get_json()
    weight, colour = model["preprocessing"]["features"]
    assert weight["indicator"] is True and colour["missing_category"] is True
    assert model["preprocessing"]["columns"] == ["name", "weight", "colour", "animal"]

    url = f"/v1/models/{gaps_model}/predict"
    by_inputs = client.post(url, json={"inputs": [[None, "brown"], [21.5, None], [None, None]]})
    assert by_inputs.status_code == 200, by_inputs.get_json()
    by_records = client.post(url, json={"records": [{"colour": "brown", "name": "rex"},
                                                    {"weight": 21.5, "colour": None, "animal": "dog"}, {}]})
    assert by_records.status_code == 200, by_records.get_json()
    assert by_records.get_json()["probabilities"] == by_inputs.get_json()["probabilities"]
    by_csv = client.post(url, data="name,colour,weight\nrex,brown,NA\n,,21.5\nx,N/A,\n", content_type="text/csv")
    assert by_csv.get_json()["probabilities"] == by_inputs.get_json()["probabilities"]
    # A missing value is not the same row as any real one: the indicator and slot are inputs.
    known = client.post(url, json={"inputs": [[weight["mean"], "brown"]]}).get_json()
    assert known["probabilities"][0] != by_inputs.get_json()["probabilities"][0]


@on_sqlite
def test_unknown_keys_stay_422s_naming_them(client, gaps_model):
    url = f"/v1/models/{gaps_model}/predict"
    body = problem(client.post(url, json={"records": [{"weight": 3, "age": 2}]}), 422)
    assert [e["field"] for e in body["errors"]] == ["records[0].age"]
    body = problem(client.post(url, data="weight,colour,age\n3,grey,2\n", content_type="text/csv"), 422)
    assert "unknown column 'age'" in body["errors"][0]["message"]


@on_sqlite
def test_onnx_matches_predict_on_rows_with_missing_cells(client, gaps_model):
    onnxruntime = pytest.importorskip("onnxruntime")
    rows = [[4.5, "grey"], [None, "brown"], [26.0, None], [None, None], [3.0, "pink"], [None, "black"]]
    expected = client.post(f"/v1/models/{gaps_model}/predict", json={"inputs": rows}).get_json()

    response = client.get(f"/v1/models/{gaps_model}/export?format=onnx")
    assert response.status_code == 200
    session = onnxruntime.InferenceSession(response.data, providers=["CPUExecutionProvider"])
    # The graph's missing values: NaN for a number, "" for a string.
    feeds = {"weight": np.array([[NAN if r[0] is None else r[0]] for r in rows], dtype=np.float32),
             "colour": np.array([["" if r[1] is None else r[1]] for r in rows], dtype=object)}
    label, probabilities = session.run(["label", "probabilities"], feeds)
    np.testing.assert_allclose(probabilities, expected["probabilities"], atol=1e-5, rtol=0)
    assert label.tolist() == expected["predictions"]


@on_sqlite
def test_datetime_models_predict_from_iso_text_and_refuse_onnx(client, app, upload_csv):
    rng = np.random.default_rng(1)
    lines = ["seen,weight,label"]
    for i in range(80):
        day = f"2024-{1 + i % 12:02d}-{1 + i % 28:02d}" if i % 10 else ""
        lines.append(f"{day},{rng.normal(3.0 * (i % 2), 0.5):.3f},{i % 2}")
    dataset = upload_csv("\n".join(lines) + "\n").get_json()
    kinds = {c["name"]: c["kind"] for c in dataset["columns"]}
    assert kinds["seen"] == "datetime", dataset
    model_id = train(client, app, dataset["id"], mlp(activation="tanh"), epochs=2, seed=0)
    model = client.get(f"/v1/models/{model_id}").get_json()
    assert model["preprocessing"]["features"][0]["parts"] == ["year", "month", "day", "weekday", "yearday"]

    url = f"/v1/models/{model_id}/predict"
    answer = client.post(url, json={"records": [{"seen": "2024-05-06", "weight": 0.1}, {"weight": 3.0},
                                                {"seen": None, "weight": 3.0}]})
    assert answer.status_code == 200, answer.get_json()
    probabilities = answer.get_json()["probabilities"]
    assert probabilities[1] == probabilities[2]
    body = problem(client.post(url, json={"inputs": [["06/05/2024", 0.1]]}), 422)
    assert body["errors"][0]["field"] == "inputs[0][0]" and "'seen'" in body["errors"][0]["message"]

    body = problem(client.get(f"/v1/models/{model_id}/export?format=onnx"), 422)
    assert body["errors"][0]["field"] == "format" and "'seen'" in body["errors"][0]["message"]
    assert client.get(f"/v1/models/{model_id}/export?format=npz").status_code == 200


@on_sqlite
def test_a_folded_columns_rare_and_unseen_values_encode_as_other_in_predict_and_onnx(client, app, upload_csv):
    onnxruntime = pytest.importorskip("onnxruntime")
    app.config["MAX_CATEGORIES"] = 2
    rng = np.random.default_rng(1)
    colours = ["brown", "grey"] * 30 + ["pink", "teal", "blue", ""] * 3
    lines = ["weight,colour,animal"] + [f"{rng.normal(10, 3):.2f},{c},{'dog' if i % 2 else 'cat'}"
                                        for i, c in enumerate(colours)]
    dataset = upload_csv("\n".join(lines) + "\n").get_json()
    (colour,) = [c for c in dataset["columns"] if c["name"] == "colour"]
    assert colour["categories"] == ["brown", "grey", "other"] and colour["folded"] == 3
    model_id = train(client, app, dataset["id"], mlp(activation="tanh"), epochs=3, seed=0)
    fitted = client.get(f"/v1/models/{model_id}").get_json()["preprocessing"]["features"][1]
    assert fitted["fold"] is True and fitted["missing_category"] is True

    rows = [[9.0, "other"], [9.0, "teal"], [9.0, "never seen"], [9.0, None], [9.0, "brown"]]
    answer = client.post(f"/v1/models/{model_id}/predict", json={"inputs": rows}).get_json()
    other, rare, unseen, missing, brown = answer["probabilities"]
    assert rare == other and unseen == other and missing != other and brown != other

    session = onnxruntime.InferenceSession(client.get(f"/v1/models/{model_id}/export?format=onnx").data,
                                           providers=["CPUExecutionProvider"])
    feeds = {"weight": np.array([[r[0]] for r in rows], dtype=np.float32),
             "colour": np.array([["" if r[1] is None else r[1]] for r in rows], dtype=object)}
    _label, probabilities = session.run(["label", "probabilities"], feeds)
    np.testing.assert_allclose(probabilities, answer["probabilities"], atol=1e-5, rtol=0)
