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
from .errors import ConfigError, Problem, TrainingCancelled, TrainingDiverged
from .losses import CLASS_WEIGHTED_LOSSES, LOSSES, TASK_OF_LOSS, class_weight_total
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


def train_validation_split(
    n: int, validation_split: float, seed: int = 0, stratify: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Return (train, validation) row indices, each sorted: a seeded shuffle, at least one training row.

    Parameters
    ----------
    n
        Number of rows.
    validation_split
        Fraction of the rows held out, in [0, 1).
    seed
        Seed of the shuffle; the same arguments give the same split.
    stratify
        Optional class index of each row, integers of length ``n``. The split
        then holds out ``round(n * validation_split)`` rows, as without it, shared
        among the classes in proportion: each class ``floor(count * validation_split)``,
        and the rows left over to the classes with the largest remainders (ties to
        the lower class index), each keeping at least one training
        row (a class of one row stays whole in training). Without it the split is
        the one this function has always made, row for row.

    Raises
    ------
    ValueError
        ``stratify`` is not integer class indices of length ``n``.
    """
    labels = None if stratify is None else _stratify_labels(stratify, n)
    if validation_split <= 0 or n < 2:
        return np.arange(n), np.arange(0)
    order = np.random.default_rng([seed, 1]).permutation(n)
    if labels is None:
        n_val = min(int(round(n * validation_split)), n - 1)
        return np.sort(order[n_val:]), np.sort(order[:n_val])
    # Each class takes its validation rows from the front of the one shuffle, in shuffled order.
    shuffled = labels[order]
    classes, counts = np.unique(labels, return_counts=True)
    quotas = _class_quotas(counts, min(int(round(n * validation_split)), n - 1), validation_split)
    held = np.zeros(n, dtype=bool)
    for label, quota in zip(classes, quotas):
        held[np.flatnonzero(shuffled == label)[:quota]] = True
    return np.sort(order[~held]), np.sort(order[held])


def _class_quotas(counts: np.ndarray, total: int, fraction: float) -> list[int]:
    """Share `total` held-out rows among classes of `counts` rows in proportion (largest remainders).

    No class gives up its last row, so the total is smaller only when every class is
    down to one training row.
    """
    exact = counts * fraction
    quotas = [min(int(np.floor(share)), int(count) - 1) for share, count in zip(exact, counts)]
    by_remainder = sorted(range(len(counts)), key=lambda k: (-(exact[k] - np.floor(exact[k])), k))
    left = total - sum(quotas)
    while left > 0:
        given = False
        for k in by_remainder:
            if left > 0 and quotas[k] < counts[k] - 1:
                quotas[k] += 1
                left -= 1
                given = True
        if not given:
            break
    return quotas


def _stratify_labels(stratify: Any, n: int) -> np.ndarray:
    """``stratify`` as int64 class indices, or a ValueError saying why it is not."""
    labels = np.asarray(stratify)
    if labels.shape != (n,):
        raise ValueError(f"stratify must hold one class index per row, shape ({n},), not {labels.shape}")
    if labels.dtype.kind in "iub":
        return labels.astype(np.int64, copy=False)
    if labels.dtype.kind == "f" and bool(np.isfinite(labels).all()) and bool((labels == np.round(labels)).all()):
        return labels.astype(np.int64)
    raise ValueError("stratify must hold integer class indices")


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
    class_weight: np.ndarray | None = None,
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

    ``class_weight``, positive finite floats (n_classes,) (classes 0 and 1 for
    ``binary_cross_entropy``), makes the loss the weighted mean
    ``sum_i w[y_i] l_i / sum_i w[y_i]`` (see :mod:`backprop.losses`) and its
    gradient. The records' ``loss`` and ``val_loss`` are then weighted too, so
    that early stopping and ``reduce_on_plateau`` watch the loss being
    minimized; ``accuracy`` and ``val_accuracy`` stay unweighted. A checkpoint
    does not hold the weights: resume with the same ``class_weight``.

    Raises
    ------
    ConfigError
        A training field is out of range, or ``class_weight`` does not fit the
        loss and the network's output (field ``class_weight``).
    TrainingDiverged
        The loss or a parameter became non-finite.
    TrainingCancelled
        ``should_stop()`` returned true between two batches.
    """
    config = TrainingConfig.from_dict(training)
    if max_eval_rows < 1:
        raise ValueError(f"max_eval_rows must be at least 1, not {max_eval_rows}")
    weights = _class_weight(network, class_weight, config.loss)
    data, val = _split_data(network, X, y, validation_data, config, weights)
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


def _class_weight(network: Network, class_weight: Any, loss: str) -> Any:
    """``class_weight`` checked against the loss and the output, on the network's device; None stays None."""
    if class_weight is None:
        return None

    def problem(message: str) -> ConfigError:
        return ConfigError([Problem("class_weight", message)])

    if loss not in CLASS_WEIGHTED_LOSSES:
        raise problem(f"applies to {' and '.join(CLASS_WEIGHTED_LOSSES)}, not {loss}")
    try:
        weights = np.asarray(class_weight, dtype=np.float64)
    except (TypeError, ValueError):
        raise problem("must be an array of numbers, one per class") from None
    n_classes = 2 if loss == "binary_cross_entropy" else network.graph.output_width
    if weights.shape != (n_classes,):
        raise problem(f"must hold one weight per class, shape ({n_classes},), not {weights.shape}")
    if not np.isfinite(weights).all():
        raise problem("must be finite")
    if not (weights > 0).all():
        raise problem(f"must be positive, not {weights.min():g}")
    return network.as_array(weights)  # once: every batch indexes it on the device


def _split_data(
    network: Network, X: Any, y: Any, validation_data: tuple[Any, Any] | None, config: TrainingConfig,
    class_weight: Any = None,
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
    data = _Data(network, X, y, config.loss, class_weight)
    val = _Data(network, X_val, y_val, config.loss, class_weight) if X_val is not None and len(X_val) else None
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
    loss_name, batch_size, class_weight = config.loss, config.batch_size, data.class_weight
    order = xp.asarray(run.rng.permutation(data.n))
    totals = _Totals()
    layers: dict[str, dict[str, float]] = {}
    global_norm = 0.0
    for batch, start in enumerate(range(0, data.n, batch_size)):
        rows = order[start:start + batch_size]
        X_batch, y_batch = data.X[rows], data.y[rows]
        value, Z = network._loss_step(X_batch, y_batch, loss_name, training=True, class_weight=class_weight)
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
    """Inputs and targets on the network's device, targets shaped for the loss, and the loss's class weights."""

    def __init__(self, network: Network, X: Any, y: Any, loss: str, class_weight: Any = None):
        xp = network.xp
        self.X = network.as_array(X)
        self.n = len(self.X)
        self.task = TASK_OF_LOSS[loss]
        self.loss = loss
        self.class_weight = class_weight
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
        self.loss = 0.0  # sum of batch losses times their weight
        self.weight = 0.0  # rows, or the class weights' total of a weighted loss
        self.rows = 0
        self.correct = 0
        self.abs_error = 0.0

    def add(self, value: float, Z: Any, y: Any, data: _Data, xp: Any) -> None:
        rows = len(y)
        # A weighted batch loss is a mean over its weights, so batches combine in proportion to them.
        weight = rows if data.class_weight is None else class_weight_total(data.loss, y, data.class_weight)
        self.loss += value * weight
        self.weight += weight
        self.rows += rows
        if data.task == "classification":
            self.correct += int(_correct(Z, y, data.loss, xp))
        else:
            self.abs_error += float(xp.abs(Z - y).sum())

    def metrics(self, data: _Data) -> dict[str, float]:
        loss = self.loss / self.weight
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
        value, _ = loss_fn(Z, y, xp) if data.class_weight is None else loss_fn(Z, y, xp, data.class_weight)
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
