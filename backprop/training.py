"""Minibatch gradient descent with validation, early stopping, diagnostics and checkpoints."""

from __future__ import annotations

import math
import time
from typing import Any, Callable

import numpy as np

from .backend import to_numpy
from .checkpoint import Checkpoint
from .config import TrainingConfig
from .errors import TrainingCancelled, TrainingDiverged
from .losses import LOSSES, TASK_OF_LOSS
from .network import Network
from .optimizers import LearningRateSchedule, make_optimizer

EVAL_CHUNK_ROWS = 8192

# Thresholds of the health flags (docs/engine.md, "Diagnostics").
VANISHING_RELATIVE = 1e-3  # a node's grad_norm below this times the largest node's
VANISHING_ABSOLUTE = 1e-8
EXPLODING_GLOBAL_NORM = 1e3
EXPLODING_UPDATE_RATIO = 1.0
SATURATION_FRACTION = 0.5
# What each flag means and what to try, in a sentence: the one table the CLI, the dashboard
# and docs/dashboard.md show.
FLAG_EXPLANATIONS: dict[str, str] = {
    "vanishing_gradients": "some layer's gradient is a thousandth of the largest layer's or less, so it "
                           "barely learns; try relu with he init, fewer layers or a skip connection.",
    "exploding_gradients": "gradients or weight updates are huge next to the weights, so training may "
                           "diverge; lower the learning rate or set gradient_clip_norm.",
    "saturation": "over half of a sigmoid/tanh layer's outputs sit at the activation's bounds, where "
                  "its gradient is nearly zero; standardize inputs, use glorot init or relu.",
}


class History(list):
    """The per-epoch records of a run; ``best_epoch`` and ``stopped_early`` say how it ended."""

    best_epoch: int = 0
    stopped_early: bool = False


def train_validation_split(n: int, validation_split: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Return (train, validation) row indices: a seeded shuffle, at least one training row."""
    if validation_split <= 0 or n < 2:
        return np.arange(n), np.arange(0)
    order = np.random.default_rng([seed, 1]).permutation(n)
    n_val = min(int(round(n * validation_split)), n - 1)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def train(
    network: Network,
    X: Any,
    y: Any,
    *,
    validation_data: tuple[Any, Any] | None = None,
    on_epoch_end: Callable[[dict], None] | None = None,
    on_batch_end: Callable[[int, int, float], None] | None = None,
    batch_callback_every: int = 100,
    should_stop: Callable[[], bool] | None = None,
    checkpoint: Checkpoint | None = None,
    on_checkpoint: Callable[[Checkpoint], None] | None = None,
    **training: Any,
) -> History:
    """Train ``network`` on inputs ``X`` (n, input_dim) and targets ``y`` in place.

    ``training`` takes the fields of :class:`TrainingConfig`. Targets are class
    indices (n,) for ``cross_entropy``, 0/1 of the output's shape for
    ``binary_cross_entropy`` and values (n, k) for ``mse``. Returns the
    :class:`History`; with early stopping on, the best epoch's weights are
    restored before returning.

    Raises
    ------
    ConfigError
        A training field is out of range.
    TrainingDiverged
        The loss or a parameter became non-finite.
    TrainingCancelled
        ``should_stop()`` returned true between two batches.
    """
    config = TrainingConfig.from_dict(training)
    xp = network.xp
    X = np.asarray(X) if isinstance(X, (list, tuple)) else X
    y = np.asarray(y) if isinstance(y, (list, tuple)) else y
    if validation_data is None:
        train_rows, val_rows = train_validation_split(len(X), config.validation_split, config.seed)
        X_val, y_val = None, None
        if len(val_rows):  # without a split, X is used as it is: no copy
            X_val, y_val = X[val_rows], y[val_rows]
            X, y = X[train_rows], y[train_rows]
    else:
        X_val, y_val = validation_data
    data = _Data(network, X, y, config.loss)
    val = _Data(network, X_val, y_val, config.loss) if X_val is not None and len(X_val) else None

    rng = np.random.default_rng([config.seed, 0])
    network.rng = rng  # dropout masks come from the same stream as the shuffles
    nodes = network.dense_nodes
    params = list(network.parameters().values())
    # The gradient arrays are new every batch: fetch them by (node, attribute), in params' order.
    grad_slots = [(node, name) for node in nodes
                  for name in ("weight_grad", "bias_grad") if name == "weight_grad" or node.bias is not None]
    weights = [node.weight for node in nodes]
    optimizer = make_optimizer(config.optimizer, params, config.learning_rate, xp, config.momentum, config.nesterov)
    schedule = LearningRateSchedule(
        config.lr_schedule, config.learning_rate, config.epochs, config.lr_step_size, config.lr_decay,
        config.lr_patience, config.min_learning_rate,
    )
    patience = config.early_stopping_patience or 0
    history = History()
    best_loss, best_epoch, bad_epochs, best_params = math.inf, 0, 0, None
    start_epoch = 0
    if checkpoint is not None:
        network.set_parameters(checkpoint.params)
        optimizer.load_state(checkpoint.optimizer_scalars, checkpoint.optimizer_slots)
        rng.bit_generator.state = checkpoint.rng_state
        schedule.load_state(checkpoint.schedule_state)
        best_loss, best_epoch, bad_epochs = checkpoint.best_loss, checkpoint.best_epoch, checkpoint.bad_epochs
        if checkpoint.best_params is not None:
            best_params = {k: xp.asarray(v) for k, v in checkpoint.best_params.items()}
        history.extend(checkpoint.history)
        start_epoch = checkpoint.epoch

    loss_fn, loss_name = LOSSES[config.loss], config.loss
    n, batch_size = data.n, config.batch_size
    # Overflow on the way to a non-finite loss is reported as TrainingDiverged,
    # not as a stream of numpy warnings.
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        for epoch in range(start_epoch + 1, config.epochs + 1):
            started = time.perf_counter()
            learning_rate = schedule.rate(epoch)
            optimizer.learning_rate = learning_rate
            order = xp.asarray(rng.permutation(n))
            totals = _Totals()
            layers: dict[str, dict[str, float]] = {}
            global_norm = 0.0
            for batch, start in enumerate(range(0, n, batch_size)):
                rows = order[start:start + batch_size]
                X_batch, y_batch = data.X[rows], data.y[rows]
                value, Z = network._loss_step(X_batch, y_batch, loss_name, training=True)
                if not math.isfinite(value):
                    raise TrainingDiverged(_diverged_message(epoch, learning_rate, config), epoch)
                totals.add(value, Z, y_batch, data, xp)
                diagnose = batch == 0
                if diagnose:
                    layers, global_norm = _gradient_diagnostics(network, nodes)
                    before = [w.copy() for w in weights]
                if config.weight_decay:
                    for node in nodes:
                        node.weight_grad += config.weight_decay * node.weight
                grads = [getattr(node, name) for node, name in grad_slots]
                if config.gradient_clip_norm is not None:
                    _clip(grads, config.gradient_clip_norm, xp)
                optimizer.update(params, grads)
                if diagnose:
                    for node, w, old in zip(nodes, weights, before):
                        old -= w
                        layers[node.name]["update_ratio"] = _ratio(_norm(old, xp), layers[node.name]["weight_norm"])
                if on_batch_end is not None and (batch + 1) % batch_callback_every == 0:
                    on_batch_end(epoch, batch + 1, value)
                if should_stop is not None and should_stop():
                    raise TrainingCancelled(epoch - 1)

            if not all(bool(xp.isfinite(p).all()) for p in params):
                raise TrainingDiverged(_diverged_message(epoch, learning_rate, config), epoch)
            record: dict[str, Any] = {"epoch": epoch, **totals.metrics(data)}
            if val is not None:
                record.update({f"val_{k}": v for k, v in _evaluate(network, val, loss_fn, loss_name).items()})
            monitored = record.get("val_loss", record["loss"])
            if not math.isfinite(monitored):
                raise TrainingDiverged(_diverged_message(epoch, learning_rate, config), epoch)
            schedule.observe(monitored)
            if monitored < best_loss:
                best_loss, best_epoch, bad_epochs = monitored, epoch, 0
                if patience:
                    best_params = {k: p.copy() for k, p in network.parameters().items()}
            else:
                bad_epochs += 1
            elapsed = time.perf_counter() - started
            record.update({
                "learning_rate": learning_rate,
                "duration_s": elapsed,
                "samples_per_second": n / elapsed if elapsed > 0 else None,
                "layers": layers,
                "flags": _flags(layers, global_norm),
            })
            history.append(record)
            stop = bool(patience) and bad_epochs >= patience
            if on_checkpoint is not None:
                on_checkpoint(Checkpoint(
                    epoch=epoch,
                    params={k: to_numpy(p).copy() for k, p in network.parameters().items()},
                    optimizer_scalars=optimizer.state()[0],
                    optimizer_slots={k: [to_numpy(a).copy() for a in v] for k, v in optimizer.state()[1].items()},
                    rng_state=rng.bit_generator.state,
                    schedule_state=schedule.state(),
                    best_params=None if best_params is None else {k: to_numpy(v).copy() for k, v in best_params.items()},
                    best_loss=best_loss,
                    best_epoch=best_epoch,
                    bad_epochs=bad_epochs,
                    history=list(history),
                ))
            if on_epoch_end is not None:
                on_epoch_end(record)
            if stop:
                history.stopped_early = True
                break

    history.best_epoch = best_epoch
    if patience and best_params is not None:
        network.set_parameters(best_params)
    return history


class _Data:
    """Inputs and targets on the network's device, targets shaped for the loss."""

    def __init__(self, network: Network, X: Any, y: Any, loss: str):
        xp = network.xp
        self.X = network.as_array(X)
        self.n = len(self.X)
        self.task = TASK_OF_LOSS[loss]
        self.loss = loss
        if loss == "cross_entropy":
            self.y = xp.asarray(y).reshape(-1).astype(np.int64)
        else:
            self.y = network.as_array(y).reshape(self.n, -1)
        if self.task == "regression":
            centred = self.y - self.y.mean(axis=0)
            self.total_sum_squares = float(xp.vdot(centred, centred))


class _Totals:
    """Running sums of an epoch's training metrics."""

    def __init__(self):
        self.loss = 0.0
        self.rows = 0
        self.correct = 0
        self.abs_error = 0.0

    def add(self, value: float, Z: Any, y: Any, data: _Data, xp: Any) -> None:
        rows = len(y)
        self.loss += value * rows
        self.rows += rows
        if data.task == "classification":
            self.correct += int(_correct(Z, y, data.loss, xp))
        else:
            self.abs_error += float(xp.abs(Z - y).sum())

    def metrics(self, data: _Data) -> dict[str, float]:
        loss = self.loss / self.rows
        if data.task == "classification":
            return {"loss": loss, "accuracy": self.correct / self.rows}
        width = data.y.shape[1]
        # mse is ½ the mean square over all elements, so 2·loss·elements is the residual sum of squares.
        residual = 2.0 * loss * self.rows * width
        return {"loss": loss, "mae": self.abs_error / (self.rows * width), "r2": _r2(residual, data.total_sum_squares)}


def _correct(Z: Any, y: Any, loss: str, xp: Any) -> Any:
    # count_nonzero is a single C call; .sum() goes through Python-level wrappers,
    # which shows on small batches.
    if loss == "cross_entropy":
        return xp.count_nonzero(Z.argmax(axis=1) == y)
    return xp.count_nonzero(((Z > 0) == (y > 0.5)).all(axis=1))


def _r2(residual: float, total: float) -> float:
    return 1.0 - residual / total if total > 0 else 0.0


def _evaluate(network: Network, data: _Data, loss_fn: Callable, loss_name: str) -> dict[str, float]:
    """Loss and metrics on a whole split, in inference mode, in chunks."""
    xp = network.xp
    totals = _Totals()
    for start in range(0, data.n, EVAL_CHUNK_ROWS):
        X, y = data.X[start:start + EVAL_CHUNK_ROWS], data.y[start:start + EVAL_CHUNK_ROWS]
        Z = network.logits(X, loss_name)
        value, _ = loss_fn(Z, y, xp)
        totals.add(value, Z, y, data, xp)
    return totals.metrics(data)


def _norm(array: Any, xp: Any) -> float:
    return math.sqrt(float(xp.vdot(array, array)))


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator > 0 else (0.0 if numerator == 0 else math.inf)


def _gradient_diagnostics(network: Network, nodes: list) -> tuple[dict, float]:
    """Per-node grad_norm, weight_norm and saturation of the current batch; the global grad norm."""
    xp = network.xp
    layers = {}
    total = 0.0
    for node in nodes:
        grad_norm = _norm(node.weight_grad, xp)
        total += grad_norm**2
        layers[node.name] = {"grad_norm": grad_norm, "weight_norm": _norm(node.weight, xp)}
    for name, fraction in network.saturation().items():
        layers.setdefault(name, {})["saturation"] = fraction
    return layers, math.sqrt(total)


def _flags(layers: dict[str, dict[str, float]], global_norm: float) -> list[str]:
    """Health flags of an epoch, by the thresholds at the top of this module."""
    flags = []
    norms = [layer["grad_norm"] for layer in layers.values() if "grad_norm" in layer]
    if norms and (min(norms) < VANISHING_ABSOLUTE or min(norms) < VANISHING_RELATIVE * max(norms)):
        flags.append("vanishing_gradients")
    ratios = [layer.get("update_ratio", 0.0) for layer in layers.values()]
    if not math.isfinite(global_norm) or global_norm > EXPLODING_GLOBAL_NORM or max(ratios, default=0.0) > EXPLODING_UPDATE_RATIO:
        flags.append("exploding_gradients")
    if any(layer.get("saturation", 0.0) > SATURATION_FRACTION for layer in layers.values()):
        flags.append("saturation")
    return flags


def _clip(grads: list, max_norm: float, xp: Any) -> None:
    total = math.sqrt(sum(float(xp.vdot(g, g)) for g in grads))
    if total > max_norm:
        scale = max_norm / total
        for g in grads:
            g *= scale


def _diverged_message(epoch: int, learning_rate: float, config: TrainingConfig) -> str:
    advice = (
        f"lower the learning rate (now {learning_rate:g}) or gradient_clip_norm (now {config.gradient_clip_norm:g})"
        if config.gradient_clip_norm is not None
        else f"lower the learning rate (now {learning_rate:g}) or set gradient_clip_norm"
    )
    return f"loss became non-finite at epoch {epoch}; {advice}"
