"""Minibatch gradient descent with validation, early stopping, diagnostics and checkpoints."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from .backend import to_numpy
from .checkpoint import Checkpoint
from .config import TrainingConfig
from .errors import TrainingCancelled, TrainingDiverged
from .losses import LOSSES, TASK_OF_LOSS
from .network import Network
from .optimizers import LearningRateSchedule, make_optimizer

EVAL_CHUNK_ROWS = 8192  # rows per forward pass over the validation split, unless train() is told otherwise

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
    max_eval_rows: int = EVAL_CHUNK_ROWS,
    **training: Any,
) -> History:
    """Train ``network`` on inputs ``X`` (n, input_dim) and targets ``y`` in place.

    ``training`` takes the fields of :class:`TrainingConfig`. Targets are class
    indices (n,) for ``cross_entropy``, 0/1 of the output's shape for
    ``binary_cross_entropy`` and values (n, k) for ``mse``. Returns the
    :class:`History`; with early stopping on, the best epoch's weights are
    restored before returning.

    The validation split is evaluated ``max_eval_rows`` rows per forward pass: a
    pass holds ``rows * network.activation_width`` values, so a caller with a
    memory budget passes ``budget // network.activation_width``.

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
    if max_eval_rows < 1:
        raise ValueError(f"max_eval_rows must be at least 1, not {max_eval_rows}")
    data, val = _split_data(network, X, y, validation_data, config)
    run = _TrainingRun(network, config)
    if checkpoint is not None:
        run.resume(checkpoint)
    # Overflow on the way to a non-finite loss is reported as TrainingDiverged,
    # not as a stream of numpy warnings.
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        for epoch in range(run.start_epoch + 1, config.epochs + 1):
            started = time.perf_counter()
            learning_rate = run.schedule.rate(epoch)
            run.optimizer.learning_rate = learning_rate
            totals, layers, global_norm = _train_epoch(
                run, data, epoch, learning_rate, on_batch_end, batch_callback_every, should_stop,
            )
            if not all(bool(run.xp.isfinite(p).all()) for p in run.params):
                raise _diverged(epoch, learning_rate, config)
            record = _epoch_metrics(network, epoch, totals, data, val, config.loss, max_eval_rows)
            monitored = record.get("val_loss", record["loss"])
            if not math.isfinite(monitored):
                raise _diverged(epoch, learning_rate, config)
            run.observe(epoch, monitored)
            elapsed = time.perf_counter() - started
            record.update({
                "learning_rate": learning_rate,
                "duration_s": elapsed,
                "samples_per_second": data.n / elapsed if elapsed > 0 else None,
                "layers": layers,
                **_flags(layers, global_norm),
            })
            run.history.append(record)
            stop = run.patience_ran_out()
            if on_checkpoint is not None:
                on_checkpoint(run.checkpoint(epoch))
            if on_epoch_end is not None:
                on_epoch_end(record)
            if stop:
                run.history.stopped_early = True
                break
    return run.finish()


def _split_data(
    network: Network, X: Any, y: Any, validation_data: tuple[Any, Any] | None, config: TrainingConfig,
) -> tuple[_Data, _Data | None]:
    """The training split and the validation split (None without one) on the network's device.

    Without ``validation_data``, ``config.validation_split`` of the rows is
    held out by :func:`train_validation_split`.
    """
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
    return data, val


class _TrainingRun:
    """What a run carries from epoch to epoch: optimizer, schedule, RNG, early-stopping bookkeeping, history.

    Everything a :class:`Checkpoint` saves lives here, so that :meth:`checkpoint`
    and :meth:`resume` are each other's inverse.
    """

    def __init__(self, network: Network, config: TrainingConfig):
        self.network = network
        self.config = config
        self.xp = xp = network.xp
        self.rng = np.random.default_rng([config.seed, 0])
        network.rng = self.rng  # dropout masks come from the same stream as the shuffles
        self.nodes = network.dense_nodes
        self.params = list(network.parameters().values())
        # The gradient arrays are new every batch: fetch them by (node, attribute), in params' order.
        self.grad_slots = [(node, name) for node in self.nodes
                           for name in ("weight_grad", "bias_grad") if name == "weight_grad" or node.bias is not None]
        self.weights = [node.weight for node in self.nodes]
        self.optimizer = make_optimizer(
            config.optimizer, self.params, config.learning_rate, xp, config.momentum, config.nesterov,
        )
        self.schedule = LearningRateSchedule(
            config.lr_schedule, config.learning_rate, config.epochs, config.lr_step_size, config.lr_decay,
            config.lr_patience, config.min_learning_rate,
        )
        self.patience = config.early_stopping_patience or 0
        self.history = History()
        self.best_loss, self.best_epoch, self.bad_epochs = math.inf, 0, 0
        self.best_params: dict[str, Any] | None = None
        self.start_epoch = 0

    def resume(self, checkpoint: Checkpoint) -> None:
        """Take up the run where ``checkpoint`` left it."""
        self.network.set_parameters(checkpoint.params)
        self.optimizer.load_state(checkpoint.optimizer_scalars, checkpoint.optimizer_slots)
        self.rng.bit_generator.state = checkpoint.rng_state
        self.schedule.load_state(checkpoint.schedule_state)
        self.best_loss, self.best_epoch = checkpoint.best_loss, checkpoint.best_epoch
        self.bad_epochs = checkpoint.bad_epochs
        if checkpoint.best_params is not None:
            self.best_params = {k: self.xp.asarray(v) for k, v in checkpoint.best_params.items()}
        self.history.extend(checkpoint.history)
        self.start_epoch = checkpoint.epoch

    def observe(self, epoch: int, monitored: float) -> None:
        """Feed an epoch's monitored loss to the schedule and to early stopping."""
        self.schedule.observe(monitored)
        if monitored < self.best_loss:
            self.best_loss, self.best_epoch, self.bad_epochs = monitored, epoch, 0
            if self.patience:
                self.best_params = {k: p.copy() for k, p in self.network.parameters().items()}
        else:
            self.bad_epochs += 1

    def patience_ran_out(self) -> bool:
        """Whether early stopping ends the run after this epoch."""
        return bool(self.patience) and self.bad_epochs >= self.patience

    def checkpoint(self, epoch: int) -> Checkpoint:
        """Host copies of the run's state after ``epoch``."""
        scalars, slots = self.optimizer.state()
        best = self.best_params
        return Checkpoint(
            epoch=epoch,
            params={k: to_numpy(p).copy() for k, p in self.network.parameters().items()},
            optimizer_scalars=scalars,
            optimizer_slots={k: [to_numpy(a).copy() for a in v] for k, v in slots.items()},
            rng_state=dict(self.rng.bit_generator.state),
            schedule_state=self.schedule.state(),
            best_params=None if best is None else {k: to_numpy(v).copy() for k, v in best.items()},
            best_loss=self.best_loss,
            best_epoch=self.best_epoch,
            bad_epochs=self.bad_epochs,
            history=list(self.history),
        )

    def finish(self) -> History:
        """Restore the best epoch's weights when early stopping is on; return the history."""
        self.history.best_epoch = self.best_epoch
        if self.patience and self.best_params is not None:
            self.network.set_parameters(self.best_params)
        return self.history


def _train_epoch(
    run: _TrainingRun,
    data: _Data,
    epoch: int,
    learning_rate: float,
    on_batch_end: Callable[[int, int, float], None] | None,
    batch_callback_every: int,
    should_stop: Callable[[], bool] | None,
) -> tuple[_Totals, dict[str, dict[str, float]], float]:
    """One shuffled pass of minibatch updates over ``data``.

    Returns the epoch's running training sums, the per-layer diagnostics of
    its first batch and that batch's global gradient norm. The batch loop is
    kept in one function: a call per batch shows on small batches.
    """
    network, config, xp = run.network, run.config, run.xp
    nodes, weights, params, grad_slots, optimizer = run.nodes, run.weights, run.params, run.grad_slots, run.optimizer
    loss_name, batch_size = config.loss, config.batch_size
    order = xp.asarray(run.rng.permutation(data.n))
    totals = _Totals()
    layers: dict[str, dict[str, float]] = {}
    global_norm = 0.0
    for batch, start in enumerate(range(0, data.n, batch_size)):
        rows = order[start:start + batch_size]
        X_batch, y_batch = data.X[rows], data.y[rows]
        value, Z = network._loss_step(X_batch, y_batch, loss_name, training=True)
        if not math.isfinite(value):
            raise _diverged(epoch, learning_rate, config)
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
            _update_ratios(layers, nodes, weights, before, xp)
        if on_batch_end is not None and (batch + 1) % batch_callback_every == 0:
            on_batch_end(epoch, batch + 1, value)
        if should_stop is not None and should_stop():
            raise TrainingCancelled(epoch - 1)
    return totals, layers, global_norm


def _epoch_metrics(
    network: Network, epoch: int, totals: _Totals, data: _Data, val: _Data | None, loss_name: str,
    max_rows: int,
) -> dict[str, Any]:
    """An epoch's record so far: its training metrics, and ``val_``-prefixed ones on the validation split."""
    record: dict[str, Any] = {"epoch": epoch, **totals.metrics(data)}
    if val is not None:
        record.update({f"val_{k}": v for k, v in _evaluate(network, val, LOSSES[loss_name], loss_name,
                                                                  max_rows).items()})
    return record


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


def _evaluate(network: Network, data: _Data, loss_fn: Callable, loss_name: str, max_rows: int) -> dict[str, float]:
    """Loss and metrics on a whole split, in inference mode, in chunks of at most ``max_rows`` rows."""
    xp = network.xp
    totals = _Totals()
    for start in range(0, data.n, max_rows):
        X, y = data.X[start:start + max_rows], data.y[start:start + max_rows]
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


def _update_ratios(layers: dict[str, dict[str, float]], nodes: list, weights: list, before: list, xp: Any) -> None:
    """Add each node's update_ratio (norm of the step over norm of the weight) to ``layers``.

    ``before`` holds copies of ``weights`` from before the update; they are overwritten.
    """
    for node, w, old in zip(nodes, weights, before):
        old -= w
        layers[node.name]["update_ratio"] = _ratio(_norm(old, xp), layers[node.name]["weight_norm"])


def _flags(layers: dict[str, dict[str, float]], global_norm: float) -> dict[str, Any]:
    """Health flags of an epoch, by the thresholds at the top of this module: the record's
    `flags` (their names) and `flag_details` (for each, the layers past its threshold and
    its explanation), so that no reader has to apply the thresholds again.
    """
    norms = {name: layer["grad_norm"] for name, layer in layers.items() if "grad_norm" in layer}
    largest = max(norms.values(), default=0.0)
    raised: dict[str, list[str]] = {}
    vanishing = [name for name, norm in norms.items()
                 if norm < VANISHING_ABSOLUTE or norm < VANISHING_RELATIVE * largest]
    if vanishing:
        raised["vanishing_gradients"] = vanishing
    huge_update = [name for name, layer in layers.items()
                   if layer.get("update_ratio", 0.0) > EXPLODING_UPDATE_RATIO]
    if not math.isfinite(global_norm) or global_norm > EXPLODING_GLOBAL_NORM or huge_update:
        raised["exploding_gradients"] = huge_update  # a huge global norm alone names no layer
    saturated = [name for name, layer in layers.items() if layer.get("saturation", 0.0) > SATURATION_FRACTION]
    if saturated:
        raised["saturation"] = saturated
    return {"flags": list(raised),
            "flag_details": {flag: {"layers": names, "explanation": FLAG_EXPLANATIONS[flag]}
                             for flag, names in raised.items()}}


def _clip(grads: list, max_norm: float, xp: Any) -> None:
    total = math.sqrt(sum(float(xp.vdot(g, g)) for g in grads))
    if total > max_norm:
        scale = max_norm / total
        for g in grads:
            g *= scale


def _diverged(epoch: int, learning_rate: float, config: TrainingConfig) -> TrainingDiverged:
    """The error that ends a run whose loss or parameters became non-finite at ``epoch``."""
    return TrainingDiverged(_diverged_message(epoch, learning_rate, config), epoch)


def _diverged_message(epoch: int, learning_rate: float, config: TrainingConfig) -> str:
    advice = (
        f"lower the learning rate (now {learning_rate:g}) or gradient_clip_norm (now {config.gradient_clip_norm:g})"
        if config.gradient_clip_norm is not None
        else f"lower the learning rate (now {learning_rate:g}) or set gradient_clip_norm"
    )
    return f"loss became non-finite at epoch {epoch}; {advice}"
