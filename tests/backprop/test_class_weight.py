"""Class weights of the classification losses, and the stratified validation split."""

from __future__ import annotations

import numpy as np
import pytest

import backprop
from backprop.losses import binary_cross_entropy, class_weight_total, cross_entropy, log_softmax
from tests.backprop.gradcheck import relative_error
from tests.helpers import mlp

FULL_BATCH = dict(validation_split=0, early_stopping_patience=0)


def _numeric_dZ(loss_fn, Z, y, weights, h=1e-6):
    """Central differences of ``loss_fn`` with respect to each entry of ``Z``."""
    grad = np.zeros_like(Z)
    for index in np.ndindex(Z.shape):
        saved = Z[index]
        Z[index] = saved + h
        plus = loss_fn(Z.copy(), y, np, weights)[0]
        Z[index] = saved - h
        minus = loss_fn(Z.copy(), y, np, weights)[0]
        Z[index] = saved
        grad[index] = (plus - minus) / (2 * h)
    return grad


def _network_gradients(net, X, y, loss, class_weight, h=1e-6):
    """Central differences of the network's weighted mean loss for every parameter."""
    result = {}
    for name, param in net.parameters().items():
        grad = np.zeros_like(param)
        for index in np.ndindex(param.shape):
            saved = param[index]
            param[index] = saved + h
            plus = net.loss_and_gradients(X, y, loss, class_weight=class_weight)[0]
            param[index] = saved - h
            minus = net.loss_and_gradients(X, y, loss, class_weight=class_weight)[0]
            param[index] = saved
            grad[index] = (plus - minus) / (2 * h)
        result[name] = grad
    return result


# -- the losses ---------------------------------------------------------------


def test_weighted_cross_entropy_gradient_matches_finite_differences(rng):
    Z = rng.normal(size=(9, 3)) * 3
    y = rng.integers(0, 3, 9)
    weights = np.array([0.5, 2.0, 1.3])
    _, analytic = cross_entropy(Z.copy(), y, np, weights)
    assert relative_error(_numeric_dZ(cross_entropy, Z, y, weights), analytic) < 1e-7


@pytest.mark.parametrize("width", [1, 3])
def test_weighted_binary_cross_entropy_gradient_matches_finite_differences(rng, width):
    Z = rng.normal(size=(8, width)) * 3
    t = rng.integers(0, 2, (8, width)).astype(float)
    weights = np.array([0.3, 2.5])
    _, analytic = binary_cross_entropy(Z.copy(), t, np, weights)
    assert relative_error(_numeric_dZ(binary_cross_entropy, Z, t, weights), analytic) < 1e-7


@pytest.mark.parametrize("loss,outputs,weights", [
    ("cross_entropy", 3, [0.5, 2.0, 1.3]),
    ("binary_cross_entropy", 1, [3.0, 0.4]),
])
def test_weighted_network_gradients_match_finite_differences(rng, loss, outputs, weights):
    net = backprop.build(mlp((5,), "tanh", outputs), 4, dtype="float64")
    X = rng.normal(size=(10, 4))
    y = rng.integers(0, 3, 10) if loss == "cross_entropy" else rng.integers(0, 2, (10, 1)).astype(float)
    _, analytic = net.loss_and_gradients(X, y, loss, class_weight=np.array(weights))
    numeric = _network_gradients(net, X, y, loss, np.array(weights))
    for name in analytic:
        assert relative_error(numeric[name], analytic[name]) < 1e-6, name


def test_weighted_cross_entropy_is_the_weighted_mean_of_minus_log_softmax(rng):
    Z = rng.normal(size=(12, 4))
    y = rng.integers(0, 4, 12)
    weights = np.array([1.0, 0.25, 4.0, 2.0])
    per_row = -log_softmax(Z, np)[np.arange(12), y]
    expected = (weights[y] * per_row).sum() / weights[y].sum()
    assert cross_entropy(Z.copy(), y, np, weights)[0] == pytest.approx(expected, rel=1e-12)
    assert class_weight_total("cross_entropy", y, weights) == pytest.approx(weights[y].sum())


def test_weighted_binary_cross_entropy_is_the_weighted_mean_of_the_logistic_loss(rng):
    Z = rng.normal(size=(10, 2)) * 4
    t = rng.integers(0, 2, (10, 2)).astype(float)
    weights = np.array([0.7, 3.0])
    p = 1 / (1 + np.exp(-Z))
    per_element = -(t * np.log(p) + (1 - t) * np.log(1 - p))
    w = np.where(t == 1, weights[1], weights[0])
    expected = (w * per_element).sum() / w.sum()
    assert binary_cross_entropy(Z.copy(), t, np, weights)[0] == pytest.approx(expected, rel=1e-10)
    assert class_weight_total("binary_cross_entropy", t, weights) == pytest.approx(w.sum())


@pytest.mark.parametrize("loss_fn,width", [(cross_entropy, 3), (binary_cross_entropy, 1)])
def test_equal_weights_are_the_unweighted_loss(rng, loss_fn, width):
    Z = rng.normal(size=(11, width))
    y = rng.integers(0, 3, 11) if loss_fn is cross_entropy else rng.integers(0, 2, (11, 1)).astype(float)
    classes = 3 if loss_fn is cross_entropy else 2
    plain_loss, plain_dZ = loss_fn(Z.copy(), y, np)
    weighted_loss, weighted_dZ = loss_fn(Z.copy(), y, np, np.full(classes, 7.5))
    assert weighted_loss == pytest.approx(plain_loss, rel=1e-12)
    np.testing.assert_allclose(weighted_dZ, plain_dZ, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("loss", ["cross_entropy", "binary_cross_entropy"])
def test_weight_two_on_class_0_equals_duplicating_its_rows(rng, loss):
    net = backprop.build(mlp((6,), "relu", 2 if loss == "cross_entropy" else 1), 3, dtype="float64")
    X = rng.normal(size=(14, 3))
    labels = rng.integers(0, 2, 14)
    y = labels if loss == "cross_entropy" else labels.reshape(-1, 1).astype(float)
    doubled = labels == 0
    X_dup, y_dup = np.concatenate([X, X[doubled]]), np.concatenate([y, y[doubled]])
    weighted_loss, weighted = net.loss_and_gradients(X, y, loss, class_weight=np.array([2.0, 1.0]))
    duplicated_loss, duplicated = net.loss_and_gradients(X_dup, y_dup, loss)
    assert weighted_loss == pytest.approx(duplicated_loss, rel=1e-12)
    for name in weighted:
        np.testing.assert_allclose(weighted[name], duplicated[name], rtol=1e-10, atol=1e-14)


def test_weighted_float32_loss_keeps_the_dtype(rng):
    Z = rng.normal(size=(5, 3)).astype(np.float32)
    _, dZ = cross_entropy(Z, rng.integers(0, 3, 5), np, np.array([1.0, 2.0, 3.0]))
    assert dZ.dtype == np.float32
    _, dZ = binary_cross_entropy(Z[:, :1].copy(), np.ones((5, 1), np.float32), np, np.array([1.0, 2.0]))
    assert dZ.dtype == np.float32


# -- training -----------------------------------------------------------------


def _imbalanced(n=600, minority=0.1, seed=0):
    """Two overlapping Gaussian classes, class 1 a ``minority`` of the rows."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < minority).astype(int)
    X = rng.normal(size=(n, 2)) + 1.2 * y[:, None]
    return X, y


def _balanced(y, n_classes=2):
    return len(y) / (n_classes * np.bincount(y, minlength=n_classes))


def _minority_recall(net, X, y, loss):
    probabilities = net.predict(X, loss)
    predicted = probabilities.argmax(axis=1) if loss == "cross_entropy" else (probabilities[:, 0] > 0.5)
    return float((predicted[y == 1] == 1).mean())


@pytest.mark.parametrize("loss", ["cross_entropy", "binary_cross_entropy"])
def test_balanced_weights_raise_the_minority_recall(loss):
    X, y = _imbalanced()
    X_test, y_test = _imbalanced(seed=1)
    targets = y if loss == "cross_entropy" else y.reshape(-1, 1).astype(float)
    recalls = {}
    for name, weights in {"none": None, "balanced": _balanced(y)}.items():
        net = backprop.build(mlp((8,), "tanh", 2 if loss == "cross_entropy" else 1), 2)
        backprop.train(net, X, targets, epochs=60, batch_size=32, learning_rate=0.01, loss=loss,
                       class_weight=weights, **FULL_BATCH)
        recalls[name] = _minority_recall(net, X_test, y_test, loss)
    assert recalls["none"] < 0.5 < recalls["balanced"]


def test_weighted_losses_of_the_records_are_weighted_means_over_the_whole_split(rng):
    X = rng.normal(size=(50, 3))
    y = rng.integers(0, 3, 50)
    weights = np.array([1.0, 5.0, 0.5])
    net = backprop.build(mlp((4,), "tanh", 3), 3, dtype="float64")
    history = backprop.train(net, X[:40], y[:40], validation_data=(X[40:], y[40:]), epochs=2, batch_size=7,
                             class_weight=weights, early_stopping_patience=0, max_eval_rows=3)
    # Chunks of 3 rows combine into the weighted mean of all ten validation rows.
    val_loss, _ = net.loss_and_gradients(X[40:], y[40:], "cross_entropy", class_weight=weights)
    assert history[-1]["val_loss"] == pytest.approx(val_loss, rel=1e-12)
    predicted = net.predict(X[40:]).argmax(axis=1)
    assert history[-1]["val_accuracy"] == pytest.approx((predicted == y[40:]).mean())


def test_batches_of_a_weighted_epoch_combine_into_its_weighted_mean(rng):
    X = rng.normal(size=(30, 3))
    y = rng.integers(0, 2, 30)
    weights = np.array([0.2, 3.0])
    net = backprop.build(mlp((4,), "tanh", 2), 3, dtype="float64")
    batch_losses = []
    history = backprop.train(net, X, y, epochs=1, batch_size=4, optimizer="sgd", learning_rate=1e-12,
                             class_weight=weights, on_batch_end=lambda e, b, value: batch_losses.append(value),
                             batch_callback_every=1, **FULL_BATCH)
    # With a negligible learning rate every batch sees the same weights, so the epoch's loss is the
    # weighted mean over all rows, which the mean of the batch means is not.
    full, _ = net.loss_and_gradients(X, y, "cross_entropy", class_weight=weights)
    assert len(batch_losses) == 8
    assert history[0]["loss"] == pytest.approx(full, rel=1e-9)
    assert history[0]["loss"] != pytest.approx(np.mean(batch_losses), rel=1e-6)


def test_resuming_a_weighted_run_matches_an_uninterrupted_one(rng):
    X = rng.normal(size=(40, 3))
    y = rng.integers(0, 3, 40)
    training = dict(epochs=6, batch_size=8, learning_rate=0.01, class_weight=np.array([1.0, 2.0, 0.5]),
                    lr_schedule="reduce_on_plateau", lr_patience=1, early_stopping_patience=3)
    whole = backprop.build(mlp((5,), "relu", 3), 3)
    saved = {}
    full_history = backprop.train(whole, X, y, on_checkpoint=lambda c: saved.setdefault(c.epoch, c.to_bytes()),
                                  **training)
    resumed = backprop.build(mlp((5,), "relu", 3), 3, seed=99)
    history = backprop.train(resumed, X, y, checkpoint=backprop.Checkpoint.from_bytes(saved[3]), **training)
    for name, value in whole.parameters().items():
        np.testing.assert_array_equal(resumed.parameters()[name], value)
    assert [r["val_loss"] for r in history] == [r["val_loss"] for r in full_history]


@pytest.mark.parametrize("loss,outputs,weights,message", [
    ("cross_entropy", 3, [1.0, 2.0], r"shape \(3,\)"),
    ("cross_entropy", 3, [[1.0, 2.0, 3.0]], r"shape \(3,\)"),
    ("binary_cross_entropy", 1, [1.0, 2.0, 3.0], r"shape \(2,\)"),
    ("cross_entropy", 3, [1.0, 0.0, 2.0], "positive"),
    ("cross_entropy", 3, [1.0, -1.0, 2.0], "positive"),
    ("cross_entropy", 3, [1.0, np.nan, 2.0], "finite"),
    ("cross_entropy", 3, [1.0, np.inf, 2.0], "finite"),
    ("cross_entropy", 3, ["a", "b", "c"], "numbers"),
    ("mse", 3, [1.0, 1.0, 1.0], "not mse"),
])
def test_bad_class_weights_are_a_config_error_naming_the_field(loss, outputs, weights, message):
    net = backprop.build(mlp((4,), "tanh", outputs), 2)
    X = np.zeros((6, 2))
    y = np.zeros((6, outputs)) if loss != "cross_entropy" else np.zeros(6, dtype=int)
    with pytest.raises(backprop.ConfigError, match=message) as caught:
        backprop.train(net, X, y, epochs=1, loss=loss, class_weight=np.array(weights), **FULL_BATCH)
    assert [p.field for p in caught.value.problems] == ["class_weight"]


def test_weighted_training_on_the_gpu_matches_the_cpu(rng):
    cupy = pytest.importorskip("cupy")
    if cupy.cuda.runtime.getDeviceCount() == 0:
        pytest.skip("no GPU")
    X = rng.normal(size=(64, 3)).astype(np.float32)
    y = rng.integers(0, 3, 64)
    settings = dict(epochs=3, batch_size=16, class_weight=np.array([1.0, 4.0, 0.5]), validation_split=0.25)
    nets = {device: backprop.build(mlp((8,)), 3, device=device) for device in ("cpu", "gpu")}
    histories = {device: backprop.train(net, X, y, **settings) for device, net in nets.items()}
    assert histories["gpu"][-1]["val_loss"] == pytest.approx(histories["cpu"][-1]["val_loss"], rel=1e-4)
    for name, value in nets["cpu"].parameters().items():
        np.testing.assert_allclose(backprop.to_numpy(nets["gpu"].parameters()[name]), value, rtol=1e-3, atol=1e-5)


# -- the stratified split -----------------------------------------------------


def _unstratified_reference(n, validation_split, seed):
    """The split as train_validation_split has always made it, for comparison."""
    order = np.random.default_rng([seed, 1]).permutation(n)
    n_val = min(int(round(n * validation_split)), n - 1)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


@pytest.mark.parametrize("n,validation_split,seed", [(60, 0.2, 0), (101, 0.35, 7), (2, 0.9, 3)])
def test_without_stratify_the_split_is_unchanged(n, validation_split, seed):
    expected = _unstratified_reference(n, validation_split, seed)
    for got in (backprop.train_validation_split(n, validation_split, seed),
                backprop.train_validation_split(n, validation_split, seed, stratify=None)):
        np.testing.assert_array_equal(got[0], expected[0])
        np.testing.assert_array_equal(got[1], expected[1])


def test_each_class_holds_out_its_share_and_keeps_a_training_row(rng):
    sizes = {0: 50, 1: 30, 2: 7, 3: 2, 4: 1}
    labels = rng.permutation(np.repeat(list(sizes), list(sizes.values())))
    train, val = backprop.train_validation_split(len(labels), 0.2, seed=5, stratify=labels)
    # round(90 * 0.2) = 18 rows: floors 10, 6, 1, 0, 0 and the one left over to the largest
    # remainder (0.4, classes 2 and 3: the lower index); no class gives up its last training row.
    assert np.bincount(labels[val], minlength=5).tolist() == [10, 6, 2, 0, 0]
    assert np.bincount(labels[train], minlength=5).tolist() == [40, 24, 5, 2, 1]
    # A large fraction still leaves every class a training row; the 81 rows are all held out,
    # those the small classes cannot give going to the others (largest remainders, then index).
    train, val = backprop.train_validation_split(len(labels), 0.9, seed=5, stratify=labels)
    assert np.bincount(labels[val], minlength=5).tolist() == [46, 28, 6, 1, 0]
    assert set(labels[train]) == set(sizes)


def test_the_stratified_split_is_sorted_disjoint_whole_and_seeded(rng):
    labels = rng.integers(0, 3, 200)
    train, val = backprop.train_validation_split(200, 0.3, seed=1, stratify=labels)
    assert (np.diff(train) > 0).all() and (np.diff(val) > 0).all()
    np.testing.assert_array_equal(np.sort(np.concatenate([train, val])), np.arange(200))
    again = backprop.train_validation_split(200, 0.3, seed=1, stratify=labels.astype(np.int32))
    np.testing.assert_array_equal(again[1], val)
    other = backprop.train_validation_split(200, 0.3, seed=2, stratify=labels)
    assert not np.array_equal(other[1], val)
    assert len(other[1]) == len(val)


def test_stratify_takes_integral_floats_and_no_split_stays_empty():
    labels = np.array([0, 0, 0, 1, 1, 1, 1, 1], dtype=np.float32)
    train, val = backprop.train_validation_split(8, 0.5, seed=0, stratify=labels)
    # 4 rows: floors 1 and 2; the remainders tie, and the lower class takes the one left.
    assert np.bincount(labels[val].astype(int)).tolist() == [2, 2]
    train, val = backprop.train_validation_split(8, 0.0, stratify=labels)
    np.testing.assert_array_equal(train, np.arange(8))
    assert len(val) == 0


@pytest.mark.parametrize("stratify,message", [
    (np.zeros(5, dtype=int), r"shape \(6,\)"),
    (np.zeros((6, 1), dtype=int), r"shape \(6,\)"),
    (np.array([0, 1, 0.5, 1, 0, 1]), "integer"),
    (np.array([0, 1, np.nan, 1, 0, 1]), "integer"),
    (np.array(list("abcabc")), "integer"),
])
def test_bad_stratify_is_a_value_error(stratify, message):
    with pytest.raises(ValueError, match=message):
        backprop.train_validation_split(6, 0.2, stratify=stratify)
