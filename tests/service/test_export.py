"""Model export: ONNX graphs that reproduce /predict on raw rows, and .npz files for backprop alone."""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np
import pytest

from tests.conftest import BLOBS_COLUMNS, blobs_rows, csv_text, linear_rows, pets_rows
from tests.helpers import mlp, problem, train

onnxruntime = pytest.importorskip("onnxruntime")

GRAPH = {"nodes": [
    {"name": "h1", "type": "dense", "units": 8, "activation": "tanh", "inputs": ["input"]},
    {"name": "h2", "type": "dense", "units": 8, "activation": "elu", "inputs": ["h1"]},
    {"name": "sum", "type": "add", "inputs": ["h1", "h2"]},
    {"name": "both", "type": "concat", "inputs": ["sum", "input"]},
    {"name": "drop", "type": "dropout", "rate": 0.1, "inputs": ["both"]},
    {"name": "out", "type": "dense", "units": 2, "inputs": ["drop", "h1"]},
], "output": "out"}


def trained_model(client: Any, app: Any, dataset: dict[str, Any], network: dict[str, Any],
                  **training: Any) -> str:
    """Train a job on the test database with the worker's run_job (3 epochs, seed 0); return the model id."""
    return train(client, app, dataset["id"], network, **{"epochs": 3, "seed": 0, **training})


def onnx_session(client: Any, model_id: str) -> Any:
    response = client.get(f"/v1/models/{model_id}/export?format=onnx")
    assert response.status_code == 200, response.get_json()
    assert response.headers["Content-Disposition"] == f'attachment; filename="{model_id}.onnx"'
    return onnxruntime.InferenceSession(response.data, providers=["CPUExecutionProvider"])


def feeds(columns: list[str], rows: list[list[Any]], kinds: dict[str, str]) -> dict[str, np.ndarray]:
    """One [N, 1] array per feature column: float32 for numeric, string for categorical."""
    result = {}
    for j, name in enumerate(columns):
        values = [row[j] for row in rows]
        if kinds[name] == "numeric":
            result[name] = np.array(values, dtype=np.float32).reshape(-1, 1)
        else:
            result[name] = np.array([str(v) for v in values], dtype=object).reshape(-1, 1)
    return result


def test_classification_onnx_matches_predict(client, app, upload_csv):
    dataset = upload_csv(csv_text(BLOBS_COLUMNS, blobs_rows(80))).get_json()
    model_id = trained_model(client, app, dataset, mlp())
    rows = [r[:4] for r in blobs_rows(30, seed=3)]
    expected = client.post(f"/v1/models/{model_id}/predict", json={"inputs": rows}).get_json()

    session = onnx_session(client, model_id)
    label, probabilities = session.run(["label", "probabilities"],
                                       feeds(list("abcd"), rows, dict.fromkeys("abcd", "numeric")))

    np.testing.assert_allclose(probabilities, expected["probabilities"], atol=1e-5, rtol=0)
    assert label.tolist() == expected["predictions"]
    assert [i.name for i in session.get_inputs()] == list("abcd")
    meta = session.get_modelmeta().custom_metadata_map
    assert json.loads(meta["classes"]) == [0, 1] and meta["model_id"] == model_id


def test_regression_onnx_maps_back_to_the_targets_scale(client, app, upload_csv):
    dataset = upload_csv(csv_text(["a", "b", "price"], linear_rows(80)), task="regression").get_json()
    model_id = trained_model(client, app, dataset, {"layers": [
        {"type": "dense", "units": 8, "activation": "leaky_relu"},
        {"type": "dense", "units": 8, "activation": "softplus"}, {"type": "dense", "units": 1}]},
        loss="mse")
    rows = [r[:2] for r in linear_rows(30, seed=4)]
    expected = client.post(f"/v1/models/{model_id}/predict", json={"inputs": rows}).get_json()

    (predictions,) = onnx_session(client, model_id).run(
        None, feeds(["a", "b"], rows, {"a": "numeric", "b": "numeric"}))

    assert predictions.shape == (30,) and predictions.dtype == np.float64
    # Prices are around 1000: 1e-5 relative is the float32 network's precision.
    np.testing.assert_allclose(predictions, expected["predictions"], rtol=1e-5, atol=1e-5)


def test_graph_network_with_add_concat_and_a_categorical_feature(client, app, upload_csv):
    dataset = upload_csv(csv_text(["weight", "colour", "animal"], pets_rows(80))).get_json()
    model_id = trained_model(client, app, dataset, GRAPH)
    rows = [r[:2] for r in pets_rows(30, seed=5)] + [[3.5, "purple"], [30.0, "purple"]]  # unseen colour
    expected = client.post(f"/v1/models/{model_id}/predict", json={"inputs": rows}).get_json()

    label, probabilities = onnx_session(client, model_id).run(
        ["label", "probabilities"], feeds(["weight", "colour"], rows,
                                          {"weight": "numeric", "colour": "string"}))

    np.testing.assert_allclose(probabilities, expected["probabilities"], atol=1e-5, rtol=0)
    assert label.tolist() == expected["predictions"]
    assert set(label.tolist()) <= {"cat", "dog"}


def test_binary_cross_entropy_and_multi_output_regression(client, app, upload_csv):
    dataset = upload_csv(csv_text(BLOBS_COLUMNS, blobs_rows(60))).get_json()
    model_id = trained_model(client, app, dataset, mlp((4,), "sigmoid", 1),
        loss="binary_cross_entropy")
    rows = [r[:4] for r in blobs_rows(20, seed=6)]
    expected = client.post(f"/v1/models/{model_id}/predict", json={"inputs": rows}).get_json()
    label, probabilities = onnx_session(client, model_id).run(
        ["label", "probabilities"], feeds(list("abcd"), rows, dict.fromkeys("abcd", "numeric")))
    np.testing.assert_allclose(probabilities, expected["probabilities"], atol=1e-5, rtol=0)
    assert label.tolist() == expected["predictions"]

    data = [[i / 10, (i % 7) / 3, i / 5 + 10, 100 - i / 2] for i in range(40)]
    dataset = client.post("/v1/datasets", json={"columns": ["x", "z", "y1", "y2"], "data": data,
                                                "target": ["y1", "y2"]}).get_json()
    model_id = trained_model(client, app, dataset, mlp((4,), "tanh"))
    rows = [r[:2] for r in data[:10]]
    expected = client.post(f"/v1/models/{model_id}/predict", json={"inputs": rows}).get_json()
    (predictions,) = onnx_session(client, model_id).run(None, feeds(["x", "z"], rows,
                                                                    {"x": "numeric", "z": "numeric"}))
    assert predictions.shape == (10, 2)
    np.testing.assert_allclose(predictions, expected["predictions"], rtol=1e-5, atol=1e-5)


def test_npz_export_loads_with_backprop_alone(client, app, upload_csv):
    import backprop

    dataset = upload_csv(csv_text(["weight", "colour", "animal"], pets_rows(80))).get_json()
    model_id = trained_model(client, app, dataset, GRAPH)
    rows = [r[:2] for r in pets_rows(10, seed=7)]
    expected = client.post(f"/v1/models/{model_id}/predict", json={"inputs": rows}).get_json()

    response = client.get(f"/v1/models/{model_id}/export?format=npz")
    assert response.status_code == 200
    with np.load(io.BytesIO(response.data), allow_pickle=False) as archive:
        meta = json.loads(archive["__meta__"].tobytes())
    assert meta["format"] == "backprop.model.v1" and meta["definition"]["spec"] == GRAPH
    network = backprop.load(meta["definition"], response.data)

    # The preprocessing, applied from the JSON alone: numeric first, then one-hot blocks.
    weight, colour = meta["preprocessing"]["features"]
    encoded = np.array([[(r[0] - weight["mean"]) / weight["std"]]
                        + [float(r[1] == c) for c in colour["categories"]] for r in rows], dtype=np.float32)
    probabilities = network.predict(encoded, loss=meta["loss"])
    np.testing.assert_allclose(probabilities, expected["probabilities"], atol=1e-5)
    assert [meta["classes"][k] for k in probabilities.argmax(axis=1)] == expected["predictions"]


def test_a_float64_network_exports_computing_in_float32():
    import types

    import backprop
    from service.core.data.preprocessing import Preprocessor
    from service.core.models.export import to_onnx

    network = backprop.build(GRAPH, 4, seed=3, dtype="float64")
    definition, weights = backprop.save(network)
    state = {"features": [{"name": "weight", "kind": "numeric", "mean": 12.0, "std": 9.0},
                          {"name": "colour", "kind": "string", "categories": ["black", "brown", "grey"]}],
             "target": {"task": "classification", "names": ["animal"], "classes": ["cat", "dog"]}}
    model = types.SimpleNamespace(id="mdl_test", task="classification", loss="cross_entropy",
                                  definition=definition, weights=weights, preprocessing=state,
                                  classes=["cat", "dog"])
    rows = [[3.0, "grey"], [25.0, "brown"], [9.5, "purple"]]
    preprocessor = Preprocessor(state)
    expected = preprocessor.decode(network.predict(preprocessor.encode_inputs(rows)), "cross_entropy")

    session = onnxruntime.InferenceSession(to_onnx(model), providers=["CPUExecutionProvider"])
    label, probabilities = session.run(["label", "probabilities"], feeds(
        ["weight", "colour"], rows, {"weight": "numeric", "colour": "string"}))

    assert probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities, expected["probabilities"], atol=1e-6)
    assert label.tolist() == expected["predictions"]


def test_unknown_format_is_a_422_naming_the_field_and_unknown_model_a_404(client, app, upload_csv):
    assert problem(client.get("/v1/models/nope/export?format=pmml"), 422)["errors"][0]["field"] == "format"
    for format_ in ("onnx", "npz"):
        problem(client.get(f"/v1/models/nope/export?format={format_}"), 404)
