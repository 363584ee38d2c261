"""Finite-difference gradient checks in float64 over every node, activation, loss and initializer."""

from __future__ import annotations

import numpy as np
import pytest

import backprop
from backprop.activations import ACTIVATIONS
from backprop.initializers import INITIALIZERS
from backprop.losses import LOSSES
from tests.backprop.gradcheck import assert_gradients_match, targets_for


def random_dag(seed: int, input_dim: int, output_dim: int) -> dict:
    """A random graph definition with fan-out, add, concat and multi-input dense nodes."""
    rng = np.random.default_rng(seed)
    activations = list(ACTIVATIONS)
    nodes, widths = [], {"input": input_dim}
    for index in range(6):
        name = f"n{index}"
        kind = ["dense", "dense", "add", "concat", "activation", "dropout"][rng.integers(0, 6)]
        candidates = list(widths)
        if kind == "add":
            width = int(rng.choice([widths[c] for c in candidates]))
            same = [c for c in candidates if widths[c] == width]
            if len(same) < 2:
                kind = "dense"
            else:
                inputs = list(rng.choice(same, size=2, replace=False))
                nodes.append({"name": name, "type": "add", "inputs": inputs})
                widths[name] = width
                continue
        count = int(rng.integers(1, 3)) if kind != "concat" else 2
        if len(candidates) < count:
            count = 1
            kind = "dense" if kind == "concat" else kind
        inputs = [str(c) for c in rng.choice(candidates, size=count, replace=False)]
        if kind == "dense":
            units = int(rng.integers(2, 5))
            nodes.append({"name": name, "type": "dense", "units": units, "inputs": inputs,
                          "activation": str(rng.choice(activations))})
            widths[name] = units
        elif kind == "concat":
            nodes.append({"name": name, "type": "concat", "inputs": inputs})
            widths[name] = sum(widths[i] for i in inputs)
        elif kind == "activation":
            nodes.append({"name": name, "type": "activation", "inputs": inputs,
                          "activation": str(rng.choice(activations))})
            widths[name] = sum(widths[i] for i in inputs)
        else:
            nodes.append({"name": name, "type": "dropout", "rate": 0.3, "inputs": inputs})
            widths[name] = sum(widths[i] for i in inputs)
    # The output reads every node that nothing else reads, so all of them feed it.
    consumed = {i for node in nodes for i in node["inputs"]}
    sinks = [node["name"] for node in nodes if node["name"] not in consumed]
    nodes.append({"name": "out", "type": "dense", "units": output_dim, "inputs": sinks})
    return {"nodes": nodes, "output": "out"}


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_every_activation_with_every_loss(activation, loss, rng):
    spec = {"layers": [
        {"type": "dense", "units": 4, "activation": activation},
        {"type": "dense", "units": 3, "activation": activation},
        {"type": "dense", "units": 3},
    ]}
    net = backprop.build(spec, 5, seed=1, dtype="float64")
    X = rng.normal(size=(6, 5))
    assert_gradients_match(net, X, targets_for(loss, 6, 3, rng), loss)


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_activation_nodes(activation, rng):
    spec = {"nodes": [
        {"name": "h", "type": "dense", "units": 4, "inputs": ["input"]},
        {"name": "a", "type": "activation", "activation": activation, "inputs": ["h"]},
        {"name": "out", "type": "dense", "units": 2, "inputs": ["a"]},
    ]}
    net = backprop.build(spec, 3, seed=2, dtype="float64")
    assert_gradients_match(net, rng.normal(size=(5, 3)), rng.normal(size=(5, 2)), "mse")


@pytest.mark.parametrize("init", sorted(INITIALIZERS))
def test_every_initializer(init, rng):
    spec = {"layers": [{"type": "dense", "units": 4, "activation": "tanh", "init": init},
                       {"type": "dense", "units": 3, "init": init}]}
    net = backprop.build(spec, 3, seed=3, dtype="float64")
    assert_gradients_match(net, rng.normal(size=(5, 3)), rng.integers(0, 3, 5), "cross_entropy")


@pytest.mark.parametrize("loss,activation", [("cross_entropy", "softmax"), ("binary_cross_entropy", "sigmoid"), ("mse",
                                                                                                                 "sigmoid")])
def test_output_activation_fused_or_not(loss, activation, rng):
    spec = {"layers": [{"type": "dense", "units": 4, "activation": "tanh"},
                       {"type": "dense", "units": 3, "activation": activation}]}
    net = backprop.build(spec, 3, seed=4, dtype="float64")
    assert_gradients_match(net, rng.normal(size=(5, 3)), targets_for(loss, 5, 3, rng), loss)


def test_dropout_in_training_mode(rng):
    spec = {"layers": [{"type": "dense", "units": 6, "activation": "relu"},
                       {"type": "dropout", "rate": 0.4},
                       {"type": "dense", "units": 3}]}
    net = backprop.build(spec, 4, seed=5, dtype="float64")
    assert_gradients_match(net, rng.normal(size=(8, 4)), rng.integers(0, 3, 8), "cross_entropy", training=True)


def test_fan_out_accumulates(rng):
    # h feeds three consumers; a wrong backward would keep only one contribution.
    spec = {"nodes": [
        {"name": "h", "type": "dense", "units": 3, "activation": "tanh", "inputs": ["input"]},
        {"name": "a", "type": "dense", "units": 3, "activation": "sigmoid", "inputs": ["h"]},
        {"name": "b", "type": "add", "inputs": ["h", "a", "h"]},
        {"name": "c", "type": "concat", "inputs": ["h", "b"]},
        {"name": "out", "type": "dense", "units": 2, "inputs": ["c", "h", "input"]},
    ]}
    net = backprop.build(spec, 3, seed=6, dtype="float64")
    assert_gradients_match(net, rng.normal(size=(5, 3)), rng.normal(size=(5, 2)), "mse")


@pytest.mark.parametrize("seed", range(12))
def test_random_dags(seed):
    rng = np.random.default_rng(seed)
    spec = random_dag(seed, input_dim=4, output_dim=3)
    net = backprop.build(spec, 4, seed=seed, dtype="float64")
    loss = sorted(LOSSES)[seed % 3]
    assert_gradients_match(net, rng.normal(size=(6, 4)), targets_for(loss, 6, 3, rng), loss, training=True)


def test_random_dags_cover_every_node_type():
    kinds = {node["type"] for seed in range(12) for node in random_dag(seed, 4, 3)["nodes"]}
    multi_input_dense = any(
        node["type"] == "dense" and len(node["inputs"]) > 1
        for seed in range(12) for node in random_dag(seed, 4, 3)["nodes"][:-1]
    )
    assert kinds == {"dense", "add", "concat", "activation", "dropout"}
    assert multi_input_dense


def test_without_bias(rng):
    spec = {"layers": [{"type": "dense", "units": 3, "use_bias": False, "activation": "elu"},
                       {"type": "dense", "units": 2}]}
    net = backprop.build(spec, 3, seed=7, dtype="float64")
    assert "dense_0.bias" not in net.parameters()
    assert_gradients_match(net, rng.normal(size=(4, 3)), rng.integers(0, 2, 4), "cross_entropy")


@pytest.mark.parametrize("loss", ["cross_entropy", "binary_cross_entropy"])
def test_a_confident_classifier_gets_no_subnormal_gradients(loss, rng):
    # Output gradients of ~1e-40 are subnormal in float32; arithmetic on them is many times
    # slower on x86, which made the epochs of a converged job 5x longer.
    units = 2 if loss == "cross_entropy" else 1
    network = backprop.build({"layers": [{"type": "dense", "units": 64, "activation": "relu"},
                                         {"type": "dense", "units": 64, "activation": "relu"},
                                         {"type": "dense", "units": units}]}, input_dim=8, seed=0)
    X = rng.normal(size=(64, 8)).astype(np.float32)
    scores = network.logits(X, loss)
    # Scale the output layer so every logit sits ~95 from the decision boundary, on the right side.
    output = network.dense_nodes[-1]
    if loss == "cross_entropy":
        output.weight *= 95.0 / np.abs(scores[:, 0] - scores[:, 1]).min()
        y = network.logits(X, loss).argmax(axis=1)
    else:
        output.weight *= 95.0 / np.abs(scores).min()
        output.bias[...] *= 95.0 / np.abs(scores).min()
        y = (network.logits(X, loss) > 0).astype(np.float32)
    _, grads = network.loss_and_gradients(X, y, loss)
    tiny = np.finfo(np.float32).tiny
    for name, grad in grads.items():
        magnitude = np.abs(grad)
        assert not ((magnitude > 0) & (magnitude < tiny)).any(), name
