"""Evaluation metrics on numpy arrays, computed the way scikit-learn computes them, and the report built from them.

Each metric follows scikit-learn's function of the same purpose (accuracy_score,
balanced_accuracy_score, log_loss, precision_recall_fscore_support, confusion_matrix,
roc_curve, roc_auc_score, precision_recall_curve, average_precision_score, r2_score,
mean_absolute_error, mean_squared_error, sklearn.inspection.permutation_importance);
tests/service/test_evaluation_metrics.py checks every one against it to 1e-9.
scikit-learn itself is a test dependency only. docs/evaluation.md says what each
number is and which choices are ours.

Classification takes class indices `y` (n,) in [0, k) and probabilities (n, k);
the predicted class is the most probable one (the first on a tie, as argmax).
Regression takes (n, t) arrays in the targets' own units. The reports hold JSON
numbers only: a value that is not defined (NaN) is None.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

# Reliability diagram: equal-width bins of the top class's probability.
CALIBRATION_BINS = 10
# Curves in a report keep at most this many points, their first and last among them.
MAX_CURVE_POINTS = 200
# Predicted-vs-actual keeps at most this many rows, drawn with the report's seed.
MAX_SCATTER_POINTS = 500
RESIDUAL_BINS = 30
RESIDUAL_QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)


# JSON ------------------------------------------------------------------------

def _number(value: Any) -> float | None:
    """Return a finite float, or None for NaN and infinities (not JSON numbers)."""
    number = float(value)
    return number if np.isfinite(number) else None


def _numbers(values: np.ndarray) -> list[float | None]:
    return [_number(v) for v in np.asarray(values, dtype=np.float64).tolist()]


def curve_indices(n_points: int, limit: int = MAX_CURVE_POINTS) -> np.ndarray:
    """Return the indices of at most `limit` points of a curve, evenly spread, the first and last kept."""
    if n_points <= limit:
        return np.arange(n_points)
    return np.unique(np.round(np.linspace(0, n_points - 1, limit)).astype(np.int64))


def sample_rows(n_rows: int, limit: int, seed: int) -> np.ndarray:
    """Return at most `limit` row indices in increasing order, drawn without replacement with `seed`."""
    if n_rows <= limit:
        return np.arange(n_rows)
    return np.sort(np.random.default_rng(seed).choice(n_rows, size=limit, replace=False))


# Classification --------------------------------------------------------------

def predicted_classes(probabilities: np.ndarray) -> np.ndarray:
    """Return the most probable class of each row (the first on a tie)."""
    return np.asarray(probabilities).argmax(axis=1)


def accuracy(y: np.ndarray, predicted: np.ndarray) -> float:
    """Return the fraction of rows whose predicted class is the true one (accuracy_score)."""
    return float(np.mean(np.asarray(y) == np.asarray(predicted)))


def confusion_matrix(y: np.ndarray, predicted: np.ndarray, n_classes: int) -> np.ndarray:
    """Return the (k, k) counts: rows the true class, columns the predicted one (confusion_matrix)."""
    codes = np.asarray(y, dtype=np.int64) * n_classes + np.asarray(predicted, dtype=np.int64)
    return np.bincount(codes, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def balanced_accuracy(y: np.ndarray, predicted: np.ndarray, n_classes: int) -> float:
    """Return the mean recall over the classes present in `y` (balanced_accuracy_score)."""
    matrix = confusion_matrix(y, predicted, n_classes)
    support = matrix.sum(axis=1)
    present = support > 0
    return float(np.mean(np.diag(matrix)[present] / support[present]))


def log_loss(y: np.ndarray, probabilities: np.ndarray) -> float:
    """Return the mean negative log probability of the true class (log_loss).

    As scikit-learn 1.9 does, probabilities are clipped to [eps, 1 - eps] with eps the
    float64 machine epsilon and are not renormalized.
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    eps = np.finfo(np.float64).eps
    chosen = probabilities[np.arange(len(probabilities)), np.asarray(y, dtype=np.int64)]
    return float(-np.mean(np.log(np.clip(chosen, eps, 1 - eps))))


def precision_recall_f1_support(y: np.ndarray, predicted: np.ndarray,
                                n_classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return per-class precision, recall, F1 and support (precision_recall_fscore_support, average=None).

    A ratio whose denominator is zero (a class never predicted, or absent) is 0.0, as
    scikit-learn's default zero_division gives it (with its warning).
    """
    matrix = confusion_matrix(y, predicted, n_classes)
    tp = np.diag(matrix).astype(np.float64)
    predicted_sum = matrix.sum(axis=0).astype(np.float64)
    support = matrix.sum(axis=1)
    true_sum = support.astype(np.float64)

    def divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
        out = np.zeros_like(numerator)
        np.divide(numerator, denominator, out=out, where=denominator != 0)
        return out

    return (divide(tp, predicted_sum), divide(tp, true_sum), divide(2 * tp, true_sum + predicted_sum),
            support)


def _threshold_counts(positive: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return false and true positives at each distinct score, highest first (sklearn's binary curve)."""
    score = np.asarray(score, dtype=np.float64)
    # scikit-learn sorts stably; the counts are taken at the last row of each run of tied
    # scores, where the order within the run no longer matters, so any sort gives them.
    order = np.argsort(score)[::-1]
    score = score[order]
    hits = np.asarray(positive, dtype=np.float64)[order]
    # The last row of each run of tied scores: a threshold counts all of its ties at once.
    ends = np.r_[np.nonzero(np.diff(score))[0], score.size - 1]
    tps = np.cumsum(hits)[ends]
    fps = 1 + ends - tps
    return fps, tps


def _roc(fps: np.ndarray, tps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if fps.size > 2:
        corner = np.r_[True, np.logical_or(np.diff(fps, 2), np.diff(tps, 2)), True]
        fps, tps = fps[corner], tps[corner]
    fps, tps = np.r_[0.0, fps], np.r_[0.0, tps]
    fpr = fps / fps[-1] if fps[-1] > 0 else np.full(fps.shape, np.nan)
    tpr = tps / tps[-1] if tps[-1] > 0 else np.full(tps.shape, np.nan)
    return fpr, tpr


def _area(fpr: np.ndarray, tpr: np.ndarray) -> float:
    if np.isnan(fpr[-1]) or np.isnan(tpr[-1]):  # one outcome only
        return float("nan")
    # The trapezoidal rule, as np.trapezoid (numpy 2 only) writes it.
    return float((np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2.0).sum())


def _precision_recall(fps: np.ndarray, tps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    predicted = tps + fps
    precision = np.zeros_like(tps)
    np.divide(tps, predicted, out=precision, where=predicted != 0)
    recall = tps / tps[-1] if tps[-1] > 0 else np.ones_like(tps)
    return np.r_[precision[::-1], 1.0], np.r_[recall[::-1], 0.0]


def _average_precision(tps: np.ndarray, precision: np.ndarray, recall: np.ndarray) -> float:
    if tps[-1] == 0:
        return float("nan")
    return float(max(0.0, -np.sum(np.diff(recall) * precision[:-1])))


def roc_curve(positive: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return the ROC curve's false and true positive rates (roc_curve, drop_intermediate=True).

    It starts at (0, 0); points collinear with their neighbours are dropped, as
    scikit-learn drops them. A rate without a positive (or negative) row is NaN.
    """
    return _roc(*_threshold_counts(positive, score))


def roc_auc(positive: np.ndarray, score: np.ndarray) -> float:
    """Return the area under the ROC curve (roc_auc_score, binary); NaN unless both outcomes occur."""
    return _area(*roc_curve(positive, score))


def precision_recall_curve(positive: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return precision and recall by decreasing recall, ending at (recall 0, precision 1) (precision_recall_curve).

    Without a positive row the recall is 1 everywhere, as in scikit-learn.
    """
    return _precision_recall(*_threshold_counts(positive, score))


def average_precision(positive: np.ndarray, score: np.ndarray) -> float:
    """Return the step-wise area under the precision-recall curve (average_precision_score).

    NaN without a positive row: there is no recall to average over.
    """
    fps, tps = _threshold_counts(positive, score)
    return _average_precision(tps, *_precision_recall(fps, tps))


def _mean_defined(values: np.ndarray, weights: np.ndarray | None = None) -> float:
    """Average the non-NaN values (weighted when weights are given); NaN when none is defined."""
    defined = ~np.isnan(values)
    if not defined.any() or (weights is not None and weights[defined].sum() == 0):
        return float("nan")
    return float(np.average(values[defined], weights=None if weights is None else weights[defined]))


def calibration_bins(y: np.ndarray, probabilities: np.ndarray,
                     n_bins: int = CALIBRATION_BINS) -> tuple[list[dict[str, Any]], float]:
    """Return reliability bins of the top class's probability and the expected calibration error.

    Bins are equal-width on [0, 1], (lower, upper] with the first closed, assigned as
    sklearn.calibration.calibration_curve assigns them (a value on an edge goes to the
    lower bin). Each bin has its rows' mean confidence and accuracy (None when empty);
    ECE = sum over bins of count / n * |accuracy - confidence|.
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    confidence = probabilities.max(axis=1)
    correct = (predicted_classes(probabilities) == np.asarray(y)).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    binned = np.searchsorted(edges[1:-1], confidence)
    counts = np.bincount(binned, minlength=n_bins)
    confidence_sums = np.bincount(binned, weights=confidence, minlength=n_bins)
    correct_sums = np.bincount(binned, weights=correct, minlength=n_bins)
    bins: list[dict[str, Any]] = []
    ece = 0.0
    for b in range(n_bins):
        count = int(counts[b])
        mean_confidence = confidence_sums[b] / count if count else None
        mean_accuracy = correct_sums[b] / count if count else None
        if count:
            ece += count / len(confidence) * abs(correct_sums[b] / count - confidence_sums[b] / count)
        bins.append({"lower": float(edges[b]), "upper": float(edges[b + 1]), "count": count,
                     "confidence": None if mean_confidence is None else _number(mean_confidence),
                     "accuracy": None if mean_accuracy is None else _number(mean_accuracy)})
    return bins, float(ece)


def classification_report(y: np.ndarray, probabilities: np.ndarray, classes: Sequence[Any], *,
                          n_rows_without_target: int = 0) -> dict[str, Any]:
    """Return the classification evaluation report (docs/evaluation.md), permutation importance left null.

    Parameters
    ----------
    y
        True class indices (n,), in [0, len(classes)).
    probabilities
        (n, len(classes)) class probabilities, columns in the order of `classes`.
    classes
        The class labels as in the dataset; with two, the second is the positive class.
    n_rows_without_target
        Rows the caller left out for want of a target, reported as they are.
    """
    y = np.asarray(y, dtype=np.int64).reshape(-1)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    k = len(classes)
    if probabilities.ndim != 2 or probabilities.shape != (len(y), k):
        raise ValueError(f"probabilities of shape {probabilities.shape} for {len(y)} rows and {k} classes")
    if len(y) == 0:
        raise ValueError("no rows to evaluate")
    labels = list(classes)
    predicted = predicted_classes(probabilities)
    matrix = confusion_matrix(y, predicted, k)
    precision, recall, f1, support = precision_recall_f1_support(y, predicted, k)
    bins, ece = calibration_bins(y, probabilities)
    metrics: dict[str, float | None] = {
        "accuracy": _number(accuracy(y, predicted)),
        "balanced_accuracy": _number(balanced_accuracy(y, predicted, k)),
        "log_loss": _number(log_loss(y, probabilities)),
        "ece": _number(ece),
    }
    # Binary: one curve, for the positive class (classes[1]); more: one-vs-rest, one per class.
    curve_classes = [1] if k == 2 else list(range(k))
    roc_curves: list[dict[str, Any]] = []
    pr_curves: list[dict[str, Any]] = []
    aucs, aps = [], []
    for c in curve_classes:
        # One sort per class serves its ROC and precision-recall curves.
        fps, tps = _threshold_counts(y == c, probabilities[:, c])
        fpr, tpr = _roc(fps, tps)
        precision_curve, recall_curve = _precision_recall(fps, tps)
        area = _area(fpr, tpr)
        ap = _average_precision(tps, precision_curve, recall_curve)
        aucs.append(area)
        aps.append(ap)
        kept = curve_indices(len(fpr))
        roc_curves.append({"label": labels[c], "fpr": _numbers(fpr[kept]), "tpr": _numbers(tpr[kept]),
                           "auc": _number(area)})
        kept = curve_indices(len(precision_curve))
        pr_curves.append({"label": labels[c], "precision": _numbers(precision_curve[kept]),
                          "recall": _numbers(recall_curve[kept]), "average_precision": _number(ap)})
    if k == 2:
        metrics["roc_auc"] = _number(aucs[0])
        metrics["pr_auc"] = _number(aps[0])
    else:
        # Classes absent from y have no AUC; the averages are over the classes that have one.
        metrics["roc_auc_macro"] = _number(_mean_defined(np.array(aucs)))
        metrics["roc_auc_weighted"] = _number(_mean_defined(np.array(aucs), support.astype(np.float64)))
        metrics["pr_auc_macro"] = _number(_mean_defined(np.array(aps)))
    return {
        "task": "classification", "n_rows": int(len(y)), "n_rows_without_target": int(n_rows_without_target),
        "metrics": metrics,
        "confusion_matrix": {"labels": labels, "matrix": matrix.tolist()},
        "per_class": [{"label": labels[c], "precision": _number(precision[c]), "recall": _number(recall[c]),
                       "f1": _number(f1[c]), "support": int(support[c])} for c in range(k)],
        "roc": {"curves": roc_curves},
        "pr": {"curves": pr_curves},
        "calibration": {"bins": bins, "ece": _number(ece)},
        "permutation_importance": None, "importance_metric": "accuracy",
    }


# Regression ------------------------------------------------------------------

def _columns(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    return values.reshape(len(values), -1)


def mean_squared_error(y: np.ndarray, predictions: np.ndarray) -> np.ndarray:
    """Return the mean squared error per target (mean_squared_error, multioutput="raw_values")."""
    return np.mean((_columns(y) - _columns(predictions)) ** 2, axis=0)


def rmse(y: np.ndarray, predictions: np.ndarray) -> np.ndarray:
    """Return the root mean squared error per target."""
    return np.sqrt(mean_squared_error(y, predictions))


def mae(y: np.ndarray, predictions: np.ndarray) -> np.ndarray:
    """Return the mean absolute error per target (mean_absolute_error, multioutput="raw_values")."""
    return np.mean(np.abs(_columns(y) - _columns(predictions)), axis=0)


def r2(y: np.ndarray, predictions: np.ndarray) -> np.ndarray:
    """Return R² per target (r2_score, multioutput="raw_values", force_finite=True).

    A constant target (no variance) scores 1.0 when predicted exactly and 0.0
    otherwise, scikit-learn's convention.
    """
    y, predictions = _columns(y), _columns(predictions)
    numerator = np.sum((y - predictions) ** 2, axis=0)
    denominator = np.sum((y - np.mean(y, axis=0)) ** 2, axis=0)
    scores = np.ones(y.shape[1])
    defined = denominator != 0
    scores[defined] = 1 - numerator[defined] / denominator[defined]
    scores[~defined & (numerator != 0)] = 0.0
    return scores


def regression_report(y: np.ndarray, predictions: np.ndarray, targets: Sequence[str], *,
                      n_rows_without_target: int = 0, seed: int = 0) -> dict[str, Any]:
    """Return the regression evaluation report (docs/evaluation.md), permutation importance left null.

    Parameters
    ----------
    y, predictions
        (n, t) (or (n,) for one target) true values and predictions, in the targets' units.
    targets
        The target names, one per column.
    n_rows_without_target
        Rows the caller left out for want of a target, reported as they are.
    seed
        Draws the rows of predicted-vs-actual when there are more than MAX_SCATTER_POINTS.
    """
    y, predictions = _columns(y), _columns(predictions)
    if y.shape != predictions.shape or y.shape[1] != len(targets):
        raise ValueError(f"y {y.shape} and predictions {predictions.shape} for {len(targets)} targets")
    if len(y) == 0:
        raise ValueError("no rows to evaluate")
    errors, absolute, scores = rmse(y, predictions), mae(y, predictions), r2(y, predictions)
    residuals = y - predictions
    shown = sample_rows(len(y), MAX_SCATTER_POINTS, seed)
    per_target, scatter, histograms = [], [], []
    for t, name in enumerate(targets):
        finite = residuals[:, t][np.isfinite(residuals[:, t])]
        quantiles = (np.quantile(finite, RESIDUAL_QUANTILES) if len(finite)
                     else np.full(len(RESIDUAL_QUANTILES), np.nan))
        per_target.append({"target": name, "rmse": _number(errors[t]), "mae": _number(absolute[t]),
                           "r2": _number(scores[t]),
                           "residual_quantiles": {str(q): _number(v) for q, v in zip(RESIDUAL_QUANTILES, quantiles)}})
        scatter.append({"target": name, "actual": _numbers(y[shown, t]), "predicted": _numbers(predictions[shown, t])})
        counts, edges = (np.histogram(finite, bins=RESIDUAL_BINS) if len(finite)
                         else (np.zeros(0, dtype=np.int64), np.zeros(0)))
        histograms.append({"target": name, "edges": _numbers(edges), "counts": counts.astype(int).tolist()})
    single = len(targets) == 1
    metrics: dict[str, Any] = {
        "rmse": _number(errors[0]) if single else _numbers(errors),
        "mae": _number(absolute[0]) if single else _numbers(absolute),
        "r2": _number(scores[0]) if single else _numbers(scores),
    }
    return {
        "task": "regression", "n_rows": int(len(y)), "n_rows_without_target": int(n_rows_without_target),
        "targets": list(targets), "metrics": metrics, "per_target": per_target,
        "predicted_vs_actual": scatter, "residual_histogram": histograms,
        "permutation_importance": None, "importance_metric": "r2",
    }


# Permutation importance ------------------------------------------------------

def permutation_importance(score: Callable[[np.ndarray], float], raw: np.ndarray, columns: Sequence[int],
                           names: Sequence[str], repeats: int, seed: int) -> list[dict[str, Any]]:
    """Return each column's drop in `score` when its values are shuffled: [{"feature", "mean", "std"}].

    The shuffles are sklearn.inspection.permutation_importance's with
    `random_state=seed`: one seed drawn from RandomState(seed) gives every column a
    fresh RandomState of its own, which shuffles one index array in place once per
    repeat and applies it to the column as permuted so far. The importance of a
    repeat is the unshuffled score minus the shuffled one; `std` is the population
    deviation (ddof 0), as there.

    Parameters
    ----------
    score
        The main metric of the model on a raw matrix like `raw` (higher is better).
    raw
        The raw (pre-encoding) matrix, rows by columns. It is permuted in place while a
        column is scored and restored before this returns.
    columns, names
        The columns of `raw` to shuffle, one at a time, and the feature name of each.
    repeats
        Shuffles per column, at least 1.
    seed
        The seed of the shuffles.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, not {repeats}")
    column_seed = np.random.RandomState(seed).randint(np.iinfo(np.int32).max + 1)
    baseline = score(raw)
    importances: list[dict[str, Any]] = []
    for column, name in zip(columns, names):
        original = raw[:, column].copy()
        state = np.random.RandomState(column_seed)
        order = np.arange(raw.shape[0])
        drops = []
        try:
            for _ in range(repeats):
                state.shuffle(order)
                raw[:, column] = raw[order, column]
                drops.append(baseline - score(raw))
        finally:
            raw[:, column] = original
        importances.append({"feature": name, "mean": _number(np.mean(drops)), "std": _number(np.std(drops))})
    return importances
