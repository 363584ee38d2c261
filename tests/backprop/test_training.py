"""Training: classic problems, optimizers, schedules, regularization, stability, checkpoints."""

from __future__ import annotations

import io

import numpy as np
import pytest

import backprop
from backprop.optimizers import LearningRateSchedule
from tests.helpers import mlp

XOR_X = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=float)
XOR_Y = np.array([0, 1, 1, 0])
FULL_BATCH = dict(validation_split=0, early_stopping_patience=0)


def blobs(n=200, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 4))
    y = (X[:, 0] + X[:, 1] * X[:, 2] > 0).astype(int)
    return X, y


@pytest.mark.parametrize("hidden,needed", [(2, 9), (3, 9)])
def test_xor_like_the_1986_paper(hidden, needed):
    solved = 0
    for seed in range(10):
        net = backprop.build(mlp((hidden,), "sigmoid", 1, output={"activation": "sigmoid"}), 2, seed=seed)
        backprop.train(net, XOR_X, XOR_Y, epochs=2000, batch_size=4, optimizer="momentum", learning_rate=0.5,
                       loss="binary_cross_entropy", seed=seed, **FULL_BATCH)
        predicted = net.predict(XOR_X, "binary_cross_entropy")[:, 0] > 0.5
        solved += bool((predicted == XOR_Y).all())
    assert solved >= needed


def test_8_3_8_encoder_learns_the_identity():
    X = np.eye(8)
    net = backprop.build(mlp((3,), "sigmoid", 8), 8)
    backprop.train(net, X, np.arange(8), epochs=3000, batch_size=8, learning_rate=0.05, **FULL_BATCH)
    assert (net.predict(X).argmax(axis=1) == np.arange(8)).all()


def _digits():
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    return (X - X.mean(0)) / (X.std(0) + 1e-8), y


@pytest.mark.slow
def test_glorot_bengio_in_miniature():
    X, y = _digits()
    saturating = backprop.build(mlp((256,) * 5, "sigmoid", 10, init="normal"), 64)
    history = backprop.train(saturating, X, y, epochs=3, batch_size=32, optimizer="sgd", learning_rate=0.05,
                             early_stopping_patience=0)
    assert all({"saturation", "vanishing_gradients"} & set(record["flags"]) for record in history)

    healthy = backprop.build(mlp((256,) * 5, "tanh", 10, init="glorot_uniform"), 64)
    history = backprop.train(healthy, X, y, epochs=10, batch_size=32, optimizer="sgd", learning_rate=0.05,
                             early_stopping_patience=0)
    assert all(record["flags"] == [] for record in history)
    assert history[-1]["val_accuracy"] > 0.93


def _mean_test_accuracy(loader, spec, **training):
    from sklearn.model_selection import train_test_split

    X, y = loader(return_X_y=True)
    accuracies = []
    for split in range(5):
        X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.25, stratify=y, random_state=split)
        mean, std = X_train.mean(0), X_train.std(0)
        std[std == 0] = 1
        net = backprop.build(spec, X.shape[1])
        backprop.train(net, (X_train - mean) / std, y_train, **training)
        accuracies.append((net.predict((X_test - mean) / std).argmax(axis=1) == y_test).mean())
    return accuracies


@pytest.mark.slow
def test_digits_test_accuracy():
    from sklearn.datasets import load_digits

    spec = {"layers": [{"type": "dense", "units": 256, "activation": "relu"}, {"type": "dropout", "rate": 0.2},
                       {"type": "dense", "units": 10}]}
    accuracies = _mean_test_accuracy(load_digits, spec, epochs=60, weight_decay=1e-3, **FULL_BATCH)
    assert min(accuracies) >= 0.975, accuracies


@pytest.mark.slow
def test_breast_cancer_test_accuracy():
    from sklearn.datasets import load_breast_cancer

    accuracies = _mean_test_accuracy(load_breast_cancer, mlp((32,)), epochs=60, weight_decay=1e-2, **FULL_BATCH)
    assert np.mean(accuracies) >= 0.96, accuracies


@pytest.mark.slow
def test_nonlinear_regression():
    rng = np.random.default_rng(0)
    X = rng.uniform(-2, 2, (3000, 3))
    y = np.sin(2 * X[:, 0]) + X[:, 1] ** 2 - X[:, 1] * X[:, 2]
    net = backprop.build(mlp((64, 64), "tanh", 1), 3)
    history = backprop.train(net, X[:2250], y[:2250], epochs=120, learning_rate=0.003, loss="mse",
                             early_stopping_patience=20)
    predicted = net.predict(X[2250:], "mse")[:, 0]
    residual = ((predicted - y[2250:]) ** 2).sum()
    total = ((y[2250:] - y[2250:].mean()) ** 2).sum()
    assert 1 - residual / total >= 0.95
    assert history[-1]["val_r2"] >= 0.95 and "val_mae" in history[-1]


@pytest.mark.parametrize("optimizer,extra", [("sgd", {}), ("momentum", {}), ("momentum", {"nesterov": True}),
                                             ("adam", {}), ("rmsprop", {})])
def test_every_optimizer_learns(optimizer, extra):
    X, y = blobs()
    net = backprop.build(mlp((16,), "tanh"), 4)
    rate = {"sgd": 0.3, "momentum": 0.05}.get(optimizer, 0.01)
    history = backprop.train(net, X, y, epochs=30, optimizer=optimizer, learning_rate=rate, **FULL_BATCH, **extra)
    assert history[-1]["loss"] < 0.6 * history[0]["loss"]
    assert history[-1]["accuracy"] > 0.85


def test_learning_rate_schedules():
    step = LearningRateSchedule("step", 1.0, 30, step_size=10, decay=0.5)
    assert [step.rate(e) for e in (1, 10, 11, 21)] == [1.0, 1.0, 0.5, 0.25]
    cosine = LearningRateSchedule("cosine", 1.0, 11, minimum=0.1)
    assert cosine.rate(1) == 1.0 and cosine.rate(11) == pytest.approx(0.1) and cosine.rate(6) == pytest.approx(0.55)
    plateau = LearningRateSchedule("reduce_on_plateau", 1.0, 30, decay=0.1, patience=2)
    for loss in (1.0, 0.9, 0.95, 0.95):
        plateau.observe(loss)
    assert plateau.rate(5) == pytest.approx(0.1)
    X, y = blobs()
    net = backprop.build(mlp((8,)), 4)
    history = backprop.train(net, X, y, epochs=5, lr_schedule="step", lr_step_size=2, learning_rate=0.01, **FULL_BATCH)
    assert [r["learning_rate"] for r in history] == pytest.approx([0.01, 0.01, 0.005, 0.005, 0.0025])


def test_same_seed_same_weights_bit_for_bit():
    X, y = blobs()
    spec = {"layers": [{"type": "dense", "units": 16, "activation": "relu"}, {"type": "dropout", "rate": 0.3},
                       {"type": "dense", "units": 2}]}
    runs = []
    for seed in (3, 3, 4):
        net = backprop.build(spec, 4, seed=0)
        backprop.train(net, X, y, epochs=5, seed=seed)
        runs.append(net.parameters())
    assert all(np.array_equal(runs[0][k], runs[1][k]) for k in runs[0])
    assert not all(np.array_equal(runs[0][k], runs[2][k]) for k in runs[0])


@pytest.mark.parametrize("optimizer", ["adam", "momentum", "rmsprop"])
def test_resume_from_checkpoint_matches_an_uninterrupted_run(optimizer):
    X, y = blobs(150)
    spec = {"layers": [{"type": "dense", "units": 16, "activation": "relu"}, {"type": "dropout", "rate": 0.3},
                       {"type": "dense", "units": 2}]}
    training = dict(epochs=8, optimizer=optimizer, learning_rate=0.01, lr_schedule="reduce_on_plateau", lr_patience=1,
                    early_stopping_patience=3, seed=9)
    whole = backprop.build(spec, 4)
    saved = {}
    full_history = backprop.train(whole, X, y, on_checkpoint=lambda c: saved.setdefault(c.epoch, c.to_bytes()),
                                  **training)

    resumed = backprop.build(spec, 4, seed=99)  # different initial weights: the checkpoint must win
    history = backprop.train(resumed, X, y, checkpoint=backprop.Checkpoint.from_bytes(saved[3]), **training)
    for key, value in whole.parameters().items():
        assert np.array_equal(value, resumed.parameters()[key]), key
    assert [r["loss"] for r in history] == [r["loss"] for r in full_history]
    assert history.best_epoch == full_history.best_epoch


def test_checkpoint_bytes_load_without_pickle():
    X, y = blobs(50)
    net = backprop.build(mlp((4,)), 4)
    saved = []
    backprop.train(net, X, y, epochs=1, on_checkpoint=saved.append)
    with np.load(io.BytesIO(saved[0].to_bytes()), allow_pickle=False) as archive:
        assert "params/dense_0.weight" in archive.files


def test_early_stopping_restores_the_best_epoch():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(60, 10))
    y = rng.integers(0, 2, 60)  # pure noise: validation loss soon rises
    net = backprop.build(mlp((64,)), 10)
    history = backprop.train(net, X, y, epochs=200, learning_rate=0.01, early_stopping_patience=5)
    assert history.stopped_early and len(history) == history.best_epoch + 5
    X_train, X_val = X[backprop.train_validation_split(60, 0.2)[0]], X[backprop.train_validation_split(60, 0.2)[1]]
    y_val = y[backprop.train_validation_split(60, 0.2)[1]]
    restored_loss, _ = net.loss_and_gradients(X_val, y_val, "cross_entropy")
    assert restored_loss == pytest.approx(history[history.best_epoch - 1]["val_loss"], rel=1e-5)
    assert len(X_train) == 48


def test_weight_decay_spares_biases():
    X = np.zeros((8, 3))  # no data gradient reaches the weights, only the biases
    y = np.ones((8, 2))
    trajectories = {}
    for decay in (0.0, 0.5):
        net = backprop.build(mlp(hidden=()), 3, seed=1)
        start = net.parameters()["dense_0.weight"].copy()
        backprop.train(net, X, y, epochs=3, batch_size=8, optimizer="sgd", learning_rate=0.1, loss="mse",
                       weight_decay=decay, **FULL_BATCH)
        trajectories[decay] = {k: v.copy() for k, v in net.parameters().items()}
        if decay:
            np.testing.assert_allclose(trajectories[decay]["dense_0.weight"], start * (1 - 0.1 * 0.5) ** 3, rtol=1e-6)
    np.testing.assert_array_equal(trajectories[0.0]["dense_0.bias"], trajectories[0.5]["dense_0.bias"])


def test_gradient_clipping_bounds_the_step():
    X, y = blobs(32)
    net = backprop.build(mlp((8,), outputs=1), 4)
    before = {k: v.copy() for k, v in net.parameters().items()}
    backprop.train(net, X, y * 1000.0, epochs=1, batch_size=32, optimizer="sgd", learning_rate=1.0, loss="mse",
                   gradient_clip_norm=0.01, **FULL_BATCH)
    step = np.sqrt(sum(((net.parameters()[k] - before[k]) ** 2).sum() for k in before))
    assert step <= 0.01 * 1.0001


def test_divergence_names_the_epoch_and_the_fix():
    X, y = blobs(64)
    net = backprop.build(mlp((32, 32), outputs=1), 4)
    with pytest.raises(backprop.TrainingDiverged) as raised:
        backprop.train(net, X * 100, y * 1e6, epochs=50, optimizer="sgd", learning_rate=5.0, loss="mse", **FULL_BATCH)
    message = str(raised.value)
    assert f"at epoch {raised.value.epoch}" in message
    assert "lower the learning rate" in message and "gradient_clip_norm" in message


def test_cancellation_between_batches():
    X, y = blobs(100)
    net = backprop.build(mlp((8,)), 4)
    calls = []

    def should_stop():
        calls.append(1)
        return len(calls) >= 7

    with pytest.raises(backprop.TrainingCancelled) as raised:
        backprop.train(net, X, y, epochs=10, batch_size=10, should_stop=should_stop, **FULL_BATCH)
    assert len(calls) == 7 and raised.value.epoch == 0


def test_callbacks_and_diagnostics():
    X, y = blobs(100)
    net = backprop.build({"layers": [{"type": "dense", "units": 8, "activation": "tanh"},
                                     {"type": "activation", "activation": "sigmoid"}, {"type": "dense",
                                                                                       "units": 2}]}, 4)
    epochs, batches = [], []
    history = backprop.train(net, X, y, epochs=3, batch_size=10, on_epoch_end=epochs.append,
                             on_batch_end=lambda e, b, loss: batches.append((e, b)), batch_callback_every=4)
    assert epochs == list(history) and len(history) == 3
    assert batches == [(e, b) for e in (1, 2, 3) for b in (4, 8)]
    record = history[0]
    assert set(record) >= {"epoch", "loss", "accuracy", "val_loss", "val_accuracy", "learning_rate", "duration_s",
                           "layers", "flags"}
    assert set(record["layers"]["dense_0"]) == {"grad_norm", "weight_norm", "update_ratio", "saturation"}
    assert set(record["layers"]["activation_1"]) == {"saturation"}
    assert set(record["layers"]["dense_2"]) == {"grad_norm", "weight_norm", "update_ratio"}
    assert 0 < record["layers"]["dense_0"]["update_ratio"] < 1


def test_exploding_gradients_flag():
    X, y = blobs(64)
    net = backprop.build(mlp((64, 64), outputs=1, init="normal"), 4)
    history = backprop.train(net, X * 50, y * 1000.0, epochs=1, optimizer="sgd", learning_rate=1e-9, loss="mse",
                             **FULL_BATCH)
    assert "exploding_gradients" in history[0]["flags"]


def test_training_config_reports_every_bad_field():
    with pytest.raises(backprop.ConfigError) as raised:
        backprop.TrainingConfig.from_dict({"batch_size": 0, "learning_rate": -1, "epochs": 10**9,
                                           "validation_split": 1.0,
                                           "optimizer": "lbfgs", "bogus": 1, "seed": float("nan")})
    assert {p.field for p in raised.value.problems} == {"batch_size", "learning_rate", "epochs", "validation_split",
                                                        "optimizer", "bogus", "seed"}
    assert backprop.TrainingConfig.from_dict({"batch_size": 64.0}).batch_size == 64


def test_cross_entropy_is_stable_for_large_logits():
    net = backprop.build(mlp((), outputs=3, output={"activation": "softmax"}), 2, dtype="float64")
    net.parameters()["dense_0.weight"][...] = [[1e4, -1e4, 0], [0, 0, 0]]
    loss, grads = net.loss_and_gradients(np.array([[1.0, 0.0]]), np.array([1]), "cross_entropy")
    assert loss == pytest.approx(2e4)
    assert all(np.isfinite(g).all() for g in grads.values())


def test_save_and_load_round_trip():
    X, y = blobs(50)
    net = backprop.build({"nodes": [
        {"name": "h", "type": "dense", "units": 8, "activation": "elu", "inputs": ["input"]},
        {"name": "out", "type": "dense", "units": 2, "inputs": ["h", "input"]}]}, 4)
    backprop.train(net, X, y, epochs=2)
    definition, weights = backprop.save(net)
    with np.load(io.BytesIO(weights), allow_pickle=False) as archive:
        assert sorted(archive.files) == ["__meta__", "h.bias", "h.weight", "out.bias", "out.weight"]
    loaded = backprop.load(definition, weights)
    np.testing.assert_array_equal(loaded.predict(X), net.predict(X))


def test_float64_on_request():
    net = backprop.build(mlp((4,)), 3, dtype="float64")
    assert all(p.dtype == np.float64 for p in net.parameters().values())
    assert backprop.build(mlp((4,)), 3).forward(np.ones((2, 3))).dtype == np.float32


def test_gpu_without_cupy_is_a_clear_error():
    try:
        import cupy  # noqa: F401
    except ImportError:
        with pytest.raises(backprop.DeviceUnavailable, match="CuPy"):
            backprop.build(mlp((4,)), 3, device="gpu")
    else:
        pytest.skip("CuPy is installed here")
