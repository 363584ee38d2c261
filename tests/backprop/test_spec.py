"""Validation of network definitions: every problem at once, with the node's name."""

from __future__ import annotations

import pytest

import backprop


def fields(problems):
    return {p.field for p in problems}


def test_stack_and_graph_forms_build():
    stack = {"layers": [{"type": "dense", "units": 4, "activation": "relu"}, {"type": "dropout", "rate": 0.1},
                        {"type": "dense", "units": 3}]}
    graph = {"nodes": [
        {"name": "h1", "type": "dense", "units": 4, "activation": "tanh", "inputs": ["input"]},
        {"name": "h2", "type": "dense", "units": 4, "activation": "tanh", "inputs": ["h1"]},
        {"name": "sum", "type": "add", "inputs": ["h1", "h2"]},
        {"name": "out", "type": "dense", "units": 3, "inputs": ["sum", "input"]},
    ], "output": "out"}
    assert backprop.validate(stack, 5, 3) == []
    assert backprop.validate(graph, 5, 3) == []
    assert list(backprop.build(stack, 5).parameters()) == ["dense_0.weight", "dense_0.bias", "dense_2.weight",
                                                           "dense_2.bias"]
    assert backprop.build(graph, 5).parameters()["out.weight"].shape == (9, 3)


def test_every_problem_is_reported_at_once():
    spec = {"nodes": [
        {"name": "a", "type": "dense", "units": 0, "inputs": ["input"]},
        {"name": "b", "type": "convolution", "inputs": ["a"]},
        {"name": "c", "type": "dense", "units": 3, "activation": "swish", "inputs": ["a"]},
        {"name": "d", "type": "dense", "units": 3, "inputs": ["ghost"]},
        {"name": "e", "type": "dense", "units": 3, "inputs": ["c"], "unit": 4},
    ], "output": "e"}
    problems = backprop.validate(spec, 4, 3)
    assert fields(problems) == {"nodes[0].units", "nodes[1].type", "nodes[2].activation", "nodes[3].inputs[0]",
                                "nodes[4].unit"}
    by_field = {p.field: p for p in problems}
    assert by_field["nodes[1].type"].node == "b"
    assert "ghost" in by_field["nodes[3].inputs[0]"].message


def test_cycle_names_its_nodes():
    spec = {"nodes": [
        {"name": "a", "type": "dense", "units": 3, "inputs": ["input", "c"]},
        {"name": "b", "type": "dense", "units": 3, "inputs": ["a"]},
        {"name": "c", "type": "dense", "units": 3, "inputs": ["b"]},
        {"name": "out", "type": "dense", "units": 2, "inputs": ["c"]},
    ]}
    problems = backprop.validate(spec, 4)
    assert {p.node for p in problems} == {"a", "b", "c"}
    assert all("cycle" in p.message for p in problems)


def test_shape_mismatch_and_output_width():
    spec = {"nodes": [
        {"name": "a", "type": "dense", "units": 3, "inputs": ["input"]},
        {"name": "b", "type": "dense", "units": 4, "inputs": ["input"]},
        {"name": "sum", "type": "add", "inputs": ["a", "b"]},
        {"name": "out", "type": "dense", "units": 5, "inputs": ["sum"]},
    ]}
    problems = backprop.validate(spec, 4, output_dim=10)
    assert [p.field for p in problems] == ["nodes[2].inputs"]
    assert "equal width" in problems[0].message
    fixed = dict(spec, nodes=[*spec["nodes"][:1], {**spec["nodes"][1], "units": 3}, *spec["nodes"][2:]])
    problems = backprop.validate(fixed, 4, output_dim=10)
    assert [(p.field, p.node) for p in problems] == [("nodes[3].units", "out")]
    assert "needs 10" in problems[0].message


def test_dangling_branch_and_missing_output():
    spec = {"nodes": [
        {"name": "a", "type": "dense", "units": 3, "inputs": ["input"]},
        {"name": "unused", "type": "dense", "units": 3, "inputs": ["a"]},
        {"name": "out", "type": "dense", "units": 2, "inputs": ["a"]},
    ], "output": "out"}
    assert [(p.field, p.node) for p in backprop.validate(spec, 4)] == [("nodes[1]", "unused")]
    assert fields(backprop.validate({**spec, "output": "nope"}, 4)) == {"output"}


@pytest.mark.parametrize("spec,field", [
    ([], ""),
    ({}, ""),
    ({"layers": [], "nodes": []}, ""),
    ({"layers": []}, "layers"),
    ({"layers": [7]}, "layers[0]"),
    ({"layers": [{"type": "dense"}]}, "layers[0].units"),
    ({"layers": [{"type": "dense", "units": "4"}]}, "layers[0].units"),
    ({"layers": [{"type": "dense", "units": True}]}, "layers[0].units"),
    ({"layers": [{"type": "dense", "units": 10**9}]}, "layers[0].units"),
    ({"layers": [{"type": "dense", "units": 2, "init": "ones"}]}, "layers[0].init"),
    ({"layers": [{"type": "dense", "units": 2, "use_bias": "yes"}]}, "layers[0].use_bias"),
    ({"layers": [{"type": "dropout", "rate": 1.0}, {"type": "dense", "units": 2}]}, "layers[0].rate"),
    ({"layers": [{"type": "dense", "units": 2, "inputs": ["input"]}]}, "layers[0].inputs"),
    ({"nodes": [{"type": "dense", "units": 2, "inputs": ["input"]}]}, "nodes[0].name"),
    ({"nodes": [{"name": "input", "type": "dense", "units": 2, "inputs": ["input"]}]}, "nodes[0].name"),
    ({"nodes": [{"name": "a", "type": "dense", "units": 2}]}, "nodes[0].inputs"),
    ({"nodes": [{"name": "a", "type": "add", "inputs": ["input"]}]}, "nodes[0].inputs"),
    ({"nodes": [{"name": "a", "type": "dense", "units": 2, "inputs": ["input"]},
                {"name": "a", "type": "dense", "units": 2, "inputs": ["input"]}]}, "nodes[1].name"),
    ({"layers": [{"type": "dense", "units": 2}], "extra": 1}, "extra"),
])
def test_malformed_definitions(spec, field):
    problems = backprop.validate(spec, 4)
    assert field in fields(problems)
    with pytest.raises(backprop.SpecError) as raised:
        backprop.build(spec, 4)
    assert raised.value.problems == problems


def test_multiple_inputs_take_their_concatenation():
    spec = {"nodes": [
        {"name": "a", "type": "dense", "units": 3, "inputs": ["input"]},
        {"name": "act", "type": "activation", "activation": "relu", "inputs": ["a", "input"]},
        {"name": "drop", "type": "dropout", "rate": 0.2, "inputs": ["act", "a"]},
        {"name": "out", "type": "dense", "units": 2, "inputs": ["drop"]},
    ]}
    net = backprop.build(spec, 4)
    assert net.graph.widths == {"input": 4, "a": 3, "act": 7, "drop": 10, "out": 2}


def test_count_parameters():
    spec = {"layers": [{"type": "dense", "units": 64, "activation": "relu"}, {"type": "dense", "units": 10,
                                                                              "use_bias": False}]}
    assert backprop.count_parameters(spec, 64) == 64 * 64 + 64 + 64 * 10
    assert backprop.build(spec, 64).parameter_count() == backprop.count_parameters(spec, 64)


def test_output_width_per_loss():
    assert backprop.output_width("cross_entropy", n_classes=10) == 10
    assert backprop.output_width("binary_cross_entropy", n_classes=2) == 1
    assert backprop.output_width("mse", n_targets=3) == 3
    with pytest.raises(ValueError):
        backprop.output_width("binary_cross_entropy", n_classes=3)


JSON_VALUES = [None, True, 0, -1, 2.5, "", "x", [], ["input"], [[1]], {}, {"a": 1}, float("nan")]


@pytest.mark.parametrize("key", ["name", "type", "inputs", "units", "activation", "use_bias", "init", "rate", "output"])
@pytest.mark.parametrize("value", JSON_VALUES, ids=repr)
def test_any_json_value_in_any_field_is_a_problem_not_a_crash(key, value):
    node = {"name": "h", "type": "dense", "units": 3, "inputs": ["input"]}
    spec = {"nodes": [node, {"name": "out", "type": "dense", "units": 2, "inputs": ["h"]}], "output": "out"}
    if key == "output":
        spec["output"] = value
    else:
        node[key] = value
    problems = backprop.validate(spec, 4, 2)
    assert all(isinstance(p, backprop.Problem) for p in problems)
