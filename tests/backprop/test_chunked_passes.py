"""Forward passes in row chunks: predict and the validation split never hold more than max_rows rows."""

from __future__ import annotations

import numpy as np
import pytest

import backprop
from backprop.network import Network
from tests.helpers import mlp

SKIP_GRAPH = {"nodes": [{"name": "h", "type": "dense", "units": 6, "activation": "relu", "inputs": ["input"]},
                        {"name": "j", "type": "dense", "units": 5, "inputs": ["input", "h"]},
                        {"name": "out", "type": "dense", "units": 3, "inputs": ["h", "j"]}],
              "output": "out"}


def _forward_rows(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record the rows of every forward pass from now on."""
    rows: list[int] = []
    original = Network.forward

    def spy(self, X, training=False):
        rows.append(len(X))
        return original(self, X, training)

    monkeypatch.setattr(Network, "forward", spy)
    return rows


def test_activation_width_is_the_sum_of_the_widths_input_included():
    assert backprop.build(SKIP_GRAPH, 4).activation_width == 4 + 6 + 5 + 3
    assert backprop.build(mlp((1_000, 20)), 7).activation_width == 7 + 1_000 + 20 + 2


@pytest.mark.parametrize("loss", ["cross_entropy", "binary_cross_entropy", "mse"])
def test_predict_in_chunks_is_the_same_as_at_once(monkeypatch, rng, loss):
    network = backprop.build(SKIP_GRAPH, 4, seed=3)
    X = rng.normal(size=(103, 4))
    whole = network.predict(X, loss)
    rows = _forward_rows(monkeypatch)
    chunked = network.predict(X, loss, max_rows=10)
    assert rows == [10] * 10 + [3]
    assert chunked.shape == whole.shape == (103, 3)
    np.testing.assert_allclose(chunked, whole, rtol=1e-6, atol=1e-7)


def test_predict_within_one_chunk_is_one_pass(monkeypatch, rng):
    network = backprop.build(SKIP_GRAPH, 4)
    rows = _forward_rows(monkeypatch)
    network.predict(rng.normal(size=(10, 4)), max_rows=10)
    network.predict(rng.normal(size=(1, 4)), max_rows=1)
    assert rows == [10, 1]
    with pytest.raises(ValueError, match="max_rows"):
        network.predict(rng.normal(size=(2, 4)), max_rows=0)


def test_the_validation_split_is_evaluated_in_chunks_of_max_eval_rows(monkeypatch, rng):
    X = rng.normal(size=(200, 4))
    y = (X[:, 0] > 0).astype(int)
    settings = dict(epochs=2, batch_size=16, validation_split=0.25, seed=1)
    expected = backprop.train(backprop.build(SKIP_GRAPH, 4, seed=2), X, y, **settings)
    rows = _forward_rows(monkeypatch)
    history = backprop.train(backprop.build(SKIP_GRAPH, 4, seed=2), X, y, max_eval_rows=7, **settings)
    # 150 training rows in batches of 16, then the 50 validation rows 7 at a time, each epoch.
    epoch = [16] * 9 + [6] + [7] * 7 + [1]
    assert rows == epoch * 2
    for got, want in zip(history, expected):
        for key in ("val_loss", "val_accuracy", "loss"):
            assert got[key] == pytest.approx(want[key], rel=1e-5)
    with pytest.raises(ValueError, match="max_eval_rows"):
        backprop.train(backprop.build(SKIP_GRAPH, 4), X, y, max_eval_rows=0, **settings)
