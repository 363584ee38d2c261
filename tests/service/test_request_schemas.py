"""The request schemas of /openapi.json state the API's rules: what they call valid the API
takes (else schemathesis's negative_data_rejection would fail) and the engine's tables are
their one source (else a new activation would be refused by the document)."""

from __future__ import annotations

from typing import Any

import jsonschema_rs  # schemathesis's validator
import pytest

import backprop
from backprop.activations import ACTIVATIONS
from backprop.initializers import INITIALIZERS
from backprop.spec import NODE_KEYS
from service.core.schemas import NetworkDefinition, PredictRequest, TrainingSchema


def _valid(model: Any, instance: Any) -> bool:
    return bool(jsonschema_rs.Draft202012Validator(model.model_json_schema()).is_valid(instance))


VALID_DEFINITIONS = [
    {"layers": [{"type": "dense", "units": 8, "activation": "relu", "init": "he_normal", "use_bias": False},
                {"type": "dropout", "rate": 0}, {"type": "activation", "activation": "tanh"},
                {"type": "dense", "units": 2, "name": "out"}]},
    {"name": "graph", "nodes": [{"name": "a", "type": "dense", "inputs": ["input"], "units": 3},
                                {"name": "b", "type": "add", "inputs": ["a", "a"]},
                                {"name": "c", "type": "concat", "inputs": ["b", "input"]}], "output": "c"},
]
# Refused by the engine for a rule the schema states.
REFUSED_DEFINITIONS = [
    {"layers": []},
    {"layers": [{"type": "dense", "units": 0}]},
    {"layers": [{"type": "dense", "units": 2, "activation": "swish"}]},
    {"layers": [{"type": "dense", "units": 2, "init": None}]},
    {"layers": [{"type": "dropout", "rate": 1}]},
    {"layers": [{"type": "add"}]},  # a stack feeds each layer one input
    {"layers": [{"type": "dense", "units": 2, "name": "input"}]},
    {"layers": [{"type": "dense", "units": 2}], "output": "x"},
    {"layers": [{"type": "dense", "units": 2}], "nodes": []},
    {"nodes": [{"name": "a", "type": "concat", "inputs": ["input"]}]},
    {"nodes": [{"name": "a", "type": "dense", "units": 2}]},
    {"layers": None},
]


@pytest.mark.parametrize("definition", VALID_DEFINITIONS)
def test_valid_definitions_conform(definition: dict[str, Any]) -> None:
    assert not backprop.validate({k: v for k, v in definition.items() if k != "name"}, input_dim=4)
    assert _valid(NetworkDefinition, definition)


@pytest.mark.parametrize("definition", REFUSED_DEFINITIONS)
def test_refused_definitions_do_not_conform(definition: dict[str, Any]) -> None:
    assert backprop.validate(definition)
    assert not _valid(NetworkDefinition, definition)


def test_node_schemas_come_from_the_engine_tables() -> None:
    schema = NetworkDefinition.model_json_schema()
    layers = schema["oneOf"][0]["properties"]["layers"]["items"]["oneOf"]
    nodes = schema["oneOf"][1]["properties"]["nodes"]["items"]["oneOf"]
    assert [n["properties"]["type"]["const"] for n in nodes] == list(NODE_KEYS)
    dense = next(n for n in layers if n["properties"]["type"]["const"] == "dense")
    assert dense["properties"]["activation"]["enum"] == list(ACTIVATIONS)
    assert dense["properties"]["init"]["enum"] == list(INITIALIZERS)


def test_optional_training_bounds_are_json_schema_keywords() -> None:
    """`X | None` fields keep their bounds as minimum/exclusiveMinimum on the number branch."""
    properties = TrainingSchema.model_json_schema()["properties"]
    assert {"type": "number", "exclusiveMinimum": 0, "maximum": 1e6} in properties["gradient_clip_norm"]["anyOf"]
    assert not any(key in branch for p in properties.values() for branch in p.get("anyOf", [p])
                   for key in ("ge", "gt", "le", "lt"))


@pytest.mark.parametrize(("body", "valid"), [
    ({"inputs": [[1, "a"]]}, True), ({"records": [{"x": 1}], "inputs": None}, True),
    ({"inputs": [[1]], "records": [{"x": 1}]}, False), ({"inputs": []}, False), ({"inputs": [[None]]}, True),
    ({"inputs": [[True]]}, False), ({}, False)])
def test_predict_schema_is_the_views_rule(body: dict[str, Any], valid: bool) -> None:
    assert _valid(PredictRequest, body) is valid


def test_an_empty_target_list_is_refused(client: Any) -> None:
    """describe_target: a dataset needs a target (it was one with none, a regression of nothing)."""
    response = client.post("/v1/datasets", json={"columns": ["a", "b"], "data": [[1, 0], [2, 1]], "target": []})
    assert response.status_code == 422
    assert [e["field"] for e in response.get_json()["errors"]] == ["target"]


def test_a_target_of_only_commas_is_refused(upload_csv: Any) -> None:
    response = upload_csv("a,b\n1,0\n2,1\n", target=" , ")
    assert response.status_code == 422
    assert [e["field"] for e in response.get_json()["errors"]] == ["target"]
